"""What a reconstruction-error score can reach on the phantom, with a perfect lesion remover of limited sharpness.

Every diseased phantom slice has an exact lesion-free *twin* (:func:`~anomaly_bench.data.phantom.phantom_arrays`).
Take as the "healthy translation" x̂ of each slice its twin blurred by a Gaussian of ``sigma`` pixels: a translator
that removes every lesion exactly and changes nothing else, but is only as sharp as ``sigma`` (it cannot
reproduce the acquisition noise and fine texture below that scale). Then score each image the way the
reconstruction methods of this suite do:

* ``whole image``: mean |x − x̂| over all pixels: the autoencoder, f-AnoGAN and GANomaly style score, and MedAI
  AnomalyPro's score when its mask is saturated (M = 1, so B0 = B_int);
* ``oracle mask``: mean M·|x − x̂| with M the true lesion mask dilated by one pixel: MedAI AnomalyPro's score
  when its mask has learnt to cover exactly the lesions (B0 = x elsewhere).

The table gives the image-level (and subject-level) ROC AUC of each score for a range of ``sigma``. It is a
property of the dataset, not of any method: at sigma = 0 both scores separate perfectly (AUC 1), while already
at sigma = 1 px the whole-image score falls to about 0.64 on the default phantom, because the lesions cover 3 %
of a diseased slice and the slice-to-slice spread of the background error (noise level, texture, gain) is
larger than what they add to the mean. A localising mask removes that background and keeps the AUC near 1.
Use it to read the phantom rows of a comparison table: a whole-image reconstruction score near chance says
the translator is not sharp enough, not that the code is broken.

``python -m anomaly_bench.data.phantom_ceiling --out results/phantom_ceiling`` writes ``ceiling.csv`` and
``ceiling.md`` (the default phantom, all 2,000 slices; nothing is trained, so every slice counts).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.ndimage import binary_dilation, gaussian_filter
from sklearn.metrics import roc_auc_score

from anomaly_bench.data.phantom import LESION_TYPES, phantom_arrays
from anomaly_bench.evaluation.metrics import subject_scores

SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0)


def _subject_auc(scores: np.ndarray, labels: np.ndarray, subjects: Sequence[str]) -> float:
    g = subject_scores(subjects, labels, scores)  # the suite's subject score: mean over the subject's slices
    return float(roc_auc_score(g["label"], g["score"]))


def ceiling_table(sigmas: Sequence[float] = SIGMAS, **phantom: Any) -> pd.DataFrame:
    """One row per ``sigma``: the healthy-slice background error and the AUCs of both scores.

    ``phantom``: keyword arguments of :func:`phantom_arrays` (default: the embedded default phantom)."""
    a = phantom_arrays(**phantom)
    x, twin, y = a["images"], a["twins"], a["labels"]
    classes = np.asarray(a["classes"])
    if y.min() == y.max():
        raise ValueError("phantom_ceiling: the phantom needs healthy and diseased subjects "
                         "(diseased_fraction strictly between 0 and 1)")
    oracle = np.stack([binary_dilation(m, iterations=1) for m in a["masks"]])
    healthy = classes == "healthy"
    rows = []
    for s in sigmas:
        if s < 0:
            raise ValueError(f"phantom_ceiling: sigma must be >= 0, got {s}")
        recon = gaussian_filter(twin, sigma=(0, s, s)) if s > 0 else twin
        err = np.abs(x - recon)
        whole = err.mean(axis=(1, 2))
        masked = (err * oracle).mean(axis=(1, 2))
        row = {"sigma_px": float(s), "background_error": float(err[healthy].mean()),
               "background_error_sd": float(whole[healthy].std()),
               "auc_whole_image": float(roc_auc_score(y, whole)),
               "auc_whole_image_subject": _subject_auc(whole, y, a["subjects"]),
               "auc_oracle_mask": float(roc_auc_score(y, masked))}
        for t in LESION_TYPES:
            pick = healthy | (classes == t)
            if (classes == t).any():
                row[f"auc_whole_image_{t}"] = float(roc_auc_score(y[pick], whole[pick]))
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    cols = [c for c in table.columns if c.startswith("auc_whole_image_") and c != "auc_whole_image_subject"]
    head = ("| Blur sigma (px) | Background error, healthy (mean ± sd of image means) | Whole-image AUC | "
            "Whole-image AUC, subjects | Oracle-mask AUC | "
            + " | ".join(f"Whole-image AUC, {c.removeprefix('auc_whole_image_')}" for c in cols) + " |")
    lines = [head, "|" + "---:|" * (5 + len(cols))]
    for r in table.itertuples(index=False):
        d = r._asdict()
        lines.append(f"| {d['sigma_px']:.1f} | {d['background_error']:.3f} ± {d['background_error_sd']:.3f} | "
                     f"{d['auc_whole_image']:.3f} | {d['auc_whole_image_subject']:.3f} | {d['auc_oracle_mask']:.3f} | "
                     + " | ".join(f"{d[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(prog="python -m anomaly_bench.data.phantom_ceiling",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="folder for ceiling.csv and ceiling.md (default: print only)")
    ap.add_argument("--sigmas", default=",".join(str(s) for s in SIGMAS), help="comma-separated blur sigmas in px")
    ap.add_argument("--size", type=int, default=64, help="phantom image size (default 64, the dataset card's)")
    args = ap.parse_args(argv)
    table = ceiling_table([float(s) for s in args.sigmas.split(",")], size=args.size)
    md = to_markdown(table)
    print(md, end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "ceiling.csv", index=False)
        (out / "ceiling.md").write_text(md)
    return table


if __name__ == "__main__":
    main()

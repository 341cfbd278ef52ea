"""Training health in the reports (issue 20): the ``Training health`` section of table.md and report.html, the
under-trained mark next to the AUC in every table, and the notes that explain
it and the reduced budgets of the ``ci`` and ``smoke`` profiles. The loss curves (``losses_<dataset>.png``) are
drawn by :mod:`anomaly_bench.reporting.loss_curves`.

Everything here reads ``job.json["health"]`` (written by the harness, :mod:`anomaly_bench.evaluation.health`, which
states the rule) and the jobs' loss logs; a job.json of an earlier version without ``health`` reports as "not
recorded" and carries no mark.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from anomaly_bench.evaluation.health import MAX_HELDOUT_GAIN, MAX_LOSS_FALL, MAX_MAE_RATIO, WINDOW
from anomaly_bench.reporting.inputs import ordered_unique
from anomaly_bench.reporting.summary import FAILED, MISSING

#: the mark after the AUC of a row whose method was under-trained in at least one seed of the dataset
HEALTH_MARK = "⚑"
#: the table columns that carry the mark
MARKED_COLUMNS = ("auc", "pixel_auroc")
#: profiles whose budgets are cut for a quick signal
REDUCED_PROFILES = ("ci", "smoke")
RULE_TEXT = (f"held-out healthy reconstruction MAE not below {MAX_MAE_RATIO:g} × the MAE of predicting the mean "
             f"training image, or still improving over the last {100 * WINDOW:g} % of training: a checkpoint there "
             f"beating the earlier best held-out MAE by more than {100 * MAX_HELDOUT_GAIN:g} % where checkpoints are "
             f"scored, else the main training loss falling by more than {100 * MAX_LOSS_FALL:g} %")
HEADERS = ["Method", "Seeds", "Under-trained", "MAE ratio (final / mean image)", "PSNR final / mean image (dB)",
           "SSIM final / mean image", "Main loss", f"Loss fall, last {100 * WINDOW:g} %",
           f"Held-out MAE gain, last {100 * WINDOW:g} %", "Critic gap", "Flags",
           "Other (last 20 %)"]


@dataclass
class MethodHealth:
    """The health records of one (dataset, method) over its finished seeds."""

    dataset: str
    method: str
    records: list[dict] = field(default_factory=list)  # job.json["health"] of each finished seed that has one
    n_done: int = 0

    @property
    def judged(self) -> list[dict]:
        return [r for r in self.records if not r.get("not_iterative")]

    @property
    def n_flagged(self) -> int:
        return sum(bool(r.get("under_trained")) for r in self.judged)

    def mean(self, *keys: str) -> float:
        vals = []
        for r in self.judged:
            v = r
            for k in keys:
                v = v.get(k) if isinstance(v, dict) else None
            if isinstance(v, (int, float)) and math.isfinite(v):
                vals.append(float(v))
        return float(np.mean(vals)) if vals else math.nan


def summarise_health(jobs: list[dict] | None) -> dict[tuple[str, str], MethodHealth]:
    """(dataset, method) -> :class:`MethodHealth`, in the jobs' order; failed jobs are left out."""
    out: dict[tuple[str, str], MethodHealth] = {}
    for j in jobs or []:
        if j.get("status") != "done":
            continue
        key = (str(j.get("dataset")), str(j.get("method")))
        mh = out.setdefault(key, MethodHealth(*key))
        mh.n_done += 1
        if isinstance(j.get("health"), dict):
            mh.records.append(j["health"])
    return out


def flagged(jobs: list[dict] | None) -> dict[tuple[str, str], tuple[int, int]]:
    """(dataset, method) -> (seeds flagged under-trained, finished seeds), for those flagged in at least one."""
    return {k: (mh.n_flagged, mh.n_done) for k, mh in summarise_health(jobs).items() if mh.n_flagged}


# ============================================================================================ the mark
def mark_blocks(blocks, row_keys: dict[str, tuple[str, str]], marks: dict[tuple[str, str], tuple[int, int]]) -> None:
    """Append :data:`HEALTH_MARK` to the AUC cells of every row whose method is flagged on the block's dataset
    (the value, and so the bold contest, unchanged)."""
    for b in blocks:
        for lab, cells in b.cells.items():
            if (b.dataset, row_keys[lab][0]) not in marks:
                continue
            for key in MARKED_COLUMNS:
                c = cells.get(key)
                if c is not None and c.text not in (MISSING, FAILED):
                    c.text = f"{c.text} {HEALTH_MARK}"


def mark_paper(paper: pd.DataFrame, row_keys, marks) -> pd.DataFrame:
    if not len(paper) or not marks:
        return paper
    paper = paper.copy()
    hit = [(ds, row_keys.get(lab, (lab,))[0]) in marks and cell not in (MISSING, FAILED)
           for lab, ds, cell in zip(paper["method"], paper["dataset"], paper["auc_cell"])]
    paper.loc[hit, "auc_cell"] = paper.loc[hit, "auc_cell"] + f" {HEALTH_MARK}"
    return paper


def health_notes(marks: dict[tuple[str, str], tuple[int, int]], profiles: set[str]) -> list[str]:
    """The notes under a table: what the mark means (per flagged row: k of n seeds) and, for a run of the ``ci``
    or ``smoke`` profile, that its numbers are a regression/smoke signal, not the methods' accuracy."""
    notes = []
    if marks:
        which = "; ".join(f"{m} on {ds}: {k} of {n} seeds" for (ds, m), (k, n) in marks.items())
        notes.append(f"{HEALTH_MARK}: under-trained in k of n seeds by the training-health rule ({RULE_TEXT}): "
                     f"{which}. The number measures an unfinished model (see the Training health section).")
    reduced = sorted(p for p in profiles if p in REDUCED_PROFILES)
    if reduced:
        notes.append(f"Profile {', '.join(f'`{p}`' for p in reduced)}: reduced training budgets; these results are a "
                     "regression/smoke signal (does the pipeline run, did anything change), not the methods' accuracy "
                     "at their published budgets.")
    return notes


# ============================================================================================ the section
def _f(x: float, fmt: str) -> str:
    return MISSING if not math.isfinite(x) else format(x, fmt)


def _per_seed(mh: MethodHealth, key: str) -> str:
    """A value of each seed in seed order ("0.995 / 0.080"), not their mean: a mask that saturates at 1 in one seed
    and collapses to 0 in another has a mean of 0.5 that no seed shows."""
    vals = [r.get(key) for r in mh.judged]
    return " / ".join(_f(float(v), ".3f") if isinstance(v, (int, float)) else MISSING for v in vals)


def _row(mh: MethodHealth) -> list[str]:
    if not mh.records:
        return [mh.method, str(mh.n_done), "not recorded (earlier version)"] + [MISSING] * (len(HEADERS) - 3)
    if not mh.judged:
        return [mh.method, str(mh.n_done), "not iterative"] + [MISSING] * (len(HEADERS) - 3)
    flags = Counter(f for r in mh.judged for f in r.get("flags") or [])
    losses = ordered_unique(r.get("main_loss") for r in mh.judged if r.get("main_loss"))
    other = [f"{k} {_per_seed(mh, k)}" for k in ("mask_a_mean", "mask_b_mean", "g_id")
             if any(k in r for r in mh.judged)]
    n_judged = len(mh.judged)
    under = f"{mh.n_flagged} of {n_judged}" + (f" {HEALTH_MARK}" if mh.n_flagged else "")
    fall, held = mh.mean("loss_fall_last20"), mh.mean("heldout_mae_gain_last20")
    ratio = _f(mh.mean("mae_ratio"), ".3f")
    if any(r.get("mae_judged") is False for r in mh.judged) and ratio != MISSING:
        ratio += " (not judged)"
    return [mh.method, str(mh.n_done), under, ratio,
            f"{_f(mh.mean('final', 'psnr'), '.1f')} / {_f(mh.mean('mean_image', 'psnr'), '.1f')}",
            f"{_f(mh.mean('final', 'ssim'), '.3f')} / {_f(mh.mean('mean_image', 'ssim'), '.3f')}",
            ", ".join(losses) or MISSING, MISSING if not math.isfinite(fall) else f"{100 * fall:+.1f} %",
            MISSING if not math.isfinite(held) else f"{100 * held:.1f} %", _f(mh.mean("critic_gap"), ".3f"),
            ", ".join(f"{k} ({v})" for k, v in flags.items()) or "none",
            ", ".join(other) or ""]


def health_tables(jobs: list[dict] | None) -> list[tuple[str, list[list[str]]]]:
    """[(dataset, rows)] of the Training health section (columns :data:`HEADERS`; means over seeds)."""
    summary = summarise_health(jobs)
    return [(ds, [_row(mh) for (d, _), mh in summary.items() if d == ds])
            for ds in ordered_unique(d for d, _ in summary)]


def health_explanation() -> str:
    return (f"Per method, means over its finished seeds. Under-trained: {RULE_TEXT}. MAE ratio: the final model's "
            "mean absolute error on the held-out healthy images (never trained on) over that of predicting the mean "
            "training image of set B for every one (1 = no better than a flat average; methods without "
            "reconstructions are judged on the loss rule alone; \"not judged\": a method whose reconstructions are "
            "not trained to be pixel-faithful, e.g. ALAD's BiGAN G(E(x)), shows the ratio and is judged on its "
            "loss). PSNR and SSIM: data range 2 ([-1, 1] images), SSIM "
            f"with an 11×11 Gaussian window (σ 1.5). Loss fall: of the method's main loss over the last "
            f"{100 * WINDOW:g} % of its logged iterations (least-squares line; positive = still falling). Held-out "
            "MAE gain: how far the best held-out MAE of the checkpoints in that window lies below the best earlier "
            "one; without a gain a training loss that still falls is memorisation, and the loss rule is lifted. Critic "
            "gap: mean D(real) − D(fake) (f-AnoGAN: its Wasserstein estimate) over the same window. Other: per seed "
            "(seed order), not averaged; MedAI AnomalyPro's mean masks on A and B and its identity error "
            "|x_B − B_int| (the ungated translation of healthy training images): with a mask near 0 the output B0 "
            "mostly copies its input, so a low MAE ratio there says little about the translation, and g_id is "
            "the measure of it. Per-checkpoint "
            "values: healthy_mae/psnr/ssim in each job's selection.csv; curves: losses_<dataset>.png (losses), "
            "checkpoints_<dataset>.png (healthy MAE ratio and AUCp per checkpoint).")


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def health_markdown(jobs: list[dict] | None) -> str:
    """The ``Training health`` sections of table.md (one per dataset); '' when no job finished."""
    parts = []
    for ds, rows in health_tables(jobs):
        parts += [f"## Training health: {_md(ds)}", "", "| " + " | ".join(HEADERS) + " |",
                  "|---|" + "|".join("---:" for _ in HEADERS[1:]) + "|"]
        parts += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
        parts.append("")
    if parts:
        parts += [health_explanation(), ""]
    return "\n".join(parts)

"""The learning-curve figure of a run (``checkpoints_<dataset>.png``, issue 20): per dataset one panel per method that
saved selection checkpoints, with the label-free evidence of each checkpoint (its job's ``selection.csv``) against
the iteration, seeds overlaid:

* the **healthy MAE ratio**: the checkpoint's reconstruction MAE on the held-out healthy images over the MAE of
  predicting the mean training image (``job.json["health"]["mean_image"]["mae"]``); the dashed line is the
  under-trained limit :data:`anomaly_bench.evaluation.health.MAX_MAE_RATIO`. Methods without reconstructions
  (PaDiM, PatchCore, ...) have none. A method whose ratio is not judged (``mae_judged: false``, ALAD) shows instead
  the mean score of the held-out healthy images (``healthy_score_mean``: ALAD's feature distance, the curve its
  authors watch) as a fraction of its first checkpoint's.
* the **pseudo-AUC** (AUCp: held-out A vs held-out B) on a second axis (dotted).

Neither uses a test label, so a profile's budget may be chosen from these curves (``methods/<name>.yaml`` cites
them). The oracle test AUC of ``selection.csv`` is deliberately not drawn."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns

from anomaly_bench.evaluation.health import MAX_MAE_RATIO
from anomaly_bench.harness.run_folder import RunFolder
from anomaly_bench.reporting.figures import _new_figure, _save, _style, safe_name


def _column(selection: pd.DataFrame, name: str) -> pd.Series:
    return selection.get(name, pd.Series(np.nan, index=selection.index)).astype(float)


def checkpoint_curves(selection: pd.DataFrame, mean_image_mae: float | None) -> pd.DataFrame:
    """``iteration``, ``mae_ratio`` (NaN without reconstructions or without the mean-image MAE), ``aucp`` and
    ``score_rel`` (the mean held-out healthy score over the first checkpoint's; NaN where not recorded) of one
    job's ``selection.csv``, sorted by iteration."""
    sel = selection.sort_values("iteration").reset_index(drop=True)
    out = pd.DataFrame({"iteration": sel["iteration"].astype(int), "aucp": _column(sel, "aucp")})
    ok = mean_image_mae is not None and math.isfinite(mean_image_mae) and mean_image_mae > 0
    out["mae_ratio"] = _column(sel, "healthy_mae") / mean_image_mae if ok else np.nan
    score = _column(sel, "healthy_score_mean")
    first = score.iloc[0] if len(score) else np.nan
    out["score_rel"] = score / first if math.isfinite(first) and first != 0 else np.nan
    return out


def _collect(folder: RunFolder) -> dict[str, dict[str, list[tuple[object, pd.DataFrame]]]]:
    per_ds: dict[str, dict[str, list[tuple[object, pd.DataFrame]]]] = {}
    for jf, meta in folder.jobs():
        if meta.get("status") != "done" or not jf.selection_path.is_file():
            continue
        try:
            sel = pd.read_csv(jf.selection_path)
        except (OSError, ValueError, pd.errors.ParserError):
            continue
        if sel.empty or "iteration" not in sel.columns:
            continue
        h = meta.get("health") if isinstance(meta.get("health"), dict) else {}
        mean_mae = ((h or {}).get("mean_image") or {}).get("mae")
        curves = checkpoint_curves(sel, None if mean_mae is None else float(mean_mae))
        if (h or {}).get("mae_judged") is False:  # show the method's own convergence curve instead
            curves["mae_ratio"] = np.nan
        per_ds.setdefault(str(meta["dataset"]), {}).setdefault(str(meta["method"]), []).append(
            (meta.get("seed"), curves))
    return per_ds


def write_checkpoint_figures(run_dir: str | Path) -> dict[str, Path]:
    """``checkpoints_<dataset>.png`` for every dataset with selection checkpoints; returns {file name: path}."""
    folder = RunFolder(run_dir)
    written = {}
    for ds, methods in _collect(folder).items():
        cols = min(len(methods), 3)
        nrows = math.ceil(len(methods) / cols)
        with _style():
            fig = _new_figure(4.2 * cols, 3.0 * nrows)
            colors = sns.color_palette("colorblind", 10)
            for i, (method, runs) in enumerate(methods.items()):
                ax = fig.add_subplot(nrows, cols, i + 1)
                ax2 = ax.twinx()
                ax2.grid(False)
                left = None
                for k, (seed, c) in enumerate(runs):
                    col = "mae_ratio" if c["mae_ratio"].notna().any() else (
                        "score_rel" if c["score_rel"].notna().any() else None)
                    if col is not None:
                        left = left or col
                        ax.plot(c["iteration"], c[col], color=colors[k % 10], lw=1.2, marker=".", ms=3,
                                label=f"seed {seed}")
                    ax2.plot(c["iteration"], c["aucp"], color=colors[k % 10], lw=0.8, ls=":", marker="x", ms=3,
                             label=None if left else f"seed {seed}")
                if left == "mae_ratio":
                    ax.axhline(MAX_MAE_RATIO, color="0.4", lw=0.8, ls="--")
                    ax.set_ylabel("healthy MAE / mean-image MAE", fontsize=8)
                    ax.legend(fontsize=7)
                elif left == "score_rel":
                    ax.set_ylabel("healthy score / first checkpoint's", fontsize=8)
                    ax.legend(fontsize=7)
                else:
                    ax.set_yticks([])
                    ax2.legend(fontsize=7)
                ax2.set_ylabel("AUCp (dotted)", fontsize=8)
                ax.set_title(method, fontsize=9)
                ax.set_xlabel("iteration", fontsize=8)
                for a in (ax, ax2):
                    a.tick_params(labelsize=7)
            fig.suptitle(f"Checkpoints: {ds} (label-free: held-out healthy MAE ratio, dashed = under-trained limit "
                         f"{MAX_MAE_RATIO:g}; AUCp dotted)", fontsize=9)
            p = _save(fig, folder.file(f"checkpoints_{safe_name(ds)}.png"))
        written[p.name] = p
    return written

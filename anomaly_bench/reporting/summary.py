"""The per-row summary over seeds behind every table (``table_full.csv``): one row per dataset, setting,
level, method, selection and metric with mean, sample std, min, max and the cell text; failed jobs as NaN rows so
tables show them as failed (all seeds) or with a dagger (some seeds)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from anomaly_bench.evaluation.metrics import METRICS_COLUMNS
from anomaly_bench.reporting.inputs import normalise_metrics, ordered_unique

#: Metrics that are counts or thresholds, not scores: never bold, never in the main table.
NOT_SCORES = {"threshold", "n_pos", "n_neg", "n_nonfinite", "dice_threshold", "n_pixels", "n_anomalous_pixels"}
SELECTION_LABELS = {"last": "", "aucp": "AUCp"}
FAILED = "failed"
MISSING = "n/a"
DAGGER = "†"


def row_label(method: str, selection: str) -> str:
    """``method`` for the last checkpoint, ``method (AUCp)`` for the pseudo-AUC selected one."""
    tag = SELECTION_LABELS.get(str(selection), str(selection))
    return f"{method} ({tag})" if tag else str(method)


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def add_failed_jobs(metrics: pd.DataFrame, jobs: list[dict]) -> pd.DataFrame:
    """NaN rows for failed jobs wherever they left no metrics (every setting, level and selection that other
    jobs of the dataset have), so tables show them as failed (all seeds) or with a dagger (some seeds)."""
    extra = []
    for meta in jobs:
        if meta.get("status") == "done":
            continue
        ds, method = str(meta.get("dataset")), str(meta.get("method"))
        try:
            seed = int(meta.get("seed"))
        except (TypeError, ValueError):
            continue
        same_ds = metrics[metrics["dataset"] == ds]
        sels = ordered_unique(same_ds.loc[same_ds["method"] == method, "selection"]) or ["last"]
        have = same_ds[(same_ds["method"] == method) & (same_ds["seed"] == seed)]
        have = set(zip(have["setting"], have["level"], have["selection"]))
        blocks = same_ds.groupby(["setting", "level"], sort=False)["metric"].unique()
        if blocks.empty:
            blocks = pd.Series({("inductive", "image"): np.array(["auc", "precision", "recall", "specificity",
                                                                  "f1"])})
        for (setting, level), names in blocks.items():
            for sel in sels:
                if (setting, level, sel) in have:
                    continue
                extra += [(ds, setting, method, sel, seed, level, m, math.nan) for m in names if m not in NOT_SCORES]
    if not extra:
        return metrics
    return pd.concat([metrics, pd.DataFrame(extra, columns=list(METRICS_COLUMNS))], ignore_index=True)


# ============================================================================================ summary
def summarise(metrics_df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, setting, level, method, selection, metric): mean, std (ddof 1), min, max over
    the seeds with a finite value, ``n_seeds`` (finite), ``n_failed`` (NaN), ``seeds``, ``values`` and the
    table ``cell`` text. This is ``table_full.csv``."""
    df = normalise_metrics(metrics_df)
    keys = ["dataset", "setting", "level", "method", "selection", "metric"]
    rows = []
    for key, g in df.groupby(keys, sort=False):
        g = g.sort_values("seed")
        vals = g["value"].to_numpy(dtype=np.float64)
        ok = np.isfinite(vals)
        fin = vals[ok]
        rows.append({
            **dict(zip(keys, key)),
            "label": row_label(key[3], key[4]),
            "mean": float(fin.mean()) if len(fin) else math.nan,
            "std": float(fin.std(ddof=1)) if len(fin) > 1 else (0.0 if len(fin) == 1 else math.nan),
            "min": float(fin.min()) if len(fin) else math.nan,
            "max": float(fin.max()) if len(fin) else math.nan,
            "n_seeds": int(ok.sum()),
            "n_failed": int((~ok).sum()),
            "seeds": ";".join(str(s) for s in g["seed"]),
            "values": ";".join("nan" if not np.isfinite(v) else repr(float(v)) for v in vals),
            "cell": format_cell(vals),
        })
    return pd.DataFrame(rows)


def format_cell(values: Any) -> str:
    """``0.812 ± 0.011`` (mean ± sample std over finite values), ``0.812`` for one value, ``failed`` for none;
    a trailing † when some values are NaN (failed seeds)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    fin = v[np.isfinite(v)]
    if len(fin) == 0:
        return FAILED
    text = _fmt(fin.mean()) if len(fin) == 1 else f"{_fmt(fin.mean())} ± {_fmt(fin.std(ddof=1))}"
    return text + (DAGGER if len(fin) < len(v) else "")

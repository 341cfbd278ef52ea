"""Metric regression against committed references (``anomaly-bench regress``).

Runs the regression experiment (``experiments/regression.yaml``: every paper method at the ``ci``
profile, fixed seeds, CPU) on the embedded phantom and, when ``../shared/data`` is present, on
PneumoniaMNIST; then compares every (dataset, setting, method, selection, level, metric) of the
reference with the new value.

It fails (exit 1) when an AUC or AP falls by more than the tolerance, when a dataset, method or metric of
the reference is missing, or when a job failed or produced non-finite scores. Gains beyond the tolerance
are reported (``--update`` rewrites the reference; the commit that does so must say why).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_bench.config import REPO_DIR

GUARDED = ("auc", "ap")
DEFAULT_REFERENCE = REPO_DIR / "results" / "reference" / "regression.json"
DEFAULT_EXPERIMENT = REPO_DIR / "experiments" / "regression.yaml"
KEY = ["dataset", "setting", "method", "selection", "level", "metric"]


@dataclass
class Comparison:
    table: pd.DataFrame  # KEY + old, new, delta, status
    problems: list[str]
    improvements: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def summarise(metrics: pd.DataFrame) -> dict[str, float]:
    """Mean over seeds of the guarded metrics, keyed 'dataset|setting|method|selection|level|metric'."""
    m = metrics[metrics["metric"].isin(GUARDED)]
    g = m.groupby(KEY, dropna=False)["value"].mean()
    return {"|".join(str(x) for x in k): float(v) for k, v in g.items()}


def compare(reference: dict[str, Any], new: dict[str, float], tolerance: float, failed_jobs: list[str],
            nonfinite: list[str], skipped_datasets: set[str] = frozenset()) -> Comparison:
    rows, problems, improvements = [], [], []
    ref_values: dict[str, float] = reference["values"]
    for key, old in sorted(ref_values.items()):
        parts = dict(zip(KEY, key.split("|")))
        if parts["dataset"] in skipped_datasets:
            rows.append({**parts, "old": old, "new": math.nan, "delta": math.nan, "status": "skipped (no data)"})
            continue
        val = new.get(key)
        if val is None:
            status = "MISSING"
            problems.append(f"{key}: in the reference but not produced by this run")
        elif not math.isfinite(val):
            status = "NON-FINITE"
            problems.append(f"{key}: value {val} (scores not finite)")
        elif val < old - tolerance:
            status = "DROP"
            problems.append(f"{parts['method']} on {parts['dataset']} ({parts['setting']}, {parts['selection']}, "
                            f"{parts['level']}): {parts['metric'].upper()} fell {old:.4f} -> {val:.4f} "
                            f"(delta {val - old:+.4f}, tolerance {tolerance})")
        elif val > old + tolerance:
            status = "improved"
            improvements.append(f"{key}: {old:.4f} -> {val:.4f} ({val - old:+.4f}); run with --update to accept")
        else:
            status = "ok"
        rows.append({**parts, "old": old, "new": val, "delta": (val - old) if val is not None else math.nan,
                     "status": status})
    for key in sorted(set(new) - set(ref_values)):
        parts = dict(zip(KEY, key.split("|")))
        rows.append({**parts, "old": math.nan, "new": new[key], "delta": math.nan, "status": "new (not in reference)"})
    for j in failed_jobs:
        problems.append(f"job {j} failed (see its job.json)")
    for j in nonfinite:
        problems.append(f"{j}: non-finite scores")
    return Comparison(pd.DataFrame(rows), problems, improvements)


def format_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "(nothing compared)"
    t = table.copy()
    for c in ("old", "new", "delta"):
        t[c] = t[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}")
    cols = ["dataset", "setting", "method", "selection", "level", "metric", "old", "new", "delta", "status"]
    widths = {c: max(len(c), *(len(str(v)) for v in t[c])) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for _, r in t.iterrows()]
    return "\n".join(lines)


def nonfinite_jobs(scores: pd.DataFrame) -> list[str]:
    bad = scores[~np.isfinite(scores["score"].astype(float)) & (scores["label"] >= 0)]
    return sorted({f"{r.dataset}/{r.method}/seed{r.seed}" for r in bad.itertuples()})


def run_regression(out: Path, experiment: Path = DEFAULT_EXPERIMENT, data_root: str | None = None,
                   progress: bool = False, echo=print) -> tuple[pd.DataFrame, pd.DataFrame, dict, set[str]]:
    """Run the regression experiment; return (metrics, scores, run info, datasets skipped for lack of data)."""
    from anomaly_bench.data.loading import resolve_card, root_present
    from anomaly_bench.experiment import load_experiment
    from anomaly_bench.runner import Runner

    exp = load_experiment(experiment)
    skipped = set()
    kept = []
    for spec in exp.datasets:
        card = resolve_card(spec.card)
        if root_present(card, spec.data_root or data_root):
            kept.append(spec)
        else:
            skipped.add(spec.label or card["name"])
            echo(f"regress: real-data part SKIPPED: dataset '{card['name']}' not found "
                 f"(expected under {card.get('root')}; pass --data-root). Only the other datasets are checked.")
    exp.datasets = kept
    t0 = time.time()
    info = Runner(exp, out, data_root=data_root, progress=progress, echo=echo).run()
    info["regress_seconds"] = round(time.time() - t0, 1)
    metrics = pd.read_csv(out / "metrics.csv")
    scores = pd.read_csv(out / "scores.csv", dtype={"id": str, "subject": str})
    return metrics, scores, info, skipped


def write_reference(path: Path, values: dict[str, float], info: dict, tolerance: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"description": "anomaly-bench regression reference: mean over seeds of AUC/AP per "
                           "dataset|setting|method|selection|level|metric "
                           "(experiments/regression.yaml, ci profile, CPU)",
            "tolerance": tolerance, "versions": info.get("versions"), "device": info.get("device"),
            "data_fingerprints": {k: v.get("fingerprint") for k, v in info.get("datasets", {}).items()},
            "wall_seconds": info.get("regress_seconds"), "values": values}
    path.write_text(json.dumps(blob, indent=1, sort_keys=False, default=str) + "\n")

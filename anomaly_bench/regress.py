"""Metric regression against committed references (``anomaly-bench regress``).

Runs the regression experiment (``experiments/regression.yaml``: every paper method at the ``ci``
profile, fixed seeds, CPU) on the embedded phantom and, when ``../shared/data`` is present, on
PneumoniaMNIST; then compares every (dataset, setting, method, selection, level, metric) of the
reference with the new value.

It fails (exit 1) when an AUC or AP falls by more than the tolerance, when a dataset, method or metric of
the reference is missing, or when a job failed or produced non-finite scores. Gains beyond the tolerance
are reported (``--update`` rewrites the reference; the commit that does so must say why).

AUC alone cannot catch every silent break: a method near chance at the ``ci`` budget (or below it, as ALAD
on PneumoniaMNIST) that starts scoring at random keeps or even raises its AUC. The reference therefore also
holds a fixed sample of per-image test scores (:data:`SAMPLE_PER_GROUP` images per dataset and setting,
the same images for every method) and ``regress`` fails when the Spearman rank correlation between the
new and the reference scores of a method falls below ``min_rank_corr`` (default 0.9). On the same machine
the scores are bit-identical (rank correlation 1); across CPUs the GANs' short trainings drift a little.
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
SAMPLE_PER_GROUP = 200
DEFAULT_MIN_RANK_CORR = 0.9
SCORE_KEY = ["dataset", "setting", "method", "selection", "seed"]
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


def score_sample(scores: pd.DataFrame, per_group: int = SAMPLE_PER_GROUP) -> dict[str, dict[str, float]]:
    """Per-image scores of a fixed sample of labelled images, keyed 'dataset|setting|method|selection|seed'.

    The sample is chosen from the image ids alone (evenly spaced in sorted order per dataset and setting), so
    every method and every run sample the same images. Scores keep 7 significant digits.
    """
    s = scores[scores["label"] >= 0]
    out: dict[str, dict[str, float]] = {}
    for (dataset, setting), grp in s.groupby(["dataset", "setting"], sort=True):
        ids = np.array(sorted(grp["id"].astype(str).unique()))
        keep = set(ids[np.unique(np.linspace(0, len(ids) - 1, min(per_group, len(ids))).round().astype(int))])
        sub = grp[grp["id"].astype(str).isin(keep)]
        for key, g in sub.groupby(["method", "selection", "seed"], sort=True):
            name = "|".join(str(x) for x in (dataset, setting, *key))
            out[name] = {str(i): float(f"{v:.7g}") for i, v in zip(g["id"].astype(str), g["score"].astype(float))}
    return out


def rank_corr(old: dict[str, float], new: dict[str, float]) -> tuple[float, int]:
    """Spearman correlation of two id -> score mappings on their common ids (and how many there are)."""
    from scipy.stats import spearmanr

    common = sorted(set(old) & set(new))
    if len(common) < 3:
        return math.nan, len(common)
    a = np.array([old[i] for i in common])
    b = np.array([new[i] for i in common])
    if not np.all(np.isfinite(b)):
        return math.nan, len(common)
    if np.ptp(a) == 0 or np.ptp(b) == 0:  # a constant score vector: agreement only if both are identical
        return (1.0 if np.array_equal(a, b) else 0.0), len(common)
    return float(spearmanr(a, b).statistic), len(common)


def _compare_scores(reference: dict[str, Any], new_scores: dict[str, dict[str, float]], new: dict[str, float],
                    skipped: set[str], rows: list, problems: list[str]) -> None:
    min_corr = float(reference.get("min_rank_corr", DEFAULT_MIN_RANK_CORR))
    values = reference.get("values", {})
    for key, old in sorted((reference.get("scores") or {}).items()):
        parts = dict(zip(SCORE_KEY, key.split("|")))
        row = {**{k: parts[k] for k in ("dataset", "setting", "method", "selection")}, "level": "image",
               "metric": f"score_rank_corr(seed{parts['seed']})", "old": 1.0}
        if parts["dataset"] in skipped:
            rows.append({**row, "new": math.nan, "delta": math.nan, "status": "skipped (no data)"})
            continue
        if key not in new_scores:
            rows.append({**row, "new": math.nan, "delta": math.nan, "status": "MISSING"})
            problems.append(f"{key}: per-image scores in the reference but not produced by this run")
            continue
        rho, n = rank_corr(old, new_scores[key])
        status = "ok"
        if n < max(3, len(old) // 2):
            status = "MISSING"
            problems.append(f"{key}: only {n} of the reference's {len(old)} sampled test images were scored "
                            f"(the split changed?)")
        elif not (rho >= min_corr):
            status = "SCORES CHANGED"
            auc_key = "|".join([parts["dataset"], parts["setting"], parts["method"], parts["selection"], "image",
                                "auc"])
            auc = (f"; image AUC {values[auc_key]:.4f} -> {new.get(auc_key, math.nan):.4f}"
                   if auc_key in values else "")
            problems.append(f"{parts['method']} on {parts['dataset']} ({parts['setting']}, {parts['selection']}, "
                            f"seed {parts['seed']}): per-image scores no longer match the reference "
                            f"(Spearman {rho:.3f} < {min_corr} on {n} images){auc}. The method now ranks the "
                            f"test images differently: a scoring or training change, or random scores")
        rows.append({**row, "new": rho, "delta": rho - 1.0, "status": status})


def compare(reference: dict[str, Any], new: dict[str, float], tolerance: float, failed_jobs: list[str],
            nonfinite: list[str], skipped_datasets: set[str] = frozenset(),
            new_scores: dict[str, dict[str, float]] | None = None) -> Comparison:
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
    if new_scores is not None:
        _compare_scores(reference, new_scores, new, set(skipped_datasets), rows, problems)
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


def write_reference(path: Path, values: dict[str, float], info: dict, tolerance: float,
                    scores: dict[str, dict[str, float]] | None = None,
                    min_rank_corr: float = DEFAULT_MIN_RANK_CORR) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"description": "anomaly-bench regression reference: mean over seeds of AUC/AP per "
                           "dataset|setting|method|selection|level|metric "
                           "(experiments/regression.yaml, ci profile, CPU)",
            "tolerance": tolerance, "versions": info.get("versions"), "device": info.get("device"),
            "data_fingerprints": {k: v.get("fingerprint") for k, v in info.get("datasets", {}).items()},
            "wall_seconds": info.get("regress_seconds"), "values": values,
            "min_rank_corr": min_rank_corr,
            "scores_description": f"per-image test scores of a fixed sample of up to {SAMPLE_PER_GROUP} images per "
                                  "dataset and setting, keyed dataset|setting|method|selection|seed",
            "scores": scores or {}}
    path.write_text(dump_reference(blob))


def dump_reference(blob: dict[str, Any]) -> str:
    """JSON with one line per score sample (readable diffs; a few hundred kB instead of ~10k lines)."""
    scores = blob.get("scores") or {}
    head = json.dumps({k: v for k, v in blob.items() if k != "scores"}, indent=1, default=str)
    lines = [f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in scores.items()]
    return head[:-2] + ',\n "scores": {\n' + ",\n".join(lines) + "\n }\n}\n"

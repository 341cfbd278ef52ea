"""What a report reads, normalised: metrics and scores frames (missing columns filled, types fixed), the run's
jobs, its threshold rule, and the finished seeds' scores of one table row at image or subject level.

Every file of the run folder is read through :class:`anomaly_bench.harness.run_folder.RunFolder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_bench.evaluation.metrics import METRICS_COLUMNS, subject_scores
from anomaly_bench.harness.run_folder import RunFolder, read_scores_csv

__all__ = ["normalise_metrics", "normalise_scores", "ordered_unique", "read_jobs", "read_scores_csv",
           "rule_from_experiment", "scores_of", "level_arrays", "split_by_selection"]


def normalise_metrics(metrics_df: pd.DataFrame) -> pd.DataFrame:
    df = metrics_df.copy()
    for col, val in {"setting": "inductive", "selection": "last", "seed": 0, "level": "image"}.items():
        if col not in df.columns:
            df[col] = val
    missing = sorted({"dataset", "method", "metric", "value"} - set(df.columns))
    if missing:
        raise ValueError(f"metrics table lacks column(s) {missing}; expected {list(METRICS_COLUMNS)}")
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").fillna(0).astype(int)
    for col in ("dataset", "setting", "method", "selection", "level", "metric"):
        df[col] = df[col].astype(str)
    return df[list(METRICS_COLUMNS)]


def normalise_scores(scores_df: pd.DataFrame | None) -> pd.DataFrame | None:
    if scores_df is None or len(scores_df) == 0:
        return None
    df = scores_df.copy()
    for col, val in {"setting": "inductive", "selection": "last", "seed": 0}.items():
        if col not in df.columns:
            df[col] = val
    if "id" not in df.columns:
        df["id"] = np.arange(len(df))
    if "subject" not in df.columns:
        df["subject"] = df["id"]
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    df["label"] = pd.to_numeric(df["label"], errors="coerce")
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").fillna(0).astype(int)
    for col in ("dataset", "setting", "method", "selection", "id", "subject"):
        df[col] = df[col].astype(str)
    if "cluster" in df.columns:
        df["cluster"] = df["cluster"].where(df["cluster"].notna(), df["subject"]).astype(str)
    return df


def ordered_unique(values) -> list:
    return list(dict.fromkeys(values))



def read_jobs(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``jobs/<dataset>/<method>/seed<k>/job.json`` of a run (unreadable files are skipped with a warning)."""
    return RunFolder(run_dir).read_jobs()


def rule_from_experiment(run_dir: str | Path, key: str = "threshold_rule") -> str | None:
    """The run's ``threshold_rule`` (or another ``key``, e.g. ``selection``) from its ``experiment.yaml`` (None
    without one)."""
    data = RunFolder(run_dir).read_experiment()
    rule = data.get(key) if data is not None else None
    return str(rule) if rule is not None else None


def split_by_selection(metrics: pd.DataFrame, scores: pd.DataFrame | None, rule: str
                       ) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame, pd.DataFrame | None]:
    """(main metrics, main scores, other metrics, other scores): the main table holds each method's rows under the
    experiment's checkpoint rule ``rule`` (``last`` or ``aucp``), or its ``last`` rows when the method has no such
    rows (it saves no checkpoints: its only model); every other row goes to the analysis table."""
    main_keys = set()
    for method, g in metrics.groupby("method", sort=False):
        sels = set(g["selection"].astype(str))
        main_keys.add((method, rule if rule in sels else "last"))

    def is_main(df: pd.DataFrame) -> pd.Series:
        return pd.Series([(m, str(s)) in main_keys for m, s in zip(df["method"], df["selection"])], index=df.index,
                         dtype=bool)

    mm = is_main(metrics)
    sm = is_main(scores) if scores is not None else None
    return (metrics[mm], scores[sm] if scores is not None else None,
            metrics[~mm], scores[~sm] if scores is not None else None)


def scores_of(scores: pd.DataFrame | None, dataset: str, setting: str, method: str, selection: str
               ) -> dict[int, pd.DataFrame]:
    """Finished seeds' scores of one table row: seed -> frame (id, subject, label, score), all finite."""
    if scores is None:
        return {}
    g = scores[(scores["dataset"] == dataset) & (scores["setting"] == setting) & (scores["method"] == method)
               & (scores["selection"] == selection)]
    out = {}
    for seed, gs in g.groupby("seed", sort=True):
        if len(gs) and np.all(np.isfinite(gs["score"].to_numpy())) and gs["label"].isin([0, 1]).all():
            out[int(seed)] = gs[[c for c in ("id", "subject", "cluster", "label", "score") if c in gs.columns]]
    return out


def level_arrays(frame: pd.DataFrame, level: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(keys, labels, scores, groups) at ``level``: subjects are aggregated by their mean score."""
    if level == "subject":
        agg = subject_scores(frame["subject"].to_numpy(), frame["label"].to_numpy(), frame["score"].to_numpy())
        return agg["subject"].to_numpy(), agg["label"].to_numpy(), agg["score"].to_numpy(), None
    col = "cluster" if "cluster" in frame.columns and frame["cluster"].notna().all() else "subject"
    groups = frame[col].to_numpy()
    multi = pd.Series(groups).duplicated().any()
    return frame["id"].to_numpy(), frame["label"].to_numpy(), frame["score"].to_numpy(), groups if multi else None

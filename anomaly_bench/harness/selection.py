"""Label-free checkpoint selection with the pseudo-AUC (AUCp; Brainomaly, Siddiquee et al. WACV 2024).

For each checkpoint a method saved during ``fit``, score the held-out parts of mixed set A and healthy
set B that no method trained on; AUCp = ROC AUC with A as positives and B as negatives. It needs no
labels: A simply contains some diseased images, B none, so a better detector ranks A above B more often.
The checkpoint with the highest AUCp is kept (ties: the later one). The same held-out healthy scoring gives each
checkpoint's training-health columns (``healthy_mae``, ``healthy_psnr``, ``healthy_ssim``: its reconstructions of
those images against the images, :mod:`anomaly_bench.evaluation.health`; NaN for a method without reconstructions)
and ``healthy_score_mean``, the mean anomaly score of those images (for ALAD its feature distance: the curve its
authors watch).

The released Brainomaly code computes its AUCp on the *test* folders; that reads test data for model
selection and is not done here. Test AUC per checkpoint is recorded only as an ``oracle`` column for
analysis, never used to choose.

This is a harness feature: any method that calls ``ctx.save_selection_checkpoint`` gets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from anomaly_bench.core.interface import AnomalyMethod
from anomaly_bench.evaluation.health import image_quality, nan_quality
from anomaly_bench.harness.scoring import HEALTH_MAX_IMAGES, as_image_array, score_images


@dataclass
class SelectionResult:
    table: pd.DataFrame  # iteration, checkpoint, aucp, oracle_test_auc, healthy_{mae,psnr,ssim,score_mean}
    best_iteration: int
    best_checkpoint: Path


def pseudo_auc(scores_mixed: np.ndarray, scores_healthy: np.ndarray) -> float:
    """ROC AUC of held-out A (positive) vs held-out B (negative) scores."""
    s = np.concatenate([scores_mixed, scores_healthy])
    if not np.all(np.isfinite(s)):
        return float("nan")
    y = np.r_[np.ones(len(scores_mixed)), np.zeros(len(scores_healthy))]
    return float(roc_auc_score(y, s))


def select_checkpoint(method: AnomalyMethod, checkpoints: list[tuple[int, Path]], holdout_mixed, holdout_healthy,
                      oracle_images=None, oracle_labels: np.ndarray | None = None) -> SelectionResult:
    """Score every checkpoint on the hold-out sets, pick the best AUCp and leave ``method`` loaded with it."""
    if not checkpoints:
        raise ValueError("select_checkpoint: the method saved no checkpoints (set checkpoint_every > 0)")
    if len(holdout_mixed) == 0 or len(holdout_healthy) == 0:
        raise ValueError("select_checkpoint: the hold-out parts of A and B are empty; set split.holdout_fraction > 0")
    rows = []
    for it, path in checkpoints:
        method.load_checkpoint(path)
        name = f"{method.name or type(method).__name__} checkpoint {it}"
        # A first, then B: the order scoring always had
        mixed = score_images(method, holdout_mixed, name, "held-out set A images", keep_maps=False,
                             keep_reconstructions=False)
        healthy = score_images(method, holdout_healthy, name, "held-out healthy images", keep_maps=False,
                               max_kept=HEALTH_MAX_IMAGES)
        aucp = pseudo_auc(mixed.scores, healthy.scores)
        rec = healthy.reconstructions
        quality = nan_quality() if rec is None else image_quality(rec, as_image_array(holdout_healthy)[:len(rec)])
        oracle = float("nan")
        if oracle_images is not None and oracle_labels is not None and len(set(oracle_labels.tolist())) == 2:
            s = score_images(method, oracle_images, name, "test images (oracle column)", keep_maps=False,
                             keep_reconstructions=False).scores
            if np.all(np.isfinite(s)):
                oracle = float(roc_auc_score(oracle_labels, s))
        rows.append({"iteration": it, "checkpoint": str(path), "aucp": aucp, "oracle_test_auc": oracle,
                     **{f"healthy_{k}": v for k, v in quality.items()},
                     "healthy_score_mean": float(np.mean(healthy.scores)) if len(healthy.scores) else float("nan")})
    table = pd.DataFrame(rows)
    valid = table[np.isfinite(table["aucp"])]
    if valid.empty:
        best = table.iloc[-1]
    else:
        best = valid.iloc[np.flatnonzero(valid["aucp"].to_numpy() == valid["aucp"].max())[-1]]
    method.load_checkpoint(best["checkpoint"])
    return SelectionResult(table, int(best["iteration"]), Path(best["checkpoint"]))

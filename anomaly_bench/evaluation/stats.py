"""Uncertainty and significance for ROC AUCs: stratified (cluster) bootstrap CIs, DeLong's test, Holm.

* :func:`bootstrap_auc_ci`: percentile bootstrap, resampling positives and negatives separately (so each
  replicate keeps the class sizes); with ``groups`` (subjects) whole subjects are resampled within their class
  (subject class = max label of its images), which keeps the correlation between slices of one subject.
  Every replicate's AUC is computed exactly (ties count 1/2) from weighted cumulative counts over the sorted
  scores, so no per-replicate sort is needed. The resampled images depend on labels, groups, order and seed only,
  so :func:`bootstrap_mean_auc_ci` can resample the same test images for every seed of a method and give the CI of
  the seed-averaged AUC that result tables print.
* :func:`delong_test`: DeLong, DeLong & Clarke-Pearson (1988) for two correlated AUCs on the same images, with
  the midrank algorithm of Sun & Xu (2014, IEEE SPL 21:1389). Two-sided p from the normal approximation.
  Images are treated as independent; with several slices per subject use subject scores.
* :func:`holm`: Holm (1979) step-down adjusted p-values for a family of comparisons.

These are not in the authors' code (the seed paper reports point estimates only).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from anomaly_bench.evaluation.metrics import _as_binary_labels, _check_two_classes


# --------------------------------------------------------------------------------------------- bootstrap
def _weighted_auc(w_pos: np.ndarray, w_neg: np.ndarray, run_starts: np.ndarray) -> np.ndarray:
    """AUCs of B weighted samples. ``w_pos``/``w_neg``: (B, n) weights of images sorted by score ascending;
    ``run_starts``: start index of each run of equal scores. Ties count 1/2."""
    p = np.add.reduceat(w_pos, run_starts, axis=1)  # (B, U) positive weight per distinct score
    q = np.add.reduceat(w_neg, run_starts, axis=1)
    below = np.cumsum(q, axis=1) - q  # negative weight strictly below each distinct score
    num = np.sum(p * (below + 0.5 * q), axis=1)
    den = p.sum(axis=1) * q.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def _resample_counts(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    """(n_boot, n) multiplicities of a simple bootstrap sample of n items."""
    if n == 0:
        return np.zeros((n_boot, 0), dtype=np.float64)
    idx = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def bootstrap_aucs(labels: Any, scores: Any, n_boot: int = 1000, seed: int = 0, groups: Any | None = None,
                   chunk: int = 250) -> np.ndarray:
    """The ``n_boot`` bootstrap replicate AUCs behind :func:`bootstrap_auc_ci` (same arguments).

    The resampling depends only on ``labels``, ``groups``, the input order and ``seed``, never on the scores:
    two score vectors of the same images in the same order get the same resampled images (paired replicates).
    """
    y = _as_binary_labels(labels)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != len(y):
        raise ValueError(f"labels ({len(y)}) and scores ({len(s)}) differ in length")
    _check_two_classes(y)
    if groups is None:
        unit = np.arange(len(y))
        unit_label = y.astype(bool)
    else:
        g = np.asarray(groups).reshape(-1)
        if len(g) != len(y):
            raise ValueError(f"groups ({len(g)}) and labels ({len(y)}) differ in length")
        _, unit = np.unique(g.astype(str), return_inverse=True)
        unit_label = np.zeros(unit.max() + 1, dtype=bool)
        np.logical_or.at(unit_label, unit, y.astype(bool))  # subject class = max label
    pos_units, neg_units = np.flatnonzero(unit_label), np.flatnonzero(~unit_label)

    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], y[order].astype(bool)
    unit_sorted = unit[order]
    run_starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        w_units = np.zeros((b, len(unit_label)), dtype=np.float64)
        w_units[:, pos_units] = _resample_counts(rng, b, len(pos_units))
        w_units[:, neg_units] = _resample_counts(rng, b, len(neg_units))
        w = w_units[:, unit_sorted]
        out[start:start + b] = _weighted_auc(w * y_sorted, w * ~y_sorted, run_starts)
    return out


def bootstrap_auc_ci(labels: Any, scores: Any, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                     groups: Any | None = None) -> tuple[float, float, float]:
    """(AUC, lower, upper): the AUC of all data and its ``1 - alpha`` percentile bootstrap interval.

    Stratified: positives and negatives (or, with ``groups``, positive and negative subjects) are resampled
    separately with replacement. Deterministic for a given ``seed``. Non-finite scores give (nan, nan, nan);
    a single class raises ``ValueError``.
    """
    y = _as_binary_labels(labels)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    _check_two_classes(y)
    if not np.all(np.isfinite(s)):
        return math.nan, math.nan, math.nan
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    auc = float(roc_auc_score(y, s))
    reps = bootstrap_aucs(y, s, n_boot=n_boot, seed=seed, groups=groups)
    reps = reps[np.isfinite(reps)]
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return auc, float(lo), float(hi)


def bootstrap_mean_auc_ci(labels_list: list, scores_list: list, n_boot: int = 1000, alpha: float = 0.05,
                          seed: int = 0, groups_list: list | None = None) -> tuple[float, float, float]:
    """(mean AUC, lower, upper) for the mean AUC over several runs (seeds) scored on test images.

    Every run is bootstrapped with the same ``seed``; runs that score the same images in the same order
    (sort them by image id) therefore get the same resampled images in every replicate, so the interval is that
    of the seed-averaged AUC under resampling of the test set (seed-to-seed variation is not in it).
    Non-finite scores in any run give (nan, nan, nan).
    """
    if len(labels_list) != len(scores_list) or not scores_list:
        raise ValueError("labels_list and scores_list must be non-empty lists of equal length")
    groups_list = groups_list if groups_list is not None else [None] * len(scores_list)
    aucs, reps = [], []
    for y, s, g in zip(labels_list, scores_list, groups_list):
        y = _as_binary_labels(y)
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        _check_two_classes(y)
        if not np.all(np.isfinite(s)):
            return math.nan, math.nan, math.nan
        aucs.append(float(roc_auc_score(y, s)))
        reps.append(bootstrap_aucs(y, s, n_boot=n_boot, seed=seed, groups=g))
    mean_reps = np.mean(reps, axis=0)
    mean_reps = mean_reps[np.isfinite(mean_reps)]
    lo, hi = np.quantile(mean_reps, [alpha / 2, 1 - alpha / 2])
    return float(np.mean(aucs)), float(lo), float(hi)


# --------------------------------------------------------------------------------------------- DeLong
def _midrank(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based, ties get the mean of their ranks) along the last axis."""
    order = np.argsort(x, axis=-1, kind="stable")
    xs = np.take_along_axis(x, order, axis=-1)
    out = np.empty_like(xs, dtype=np.float64)
    for r in range(xs.shape[0]):  # k rows (models): small
        v = xs[r]
        starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
        ends = np.r_[starts[1:], len(v)]
        mid = 0.5 * (starts + ends - 1) + 1.0
        ranks_sorted = np.repeat(mid, ends - starts)
        out[r, order[r]] = ranks_sorted
    return out


def delong_components(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """(aucs (k,), covariance (k, k)) of k score vectors on the same images (``scores`` shape (k, n) or (n,)).

    Fast DeLong (Sun & Xu 2014): structural components from midranks of positives, negatives and both.
    """
    y = _as_binary_labels(labels).astype(bool)
    m, n = _check_two_classes(y.astype(np.int64))
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if s.shape[1] != len(y):
        raise ValueError(f"scores have {s.shape[1]} columns but there are {len(y)} labels")
    x, z = s[:, y], s[:, ~y]  # positives (m), negatives (n)
    tx, tz, t = _midrank(x), _midrank(z), _midrank(np.concatenate([x, z], axis=1))
    aucs = (t[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    v10 = (t[:, :m] - tx) / n  # placement of each positive among the negatives
    v01 = 1.0 - (t[:, m:] - tz) / m  # placement of each negative among the positives
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(s), len(s)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(s), len(s)))
    return aucs, s10 / m + s01 / n


def delong_variance(labels: Any, scores: Any) -> tuple[float, float]:
    """(AUC, DeLong variance of the AUC) of one score vector."""
    aucs, cov = delong_components(labels, np.asarray(scores, dtype=np.float64).reshape(1, -1))
    return float(aucs[0]), float(cov[0, 0])


def delong_test(labels: Any, scores_a: Any, scores_b: Any) -> tuple[float, float, float, float]:
    """DeLong's test of two correlated AUCs measured on the same images: (auc_a, auc_b, z, p), two-sided.

    ``z = (auc_a - auc_b) / sqrt(var_a + var_b - 2 cov_ab)``. Identical score rankings give z = 0, p = 1.
    Non-finite scores give NaNs; a single class raises ``ValueError``.
    """
    a = np.asarray(scores_a, dtype=np.float64).reshape(-1)
    b = np.asarray(scores_b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"scores_a ({a.size}) and scores_b ({b.size}) must score the same images")
    y = _as_binary_labels(labels)
    _check_two_classes(y)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return math.nan, math.nan, math.nan, math.nan
    aucs, cov = delong_components(y, np.vstack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    scale = max(1.0, abs(float(cov[0, 0])), abs(float(cov[1, 1])))
    if var <= 1e-15 * scale:
        z = 0.0 if abs(diff) < 1e-12 else math.copysign(math.inf, diff)
    else:
        z = diff / math.sqrt(var)
    p = float(2.0 * norm.sf(abs(z)))
    return float(aucs[0]), float(aucs[1]), float(z), p


# --------------------------------------------------------------------------------------------- Holm
def holm(pvalues: Any) -> np.ndarray:
    """Holm step-down adjusted p-values (same order as the input). NaNs stay NaN and do not count in the family.

    adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)) for the sorted p_(1) <= ... <= p_(m).
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok) == 0:
        return out
    mm = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, (mm - np.arange(mm)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


holm_correction = holm

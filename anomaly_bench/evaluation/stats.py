"""Uncertainty and significance for ROC AUCs: stratified (cluster) bootstrap CIs, DeLong's test, Holm.

* :func:`bootstrap_auc_ci`: percentile bootstrap, resampling positives and negatives separately (so each
  replicate keeps the class sizes); with ``groups`` (subjects) whole subjects are resampled within their class
  (subject class = max label of its images), which keeps the correlation between slices of one subject.
  Every replicate's AUC is computed exactly (ties count 1/2) from weighted cumulative counts over the sorted
  scores, so no per-replicate sort is needed. The resampled images depend on labels, groups, order and seed only
  (:func:`paired_bootstrap_aucs` scores several vectors of the same images under one resample).
* :func:`bootstrap_mean_auc_ci` (:func:`hierarchical_mean_aucs`): CI of the mean AUC over seeds by a two-level
  bootstrap: seeds with replacement, then each drawn seed's test images (clusters) within that seed; it covers
  seed-to-seed variation and test-set sampling. One seed: images only.
* :func:`paired_mean_auc_test`: paired hierarchical bootstrap of the mean AUC difference of two methods over
  their common seeds (same seed draw, same image clusters within a seed for both); two-sided bootstrap p
  (:func:`bootstrap_p_value`).
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


def _units(y: np.ndarray, groups: Any | None) -> tuple[np.ndarray, np.ndarray]:
    """(unit index of each image, class of each unit): the clusters the bootstrap resamples. Without ``groups``
    each image is its own unit; with them a unit is a group (subject), of class max label of its images."""
    if groups is None:
        return np.arange(len(y)), y.astype(bool)
    g = np.asarray(groups).reshape(-1)
    if len(g) != len(y):
        raise ValueError(f"groups ({len(g)}) and labels ({len(y)}) differ in length")
    _, unit = np.unique(g.astype(str), return_inverse=True)
    unit_label = np.zeros(unit.max() + 1, dtype=bool)
    np.logical_or.at(unit_label, unit, y.astype(bool))  # subject class = max label
    return unit, unit_label


def _unit_weight_chunks(unit_label: np.ndarray, n_boot: int, seed: int, chunk: int) -> list[np.ndarray]:
    """Stratified resample of the units: (b, n_units) multiplicities per chunk of replicates, positive and
    negative units drawn separately with replacement (so each replicate keeps the class sizes)."""
    pos_units, neg_units = np.flatnonzero(unit_label), np.flatnonzero(~unit_label)
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        w_units = np.zeros((b, len(unit_label)), dtype=np.float64)
        w_units[:, pos_units] = _resample_counts(rng, b, len(pos_units))
        w_units[:, neg_units] = _resample_counts(rng, b, len(neg_units))
        out.append(w_units)
    return out


def _aucs_under_weights(y: np.ndarray, s: np.ndarray, unit: np.ndarray, chunks: list[np.ndarray]) -> np.ndarray:
    """Replicate AUCs of one score vector under the given unit multiplicities."""
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted, unit_sorted = s[order], y[order].astype(bool), unit[order]
    run_starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    out = []
    for w_units in chunks:
        w = w_units[:, unit_sorted]
        out.append(_weighted_auc(w * y_sorted, w * ~y_sorted, run_starts))
    return np.concatenate(out) if out else np.empty(0)


def _checked(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _as_binary_labels(labels)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != len(y):
        raise ValueError(f"labels ({len(y)}) and scores ({len(s)}) differ in length")
    _check_two_classes(y)
    return y, s


def bootstrap_aucs(labels: Any, scores: Any, n_boot: int = 1000, seed: int = 0, groups: Any | None = None,
                   chunk: int = 250) -> np.ndarray:
    """The ``n_boot`` bootstrap replicate AUCs behind :func:`bootstrap_auc_ci` (same arguments).

    The resampling depends only on ``labels``, ``groups``, the input order and ``seed``, never on the scores:
    two score vectors of the same images in the same order get the same resampled images (paired replicates).
    """
    return paired_bootstrap_aucs(labels, [scores], n_boot=n_boot, seed=seed, groups=groups, chunk=chunk)[0]


def paired_bootstrap_aucs(labels: Any, scores_list: list, n_boot: int = 1000, seed: int = 0,
                          groups: Any | None = None, chunk: int = 250) -> np.ndarray:
    """(k, n_boot) replicate AUCs of k score vectors of the same images, all under the same resampled images
    (the stratified cluster resample of :func:`bootstrap_aucs`, drawn once). Row i equals
    ``bootstrap_aucs(labels, scores_list[i], ...)``."""
    y = _as_binary_labels(labels)
    pairs = [_checked(y, s) for s in scores_list]
    unit, unit_label = _units(y, groups)
    chunks = _unit_weight_chunks(unit_label, n_boot, seed, chunk)
    return np.stack([_aucs_under_weights(y, s, unit, chunks) for _, s in pairs])


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
    return (auc,) + _percentile(reps, alpha)


def _percentile(reps: np.ndarray, alpha: float) -> tuple[float, float]:
    reps = reps[np.isfinite(reps)]
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------- over seeds
def seed_draws(n_seeds: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n_seeds) indices of the seeds drawn (with replacement) in each replicate. Its own random stream
    (``default_rng([seed, 1])``), separate from the image resample's; one seed: always that seed."""
    if n_seeds == 1:
        return np.zeros((n_boot, 1), dtype=np.int64)
    return np.random.default_rng([seed, 1]).integers(0, n_seeds, size=(n_boot, n_seeds))


def _mean_over_drawn_seeds(reps: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Replicate b's mean over its drawn seeds of that seed's replicate-b value; ``reps`` (n_seeds, n_boot)."""
    return reps[draws, np.arange(draws.shape[0])[:, None]].mean(axis=1)


def hierarchical_mean_aucs(labels_list: list, scores_list: list, n_boot: int = 1000, seed: int = 0,
                           groups_list: list | None = None) -> tuple[float, np.ndarray]:
    """(mean AUC over seeds, its ``n_boot`` hierarchical bootstrap replicates).

    Two levels: each replicate draws ``k`` of the ``k`` seeds with replacement (:func:`seed_draws`), and each
    drawn seed's test images are resampled within that seed (stratified, by cluster when ``groups`` are given:
    :func:`bootstrap_aucs`); the replicate is the mean AUC of the drawn seeds. Every seed's images are resampled
    with the same stream (``seed``), so seeds with the same test images in the same order get the same
    resampled images, and a seed drawn twice in one replicate enters with the same image resample twice.
    """
    if len(labels_list) != len(scores_list) or not scores_list:
        raise ValueError("labels_list and scores_list must be non-empty lists of equal length")
    groups_list = groups_list if groups_list is not None else [None] * len(scores_list)
    aucs, reps = [], []
    for y, s, g in zip(labels_list, scores_list, groups_list):
        y, s = _checked(y, s)
        if not np.all(np.isfinite(s)):
            return math.nan, np.full(n_boot, math.nan)
        aucs.append(float(roc_auc_score(y, s)))
        reps.append(bootstrap_aucs(y, s, n_boot=n_boot, seed=seed, groups=g))
    draws = seed_draws(len(reps), n_boot, seed)
    return float(np.mean(aucs)), _mean_over_drawn_seeds(np.stack(reps), draws)


def bootstrap_mean_auc_ci(labels_list: list, scores_list: list, n_boot: int = 1000, alpha: float = 0.05,
                          seed: int = 0, groups_list: list | None = None) -> tuple[float, float, float]:
    """(mean AUC, lower, upper) for the mean AUC over several runs (seeds), each scored on its own test images.

    Percentile interval of :func:`hierarchical_mean_aucs`: seeds and, within each drawn seed, its test images
    (clusters) are resampled, so the interval covers seed-to-seed variation and test-set sampling. One seed:
    images only, equal to :func:`bootstrap_auc_ci`. Non-finite scores in any run give (nan, nan, nan).
    """
    mean, reps = hierarchical_mean_aucs(labels_list, scores_list, n_boot=n_boot, seed=seed, groups_list=groups_list)
    if not np.isfinite(mean):
        return math.nan, math.nan, math.nan
    return (mean,) + _percentile(reps, alpha)


def bootstrap_p_value(reps: np.ndarray) -> float:
    """Two-sided bootstrap p of "the difference is 0": ``2 min(P(d < 0) + P(d = 0)/2, P(d > 0) + P(d = 0)/2)``,
    each tail with the +1 correction ``(1 + count) / (1 + B)``, capped at 1 (NaN replicates dropped)."""
    d = reps[np.isfinite(reps)]
    if len(d) == 0:
        return math.nan
    ties = 0.5 * np.count_nonzero(d == 0)
    lower = (1 + np.count_nonzero(d < 0) + ties) / (1 + len(d))
    upper = (1 + np.count_nonzero(d > 0) + ties) / (1 + len(d))
    return float(min(1.0, 2 * min(lower, upper)))


def paired_mean_auc_test(labels_list: list, scores_a_list: list, scores_b_list: list, n_boot: int = 1000,
                         seed: int = 0, groups_list: list | None = None) -> tuple[float, float]:
    """(mean over seeds of AUC_a − AUC_b, two-sided p): paired hierarchical bootstrap over the common seeds.

    Entry i of each list is one seed, with a and b scoring the same images in the same order. Each replicate
    draws seeds with replacement (:func:`seed_draws`, the same draw for a and b) and, within a drawn seed,
    resamples its image clusters once for both a and b (:func:`paired_bootstrap_aucs`); the replicate is the
    mean over drawn seeds of the difference, and p is :func:`bootstrap_p_value` of the replicates. With few
    seeds the seed level is coarse: k seeds cannot give p much below ``k ** -k`` when one seed shows no
    difference. Non-finite scores give (nan, nan).
    """
    if not (len(labels_list) == len(scores_a_list) == len(scores_b_list)) or not labels_list:
        raise ValueError("labels_list, scores_a_list and scores_b_list must be non-empty lists of equal length")
    groups_list = groups_list if groups_list is not None else [None] * len(labels_list)
    diffs, reps = [], []
    for y, a, b, g in zip(labels_list, scores_a_list, scores_b_list, groups_list):
        y, a = _checked(y, a)
        _, b = _checked(y, b)
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            return math.nan, math.nan
        diffs.append(float(roc_auc_score(y, a) - roc_auc_score(y, b)))
        ra, rb = paired_bootstrap_aucs(y, [a, b], n_boot=n_boot, seed=seed, groups=g)
        reps.append(ra - rb)
    d = _mean_over_drawn_seeds(np.stack(reps), seed_draws(len(reps), n_boot, seed))
    return float(np.mean(diffs)), bootstrap_p_value(d)


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

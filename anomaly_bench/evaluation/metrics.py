"""Image-, subject- and pixel-level metrics for anomaly scores (higher score = more anomalous).

What follows the authors' code and where we deviate
----------------------------------------------------
* AUC is scikit-learn's ``roc_auc_score`` (the HealthyGAN / Brainomaly code uses ``auc(roc_curve(...))``,
  which is the same number).
* Thresholds for precision / recall / specificity / F1:

  - ``"equal_error"`` is the official HealthyGAN ``Solver.Find_Optimal_Cutoff``: on the points of
    ``sklearn.metrics.roc_curve(labels, scores)`` (default ``drop_intermediate=True``) take the point whose
    ``tpr - (1 - fpr)`` is closest to 0. The official code takes the first point of pandas' ``argsort``; we take
    the first point in ``roc_curve`` order (highest threshold) among exact ties, which is what that argsort
    returns for the short arrays the authors used and is deterministic for all lengths.
  - ``"youden"`` (our default) maximises Youden's J = TPR - FPR. Ties: the highest threshold wins (the first
    maximum in ``roc_curve`` order, i.e. the fewest images called anomalous).
  - a float: a fixed threshold.
  - ``"holdout_healthy"`` (the runner's default, :data:`LABEL_FREE_RULE`): no test label is used. The job scores
    the held-out healthy images (split role ``holdout_healthy``, never trained on) and puts the
    ``threshold_specificity`` quantile of those scores (default 0.95) in the scores table's ``threshold`` column
    (``subject_threshold`` for subject-mean scores); :func:`compute_metrics` reads it from there. The two rules
    above pick the threshold on the evaluated (test) images themselves, so their precision / recall /
    specificity / F1 are optimistic; whatever the rule, ``oracle_threshold`` and ``oracle_f1`` give Youden's
    test-tuned figure, labelled as an oracle in the reports.

  In every case an image is called anomalous when ``score >= threshold``; this is the convention of
  ``roc_curve`` and of the official code (``meanp >= thmean``).
  The seed paper does not say which rule its Table 1 used; pass ``threshold_rule="equal_error"`` to follow the
  authors' code.
* Precision with no predicted positives is 0 (scikit-learn's ``zero_division=0`` convention), so is F1.
* Subject scores are the mean of the subject's slice scores (Brainomaly / seed paper migraine protocol); the
  subject label is the maximum of its slice labels.
* Non-finite scores (NaN for a failed job, +/-inf from a diverged model) give NaN metrics and
  ``n_nonfinite > 0`` instead of an exception, so one failed job never stops a report.
* Pixel metrics pool all pixels of all images (like anomalib's pixel AUROC); best Dice is the maximum over all
  distinct thresholds of the pooled Dice 2TP / (2TP + FP + FN), computed exactly from cumulative counts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

THRESHOLD_RULES = ("youden", "equal_error")
#: The label-free rule: the threshold comes with the scores (``threshold`` column), from held-out healthy images.
LABEL_FREE_RULE = "holdout_healthy"
#: Every rule an experiment may name.
ALL_THRESHOLD_RULES = (LABEL_FREE_RULE, *THRESHOLD_RULES)

#: Metrics returned by :func:`image_metrics`, in table order.
IMAGE_METRICS = ("auc", "ap", "threshold", "precision", "recall", "specificity", "f1", "accuracy",
                 "oracle_threshold", "oracle_f1", "n_pos", "n_neg", "n_nonfinite")

#: Columns of the long-form metrics table written by :func:`compute_metrics`.
GROUP_COLUMNS = ("dataset", "setting", "method", "selection", "seed")
METRICS_COLUMNS = (*GROUP_COLUMNS, "level", "metric", "value")


def _as_binary_labels(labels: Any) -> np.ndarray:
    y = np.asarray(labels).reshape(-1)
    if y.dtype == bool:
        return y.astype(np.int64)
    yf = y.astype(np.float64)
    if not np.all(np.isin(yf, (0.0, 1.0))):
        bad = sorted(set(np.unique(yf[~np.isin(yf, (0.0, 1.0))]).tolist()))[:5]
        raise ValueError(f"labels must be 0 (healthy) or 1 (diseased); found {bad}")
    return yf.astype(np.int64)


def _check_two_classes(y: np.ndarray, what: str = "labels") -> tuple[int, int]:
    n_pos = int(y.sum())
    n_neg = int(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        only = "healthy (0)" if n_pos == 0 else "diseased (1)"
        raise ValueError(f"{what}: only one class present ({len(y)} images, all {only}); AUC, sensitivity and "
                         "specificity need both healthy and diseased images in the evaluated set")
    return n_pos, n_neg


def select_threshold(labels: Any, scores: Any, rule: str | float = "youden") -> float:
    """The decision threshold of ``rule`` (see the module docstring); anomalous means ``score >= threshold``.

    Scores must be finite and both classes present.
    """
    if not isinstance(rule, str):
        return float(rule)
    y = _as_binary_labels(labels)
    _check_two_classes(y)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    fpr, tpr, thr = roc_curve(y, s)
    if rule == "youden":
        idx = int(np.argmax(tpr - fpr))  # first maximum = highest threshold among ties
    elif rule == "equal_error":
        idx = int(np.argmin(np.abs(tpr - (1.0 - fpr))))  # Find_Optimal_Cutoff; first minimum among ties
    else:
        raise ValueError(f"threshold_rule must be one of {THRESHOLD_RULES} or a number, got {rule!r}")
    t = float(thr[idx])
    if math.isinf(t):  # roc_curve's first point (nothing called anomalous): use a reachable threshold
        t = float(np.nextafter(s.max(), np.inf))
    return t


def confusion_at(labels: Any, scores: Any, threshold: float) -> tuple[int, int, int, int]:
    """(tp, fp, tn, fn) with ``score >= threshold`` called anomalous."""
    y = _as_binary_labels(labels).astype(bool)
    pred = np.asarray(scores, dtype=np.float64).reshape(-1) >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    tn = int(np.sum(~pred & ~y))
    fn = int(np.sum(~pred & y))
    return tp, fp, tn, fn


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else 0.0


def image_metrics(labels: Any, scores: Any, threshold_rule: str | float = "youden") -> dict[str, float]:
    """AUC, AP and the threshold metrics of one set of scores.

    Returns a dict with keys :data:`IMAGE_METRICS`: ``auc`` (``roc_auc_score``), ``ap``
    (``average_precision_score``), ``threshold`` (from ``threshold_rule``), ``precision``, ``recall``
    (= sensitivity), ``specificity``, ``f1``, ``accuracy``, ``n_pos``, ``n_neg`` and ``n_nonfinite``.

    Raises ``ValueError`` when only one class is present. Non-finite scores do not raise: every score-derived
    metric is NaN and ``n_nonfinite`` counts the offending scores.
    """
    y = _as_binary_labels(labels)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != len(y):
        raise ValueError(f"labels ({len(y)}) and scores ({len(s)}) differ in length")
    n_pos, n_neg = _check_two_classes(y)
    if isinstance(threshold_rule, str) and threshold_rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold_rule must be one of {THRESHOLD_RULES} or a number, got {threshold_rule!r}")
    n_bad = int(np.sum(~np.isfinite(s)))
    out: dict[str, float] = {k: math.nan for k in IMAGE_METRICS}
    out.update(n_pos=float(n_pos), n_neg=float(n_neg), n_nonfinite=float(n_bad))
    if n_bad:
        return out
    out.update(auc=float(roc_auc_score(y, s)), ap=float(average_precision_score(y, s)))
    oracle = select_threshold(y, s, "youden")
    out.update(oracle_threshold=oracle, oracle_f1=_at_threshold(y, s, oracle)["f1"])
    thr = select_threshold(y, s, threshold_rule) if isinstance(threshold_rule, str) else float(threshold_rule)
    if math.isfinite(thr):
        out.update(threshold=thr, **_at_threshold(y, s, thr))
    return out


def _at_threshold(y: np.ndarray, s: np.ndarray, thr: float) -> dict[str, float]:
    tp, fp, tn, fn = confusion_at(y, s, thr)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"precision": precision, "recall": recall, "specificity": _ratio(tn, tn + fp),
            "f1": _ratio(2 * precision * recall, precision + recall), "accuracy": (tp + tn) / len(y)}


def label_free_threshold(healthy_scores: Any, specificity: float = 0.95) -> float:
    """The ``holdout_healthy`` threshold: the ``specificity`` quantile of held-out healthy scores (numpy's
    ``higher`` method, an observed score), so that about that fraction of held-out healthy images score below
    it (``score >= threshold`` = anomalous). NaN without finite scores. Uses no test image and no label."""
    h = np.asarray(healthy_scores, dtype=np.float64).reshape(-1)
    h = h[np.isfinite(h)]
    if not 0.0 < specificity < 1.0:
        raise ValueError(f"threshold_specificity must be in (0, 1), got {specificity!r}")
    if len(h) == 0:
        return math.nan
    return float(np.quantile(h, specificity, method="higher"))


def subject_scores(subjects: Any, labels: Any, scores: Any) -> pd.DataFrame:
    """Per-subject aggregate: columns ``subject``, ``score`` (mean of its image scores; NaN if any is NaN),
    ``label`` (max of its image labels) and ``n_images``; one row per subject in first-appearance order."""
    df = pd.DataFrame({"subject": np.asarray(subjects).reshape(-1),
                       "label": _as_binary_labels(labels),
                       "score": np.asarray(scores, dtype=np.float64).reshape(-1)})
    # skipna=False: a subject with a failed slice has no score rather than a biased one
    g = df.groupby("subject", sort=False)
    out = pd.DataFrame({
        "score": g["score"].agg(lambda v: v.mean(skipna=False)),
        "label": g["label"].max(),
        "n_images": g.size(),
    }).reset_index()
    return out


def subject_metrics(subjects: Any, labels: Any, scores: Any, threshold_rule: str | float = "youden"
                    ) -> dict[str, float]:
    """:func:`image_metrics` on the subject aggregates of :func:`subject_scores`."""
    agg = subject_scores(subjects, labels, scores)
    return image_metrics(agg["label"].to_numpy(), agg["score"].to_numpy(), threshold_rule)


def has_multi_image_subjects(subjects: Any, ids: Any | None = None) -> bool:
    """True when some subject owns more than one image (the subject level then differs from the image level)."""
    subj = pd.Series(np.asarray(subjects).reshape(-1))
    if ids is not None:
        pairs = pd.DataFrame({"s": subj.to_numpy(), "i": np.asarray(ids).reshape(-1)}).drop_duplicates()
        return bool(pairs["s"].duplicated().any())
    return bool(subj.duplicated().any())


# --------------------------------------------------------------------------------------------- pixels
def _pooled_pixels(maps: Any, masks: Any, max_pixels: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(maps, dtype=np.float64).reshape(-1)
    g = np.asarray(masks).astype(bool).reshape(-1)
    if m.shape != g.shape:
        raise ValueError(f"maps {np.shape(maps)} and masks {np.shape(masks)} hold different numbers of pixels")
    if max_pixels is not None and m.size > max_pixels:
        # deterministic uniform subsample (keeps the prevalence of anomalous pixels in expectation)
        idx = np.sort(np.random.default_rng(seed).choice(m.size, size=max_pixels, replace=False))
        m, g = m[idx], g[idx]
    return m, g


def best_dice(scores: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(best Dice, its threshold) over all distinct thresholds, pixel ``>= threshold`` = anomalous.

    Exact: sort once, cumulative true-positive counts at the end of each run of equal scores.
    """
    truth = truth.astype(bool)
    n_true = int(truth.sum())
    if n_true == 0:
        return math.nan, math.nan
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    t = truth[order]
    tp = np.cumsum(t, dtype=np.int64)
    n_pred = np.arange(1, len(s) + 1, dtype=np.int64)
    last_of_run = np.r_[s[1:] != s[:-1], True]
    tp, n_pred, thr = tp[last_of_run], n_pred[last_of_run], s[last_of_run]
    dice = 2.0 * tp / (n_pred + n_true)
    k = int(np.argmax(dice))
    return float(dice[k]), float(thr[k])


def pixel_metrics(maps: Any, masks: Any, max_pixels: int | None = 4_000_000, seed: int = 0) -> dict[str, float]:
    """Pooled pixel AUROC and best Dice of anomaly ``maps`` (K, H, W) against boolean ``masks`` (K, H, W).

    More than ``max_pixels`` pixels are subsampled uniformly with a fixed ``seed`` (deterministic).
    Returns ``{"pixel_auroc", "best_dice", "dice_threshold", "n_pixels", "n_anomalous_pixels"}``;
    ``pixel_auroc`` is NaN when the masks hold only one class, every score is NaN when a map is non-finite.
    """
    m, g = _pooled_pixels(maps, masks, max_pixels, seed)
    out = {"pixel_auroc": math.nan, "best_dice": math.nan, "dice_threshold": math.nan,
           "n_pixels": float(m.size), "n_anomalous_pixels": float(g.sum())}
    if not np.all(np.isfinite(m)):
        return out
    if 0 < g.sum() < g.size:
        out["pixel_auroc"] = float(roc_auc_score(g, m))
    out["best_dice"], out["dice_threshold"] = best_dice(m, g)
    return out


# --------------------------------------------------------------------------------------------- tables
def _normalise_scores_df(scores_df: pd.DataFrame) -> pd.DataFrame:
    df = scores_df.copy()
    required = {"dataset", "method", "label", "score"}
    missing = sorted(required - set(df.columns))
    if missing:
        raise ValueError(f"scores table lacks column(s) {missing}; it needs at least {sorted(required)}")
    defaults = {"setting": "inductive", "selection": "last", "seed": 0}
    for col, val in defaults.items():
        if col not in df.columns:
            df[col] = val
    if "id" not in df.columns:
        df["id"] = np.arange(len(df))
    if "subject" not in df.columns:
        df["subject"] = df["id"]
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    df["seed"] = df["seed"].astype(int)
    return df


def _failed_metrics(g: pd.DataFrame, subjects: np.ndarray | None) -> dict[str, float]:
    """NaN metrics of a job with no finite score (the runner writes one placeholder row, label -1, for a
    failed job); class counts only from rows that carry a real label."""
    lab = pd.to_numeric(g["label"], errors="coerce").to_numpy(dtype=np.float64)
    real = np.isin(lab, (0.0, 1.0))
    if subjects is not None and real.any():
        agg = pd.DataFrame({"s": subjects[real], "y": lab[real]}).groupby("s")["y"].max().to_numpy()
        n_pos, n_neg, n_bad = float(agg.sum()), float(len(agg) - agg.sum()), float(len(agg))
    else:
        n_pos, n_neg, n_bad = float(lab[real].sum()), float(real.sum() - lab[real].sum()), float(len(g))
    out = {k: math.nan for k in IMAGE_METRICS}
    out.update(n_pos=n_pos, n_neg=n_neg, n_nonfinite=n_bad)
    return out


def _group_rule(g: pd.DataFrame, threshold_rule: str | float, level: str) -> str | float:
    """The threshold rule for one job's scores: ``holdout_healthy`` becomes the job's own label-free threshold
    (its ``threshold`` / ``subject_threshold`` column; NaN when the job has none, e.g. no healthy hold-out)."""
    if threshold_rule != LABEL_FREE_RULE:
        return threshold_rule
    col = "subject_threshold" if level == "subject" else "threshold"
    if col not in g.columns:
        return math.nan
    vals = pd.to_numeric(g[col], errors="coerce").dropna().unique()
    return float(vals[0]) if len(vals) == 1 else math.nan


def compute_metrics(scores_df: pd.DataFrame, threshold_rule: str | float = "youden") -> pd.DataFrame:
    """Long-form metrics of a long-form scores table (one row per scored image).

    Input columns: ``dataset, setting, method, selection, seed, id, subject, label, score`` (plus ``threshold``
    and ``subject_threshold`` for the ``holdout_healthy`` rule). Output columns:
    ``dataset, setting, method, selection, seed, level, metric, value`` with ``level`` ``image`` and, for a
    dataset/setting where some subject owns several images, ``subject``. A job whose scores are NaN yields NaN
    values (and ``n_nonfinite`` > 0), never an exception, also for the runner's placeholder row of a failed job
    (label -1, score NaN); a finished job whose images hold a single class raises ``ValueError`` naming the group.
    """
    df = _normalise_scores_df(scores_df)
    rows: list[tuple] = []
    for (dataset, setting), block in df.groupby(["dataset", "setting"], sort=False):
        subject_level = has_multi_image_subjects(block["subject"], block["id"]) if len(block) else False
        for key, g in block.groupby(["method", "selection", "seed"], sort=False):
            gkey = (dataset, setting, *key)
            where = "dataset={}, setting={}, method={}, selection={}, seed={}".format(*gkey)
            levels = [("image", None)]
            if subject_level:
                levels.append(("subject", g["subject"].to_numpy()))
            for level, subj in levels:
                if not np.isfinite(g["score"].to_numpy(dtype=np.float64)).any():
                    rows.extend((*gkey, level, name, val) for name, val in _failed_metrics(g, subj).items())
                    continue
                rule = _group_rule(g, threshold_rule, level)
                try:
                    if subj is None:
                        res = image_metrics(g["label"].to_numpy(), g["score"].to_numpy(), rule)
                    else:
                        res = subject_metrics(subj, g["label"].to_numpy(), g["score"].to_numpy(), rule)
                except ValueError as exc:
                    raise ValueError(f"{where}, level={level}: {exc}") from None
                rows.extend((*gkey, level, name, float(val)) for name, val in res.items())
    out = pd.DataFrame(rows, columns=list(METRICS_COLUMNS))
    out["seed"] = out["seed"].astype(int)
    return out

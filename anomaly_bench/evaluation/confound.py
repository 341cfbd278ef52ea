"""Confound check: how well a trivial, label-free image statistic separates a test set's classes.

When healthy and diseased images come from different sources (scanners, sites, public sets merged into one),
statistics that know nothing about pathology — mean brightness, contrast — can separate the classes. A method's
AUC then partly measures acquisition. This module scores every test image with a fixed set of statistics and
reports each one's AUC, so a reader can see how far a no-training baseline gets.

The statistics (:data:`STATISTICS`), per image of values in ``[-1, 1]``:

* ``mean``: mean intensity;
* ``sd``: intensity standard deviation;
* ``entropy``: Shannon entropy (bits) of the image's histogram over ``[-1, 1]`` in :data:`ENTROPY_BINS` bins;
* ``background``: fraction of pixels within :data:`BACKGROUND_TOL` of the image's own minimum.

AUCs are taken with the statistic as the anomaly score (higher = diseased), so an AUC well *below* 0.5 means the
healthy images have the higher statistic: flipping its sign separates the classes at ``1 - AUC``. A statistic
warns when ``|AUC - 0.5| >`` :data:`WARN_MARGIN`. Costs no training; the runner records it per seed in
``run.json`` (``datasets.<name>.confound.<seed>``) and the table notes print it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from sklearn.metrics import roc_auc_score

from anomaly_bench.core.image_array import ImageArray

#: statistic key -> the words a reader sees
STATISTICS: dict[str, str] = {"mean": "mean intensity", "sd": "intensity sd", "entropy": "intensity entropy",
                              "background": "background fraction"}
#: histogram bins over [-1, 1] for ``entropy``
ENTROPY_BINS = 64
#: ``background``: pixels at most this far above the image's minimum (5 % of the [-1, 1] range)
BACKGROUND_TOL = 0.1
#: working memory of :func:`trivial_statistics` on an ImageArray (its images are read in chunks of this size)
CHUNK_BYTES = 64 * 2**20
#: a statistic warns when its AUC is further than this from 0.5
WARN_MARGIN = 0.15


def _flat(images: Any) -> np.ndarray:
    x = np.asarray(images, dtype=np.float32)
    if x.ndim < 2:
        raise ValueError(f"images must be (N, ...) with at least one pixel each, got shape {x.shape}")
    return x.reshape(len(x), -1)


def trivial_statistics(images: Any) -> dict[str, np.ndarray]:
    """Per-image arrays of every statistic of :data:`STATISTICS` for ``images`` ((N, 1, H, W) or (N, H, W),
    values in [-1, 1]; a torch tensor, an array or an :class:`ImageArray`, read in chunks of bounded memory)."""
    if isinstance(images, ImageArray):  # ~20 working bytes per pixel (int64 bins twice)
        step = max(1, CHUNK_BYTES // (20 * int(np.prod(images.shape[1:]))))
        parts = [trivial_statistics(images[lo:lo + step]) for lo in range(0, len(images), step)] or \
            [trivial_statistics(np.zeros((0, 1), np.float32))]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    x = _flat(images)
    n, p = x.shape
    bins = np.clip(np.floor((x + 1.0) * (ENTROPY_BINS / 2.0)), 0, ENTROPY_BINS - 1).astype(np.int64)
    counts = np.bincount((bins + np.arange(n)[:, None] * ENTROPY_BINS).ravel(),
                         minlength=n * ENTROPY_BINS).reshape(n, ENTROPY_BINS)
    prob = counts / float(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(prob > 0, prob * np.log2(prob), 0.0).sum(axis=1)
    return {"mean": x.mean(axis=1, dtype=np.float64),
            "sd": x.std(axis=1, dtype=np.float64),
            "entropy": entropy,
            "background": (x <= x.min(axis=1, keepdims=True) + BACKGROUND_TOL).mean(axis=1)}


def is_warning(auc: float) -> bool:
    return bool(np.isfinite(auc) and abs(auc - 0.5) > WARN_MARGIN)


def confound_aucs(images: Any, labels: Any) -> dict[str, dict[str, Any]]:
    """``{statistic: {"auc", "separation", "warn"}}`` on one labelled set (1 = diseased): the AUC of the
    statistic as an anomaly score, ``separation = max(auc, 1 - auc)``, and whether it is far from 0.5.
    With one class only the AUC is NaN and nothing warns."""
    y = np.asarray(labels).reshape(-1)
    stats = trivial_statistics(images)
    if len(y) != len(stats["mean"]):
        raise ValueError(f"{len(y)} labels for {len(stats['mean'])} images")
    two_classes = len(np.unique(y)) == 2
    out = {}
    for key, values in stats.items():
        auc = float(roc_auc_score(y, values)) if two_classes else float("nan")
        out[key] = {"auc": auc, "separation": max(auc, 1.0 - auc) if two_classes else float("nan"),
                    "warn": is_warning(auc)}
    return out


def confound_record(images: Any, labels: Any) -> dict[str, Any]:
    """The small form ``run.json`` keeps per seed: ``{"auc": {statistic: AUC rounded to 4 decimals or None},
    "warn": any statistic far from 0.5}``."""
    res = confound_aucs(images, labels)
    return {"auc": {k: round(v["auc"], 4) if np.isfinite(v["auc"]) else None for k, v in res.items()},
            "warn": any(v["warn"] for v in res.values())}


def confound_sentence(dataset: str, aucs: Mapping[str, float | None]) -> str:
    """The warning a reader needs for ``{statistic: AUC}`` (e.g. the means over seeds), naming the statistic
    that separates best; ``""`` when none is further than :data:`WARN_MARGIN` from 0.5."""
    finite = {k: float(v) for k, v in aucs.items() if v is not None and np.isfinite(float(v))}
    flagged = {k: v for k, v in finite.items() if is_warning(v)}
    if not flagged:
        return ""
    key = max(flagged, key=lambda k: abs(flagged[k] - 0.5))
    auc = flagged[key]
    how = (f"at {1 - auc:.2f} with the sign flipped (AUC {auc:.2f}: healthy images score higher)" if auc < 0.5
           else f"at {auc:.2f} (AUC {auc:.2f}: diseased images score higher)")
    return (f"on {dataset} a trivial statistic ({STATISTICS.get(key, key)}) separates the classes {how}; "
            f"differences between methods may reflect acquisition, not pathology")


def summarise_seeds(per_seed: Any) -> dict[str, Any] | None:
    """Per-seed records of ``run.json`` (``{seed: {"auc": {...}, "warn": bool}}``) -> ``{"seeds": [seed, ...],
    "auc": {statistic: (mean, min, max)}}`` over the seeds; None when there is nothing readable (an old run
    without the key, or a malformed one)."""
    if not isinstance(per_seed, Mapping):
        return None
    vals: dict[str, list[float]] = {}
    seeds = []
    for seed, rec in per_seed.items():
        aucs = rec.get("auc") if isinstance(rec, Mapping) else None
        if not isinstance(aucs, Mapping):
            continue
        seeds.append(str(seed))
        for k, v in aucs.items():
            if isinstance(v, (int, float)) and np.isfinite(v):
                vals.setdefault(str(k), []).append(float(v))
    if not vals:
        return None
    order = [k for k in STATISTICS if k in vals] + sorted(k for k in vals if k not in STATISTICS)
    return {"seeds": seeds, "auc": {k: (float(np.mean(vals[k])), min(vals[k]), max(vals[k])) for k in order}}


def confound_line(dataset: str, per_seed: Any) -> tuple[str, str] | None:
    """(the per-statistic AUCs as text, the warning sentence or ``""``) for one dataset's ``run.json`` record;
    None without one. The AUC text gives the mean over seeds and, with more than one seed, the range."""
    s = summarise_seeds(per_seed)
    if s is None:
        return None
    many = len(s["seeds"]) > 1
    parts = [f"{STATISTICS.get(k, k)} {mean:.3f}" + (f" [{lo:.3f}-{hi:.3f}]" if many else "")
             for k, (mean, lo, hi) in s["auc"].items()]
    seeds = (f"mean [min-max] over {len(s['seeds'])} seeds" if many else f"seed {s['seeds'][0]}")
    text = (f"confound check (test AUC of label-free image statistics, higher = diseased; {seeds}): "
            + ", ".join(parts))
    return text, confound_sentence(dataset, {k: v[0] for k, v in s["auc"].items()})

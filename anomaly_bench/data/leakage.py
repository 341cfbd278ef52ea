"""The split's near-duplicate leakage check: for each test image, its highest 32-px thumbnail correlation with any
image of a training role (B, A and their hold-outs), and how many test images reach the duplicate threshold; and
the duplicate groups a published split taken as given puts in several roles (:func:`cross_role_duplicates`).

The split keeps duplicate groups in one role, so with the card's ``dedup.corr`` link this count is 0 by
construction; the runner records it per seed in ``run.json`` so the claim is checked, not assumed, and a published
split taken as given (or a card with the link off) shows its leaks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from anomaly_bench.core.image_array import ImageArray
from anomaly_bench.data.dedup import THUMB_SIDE, thumbnails

TRAINING_ROLES = ("healthy", "mixed", "holdout_healthy", "holdout_mixed")
#: Correlation at which a test image counts as a copy of a training image (issue 19's criterion).
LEAK_THRESHOLD = 0.99


def max_corr_to(query: np.ndarray, reference: np.ndarray, block: int = 2048) -> np.ndarray:
    """Per row of ``query`` (normalised thumbnails) its highest correlation with any row of ``reference``."""
    out = np.full(len(query), -1.0, dtype=np.float32)
    if len(query) == 0 or len(reference) == 0:
        return out
    for lo in range(0, len(reference), block):
        out = np.maximum(out, (query @ reference[lo:lo + block].T).max(axis=1))
    return out


def leakage_record(images: torch.Tensor | np.ndarray | ImageArray, roles: np.ndarray, threshold: float = LEAK_THRESHOLD,
                   side: int = THUMB_SIDE) -> dict[str, Any]:
    """``{"threshold", "n_test", "n_test_with_training_twin", "max_corr"}`` for one split (roles per image)."""
    roles = np.asarray(roles, dtype=object)
    test = np.flatnonzero(roles == "test")
    train = np.flatnonzero(np.isin(roles, TRAINING_ROLES))
    imgs = images if isinstance(images, ImageArray) else ImageArray(torch.as_tensor(np.asarray(images)))
    q = thumbnails(imgs.take(test), side) if len(test) else np.zeros((0, side * side), np.float32)
    r = thumbnails(imgs.take(train), side) if len(train) else np.zeros((0, side * side), np.float32)
    best = max_corr_to(q, r)
    return {"threshold": float(threshold), "thumbnail_side": int(side), "n_test": int(len(test)),
            "n_test_with_training_twin": int((best >= threshold).sum()),
            "max_corr": round(float(best.max()), 4) if len(best) else None}


def leakage_line(per_seed: Any) -> str | None:
    """The data note: test images with a training-role twin, over the run's seeds (None without a record)."""
    if not isinstance(per_seed, dict) or not per_seed:
        return None
    try:
        counts = [int(r["n_test_with_training_twin"]) for r in per_seed.values()]
        maxes = [float(r["max_corr"]) for r in per_seed.values() if r.get("max_corr") is not None]
        thr, side = next(iter(per_seed.values()))["threshold"], next(iter(per_seed.values()))["thumbnail_side"]
    except (KeyError, TypeError, ValueError):
        return None
    worst = f"; highest test-to-training correlation {max(maxes):.4f}" if maxes else ""
    n = str(max(counts)) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
    return (f"near-duplicate leakage check: {n} test image(s) per seed with a training-role image at {side}-px "
            f"thumbnail correlation >= {thr:g}{worst}")


def cross_role_duplicates(ids: list[str], roles: np.ndarray, dup_groups: np.ndarray | None,
                          exact_groups: np.ndarray, max_groups: int = 50) -> dict[str, Any]:
    """The duplicates a published split (taken as given) puts in several roles.

    ``test_with_training_copy``: test images with a copy in a training role (B, A and their hold-outs): ``exact``
    (a byte-identical file or identical pixels: ``exact_groups``, from :func:`anomaly_bench.data.dedup.exact_groups`,
    -1 = no copy) and ``near`` (no exact copy, but in one duplicate group, ``dup_groups``, with a training image:
    the card's pHash / thumbnail-correlation links); ``near`` is None when the duplicate check is off.
    ``test_with_copy_by_role``: the same per training role (a test image may count under several). ``n_groups``:
    duplicate groups (exact groups when there are no duplicate groups) spanning several roles (``unused``
    included); ``groups``: the first ``max_groups`` of them with their image ids and roles, the ones spanning test
    and training first."""
    roles = np.asarray(roles, dtype=object)
    exact = np.asarray(exact_groups, dtype=np.int64)
    training = np.isin(roles, TRAINING_ROLES)
    test = roles == "test"
    groups = None if dup_groups is None else np.asarray(dup_groups, dtype=np.int64)

    def copies(where: np.ndarray) -> dict[str, int | None]:
        """Test images with an exact copy among ``where``, and (not exact) in a duplicate group with one."""
        ex = test & (exact >= 0) & np.isin(exact, np.unique(exact[where & (exact >= 0)]))
        rec: dict[str, int | None] = {"exact": int(ex.sum()), "near": None}
        if groups is not None:
            near = test & ~ex & (groups >= 0) & np.isin(groups, np.unique(groups[where & (groups >= 0)]))
            rec["near"] = int(near.sum())
        return rec

    out: dict[str, Any] = {"test_with_training_copy": copies(training), "training_roles": list(TRAINING_ROLES),
                           "test_with_copy_by_role": {r: copies(roles == r) for r in TRAINING_ROLES
                                                      if (roles == r).any()}}
    if groups is None:
        groups = exact
    members: dict[int, list[int]] = {}
    for i in np.flatnonzero(groups >= 0):
        members.setdefault(int(groups[i]), []).append(int(i))
    spanning = [m for m in members.values() if len(set(roles[m])) > 1]
    spanning.sort(key=lambda m: (not (test[m].any() and training[m].any()), m[0]))
    out["n_groups"] = len(spanning)
    out["n_groups_test_and_training"] = sum(1 for m in spanning if test[m].any() and training[m].any())
    out["groups"] = [{"size": len(m), "roles": sorted(set(roles[m])),
                      "exact": bool(exact[m[0]] >= 0 and (exact[m] == exact[m[0]]).all()),
                      "images": [f"{ids[i]} ({roles[i]})" for i in m[:6]]} for m in spanning[:max_groups]]
    return out


def cross_role_line(rec: Any) -> str | None:
    """The data note of a published split taken as given (None without a record)."""
    if not isinstance(rec, dict):
        return None
    try:
        copies = rec["test_with_training_copy"]
        exact, near = int(copies["exact"]), copies.get("near")
        n_groups = int(rec["n_groups"])
    except (KeyError, TypeError, ValueError):
        return None
    by = rec.get("test_with_copy_by_role") or {}
    names = {"healthy": "set B", "mixed": "set A", "holdout_healthy": "held-out B", "holdout_mixed": "held-out A"}
    parts = [f"{int(v['exact'])} in {names.get(r, r)}" for r, v in by.items() if isinstance(v, dict) and v.get("exact")]
    where = f" ({', '.join(parts)})" if parts else ""
    more = "" if near is None else f", {int(near)} more a near copy (same duplicate group, no exact copy)"
    return (f"published split taken as given: {exact} test image(s) have an exact copy in training{where}{more}; "
            f"{n_groups} duplicate group(s) span several roles (listed in run.json and "
            f"splits/<dataset>_duplicates.json). The suite's own splits never do this.")

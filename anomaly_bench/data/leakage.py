"""The split's near-duplicate leakage check: for each test image, its highest 32-px thumbnail correlation with any
image of a training role (B, A and their hold-outs), and how many test images reach the duplicate threshold.

The split keeps duplicate groups in one role, so with the card's ``dedup.corr`` link this count is 0 by
construction; the runner records it per seed in ``run.json`` so the claim is checked, not assumed, and a published
split taken as given (or a card with the link off) shows its leaks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

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


def leakage_record(images: torch.Tensor | np.ndarray, roles: np.ndarray, threshold: float = LEAK_THRESHOLD,
                   side: int = THUMB_SIDE) -> dict[str, Any]:
    """``{"threshold", "n_test", "n_test_with_training_twin", "max_corr"}`` for one split (roles per image)."""
    roles = np.asarray(roles, dtype=object)
    test = np.flatnonzero(roles == "test")
    train = np.flatnonzero(np.isin(roles, TRAINING_ROLES))
    imgs = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    q = thumbnails(imgs[torch.as_tensor(test)], side) if len(test) else np.zeros((0, side * side), np.float32)
    r = thumbnails(imgs[torch.as_tensor(train)], side) if len(train) else np.zeros((0, side * side), np.float32)
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

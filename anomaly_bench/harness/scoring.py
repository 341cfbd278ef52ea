"""How the harness hands images to a method's ``score`` with bounded memory (issue 24).

The dataset holds its images compactly (:class:`~anomaly_bench.core.image_array.ImageArray`: uint8, possibly a
shared memory map). :func:`score_images` gives the method float32 ``[-1, 1]`` tensors of at most
``SCORE_CHUNK_BYTES`` at a time (4,096 images at 64 px, 256 at 256 px) and concatenates the scores, so no
full-set float copy exists. Maps and reconstructions are kept only when the caller needs them (pixel metrics,
the map gallery) and reconstructions for at most ``max_kept`` images (the training-health check).

A set that fits in one chunk is scored in one call, exactly as before; a larger one is scored chunk by chunk,
which the contract's batch-independence check (scores do not depend on the other images in the call) makes
equivalent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from anomaly_bench.core.errors import BenchError
from anomaly_bench.core.image_array import ImageArray
from anomaly_bench.core.sets import ScoreResult

#: float32 bytes of the images handed to one ``score`` call
SCORE_CHUNK_BYTES = 64 * 2**20
#: held-out healthy images whose reconstructions the training-health check compares (the first ones)
HEALTH_MAX_IMAGES = 512


def as_image_array(images: Any) -> ImageArray:
    """``images`` (an ImageArray, a tensor or an array of ``(N, C, H, W)`` images) as an ImageArray."""
    if isinstance(images, ImageArray):
        return images
    return ImageArray(torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images))


def mean_of(images: ImageArray) -> torch.Tensor:
    """The float64 mean image of ``images``: as ``images[:].double().mean(0)`` when they fit in one chunk (the
    value the suite always recorded), else summed chunk by chunk."""
    n, step = len(images), chunk_size(images)
    if n <= step:
        return images[:].double().mean(0)
    total = sum(images[lo:lo + step].double().sum(0) for lo in range(0, n, step))
    return total / n


def chunk_size(images: ImageArray) -> int:
    """Images per ``score`` call: ``SCORE_CHUNK_BYTES`` of float32."""
    per = 4 * int(np.prod(images.shape[1:]))
    return max(1, SCORE_CHUNK_BYTES // per)


def score_images(model, images: Any, method: str, what: str, *, keep_maps: bool = True,
                 keep_reconstructions: bool = True, max_kept: int | None = None) -> ScoreResult:
    """``model.score`` of every image of ``images`` in chunks of float32 tensors, each result checked
    (:func:`check_result`; ``method``/``what`` name them in its error); the maps / reconstructions of the first
    ``max_kept`` images (all when None) when asked for, else dropped chunk by chunk."""
    images = as_image_array(images)
    n, step = len(images), chunk_size(images)
    hw = tuple(images.shape[-2:])
    parts = []
    for lo in range(0, max(n, 1), step):
        x = images[lo:lo + step]
        res = model.score(x)
        check_result(res, hw, len(x), method, what if n <= step else f"{what}, images {lo}-{lo + len(x) - 1}")
        kept = None if max_kept is None else max(0, min(len(x), max_kept - lo))
        parts.append(_trim(res, keep_maps, keep_reconstructions, kept))
    if len(parts) == 1:
        return parts[0]
    scores = np.concatenate([p.scores for p in parts])
    return ScoreResult(scores, _cat(parts, "maps"), _cat(parts, "reconstructions"))


def check_result(res: Any, hw: tuple, n: int, method: str, what: str) -> None:
    """A method's :class:`ScoreResult` for ``n`` images (``what``: which ones) of size ``hw`` is usable: one finite
    score per image, maps (if any) ``(n, H, W)``; else a :class:`BenchError` naming the method and the shapes
    (the job fails: a diverged model's NaN scores must not be tabled as a result)."""
    hw = tuple(hw[-2:])
    if not isinstance(res, ScoreResult):
        raise BenchError(f"method '{method}': score() returned {type(res).__name__}, not a ScoreResult ({what})")
    if res.scores.shape != (n,):
        raise BenchError(f"method '{method}': score() returned {res.scores.size} scores for {n} {what}")
    bad = int((~np.isfinite(res.scores)).sum())
    if bad:
        raise BenchError(f"method '{method}' returned {bad} non-finite scores of {n} {what}: the model diverged "
                         f"or its score is undefined; fix the method or its parameters")
    if res.maps is not None and res.maps.shape != (n, *hw):
        raise BenchError(f"method '{method}': anomaly maps of shape {res.maps.shape} for {n} {what} of "
                         f"{hw[0]}x{hw[1]} pixels; expected {(n, *hw)} (one map per image, at its size)")
    rec = res.reconstructions
    if rec is not None and (rec.ndim != 3 or len(rec) != n):
        raise BenchError(f"method '{method}': reconstructions of shape {rec.shape} for {n} {what}; "
                         f"expected (n, H, W)")


def _trim(res: ScoreResult, keep_maps: bool, keep_recon: bool, max_kept: int | None) -> ScoreResult:
    maps = res.maps if keep_maps else None
    recon = res.reconstructions if keep_recon else None
    if max_kept is not None:
        maps = None if maps is None else maps[:max_kept]
        recon = None if recon is None else recon[:max_kept]
    if maps is res.maps and recon is res.reconstructions:
        return res
    out = ScoreResult.__new__(ScoreResult)  # no re-validation: the shapes were the method's own
    out.scores, out.maps, out.reconstructions = res.scores, maps, recon
    return out


def _cat(parts: list[ScoreResult], attr: str) -> np.ndarray | None:
    vals = [getattr(p, attr) for p in parts]
    vals = [v for v in vals if v is not None and len(v)]
    return np.concatenate(vals) if vals else None

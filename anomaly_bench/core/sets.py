"""The data types of the method contract (:mod:`anomaly_bench.core.interface`): what ``fit`` gets
(:class:`TrainSets`) and what ``score`` returns (:class:`ScoreResult`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from anomaly_bench.core.image_array import ImageArray


@dataclass(frozen=True)
class TrainSets:
    """Training images for one job, ``(N, 1, H, W)`` in ``[-1, 1]``: float32 tensors on the CPU (float64 in the
    exact regression checks, which train under ``torch.set_default_dtype(torch.float64)``), or, for a method
    that declares ``streams_images = True``, :class:`ImageArray` views of the dataset's compact (uint8) images:
    ``images[idx]`` / ``images[i:j]`` give float32 batches, ``images.to(device)`` moves the stored values."""

    healthy: torch.Tensor | ImageArray
    mixed: torch.Tensor | ImageArray | None = None

    def __post_init__(self) -> None:
        for name in ("healthy", "mixed"):
            t = getattr(self, name)
            if t is None:
                continue
            if t.ndim != 4 or t.dtype not in (torch.float32, torch.float64):
                raise ValueError(f"TrainSets.{name} must be a float32 (or float64) (N, C, H, W) tensor or an "
                                 f"ImageArray, got {tuple(t.shape)} {t.dtype}")
        if len(self.healthy) == 0:
            raise ValueError("TrainSets.healthy is empty: the split gave no healthy training images")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.healthy.shape[1:])  # type: ignore[return-value]


@dataclass
class ScoreResult:
    """Per-image scores (higher = more anomalous), optional maps ``(N, H, W)`` and reconstructions."""

    scores: np.ndarray
    maps: np.ndarray | None = None
    reconstructions: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if self.maps is not None:
            self.maps = np.asarray(self.maps, dtype=np.float32)
            if self.maps.ndim == 4:
                self.maps = self.maps[:, 0]
        if self.reconstructions is not None:
            self.reconstructions = np.asarray(self.reconstructions, dtype=np.float32)
            if self.reconstructions.ndim == 4:
                self.reconstructions = self.reconstructions[:, 0]

    @staticmethod
    def concat(parts: list["ScoreResult"]) -> "ScoreResult":
        def cat(attr: str):
            vals = [getattr(p, attr) for p in parts]
            return None if any(v is None for v in vals) else np.concatenate(vals)

        return ScoreResult(np.concatenate([p.scores for p in parts]), cat("maps"), cat("reconstructions"))

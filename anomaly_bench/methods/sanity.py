"""Sanity baselines: what a detector must beat before its AUC means anything.

Three methods that learn (almost) nothing about anatomy. A benchmark whose "anomalies" are found as well by the mean
brightness of an image, by its contrast, or by raw-pixel distance to the healthy training images is measuring an
acquisition or preprocessing difference, not a lesion detector (see also :mod:`anomaly_bench.evaluation.confound`,
which reports the same statistics as a label-free confound check).

* ``mean_intensity``: score = mean pixel intensity of the image; map = the image itself.
* ``intensity_sd``: score = the image's intensity standard deviation; map = ``|x - mean(x)|``.
* ``pixel_knn``: score = mean Euclidean distance, in average-pooled pixel space, to the ``k`` nearest healthy
  training images; map = ``|pool(x) - pool(nn)|`` of the nearest one, upsampled (nearest) to the input size.

The direction of every score is fixed before any label is seen: **higher = more anomalous** (brighter, more
contrast, farther from the healthy images). An AUC far below 0.5 is itself a finding (the anomalous images are
darker, flatter, or closer to the healthy set than the healthy test images are) and must be reported as it is, never
flipped after looking at the labels: choosing the direction on the test labels turns any AUC ``a`` into
``max(a, 1 - a)``, an optimistic number no label-free method could reach.

All three train on healthy set B (``default_train_sets = "healthy"``); the first two only record the healthy
statistics for reference (their scores do not depend on the training images). They are deterministic (no random
numbers anywhere), so ``seed`` changes nothing. ``pixel_knn`` is the example plugin ``examples/pixel_knn_plugin.py``
(registered there as ``example_pixel_knn``) promoted to a built-in, with maps and float64 distances.

In every table by default (issue 23): they are in the quick start (``methods: []``) and in ``experiments/cpu.yaml``;
an experiment that lists its methods adds them by name. They cost seconds per job.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.image_array import batches
from anomaly_bench.core.interface import AnomalyMethod, FitContext, ScoreResult, TrainSets, register_method


class _Statistic(AnomalyMethod):
    """A per-image statistic of the raw input (no training); subclasses define :meth:`_score_and_map`."""

    default_train_sets = "healthy"
    defaults: dict[str, Any] = {}

    streams_images = True  # fit reads its images 1,024 at a time (issue 24)

    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "_Statistic":
        scores = np.concatenate([self._score_and_map(x)[0] for x in batches(train.healthy, 1024)])
        # for reference only (job.json / state): where the healthy training images lie on this statistic
        self.healthy_ = {"n": int(len(scores)), "mean": float(scores.mean()), "std": float(scores.std())}
        self.fitted_ = True
        return self

    def _score_and_map(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def score(self, images: torch.Tensor) -> ScoreResult:
        if not self.fitted_:
            raise RuntimeError(f"{self.name}: call fit() or load a state before score()")
        scores, maps = self._score_and_map(images)
        return ScoreResult(scores, maps)

    def state_dict(self) -> dict[str, Any]:
        if not self.fitted_:
            raise RuntimeError(f"{self.name}: state_dict() before fit()")
        return {"healthy": dict(self.healthy_)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.healthy_ = dict(state["healthy"])
        self.fitted_ = True


@register_method("mean_intensity")
class MeanIntensity(_Statistic):
    """Score = mean pixel intensity (higher = anomalous, fixed in advance); map = the image. Run by
    ``experiments/zoo.yaml`` (not the quick start). See :mod:`anomaly_bench.methods.sanity`."""

    def _score_and_map(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        x = images.double()
        return x.mean(dim=(1, 2, 3)).numpy(), x.mean(dim=1).float().numpy()


@register_method("intensity_sd")
class IntensitySD(_Statistic):
    """Score = per-image intensity standard deviation (higher = anomalous, fixed in advance); map = ``|x - mean(x)|``.
    Run by ``experiments/zoo.yaml`` (not the quick start). See :mod:`anomaly_bench.methods.sanity`."""

    def _score_and_map(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        x = images.double()
        dev = (x - x.mean(dim=(1, 2, 3), keepdim=True)).abs()
        return x.std(dim=(1, 2, 3), unbiased=False).numpy(), dev.mean(dim=1).float().numpy()


@register_method("pixel_knn")
class PixelKNN(AnomalyMethod):
    """Mean distance to the ``k`` nearest healthy training images in ``pool``-times average-pooled pixel space
    (higher = anomalous); map = ``|pool(x) - pool(nearest)|`` upsampled to the input size. In the quick start and
    ``experiments/cpu.yaml``. See :mod:`anomaly_bench.methods.sanity`."""

    default_train_sets = "healthy"
    defaults = {"k": 5, "pool": 4, "batch_size": 64}
    streams_images = True  # fit pools its images 1,024 at a time (issue 24)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, C, H/pool, W/pool)`` float64 (average pooling)."""
        p = self.params["pool"]
        return F.avg_pool2d(x.double(), p) if p > 1 else x.double()

    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "PixelKNN":
        p = self.params
        if p["k"] < 1 or p["pool"] < 1:
            raise ConfigError(f"{self.name}: k and pool must be >= 1, got k={p['k']}, pool={p['pool']}")
        h, w = train.image_shape[-2:]
        if h % p["pool"] or w % p["pool"]:
            raise ConfigError(f"{self.name}: image size {h}x{w} is not divisible by pool={p['pool']}")
        self.bank_ = torch.cat([self._embed(x).float() for x in batches(train.healthy, 1024)])
        self.fitted_ = True
        return self

    def score(self, images: torch.Tensor) -> ScoreResult:
        if not self.fitted_:
            raise RuntimeError(f"{self.name}: call fit() or load a state before score()")
        bank = self.bank_.double()
        flat_bank = bank.flatten(1)
        k = min(self.params["k"], len(bank))
        scores, maps = [], []
        for i in range(0, len(images), self.params["batch_size"]):
            batch = images[i:i + self.params["batch_size"]]
            e = self._embed(batch)
            # row by row (no matrix-product shortcut): a score does not depend on the other images of the batch
            d = torch.cdist(e.flatten(1), flat_bank, compute_mode="donot_use_mm_for_euclid_dist")
            near = d.topk(k, largest=False)
            scores.append(near.values.mean(1))
            diff = (e - bank[near.indices[:, 0]]).abs().mean(1, keepdim=True)
            maps.append(F.interpolate(diff, size=tuple(batch.shape[-2:]), mode="nearest")[:, 0])
        return ScoreResult(torch.cat(scores).numpy(), torch.cat(maps).float().numpy())

    def state_dict(self) -> dict[str, Any]:
        if not self.fitted_:
            raise RuntimeError(f"{self.name}: state_dict() before fit()")
        return {"bank": self.bank_.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bank_ = state["bank"].float()
        self.fitted_ = True

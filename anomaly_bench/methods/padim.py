"""PaDiM (Defard et al., ICPR workshops 2021) through anomalib 2.7.0's ``PadimModel``.

What follows anomalib (``anomalib/models/image/padim/torch_model.py``, baselines.md §5.2): features of
``layers`` concatenated at the first layer's resolution (nearest upsampling), a random channel subset
``idx = torch.randperm(C)[:n_features]`` drawn when the model is built (we seed torch right before, so the
subset is a function of ``seed``), one Gaussian per patch (covariance + 0.01 I, + 1e-5 I, inverted),
Mahalanobis distance per patch, bilinear upsampling to the input size, Gaussian blur sigma 4;
image score = max of the map. Scores are the raw ``pred_score`` (no post-processing).

Where we deviate: the backbone (``tf_efficientnet_lite0`` with packaged ImageNet weights, layers
``blocks.1, blocks.2, blocks.4`` = 24+40+112 channels) replaces anomalib's default ``resnet18`` /
``layer1..3``, whose weights need internet; set ``backbone: resnet18``, ``layers: [layer1, layer2, layer3]``
and ``weights_file`` (or a timm cache) for anomalib's defaults. Input mapping, map resizing and the memory
guard: see :mod:`anomaly_bench.nn.anomalib_wrap`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.image_array import select
from anomaly_bench.core.interface import FitContext, TrainSets, register_method
from anomaly_bench.nn.anomalib_wrap import SHARED_CHOICES, SHARED_DEFAULTS, AnomalibWrapper
from anomaly_bench.nn.common import seed_everything


@register_method("padim")
class Padim(AnomalibWrapper):
    """PaDiM: per-patch Gaussian on pretrained CNN features (anomalib 2.7.0 ``PadimModel``)."""

    default_train_sets = "healthy"
    defaults = {
        **SHARED_DEFAULTS,
        "layers": ["blocks.1", "blocks.2", "blocks.4"],
        "n_features": 100,                 # random channel subset size (anomalib: 100 for resnet18)
    }
    choices = dict(SHARED_CHOICES)

    def _new_torch_model(self) -> nn.Module:
        from anomalib.models.image.padim.torch_model import PadimModel

        p = self.params
        try:
            return PadimModel(backbone=p["backbone"], layers=list(p["layers"]), pre_trained=False,
                              n_features=p["n_features"])
        except ValueError as exc:  # n_features out of range
            raise ConfigError(f"padim: {exc}") from exc

    def _arch(self) -> dict[str, Any]:
        return {**super()._arch(), "n_features": self.params["n_features"]}

    @torch.no_grad()
    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "Padim":
        ctx = ctx or FitContext(progress=False)
        seed_everything(self.params["seed"])           # fixes the channel subset drawn in the constructor
        model = self._build(with_weights=True).to(self.device)
        self.image_shape_ = train.image_shape
        h, w, _ = self._feature_grid(model)
        c = self.params["n_features"]
        per_image = c * h * w * 4
        fixed = 3 * c * c * h * w * 4 + h * w * c * 4   # covariance, its stabilised copy, inverse; mean
        keep = self._memory_plan(len(train.healthy), per_image, fixed,
                                 f"embeddings {c}x{h}x{w} per image + {h * w} covariances {c}x{c}", ctx)
        images = train.healthy if keep is None else select(train.healthy, keep)
        bank = torch.empty(len(images), c, h, w, dtype=torch.get_default_dtype(), device=self.device)
        self._extract_into(model, images, bank, ctx, store="memory_bank")
        ctx.info(f"padim: fitting {h * w} Gaussians of dimension {c} on {len(images)} images")
        model.gaussian.fit(bank)                        # = PadimModel.fit() without the list/vstack copy
        del bank
        # linalg.inv returns column-major matrices; a reloaded state is row-major, and the batched matmul
        # then rounds differently (~1e-7). Store them contiguous so fitted and reloaded models agree bitwise.
        model.gaussian.mean = model.gaussian.mean.contiguous()
        model.gaussian.inv_covariance = model.gaussian.inv_covariance.contiguous()
        model.memory_bank = []
        self.model = model.eval()
        self.fitted_ = True
        return self

"""PatchCore (Roth et al., CVPR 2022) through anomalib 2.7.0's ``PatchcoreModel``.

What follows anomalib (``anomalib/models/image/patchcore/torch_model.py``, baselines.md §5.2): each layer
average-pooled (3x3, stride 1), deeper layers bilinearly upsampled to the first layer's map, concatenated
into one embedding per patch; the memory bank is a greedy k-center coreset of ``int(N * ratio)`` patches on
a ``SparseRandomProjection(eps=0.9)`` of the embeddings; test patches get their 1-NN distance, the image
score is the paper's re-weighting with ``num_neighbors`` support samples, the map is nearest-upsampled and
blurred (sigma 4). Scores are the raw ``pred_score`` (no post-processing).

Where we deviate:

* the coreset is computed by :mod:`anomaly_bench.nn.coreset` (``coreset_impl: fast``), which returns the
  same indices as anomalib's ``KCenterGreedy`` much faster; ``coreset_impl: anomalib`` runs anomalib's own
  class. Torch and numpy are re-seeded with ``seed`` right before the coreset, so its projection and start
  index depend on the seed only (as anomalib after ``seed_everything``);
* ``coreset_candidates > 0`` (off by default) runs the greedy on that many random patches only: approximate,
  recorded as ``coreset_exact: false`` in :meth:`provenance` and the state;
* backbone ``tf_efficientnet_lite0`` (packaged ImageNet weights), layers ``blocks.2, blocks.4`` (40+112 = 152-d,
  stride 8) instead of anomalib's ``wide_resnet50_2`` / ``layer2, layer3`` (needs internet); input mapping, map
  resizing and memory guard: :mod:`anomaly_bench.nn.anomalib_wrap`.
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
from anomaly_bench.nn.coreset import coreset_size, jl_min_dim, select_coreset


@register_method("patchcore")
class Patchcore(AnomalibWrapper):
    """PatchCore: nearest-neighbour distance to a coreset of pretrained patch features (anomalib 2.7.0)."""

    default_train_sets = "healthy"
    defaults = {
        **SHARED_DEFAULTS,
        "layers": ["blocks.2", "blocks.4"],
        "coreset_sampling_ratio": 0.1,     # anomalib default
        "num_neighbors": 9,                # anomalib default
        "coreset_impl": "fast",            # "anomalib": anomalib's KCenterGreedy (same picks, slower)
        "coreset_candidates": 0,           # > 0: approximate greedy on a random subset of patches
    }
    choices = {**SHARED_CHOICES, "coreset_impl": ("fast", "anomalib")}

    def _new_torch_model(self) -> nn.Module:
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        p = self.params
        return PatchcoreModel(layers=list(p["layers"]), backbone=p["backbone"], pre_trained=False,
                              num_neighbors=p["num_neighbors"])

    def _arch(self) -> dict[str, Any]:
        return {**super()._arch(), "num_neighbors": self.params["num_neighbors"]}

    @torch.no_grad()
    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "Patchcore":
        ctx = ctx or FitContext(progress=False)
        p = self.params
        if not 0.0 < p["coreset_sampling_ratio"] <= 1.0:
            raise ConfigError(f"patchcore: coreset_sampling_ratio must be in (0, 1], got {p['coreset_sampling_ratio']}")
        seed_everything(p["seed"])
        model = self._build(with_weights=True).to(self.device)
        self.image_shape_ = train.image_shape
        h, w, chans = self._feature_grid(model)
        dim, n_img = sum(chans), len(train.healthy)
        n_rows = n_img * h * w
        rows = p["coreset_candidates"] if 0 < p["coreset_candidates"] < n_rows else n_rows
        proj = jl_min_dim(max(rows, 2))
        extra = proj * 4 if p["coreset_impl"] == "anomalib" else 28   # anomalib: a full N x d temporary per step
        per_image = h * w * (dim * 4 + (proj * 4 + extra) * rows / n_rows)
        keep = self._memory_plan(n_img, per_image, 0.0,
                                 f"{h * w} patches x {dim}-d per image + {proj}-d projection for the coreset", ctx)
        images = train.healthy if keep is None else select(train.healthy, keep)
        bank = torch.empty(len(images) * h * w, dim, dtype=torch.get_default_dtype(), device=self.device)
        self._extract_into(model, images, bank, ctx, store="embedding_store")
        size = coreset_size(len(bank), p["coreset_sampling_ratio"])
        ctx.info(f"patchcore: coreset of {size} from {len(bank)} patches ({p['coreset_impl']})")
        seed_everything(p["seed"])                      # projection + start index depend on the seed only
        res = select_coreset(bank, p["coreset_sampling_ratio"], impl=p["coreset_impl"],
                             candidates=p["coreset_candidates"], progress=ctx.progress_bar, desc="coreset")
        model.memory_bank = bank[torch.as_tensor(res.indices, device=bank.device)].clone()
        del bank
        self.provenance_.update({"coreset_exact": res.exact, "coreset_impl": p["coreset_impl"],
                                 "coreset_size": size, "coreset_seconds": res.info.get("seconds")})
        self.model = model.eval()
        self.fitted_ = True
        return self

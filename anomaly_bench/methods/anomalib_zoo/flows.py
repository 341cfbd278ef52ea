"""Normalising-flow models of the anomalib zoo: FastFlow, CFLOW and CS-Flow (anomalib 2.7.0), on frozen pretrained
features of the packaged EfficientNet-Lite0. Run by ``experiments/zoo.yaml`` (not the quick start)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import FitContext, TrainSets, register_method
from anomaly_bench.methods.anomalib_zoo.adapter import (
    BACKBONE_DEFAULTS,
    TRAIN_DEFAULTS,
    ZOO_DEFAULTS,
    AnomalibAdapter,
)
from anomaly_bench.nn.backbone_swap import MappedFeatures

#: CS-Flow's flow input width, hard-coded in anomalib's ``CrossScaleFlow`` (EfficientNet-B5 ``features.6.8``)
CSFLOW_CHANNELS = 304


@register_method("fastflow")
class Fastflow(AnomalibAdapter):
    """FastFlow (Yu et al., 2021), anomalib ``Fastflow``: a 2-D normalising flow (``flow_steps`` FrEIA all-in-one
    blocks, 3x3 and 1x1 subnets alternating unless ``conv3x3_only``) per feature scale, over LayerNorm-ed frozen
    features; the map is the mean over scales of ``-exp(mean(-z^2 / 2))`` upsampled, the score its maximum.

    Backbone: anomalib's FastFlow accepts only ``resnet18``/``wide_resnet50_2`` (CNN, ``out_indices=[1, 2, 3]``) or
    CaiT/DeiT by name; we ask for ``resnet18`` (anomalib's default) and build ``tf_efficientnet_lite0`` with the same
    ``out_indices`` instead: ``blocks.1, blocks.2, blocks.4`` (24/40/112 channels at strides 4/8/16, as resnet18's
    64/128/256 at ``layer1..3``; anomalib reads the channels from the backbone, so no channel map), packaged
    ImageNet weights. Optimiser as anomalib (Adam lr 1e-3, weight decay 1e-5); 500 epochs as anomalib's config,
    without its early stopping. Run by ``experiments/zoo.yaml``."""

    anomalib_class = "Fastflow"
    defaults = {**BACKBONE_DEFAULTS, **ZOO_DEFAULTS, **TRAIN_DEFAULTS, "epochs": 500, "flow_steps": 8,
                "conv3x3_only": False, "hidden_ratio": 1.0}
    arch_keys = ("backbone", "input_size", "flow_steps", "conv3x3_only", "hidden_ratio")

    def _rename(self) -> dict[str, str]:
        return {"resnet18": self.params["backbone"]}

    def _module_kwargs(self) -> dict[str, Any]:
        p = self.params
        return {"backbone": "resnet18", "pre_trained": True, "flow_steps": p["flow_steps"],
                "conv3x3_only": p["conv3x3_only"], "hidden_ratio": p["hidden_ratio"]}


class FixedNormCflowMap(nn.Module):
    """CFLOW's anomaly map (anomalib ``cflow.anomaly_map.AnomalyMapGenerator``) with its normalising constants fixed
    on the healthy training images instead of taken from the scored batch.

    anomalib computes, per layer, ``exp(logp - max(logp))`` with the maximum over **every image of the batch**,
    upsamples and sums the layers, and returns ``max(sum) - sum``, again with the batch maximum: an image's score
    depends on the other images scored with it (in CFLOW-AD's own code, on the whole test set). Here ``layer_max``
    (per layer) and ``map_max`` are the maxima over the training images (:meth:`Cflow._calibrate`); the formula is
    anomalib's otherwise."""

    def __init__(self, n_layers: int):
        super().__init__()
        self.register_buffer("layer_max", torch.full((n_layers,), float("nan")))
        self.register_buffer("map_max", torch.tensor(float("nan")))
        self.stage: str | None = None   # "layers" / "map" while calibrating

    def forward(self, distribution: list[torch.Tensor], height: list[int], width: list[int],
                image_size: tuple[int, int]) -> torch.Tensor:
        if self.stage == "layers":
            for i, d in enumerate(distribution):
                self.layer_max[i] = torch.fmax(self.layer_max[i], d.max())
        total = None
        for i, d in enumerate(distribution):
            layer = torch.exp(d.detach() - self.layer_max[i]).reshape(-1, height[i], width[i])
            layer = F.interpolate(layer.unsqueeze(1), size=image_size, mode="bilinear", align_corners=True).squeeze(1)
            total = layer if total is None else total + layer
        if self.stage == "map":
            self.map_max = torch.fmax(self.map_max, total.max())
        return self.map_max - total


@register_method("cflow")
class Cflow(AnomalibAdapter):
    """CFLOW-AD (Gudovskiy et al., WACV 2022), anomalib ``Cflow``: one conditional normalising flow per layer
    (``coupling_blocks`` FrEIA blocks, conditioned on a ``condition_vector``-d 2-D positional encoding), trained on
    random fibres (``fiber_batch_size`` feature vectors, one optimiser step each: anomalib's manual optimisation);
    map = the per-layer likelihoods, upsampled and summed, turned into anomaly scores; score = map maximum. Deviation:
    anomalib normalises the map by maxima over the scored batch (an image's score depends on the others); here the
    constants are fixed on the training images (:class:`FixedNormCflowMap`).

    Backbone: ``tf_efficientnet_lite0`` ``blocks.2, blocks.4, blocks.6`` (40/112/320 channels, strides 8/16/32,
    packaged ImageNet weights) instead of anomalib's default ``wide_resnet50_2`` ``layer2..4`` (strides 8/16/32;
    internet). Optimiser as anomalib (Adam, ``lr`` 1e-4); 50 epochs as anomalib's config, without its early
    stopping. Run by ``experiments/zoo.yaml``."""

    anomalib_class = "Cflow"
    defaults = {**BACKBONE_DEFAULTS, **ZOO_DEFAULTS, **TRAIN_DEFAULTS, "epochs": 50,
                "layers": ["blocks.2", "blocks.4", "blocks.6"], "fiber_batch_size": 64, "decoder": "freia-cflow",
                "condition_vector": 128, "coupling_blocks": 8, "clamp_alpha": 1.9, "permute_soft": False,
                "lr": 1e-4}
    choices = {"decoder": ("freia-cflow",)}
    arch_keys = ("backbone", "layers", "input_size", "condition_vector", "coupling_blocks")

    def _module_kwargs(self) -> dict[str, Any]:
        p = self.params
        self._check_layers(list(p["layers"]))
        return {"backbone": p["backbone"], "layers": list(p["layers"]), "pre_trained": True,
                **{k: p[k] for k in ("fiber_batch_size", "decoder", "condition_vector", "coupling_blocks",
                                     "clamp_alpha", "permute_soft", "lr")}}

    def _after_build(self, module: nn.Module, asked: list[tuple[str, nn.Module]]) -> None:
        module.model.anomaly_map_generator = FixedNormCflowMap(len(module.model.pool_layers))

    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "Cflow":
        self._calib_images = train.healthy
        try:
            super().fit(train, ctx)
            self._calibrate()
        finally:
            del self._calib_images
        return self

    def state_dict(self) -> dict[str, Any]:
        if getattr(self, "_calib_images", None) is not None:
            self._calibrate()   # a selection checkpoint during training: the constants of its weights
        return super().state_dict()

    @torch.no_grad()
    def _calibrate(self) -> None:
        """:class:`FixedNormCflowMap`'s constants from the training images (two passes; maxima, so exact whatever
        the batching)."""
        module, images, bs = self.module_, self._calib_images, self.params["score_batch_size"]
        gen, training = module.model.anomaly_map_generator, module.training
        gen.layer_max.fill_(float("nan"))
        gen.map_max.fill_(float("nan"))
        try:
            for stage in ("layers", "map"):
                gen.stage = stage
                for i in range(0, len(images), bs):
                    module.model(self._input(images[i:i + bs]))
        finally:
            gen.stage = None
            module.train(training)


@register_method("csflow")
class Csflow(AnomalibAdapter):
    """CS-Flow (Rudolph et al., WACV 2022), anomalib ``Csflow``: a cross-scale normalising flow (``n_coupling_blocks``
    coupling blocks whose subnets are cross-scale convolutions with ``cross_conv_hidden_channels``) over frozen
    features of the image at three scales (1, 1/2, 1/4); map = per-position squared norm of z at the largest scale,
    upsampled, score = mean squared norm of z over all scales.

    Backbone: anomalib hard-codes torchvision's EfficientNet-B5 (ImageNet weights: a download), layer ``features.6.8``
    (304 channels, stride 32), and a flow input of 304 channels. Here: ``tf_efficientnet_lite0`` ``layer`` (default
    ``blocks.6``: 320 channels, stride 32, packaged ImageNet weights) projected to 304 channels by a fixed 1x1 map with
    orthonormal rows (:class:`anomaly_bench.nn.backbone_swap.ChannelMap`). ``input_size`` must be a multiple of 128
    (the third scale's stride); the paper uses 768 px, anomalib's default pre-processor 256. Optimiser as anomalib
    (Adam lr 2e-4, eps 1e-4, weight decay 1e-5, betas 0.5/0.9) over all parameters (the frozen backbone gets no
    gradient), gradient-norm clipping at 1 (its ``trainer_arguments``); 240 epochs as anomalib's config, without its
    early stopping. Run by ``experiments/zoo.yaml``."""

    anomalib_class = "Csflow"
    defaults = {**BACKBONE_DEFAULTS, **ZOO_DEFAULTS, **TRAIN_DEFAULTS, "epochs": 240, "layer": "blocks.6",
                "cross_conv_hidden_channels": 1024, "n_coupling_blocks": 4, "clamp": 3, "num_channels": 3}
    arch_keys = ("backbone", "layer", "input_size", "cross_conv_hidden_channels", "n_coupling_blocks")

    def _module_kwargs(self) -> dict[str, Any]:
        p = self.params
        if p["input_size"] % 128:
            raise ConfigError(f"{self.name}: input_size must be a multiple of 128 (CS-Flow's third scale has stride "
                              f"128), got {p['input_size']}")
        return {k: p[k] for k in ("cross_conv_hidden_channels", "n_coupling_blocks", "clamp", "num_channels")}

    def _patches(self, asked: list[tuple[str, nn.Module]]) -> dict[str, Any]:
        layer = self.params["layer"]

        def feature_extractor(backbone: Any, layers: list[str]) -> nn.Module:
            inner = self._features([layer], asked)
            if inner.feature_info.reduction() != [32]:
                raise ConfigError(f"{self.name}: layer {layer} has stride {inner.feature_info.reduction()[0]}; "
                                  f"CS-Flow's flow is built for stride 32 (e.g. blocks.5 is not a feature layer, "
                                  f"blocks.6 is)")
            return MappedFeatures(inner, [CSFLOW_CHANNELS], names=list(layers))

        mod = "anomalib.models.image.csflow.torch_model"
        return {f"{mod}.efficientnet_b5": lambda **kwargs: None, f"{mod}.TimmFeatureExtractor": feature_extractor}

"""Knowledge-distillation models of the anomalib zoo: STFPM and Reverse Distillation (anomalib 2.7.0).

Both score the disagreement between a frozen pretrained network and a network trained on healthy images to imitate
it; both are run by ``experiments/zoo.yaml`` (not the quick start).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import register_method
from anomaly_bench.methods.anomalib_zoo.adapter import (
    BACKBONE_DEFAULTS,
    TRAIN_DEFAULTS,
    ZOO_DEFAULTS,
    AnomalibAdapter,
)
from anomaly_bench.nn.backbone_swap import MappedFeatures


@register_method("stfpm")
class Stfpm(AnomalibAdapter):
    """STFPM (Wang et al., BMVC 2021), anomalib ``Stfpm``: a student with the teacher's architecture, randomly
    initialised, learns to reproduce the frozen pretrained teacher's normalised features at ``layers``; the map is
    the product over layers of the upsampled ``0.5 * ||t - s||^2`` of normalised features, the score its maximum.

    Backbone: teacher and student are ``tf_efficientnet_lite0`` at ``blocks.1, blocks.2, blocks.4`` (24/40/112
    channels, strides 4/8/16), the teacher with the packaged ImageNet weights, instead of anomalib's default
    ``resnet18`` at ``layer1..3`` (strides 4/8/16; its weights need internet). Optimiser as anomalib (SGD lr 0.4,
    momentum 0.9, weight decay 1e-3); 100 epochs as anomalib's config, without its early stopping on a labelled
    validation metric. Run by ``experiments/zoo.yaml``.
    """

    anomalib_class = "Stfpm"
    defaults = {**BACKBONE_DEFAULTS, **ZOO_DEFAULTS, **TRAIN_DEFAULTS, "epochs": 100,
                "layers": ["blocks.1", "blocks.2", "blocks.4"]}
    arch_keys = ("backbone", "layers", "input_size")

    def _module_kwargs(self) -> dict[str, Any]:
        self._check_layers(list(self.params["layers"]))
        return {"backbone": self.params["backbone"], "layers": list(self.params["layers"])}


@register_method("reverse_distillation")
class ReverseDistillation(AnomalibAdapter):
    """Reverse Distillation (Deng & Li, CVPR 2022), anomalib ``ReverseDistillation``: a frozen pretrained encoder,
    a trainable one-class bottleneck (OCBE) and a ResNet decoder that reconstructs the encoder's three feature maps
    from the bottleneck; loss and map: ``1 - cosine`` between encoder and decoder features per layer (maps summed,
    ``anomaly_map_mode: add``, Gaussian blur sigma 4), score = map maximum.

    Backbone: the encoder is ``tf_efficientnet_lite0`` at ``blocks.1, blocks.2, blocks.4`` (strides 4/8/16, packaged
    ImageNet weights) instead of ``wide_resnet50_2`` at ``layer1..3`` (internet). anomalib builds the bottleneck and
    decoder for a named ResNet (``decoder``: ``wide_resnet50_2`` as published, 256/512/1024 channels; ``resnet18``,
    64/128/256, in the smoke and ci profiles); the encoder's 24/40/112 channels are mapped to those widths by a fixed
    isometric 1x1 map (:class:`anomaly_bench.nn.backbone_swap.ChannelMap`: every cosine between encoder features is
    kept). Optimiser as anomalib (Adam lr 0.005, betas 0.5/0.99); 200 epochs as anomalib's config, without its early
    stopping. Run by ``experiments/zoo.yaml``.
    """

    anomalib_class = "ReverseDistillation"
    defaults = {**BACKBONE_DEFAULTS, **ZOO_DEFAULTS, **TRAIN_DEFAULTS, "epochs": 200,
                "layers": ["blocks.1", "blocks.2", "blocks.4"], "decoder": "wide_resnet50_2",
                "anomaly_map_mode": "add"}
    choices = {"decoder": ("resnet18", "resnet34", "resnet50", "wide_resnet50_2"),
               "anomaly_map_mode": ("add", "multiply")}
    arch_keys = ("backbone", "layers", "decoder", "input_size")

    def _module_kwargs(self) -> dict[str, Any]:
        from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode

        p = self.params
        if len(p["layers"]) != 3:
            raise ConfigError(f"{self.name}: layers must name 3 feature layers (the OCBE bottleneck fuses 3 maps), "
                              f"got {p['layers']}")
        self._check_layers(list(p["layers"]))
        # the encoder anomalib builds here (random, no download) only fixes the decoder's widths and strides
        return {"backbone": p["decoder"], "layers": ("layer1", "layer2", "layer3"), "pre_trained": False,
                "anomaly_map_mode": AnomalyMapGenerationMode(p["anomaly_map_mode"])}

    def _after_build(self, module: nn.Module, asked: list[tuple[str, nn.Module]]) -> None:
        encoder = module.model.encoder
        inner = self._features(list(self.params["layers"]), asked)
        if inner.feature_info.reduction() != list(encoder.reductions):
            raise ConfigError(f"{self.name}: layers {self.params['layers']} have strides "
                              f"{inner.feature_info.reduction()}; the {self.params['decoder']} decoder needs "
                              f"{list(encoder.reductions)}")
        encoder.feature_extractor = MappedFeatures(inner, list(encoder.out_dims))

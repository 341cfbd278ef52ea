"""Models of the anomalib zoo that learn from synthetic anomalies pasted on healthy images or features: DRAEM and
SuperSimpleNet (anomalib 2.7.0). Run by ``experiments/zoo.yaml`` (not the quick start)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import register_method
from anomaly_bench.methods.anomalib_zoo.adapter import (
    BACKBONE_DEFAULTS,
    TRAIN_DEFAULTS,
    ZOO_DEFAULTS,
    AnomalibAdapter,
    feature_reductions,
)

DTD_URL = "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz"


@register_method("draem")
class Draem(AnomalibAdapter):
    """DRAEM (Zavrtanik et al., ICCV 2021), anomalib ``Draem``: a reconstructive U-Net learns to remove synthetic
    anomalies (Perlin-noise masks filled with an augmented texture, blended with ``beta``) and a discriminative
    U-Net segments them from the image and its reconstruction (L2 + SSIM + focal loss); map = the discriminative
    network's anomaly probability, score = map maximum. No pretrained backbone; inputs in ``[0, 1]`` without
    normalisation, as anomalib's DRAEM pre-processor.

    Offline textures: the paper and anomalib fill the masks with Describable Textures (DTD, a download that
    anomalib's constructor starts when ``./datasets/dtd`` is missing). ``dtd_dir`` names an extracted DTD folder
    (``dtd-r1.0.1.tar.gz`` from the DTD site); left empty (the default here), the texture is anomalib's own fallback
    of ``PerlinAnomalyGenerator`` without source images: the Perlin noise itself, scaled to ``[0.25, 0.75]`` and put
    through the same random augmentations. Optimiser and schedule as anomalib (Adam lr 1e-4, learning rate x0.1 at
    epochs 400 and 600); 700 epochs as anomalib's config. Run by ``experiments/zoo.yaml``."""

    anomalib_class = "Draem"
    normalize = False
    defaults = {**ZOO_DEFAULTS, **TRAIN_DEFAULTS, "epochs": 700, "dtd_dir": "", "enable_sspcab": False,
                "sspcab_lambda": 0.1, "beta": [0.1, 1.0]}
    arch_keys = ("input_size", "enable_sspcab")

    def _module_kwargs(self) -> dict[str, Any]:
        p = self.params
        if len(p["beta"]) != 2 or not 0 <= p["beta"][0] <= p["beta"][1] <= 1:
            raise ConfigError(f"{self.name}: beta must be [low, high] in [0, 1], got {p['beta']}")
        if p["dtd_dir"]:
            dtd = Path(p["dtd_dir"]).expanduser()
            if not dtd.is_dir() or not any(dtd.rglob("*.jpg")):
                raise ConfigError(f"{self.name}: dtd_dir {dtd} holds no DTD images (*.jpg). Download {DTD_URL}, "
                                  f"extract it and point dtd_dir at the folder, or leave dtd_dir empty for "
                                  f"anomalib's Perlin-noise textures")
            self._empty = None
        else:  # an existing empty folder: anomalib neither downloads nor finds textures
            self._empty = tempfile.TemporaryDirectory(prefix="anomaly_bench_no_dtd_")
            dtd = Path(self._empty.name)
        return {"dtd_dir": str(dtd), "enable_sspcab": p["enable_sspcab"], "sspcab_lambda": p["sspcab_lambda"],
                "beta": tuple(p["beta"])}

    def _after_build(self, module: nn.Module, asked: list[tuple[str, nn.Module]]) -> None:
        aug = module.augmenter
        aug.anomaly_source_paths = sorted(aug.anomaly_source_paths)  # the file system's order is not fixed
        if self._empty is not None:
            self._empty.cleanup()
            self._empty = None

    def _build(self, with_weights: bool) -> nn.Module:
        module = super()._build(with_weights)
        self.provenance_["textures"] = "dtd" if module.augmenter.anomaly_source_paths else "perlin-fallback"
        return module


@register_method("supersimplenet")
class SuperSimpleNet(AnomalibAdapter):
    """SuperSimpleNet (Rolih et al., ICPR 2024), anomalib ``Supersimplenet``, unsupervised: frozen pretrained
    features of ``layers`` upscaled 2x, concatenated and pooled, a trainable 1x1 adaptor, Gaussian noise added under
    Perlin masks (``perlin_threshold``) as synthetic anomalies, a segmentation head and a classification head
    trained to find them; map = sigmoid of the segmentation (blurred, sigma 4), score = sigmoid of the
    classification head.

    Backbone: ``tf_efficientnet_lite0`` ``blocks.2, blocks.4`` (40/112 channels, strides 8/16, packaged ImageNet
    weights) instead of ``wide_resnet50_2.tv_in1k`` ``layer2, layer3`` (strides 8/16; internet). The supervised
    mode (which needs anomalous training images with masks) is not offered. Optimiser and schedule as anomalib (AdamW:
    adaptor lr 1e-4, heads lr 2e-4 with weight decay 1e-5; x0.4 at 80 % and 90 % of the epochs); 300 epochs as the
    paper. Run by ``experiments/zoo.yaml``."""

    anomalib_class = "Supersimplenet"
    defaults = {**BACKBONE_DEFAULTS, **ZOO_DEFAULTS, **TRAIN_DEFAULTS, "epochs": 300,
                "layers": ["blocks.2", "blocks.4"], "perlin_threshold": 0.2, "adapt_cls_features": False}
    arch_keys = ("backbone", "layers", "input_size", "adapt_cls_features")

    def _module_kwargs(self) -> dict[str, Any]:
        p = self.params
        self._check_layers(list(p["layers"]))
        side = 2 * p["input_size"] // feature_reductions(p["backbone"])[p["layers"][0]]
        if side < 32:
            raise ConfigError(f"{self.name}: input_size {p['input_size']} gives a {side}x{side} feature map; "
                              f"anomalib's Perlin masks need at least 32x32 (input_size >= 128 for blocks.2)")
        return {"backbone": p["backbone"], "layers": list(p["layers"]), "perlin_threshold": p["perlin_threshold"],
                "supervised": False, "adapt_cls_features": p["adapt_cls_features"]}

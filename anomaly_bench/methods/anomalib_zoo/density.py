"""Feature-density models of the anomalib zoo: DFM, DFKDE and CFA (anomalib 2.7.0), on pretrained features of the
packaged EfficientNet-Lite0. Run by ``experiments/zoo.yaml`` (not the quick start)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.image_array import ImageArray
from anomaly_bench.core.interface import FitContext, TrainSets, register_method
from anomaly_bench.methods.anomalib_zoo.adapter import (
    BACKBONE_DEFAULTS,
    TRAIN_DEFAULTS,
    ZOO_DEFAULTS,
    AnomalibAdapter,
    patched,
)
from anomaly_bench.nn.backbone_swap import MappedFeatures

#: channel widths of the torchvision layers CFA's descriptor is written for (``layer1..3``; sums 448 and 1792 are
#: anomalib's ``Descriptor.backbone_dims``)
CFA_WIDTHS = {"resnet18": [64, 128, 256], "wide_resnet50_2": [256, 512, 1024]}


@register_method("dfm")
class Dfm(AnomalibAdapter):
    """DFM (Ahuja et al., 2019, "Probabilistic modeling of deep features for out-of-distribution and adversarial
    detection"), anomalib ``Dfm``: features of one layer average-pooled by ``pooling_kernel_size``, one PCA keeping
    ``pca_level`` of the variance over the healthy images; ``score_type: fre`` scores the feature reconstruction
    error (with a map), ``nll`` a Gaussian's negative log-likelihood in PCA space (no map). No training loop.

    Backbone: ``tf_efficientnet_lite0`` ``blocks.4`` (112 channels, stride 16, packaged ImageNet weights) instead of
    anomalib's default ``resnet50`` ``layer3`` (stride 16; internet). Run by ``experiments/zoo.yaml``."""

    anomalib_class = "Dfm"
    memory_bank = True
    defaults = {**BACKBONE_DEFAULTS, **ZOO_DEFAULTS, "layer": "blocks.4", "pooling_kernel_size": 4,
                "pca_level": 0.97, "score_type": "fre"}
    choices = {"score_type": ("fre", "nll")}
    arch_keys = ("backbone", "layer", "input_size", "pooling_kernel_size", "score_type")

    def _module_kwargs(self) -> dict[str, Any]:
        p = self.params
        self._check_layers([p["layer"]])
        return {"backbone": p["backbone"], "layer": p["layer"], "pre_trained": True,
                "pooling_kernel_size": p["pooling_kernel_size"], "pca_level": p["pca_level"],
                "score_type": p["score_type"]}


@register_method("dfkde")
class Dfkde(AnomalibAdapter):
    """DFKDE (anomalib's deep-feature kernel density estimation), anomalib ``Dfkde``: globally average-pooled
    features, PCA to ``n_pca_components``, scaled (``feature_scaling_method``), Gaussian KDE of the healthy images
    (at most ``max_training_points``, drawn at random); score = anomalib's sigmoid-mapped KDE log-density
    (higher = anomalous). Image scores only, no maps. No training loop.

    Backbone: ``tf_efficientnet_lite0`` ``blocks.6`` (320 channels, stride 32, packaged ImageNet weights) instead of
    anomalib's default ``resnet18`` ``layer4`` (stride 32; internet). Run by ``experiments/zoo.yaml``."""

    anomalib_class = "Dfkde"
    memory_bank = True
    defaults = {**BACKBONE_DEFAULTS, **ZOO_DEFAULTS, "layers": ["blocks.6"], "n_pca_components": 16,
                "feature_scaling_method": "scale", "max_training_points": 40000}
    choices = {"feature_scaling_method": ("scale", "norm")}
    arch_keys = ("backbone", "layers", "input_size", "n_pca_components")

    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "Dfkde":
        # fewer images than components: anomalib silently fits no model; one or two more: a singular covariance
        if len(train.healthy) < self.params["n_pca_components"] + 2:
            raise ConfigError(f"{self.name}: {len(train.healthy)} training images; the KDE needs at least "
                              f"n_pca_components + 2 = {self.params['n_pca_components'] + 2} (invertible covariance)")
        return super().fit(train, ctx)

    def _module_kwargs(self) -> dict[str, Any]:
        from anomalib.models.components.classification import FeatureScalingMethod

        p = self.params
        self._check_layers(list(p["layers"]))
        return {"backbone": p["backbone"], "layers": list(p["layers"]), "pre_trained": True,
                "n_pca_components": p["n_pca_components"],
                "feature_scaling_method": FeatureScalingMethod(p["feature_scaling_method"]),
                "max_training_points": p["max_training_points"]}


@register_method("cfa")
class Cfa(AnomalibAdapter):
    """CFA (Lee et al., IEEE Access 2022, "Coupled-hypersphere-based feature adaptation"), anomalib ``Cfa``: a
    trainable CoordConv descriptor over average-pooled, concatenated pretrained features, memory bank = the mean
    descriptor map of the healthy images (``gamma_c = 1``: no k-means), trained with the coupled-hypersphere loss
    (``num_nearest_neighbors``, ``num_hard_negative_features``, ``radius``); map from the soft-min distance to the
    memory bank, score = map maximum.

    Backbone: anomalib builds CFA on a torchvision ResNet with ``weights=DEFAULT`` (a download); here the features
    are ``tf_efficientnet_lite0`` ``blocks.1, blocks.2, blocks.4`` (strides 4/8/16 as ``layer1..3``, packaged
    ImageNet weights), mapped to the widths of ``descriptor``'s layers by fixed isometric 1x1 maps
    (:class:`anomaly_bench.nn.backbone_swap.ChannelMap`), because the descriptor's input width is hard-coded per
    backbone name: ``wide_resnet50_2`` (anomalib's default, 1792 channels) or ``resnet18`` (448, smoke and ci).
    Optimiser as anomalib (AdamW lr 1e-3, weight decay 5e-4, amsgrad); 30 epochs as anomalib's config, without its
    early stopping. Run by ``experiments/zoo.yaml``."""

    anomalib_class = "Cfa"
    defaults = {**BACKBONE_DEFAULTS, **ZOO_DEFAULTS, **TRAIN_DEFAULTS, "epochs": 30,
                "layers": ["blocks.1", "blocks.2", "blocks.4"], "descriptor": "wide_resnet50_2", "gamma_c": 1,
                "gamma_d": 1, "num_nearest_neighbors": 3, "num_hard_negative_features": 3, "radius": 1e-5}
    choices = {"descriptor": tuple(CFA_WIDTHS)}
    arch_keys = ("backbone", "layers", "descriptor", "input_size", "gamma_c", "gamma_d")

    def _module_kwargs(self) -> dict[str, Any]:
        p = self.params
        return {"backbone": p["descriptor"], "gamma_c": p["gamma_c"], "gamma_d": p["gamma_d"],
                "num_nearest_neighbors": p["num_nearest_neighbors"],
                "num_hard_negative_features": p["num_hard_negative_features"], "radius": p["radius"]}

    def _patches(self, asked: list[tuple[str, nn.Module]]) -> dict[str, Any]:
        layers, widths = list(self.params["layers"]), CFA_WIDTHS[self.params["descriptor"]]

        def get_feature_extractor(backbone: str, return_nodes: list[str]) -> nn.Module:
            if len(layers) != len(return_nodes):
                raise ConfigError(f"{self.name}: layers must name {len(return_nodes)} feature layers, got {layers}")
            return MappedFeatures(self._features(layers, asked), widths, names=return_nodes)

        return {"anomalib.models.image.cfa.torch_model.get_feature_extractor": get_feature_extractor}

    @torch.no_grad()
    def _before_training(self, module: nn.Module, images: torch.Tensor | ImageArray) -> None:
        """anomalib's ``on_train_start``: centroids from the healthy images (in order, batch by batch; anomalib
        iterates its loader once, so each batch is read and preprocessed only when it is used)."""
        bs = self.params["batch_size"]
        batches = (self._batch(images[i:i + bs]) for i in range(0, len(images), bs))
        with patched({"anomalib.models.image.cfa.torch_model.tqdm": lambda it: it}):
            module.model.initialize_centroid(data_loader=batches)

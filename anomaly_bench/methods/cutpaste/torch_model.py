"""The CutPaste network (see :mod:`anomaly_bench.methods.cutpaste.method`): a timm backbone with its global average
pool, a projection MLP (Linear + BatchNorm + ReLU per layer, ``head_dims``) and a linear classifier over the
variant's classes."""

from __future__ import annotations

import torch
from torch import nn

from anomaly_bench.core.errors import ConfigError


def build_backbone(name: str) -> tuple[nn.Module, int]:
    """timm ``name`` without its classifier (``num_classes=0``: pooled features), random weights, and its feature
    width (512 for resnet18, 1280 for tf_efficientnet_lite0). Weights: :mod:`anomaly_bench.nn.backbones`."""
    import timm

    try:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as exc:  # unknown model name
        raise ConfigError(f"cutpaste: unknown timm backbone '{name}' ({exc})") from exc
    return model, int(model.num_features)


class CutPasteNet(nn.Module):
    """``forward(x) -> (pooled, embedding, logits)``: backbone pool (``pool``), projection head output (``head``),
    class logits."""

    def __init__(self, backbone: nn.Module, feat_dim: int, head_dims: list[int], n_classes: int):
        super().__init__()
        self.backbone = backbone
        layers: list[nn.Module] = []
        c = feat_dim
        for d in head_dims:
            layers += [nn.Linear(c, d), nn.BatchNorm1d(d), nn.ReLU(inplace=True)]
            c = d
        self.head = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled = self.backbone(x)
        emb = self.head(pooled)
        return pooled, emb, self.classifier(emb)

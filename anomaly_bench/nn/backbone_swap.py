"""Building anomalib models offline: no download in a constructor, backbones swapped for one with local weights.

anomalib's constructors fetch ImageNet weights themselves (``timm.create_model(..., pretrained=True)`` in
``TimmFeatureExtractor``, STFPM's teacher, FastFlow; torchvision's ``weights=DEFAULT`` in CFA and CS-Flow), which
fails without internet. Two tools let :mod:`anomaly_bench.methods.anomalib_zoo` build them anyway:

* :func:`offline_timm`: while it is active, ``timm.create_model`` never downloads (``pretrained`` is forced off), may
  build another backbone than the one named (``rename``: FastFlow only accepts ``resnet18``/``wide_resnet50_2``/CaiT/
  DeiT by name), and records every model that asked for pretrained weights; :func:`load_recorded` then gives them
  the weights of :mod:`anomaly_bench.nn.backbones` (the packaged EfficientNet-Lite0 ImageNet weights, or a
  ``weights_file``), with the provenance tag.
* :class:`ChannelMap` / :class:`MappedFeatures`: some anomalib models hard-code the channel widths of the backbone
  they were written for (Reverse Distillation's ResNet bottleneck and decoder, CFA's descriptor, CS-Flow's 304-channel
  flow input). The substitute backbone's features then go through a fixed linear 1x1 map with orthonormal columns
  (more channels than the backbone has: an isometry, every inner product and norm kept) or orthonormal rows (fewer:
  an orthogonal projection), drawn from a fixed generator (seed 0, independent of the run's seed) and stored as a
  buffer, so a saved model reloads exactly.

Nothing here trains; the swaps are documented per model in the method modules and ``methods/<name>.yaml``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.nn.backbones import load_into, pretrained_state_dict


@contextlib.contextmanager
def offline_timm(rename: dict[str, str] | None = None) -> Iterator[list[tuple[str, nn.Module]]]:
    """``timm.create_model`` without downloads for the duration; yields the list of ``(backbone, model)`` that
    asked for pretrained weights (filled as models are built). ``rename`` maps a requested backbone name to the one
    actually built (same ``features_only``/``out_indices`` arguments)."""
    import timm

    real = timm.create_model
    asked: list[tuple[str, nn.Module]] = []
    rename = dict(rename or {})

    def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        name = rename.get(model_name, model_name)
        model = real(name, pretrained=False, **kwargs)
        if pretrained:
            asked.append((name, model))
        return model

    timm.create_model = create_model
    try:
        yield asked
    finally:
        timm.create_model = real


def load_recorded(asked: list[tuple[str, nn.Module]], pretrained: bool, weights_file: str) -> str:
    """Give every recorded model the weights of its backbone (:func:`anomaly_bench.nn.backbones.pretrained_state_dict`:
    the packaged EfficientNet-Lite0 weights, ``weights_file``, or a clear error); returns the provenance tag
    (``"random"`` when ``pretrained`` is false; ``"none"`` when no model asked for weights)."""
    if not asked:
        return "none"
    tags = set()
    for name, model in asked:
        state, tag = pretrained_state_dict(name, pretrained, weights_file)
        if state is not None:
            load_into(model, state, f"backbone {name} ({tag})")
        tags.add(tag)
    if len(tags) > 1:
        raise ConfigError(f"backbones with different weight sources in one model: {sorted(tags)}")
    return tags.pop()


def orthonormal_map(c_in: int, c_out: int, seed: int = 0) -> torch.Tensor:
    """A ``(c_out, c_in)`` matrix with orthonormal columns (``c_out >= c_in``) or rows (``c_out < c_in``), from a
    private generator (the global RNG is not touched)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(max(c_in, c_out), min(c_in, c_out), generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))  # unique QR (positive diagonal of R)
    return (q if c_out >= c_in else q.T).to(torch.get_default_dtype())


class ChannelMap(nn.Module):
    """Fixed 1x1 channel map ``c_in -> c_out`` (:func:`orthonormal_map`), a buffer (saved, never trained)."""

    def __init__(self, c_in: int, c_out: int, seed: int = 0):
        super().__init__()
        self.c_in, self.c_out = c_in, c_out
        self.register_buffer("weight", orthonormal_map(c_in, c_out, seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype)[:, :, None, None])

    def extra_repr(self) -> str:
        kind = "isometry" if self.c_out >= self.c_in else "orthogonal projection"
        return f"{self.c_in} -> {self.c_out} ({kind})"


class _FeatureInfo:
    """The part of timm's ``feature_info`` anomalib reads: ``channels()`` and ``reduction()``."""

    def __init__(self, channels: list[int], reductions: list[int]):
        self._channels, self._reductions = list(channels), list(reductions)

    def channels(self) -> list[int]:
        return list(self._channels)

    def reduction(self) -> list[int]:
        return list(self._reductions)


class MappedFeatures(nn.Module):
    """A frozen timm ``features_only`` model whose outputs go through one :class:`ChannelMap` each, to ``widths``.

    Frozen as anomalib's extractors are (``TimmFeatureExtractor`` with ``requires_grad=False``): the backbone runs in
    eval mode under ``torch.no_grad`` whatever mode the model around it is in, so an optimiser over all parameters
    (CS-Flow's) never trains it. ``names``: return a dict keyed by them (a torchvision feature extractor's interface:
    CFA, CS-Flow) instead of a list (timm's, inside ``TimmFeatureExtractor``)."""

    def __init__(self, inner: nn.Module, widths: list[int], names: list[str] | None = None):
        super().__init__()
        chans = inner.feature_info.channels()
        if len(chans) != len(widths):
            raise ValueError(f"{len(chans)} feature maps, {len(widths)} target widths")
        self.inner = inner
        self.maps = nn.ModuleList(ChannelMap(c, w, seed=i) for i, (c, w) in enumerate(zip(chans, widths)))
        self.names = list(names) if names else None
        self.feature_info = _FeatureInfo(widths, inner.feature_info.reduction())
        for q in inner.parameters():
            q.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | dict[str, torch.Tensor]:
        self.inner.eval()
        with torch.no_grad():
            feats = [m(f) for m, f in zip(self.maps, self.inner(x))]
        return dict(zip(self.names, feats)) if self.names else feats


def timm_features(backbone: str, out_indices: list[int]) -> nn.Module:
    """A timm ``features_only`` model built as anomalib builds them (``exportable=True``), random weights (the caller
    records it for :func:`load_recorded`)."""
    import timm

    return timm.create_model(backbone, pretrained=False, features_only=True, exportable=True,
                             out_indices=list(out_indices))

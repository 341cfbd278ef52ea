"""f-AnoGAN's networks: Gulrajani's "Good" ResNet generator and critic and the izi_f encoder, with tflib's
initialisation and TF's normalisations; see :mod:`anomaly_bench.methods.fanogan.method` for what follows
tSchlegl/f-AnoGAN (``wgangp_64x64.py``, ``z_encoding_izif.py``) and how the sizes scale."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_bench.core.errors import ConfigError


def n_resample_blocks(size: int) -> int:
    """Residual blocks between the 4x4 base and ``size`` (64 → 4, as in the authors' code)."""
    if size < 8 or size & (size - 1):
        raise ConfigError(f"fanogan: image size {size} is not supported; use a power of two >= 8 "
                          f"(64 = authors' size, 128, 256); resize the dataset")
    return int(math.log2(size)) - 2


def critic_channels(dim: int, n_blocks: int) -> list[int]:
    """Critic/encoder widths ``dim·[1, 2, 4, 8, 8, ...]`` (input conv output, then one per block)."""
    return [dim * min(2 ** i, 8) for i in range(n_blocks + 1)]


def tf_conv(cin: int, cout: int, k: int, he_init: bool = True, bias: bool = True) -> nn.Conv2d:
    """Stride-1 'SAME' conv with tflib's uniform init (fan_out = cout·k², the pooling comes after)."""
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)
    std = math.sqrt((4.0 if he_init else 2.0) / (cin * k * k + cout * k * k))
    nn.init.uniform_(conv.weight, -std * math.sqrt(3.0), std * math.sqrt(3.0))
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def tf_linear(fin: int, fout: int) -> nn.Linear:
    """Linear with tflib's default Glorot-uniform init, bias 0."""
    lin = nn.Linear(fin, fout)
    std = math.sqrt(2.0 / (fin + fout))
    nn.init.uniform_(lin.weight, -std * math.sqrt(3.0), std * math.sqrt(3.0))
    nn.init.zeros_(lin.bias)
    return lin


def critic_norm(c: int) -> nn.Module:
    """TF ``Layernorm`` over (C, H, W) per sample with per-channel scale/offset."""
    return nn.GroupNorm(1, c, eps=1e-5)


def tf_batchnorm(c: int) -> nn.Module:
    """``tf.layers.batch_normalization`` defaults (momentum 0.99 → PyTorch 0.01, eps 1e-3)."""
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, resample: str, norm: Callable[[int], nn.Module]):
        super().__init__()
        if resample not in ("down", "up"):
            raise ValueError(f"resample must be 'down' or 'up', got {resample!r}")
        self.resample = resample
        self.shortcut = tf_conv(cin, cout, 1, he_init=False)
        if resample == "down":
            self.norm1, self.conv1 = norm(cin), tf_conv(cin, cin, 3, bias=False)
            self.norm2, self.conv2 = norm(cin), tf_conv(cin, cout, 3)
        else:
            self.norm1, self.conv1 = norm(cin), tf_conv(cin, cout, 3, bias=False)
            self.norm2, self.conv2 = norm(cout), tf_conv(cout, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            sc = self.shortcut(F.avg_pool2d(x, 2))
            h = self.conv1(F.relu(self.norm1(x)))
            h = F.avg_pool2d(self.conv2(F.relu(self.norm2(h))), 2)
        else:
            sc = self.shortcut(upsample2(x))
            h = self.conv1(upsample2(F.relu(self.norm1(x))))
            h = self.conv2(F.relu(self.norm2(h)))
        return sc + h


class DownTrunk(nn.Module):
    """Input conv (Glorot, no activation) + down blocks → flattened (8·dim·4·4) features."""

    def __init__(self, in_ch: int, size: int, dim: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        ch = critic_channels(dim, n_resample_blocks(size))
        self.input = tf_conv(in_ch, dim, 3, he_init=False)
        self.blocks = nn.Sequential(*[ResidualBlock(a, b, "down", norm) for a, b in zip(ch[:-1], ch[1:])])
        self.feature_dim = ch[-1] * 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.input(x)).flatten(1)


class Critic(nn.Module):
    """WGAN-GP critic D(x) (no sigmoid); ``features`` = f(x) used by the izif loss and the score."""

    def __init__(self, in_ch: int, size: int, dim: int):
        super().__init__()
        self.trunk = DownTrunk(in_ch, size, dim, critic_norm)
        self.output = tf_linear(self.trunk.feature_dim, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.trunk(x)).squeeze(1)


class Encoder(nn.Module):
    """izi_f encoder: the critic's trunk with BatchNorm, then linear → z (tanh for ``tanh_fc``)."""

    def __init__(self, in_ch: int, size: int, dim: int, z_dim: int, z_reg: str = "tanh_fc"):
        super().__init__()
        self.trunk = DownTrunk(in_ch, size, dim, tf_batchnorm)
        self.output = tf_linear(self.trunk.feature_dim, z_dim)
        self.z_reg = z_reg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.output(self.trunk(x))
        return torch.tanh(z) if self.z_reg == "tanh_fc" else z


class Generator(nn.Module):
    """Linear z → 8·dim×4×4, up blocks (mirror of the critic), BN, ReLU, 3x3 conv, tanh."""

    def __init__(self, out_ch: int, size: int, dim: int, z_dim: int):
        super().__init__()
        ch = critic_channels(dim, n_resample_blocks(size))[::-1]
        self.base = ch[0]
        self.input = tf_linear(z_dim, ch[0] * 16)
        self.blocks = nn.Sequential(*[ResidualBlock(a, b, "up", tf_batchnorm) for a, b in zip(ch[:-1], ch[1:])])
        self.out_norm = tf_batchnorm(ch[-1])
        self.out_conv = tf_conv(ch[-1], out_ch, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.input(z).view(-1, self.base, 4, 4)
        h = self.blocks(h)
        return torch.tanh(self.out_conv(F.relu(self.out_norm(h))))


@contextmanager
def frozen_bn_stats(module: nn.Module):
    """Batch statistics are used (train mode) but running statistics stay as they are (momentum 0)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom

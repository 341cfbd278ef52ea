"""ALAD's networks: encoder, generator and the three discriminators D_xz, D_xx, D_zz, with the authors'
initialisation and spectral norm; see :mod:`anomaly_bench.methods.alad.method` for what follows
houssamzenati/Adversarially-Learned-Anomaly-Detection (``alad/cifar10_utilities.py``) and how the sizes scale."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from anomaly_bench.core.errors import ConfigError

LEAK = 0.2
DROPOUT = 0.2
INIT_STD = 0.01


def pow2_size(image_shape: tuple[int, int, int], minimum: int, method: str) -> int:
    c, h, w = image_shape
    if h != w or h < minimum or h & (h - 1):
        raise ConfigError(f"{method}: images must be square with a power-of-2 side >= {minimum}, got {h}x{w}")
    return h


def _init(m: nn.Module) -> nn.Module:
    """Authors' init: N(0, 0.01) kernels, zero biases (BN: gamma 1, beta 0, the torch default)."""
    nn.init.normal_(m.weight, 0.0, INIT_STD)
    if m.bias is not None:
        nn.init.zeros_(m.bias)
    return m


def _layer(m: nn.Module, sn: bool) -> nn.Module:
    _init(m)  # initialise before wrapping, so that the spectral norm's u/v start from the real weight
    return spectral_norm(m, n_power_iterations=1) if sn else m


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)  # tf.layers.batch_normalization defaults


def stage_widths(size: int, channels: int) -> list[int]:
    """Widths of the stride-2 stages from the input side: doubling up to ``channels`` at 4x4."""
    n = int(math.log2(size // 4))
    return [max(channels // 2 ** (n - 1 - i), 1) for i in range(n)]


def dxx_widths(size: int, channels: int, extra_convs: bool) -> list[int]:
    n = 2 + (int(math.log2(size // 32)) if extra_convs else 0)
    first = max(channels // 8, 1)
    return [min(first * 2 ** i, channels) for i in range(n)]


class Encoder(nn.Module):
    """x -> z: ``n`` conv k4 s2 SAME [SN] + BN + LReLU stages, then conv k4 VALID (4x4 -> 1x1) -> latent."""

    def __init__(self, size: int, in_ch: int, latent: int, channels: int, sn: bool):
        super().__init__()
        layers: list[nn.Module] = []
        c_prev = in_ch
        for c in stage_widths(size, channels):
            layers += [_layer(nn.Conv2d(c_prev, c, 4, 2, 1), sn), _bn(c), nn.LeakyReLU(LEAK)]
            c_prev = c
        layers.append(_init(nn.Conv2d(c_prev, latent, 4, 1, 0)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class Generator(nn.Module):
    """z -> x: convT k4 VALID (1x1 -> 4x4) + BN + ReLU, then stride-2 convT stages, last one -> C + tanh."""

    def __init__(self, size: int, out_ch: int, latent: int, channels: int):
        super().__init__()
        widths = stage_widths(size, channels)[::-1]
        layers: list[nn.Module] = [_init(nn.ConvTranspose2d(latent, widths[0], 4, 1, 0)), _bn(widths[0]), nn.ReLU()]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [_init(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)), _bn(c_out), nn.ReLU()]
        layers += [_init(nn.ConvTranspose2d(widths[-1], out_ch, 4, 2, 1)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class DiscriminatorXZ(nn.Module):
    """(x, z) -> logit, intermediate. x-branch = E's widths (first stage without BN), flattened 4x4xC;
    z-branch 2 x (dense ``channels`` [SN], LReLU, dropout); joint dense ``2*channels`` [SN] (intermediate), dense 1."""

    def __init__(self, size: int, in_ch: int, latent: int, channels: int, sn: bool):
        super().__init__()
        layers: list[nn.Module] = []
        c_prev = in_ch
        for i, c in enumerate(stage_widths(size, channels)):
            layers.append(_layer(nn.Conv2d(c_prev, c, 4, 2, 1), sn))
            if i > 0:
                layers.append(_bn(c))
            layers.append(nn.LeakyReLU(LEAK))
            c_prev = c
        self.x_net = nn.Sequential(*layers, nn.Flatten())
        self.z_net = nn.Sequential(
            _layer(nn.Linear(latent, channels), sn), nn.LeakyReLU(LEAK), nn.Dropout(DROPOUT),
            _layer(nn.Linear(channels, channels), sn), nn.LeakyReLU(LEAK), nn.Dropout(DROPOUT))
        self.joint = nn.Sequential(_layer(nn.Linear(c_prev * 16 + channels, 2 * channels), sn),
                                   nn.LeakyReLU(LEAK), nn.Dropout(DROPOUT))
        self.out = _init(nn.Linear(2 * channels, 1))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.joint(torch.cat([self.x_net(x), self.z_net(z)], dim=1))
        return self.out(h).squeeze(1), h


class DiscriminatorXX(nn.Module):
    """(x, x') -> logit, intermediate: concat (``height``: NHWC axis 1 as in the code, or ``channel``),
    k5 s2 TF-SAME convs [SN] + LReLU + dropout (no BN), flatten = the feature-matching layer, dense 1."""

    def __init__(self, size: int, in_ch: int, channels: int, sn: bool, concat: str, extra_convs: bool):
        super().__init__()
        self.concat_dim = 2 if concat == "height" else 1
        layers: list[nn.Module] = []
        c_prev = in_ch * (2 if concat == "channel" else 1)
        widths = dxx_widths(size, channels, extra_convs)
        for c in widths:
            # TF 'SAME' with k5 s2 on an even input pads 1 before and 2 after
            layers += [nn.ZeroPad2d((1, 2, 1, 2)), _layer(nn.Conv2d(c_prev, c, 5, 2, 0), sn),
                       nn.LeakyReLU(LEAK), nn.Dropout(DROPOUT)]
            c_prev = c
        self.net = nn.Sequential(*layers, nn.Flatten())
        k = 2 ** len(widths)
        h = (2 * size if concat == "height" else size) // k
        self.feature_dim = c_prev * h * (size // k)
        self.out = _init(nn.Linear(self.feature_dim, 1))

    def forward(self, x: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.net(torch.cat([x, x2], dim=self.concat_dim))
        return self.out(f).squeeze(1), f


class DiscriminatorZZ(nn.Module):
    """(z, z') -> logit, intermediate: dense 64 [SN], dense 32 [SN] (LReLU, dropout), dense 1."""

    def __init__(self, latent: int, sn: bool):
        super().__init__()
        self.net = nn.Sequential(
            _layer(nn.Linear(2 * latent, 64), sn), nn.LeakyReLU(LEAK), nn.Dropout(DROPOUT),
            _layer(nn.Linear(64, 32), sn), nn.LeakyReLU(LEAK), nn.Dropout(DROPOUT))
        self.out = _init(nn.Linear(32, 1))

    def forward(self, z: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(torch.cat([z, z2], dim=1))
        return self.out(h).squeeze(1), h


def build_networks(arch: dict) -> dict[str, nn.Module]:
    s, c, lat, ch, sn = arch["size"], arch["in_ch"], arch["latent_dim"], arch["channels"], arch["spectral_norm"]
    return {
        "encoder": Encoder(s, c, lat, ch, sn),
        "generator": Generator(s, c, lat, ch),
        "dxz": DiscriminatorXZ(s, c, lat, ch, sn),
        "dxx": DiscriminatorXX(s, c, ch, sn, arch["dxx_concat"], arch["dxx_extra_convs"]),
        "dzz": DiscriminatorZZ(lat, sn),
    }

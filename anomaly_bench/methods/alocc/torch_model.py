"""ALOCC's networks: the refiner R (encoder-decoder) and the discriminator D with TF 'SAME' geometry and the
authors' initialisation, in the ``code`` and ``paper`` presets; see :mod:`anomaly_bench.methods.alocc.method`
for what follows khalooei/ALOCC-CVPR2018 (``models.py``, ``ops.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEAK = 0.2
INIT_STD = 0.02


PRESETS = {
    # code: df = gf = 16, 3 encoder stages (models.py); BN eps 1e-5 (ops.py)
    "code": {"width": 16, "r_enc": [2, 4, 8], "r_dec": [2, 1], "d": [1, 2, 4, 8], "bn_eps": 1e-5},
    # paper Fig. 3/4: 64-128-256-512; BN eps 1e-6
    "paper": {"width": 64, "r_enc": [1, 2, 4, 8], "r_dec": [4, 2, 1], "d": [1, 2, 4, 8], "bn_eps": 1e-6},
}


def preset_widths(preset: str, width: int) -> dict[str, list[int]]:
    """Layer widths of a preset as multiples of ``width`` (0 = the preset's own: 16 code, 64 paper)."""
    pre = PRESETS[preset]
    w = width or pre["width"]
    return {k: [w * m for m in pre[k]] for k in ("r_enc", "r_dec", "d")}


class SameConv(nn.Module):
    """``tf.nn.conv2d(k=5, s=2, 'SAME')`` on even inputs: pad 1 before and 2 after, then a VALID conv."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 5, 2, 0)
        nn.init.trunc_normal_(self.conv.weight, 0.0, INIT_STD, -2 * INIT_STD, 2 * INIT_STD)  # TF truncates at 2 sd
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (1, 2, 1, 2)))


class SameDeconv(nn.Module):
    """``tf.nn.conv2d_transpose(k=5, s=2, 'SAME')`` to 2H: a VALID transposed conv (2H+3) cropped [1:1+2H]."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(c_in, c_out, 5, 2, 0)
        nn.init.normal_(self.deconv.weight, 0.0, INIT_STD)
        nn.init.zeros_(self.deconv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self.deconv(x)[..., 1:1 + 2 * h, 1:1 + 2 * w]


def _bn(c: int, eps: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=eps, momentum=0.1)  # TF decay 0.9


class Refiner(nn.Module):
    """R: encoder (conv, BN, LReLU)* then decoder (deconv, BN, ReLU)* and a last deconv to C + tanh."""

    def __init__(self, in_ch: int, enc: list[int], dec: list[int], bn_eps: float):
        super().__init__()
        if len(dec) != len(enc) - 1:
            raise ValueError("alocc: R needs len(dec) == len(enc) - 1")
        layers: list[nn.Module] = []
        c_prev = in_ch
        for c in enc:
            layers += [SameConv(c_prev, c), _bn(c, bn_eps), nn.LeakyReLU(LEAK)]
            c_prev = c
        for c in dec:
            layers += [SameDeconv(c_prev, c), _bn(c, bn_eps), nn.ReLU()]
            c_prev = c
        layers += [SameDeconv(c_prev, in_ch), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Discriminator(nn.Module):
    """D: conv (no BN on the first), BN, LReLU per stage, flatten, linear -> logit."""

    def __init__(self, in_ch: int, size: int, widths: list[int], bn_eps: float):
        super().__init__()
        layers: list[nn.Module] = []
        c_prev = in_ch
        for i, c in enumerate(widths):
            layers.append(SameConv(c_prev, c))
            if i > 0:
                layers.append(_bn(c, bn_eps))
            layers.append(nn.LeakyReLU(LEAK))
            c_prev = c
        self.net = nn.Sequential(*layers, nn.Flatten())
        side = size // 2 ** len(widths)
        self.out = nn.Linear(c_prev * side * side, 1)
        nn.init.normal_(self.out.weight, 0.0, INIT_STD)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(x)).squeeze(1)


def build_networks(arch: dict) -> tuple[Refiner, Discriminator]:
    eps = PRESETS[arch["preset"]]["bn_eps"]
    w = preset_widths(arch["preset"], arch["width"])
    return (Refiner(arch["in_ch"], w["r_enc"], w["r_dec"], eps),
            Discriminator(arch["in_ch"], arch["size"], w["d"], eps))

"""The AE of MedIAnomaly / AE4AD (Cai et al.): the network of :mod:`anomaly_bench.methods.medianomaly_ae.method`."""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int, depth: int, down: bool, last: bool = False) -> nn.Sequential:
    """One resolution stage: a 4x4 stride-2 (transposed) convolution + BN + ReLU, and ``depth - 1`` 3x3 conv + BN +
    ReLU layers (after the down convolution; before the up convolution, at the input width). The output stage
    ends on the bare transposed convolution (no BN, no activation): the reconstruction is linear."""
    conv = nn.Conv2d if down else nn.ConvTranspose2d
    main = [conv(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    c_extra = c_out if down else c_in
    extra = []
    for _ in range(depth - 1):
        extra += [nn.Conv2d(c_extra, c_extra, 3, 1, 1, bias=False), nn.BatchNorm2d(c_extra), nn.ReLU(inplace=True)]
    layers = main + extra if down else extra + main
    return nn.Sequential(*(layers[:-2] if last else layers))


class MedIAnomalyAENet(nn.Module):
    """Four down stages (widths w, 2w, 4w, 4w with w = ``base_width * expansion``) to ``size / 16`` px, a dense
    bottleneck ``flatten -> Linear(hidden) -> BN1d -> ReLU -> Linear(latent)`` and its mirror, four up stages."""

    def __init__(self, channels: int = 1, image_size: int = 64, base_width: int = 16, expansion: int = 1,
                 hidden: int = 1024, latent: int = 16, en_depth: int = 1, de_depth: int = 1):
        super().__init__()
        w = base_width * expansion
        self.fm, self.top = image_size // 16, 4 * w
        widths = [channels, w, 2 * w, 4 * w, 4 * w]
        self.encoder = nn.Sequential(*[_block(widths[i], widths[i + 1], en_depth, down=True) for i in range(4)])
        flat = self.top * self.fm * self.fm
        self.to_latent = nn.Sequential(nn.Linear(flat, hidden), nn.BatchNorm1d(hidden), nn.ReLU(True),
                                       nn.Linear(hidden, latent))
        self.from_latent = nn.Sequential(nn.Linear(latent, hidden), nn.BatchNorm1d(hidden), nn.ReLU(True),
                                         nn.Linear(hidden, flat))
        up = widths[::-1]
        self.decoder = nn.Sequential(*[_block(up[i], up[i + 1], de_depth, down=False, last=i == 3) for i in range(4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.to_latent(self.encoder(x).flatten(1))
        return self.decoder(self.from_latent(z).view(len(x), self.top, self.fm, self.fm))

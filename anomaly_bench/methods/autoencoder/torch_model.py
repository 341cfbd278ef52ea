"""The convolutional autoencoder network (see :mod:`anomaly_bench.methods.autoencoder.method`)."""

from __future__ import annotations

import torch
from torch import nn


class ConvAutoencoder(nn.Module):
    """Encoder: ``depth`` conv(4, stride 2)+BN+LeakyReLU stages doubling the width; 1x1 bottleneck conv to
    ``latent_channels``; decoder mirrors it with transposed convs; tanh output."""

    def __init__(self, channels: int = 1, width: int = 32, depth: int = 4, latent_channels: int = 64):
        super().__init__()
        enc, dec, c = [], [], channels
        widths = [width * 2**i for i in range(depth)]
        for w in widths:
            enc += [nn.Conv2d(c, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.LeakyReLU(0.2, inplace=True)]
            c = w
        enc += [nn.Conv2d(c, latent_channels, 1)]
        dec += [nn.Conv2d(latent_channels, c, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        for w in reversed([channels] + widths[:-1]):
            last = w == channels and len(dec) >= 3 * depth
            dec += [nn.ConvTranspose2d(c, w, 4, 2, 1, bias=last)]
            if not last:
                dec += [nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        dec += [nn.Tanh()]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

"""The networks of Deep SVDD (see :mod:`anomaly_bench.methods.deepsvdd.method`): a LeNet-type encoder φ and the
autoencoder whose encoder part initialises it (authors' ``networks/cifar10_LeNet.py``, generalised to grey images of
32, 64 or 128 px)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_bench.core.errors import ConfigError

#: BatchNorm epsilon of the authors' networks
BN_EPS = 1e-4


def _bn2d(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, affine=False)


def check_arch(size: int, n_blocks: int, rep_dim: int) -> None:
    """ConfigError unless ``size`` is a power of two that ``n_blocks`` 2x2 max-pools divide, and the decoder's 4x4 seed
    takes ``rep_dim`` (a multiple of 16)."""
    if size < 8 or size & (size - 1):
        raise ConfigError(f"deepsvdd: image size {size} must be a power of two >= 8 (32, 64, 128, ...)")
    if size // 2**n_blocks < 1:
        raise ConfigError(f"deepsvdd: {n_blocks} max-pool blocks do not fit a {size} px image")
    if rep_dim % 16:
        raise ConfigError(f"deepsvdd: rep_dim {rep_dim} must be a multiple of 16 (the decoder starts from rep_dim/16 "
                         f"channels of 4x4)")


class LeNetEncoder(nn.Module):
    """φ: ``n_blocks`` x [5x5 conv (padding 2, no bias) → BatchNorm (affine=False) → LeakyReLU → 2x2 max-pool] with
    widths ``width * 2**i``, then a bias-free linear layer to ``rep_dim``. No bias anywhere and no affine BN shift
    (Ruff et al., Prop. 2: a bias lets the network map everything onto c, the trivial "hypersphere collapse")."""

    def __init__(self, channels: int = 1, size: int = 64, width: int = 32, n_blocks: int = 3, rep_dim: int = 128):
        super().__init__()
        check_arch(size, n_blocks, rep_dim)
        self.rep_dim = rep_dim
        self.widths = [width * 2**i for i in range(n_blocks)]
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        c = channels
        for w in self.widths:
            self.convs.append(nn.Conv2d(c, w, 5, padding=2, bias=False))
            self.bns.append(_bn2d(w))
            c = w
        self.feat = c * (size // 2**n_blocks) ** 2
        self.fc = nn.Linear(self.feat, rep_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in zip(self.convs, self.bns):
            x = F.max_pool2d(F.leaky_relu(bn(conv(x))), 2)
        return self.fc(x.flatten(1))


class LeNetAutoencoder(nn.Module):
    """The pretraining autoencoder: :class:`LeNetEncoder` (the same modules, so its weights load into φ), a BatchNorm1d
    (affine=False) on the code as in the authors' CIFAR-10 autoencoder, then a decoder from ``rep_dim/16`` channels of
    4x4: LeakyReLU, and per doubling to ``size`` a 5x5 transposed conv (no bias) → BN → LeakyReLU → nearest x2
    upsampling (widths mirroring the encoder's; extra stages at the widest), a last 5x5 transposed conv to the image
    channels and tanh (the authors' sigmoid is for [0, 1] inputs; ours are in [-1, 1]). Conv weights: Xavier-uniform
    with the LeakyReLU gain, as the authors' CIFAR-10 autoencoder."""

    def __init__(self, channels: int = 1, size: int = 64, width: int = 32, n_blocks: int = 3, rep_dim: int = 128):
        super().__init__()
        self.encoder = LeNetEncoder(channels, size, width, n_blocks, rep_dim)
        self.code_bn = nn.BatchNorm1d(rep_dim, eps=BN_EPS, affine=False)
        stages = int(math.log2(size // 4))
        enc = self.encoder.widths
        widths = ([enc[-1]] * max(stages - len(enc), 0) + enc[::-1])[:stages]
        self.deconvs = nn.ModuleList()
        self.dec_bns = nn.ModuleList()
        c = rep_dim // 16
        for w in widths:
            self.deconvs.append(nn.ConvTranspose2d(c, w, 5, padding=2, bias=False))
            self.dec_bns.append(_bn2d(w))
            c = w
        self.out = nn.ConvTranspose2d(c, channels, 5, padding=2, bias=False)
        gain = nn.init.calculate_gain("leaky_relu")
        for m in [*self.encoder.convs, *self.deconvs, self.out]:
            nn.init.xavier_uniform_(m.weight, gain=gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.code_bn(self.encoder(x))
        h = F.leaky_relu(z.view(len(x), -1, 4, 4))
        for deconv, bn in zip(self.deconvs, self.dec_bns):
            h = F.interpolate(F.leaky_relu(bn(deconv(h))), scale_factor=2)
        return torch.tanh(self.out(h))

"""GANomaly's networks (NetG = E1 -> decoder -> E2, NetD) and the authors' ``weights_init``; see
:mod:`anomaly_bench.methods.ganomaly.method` for what follows samet-akcay/ganomaly (``lib/networks.py``)."""

from __future__ import annotations

import torch
from torch import nn

from anomaly_bench.core.errors import ConfigError


def check_size(size: int) -> None:
    if size < 16 or size & (size - 1):
        raise ConfigError(f"ganomaly: image size {size} is not supported; use a power of two >= 16 "
                          f"(32 = authors' default, 64, 128, 256); resize the dataset")


def dcgan_encoder_layers(isize: int, nz: int, nc: int, ndf: int, extra_layers: int = 0) -> list[nn.Module]:
    """The authors' DCGAN ``Encoder.main`` as a layer list (last = final conv to ``nz``)."""
    check_size(isize)
    layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    csize, c = isize // 2, ndf
    for _ in range(extra_layers):
        layers += [nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True)]
    while csize > 4:
        layers += [nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2, inplace=True)]
        c, csize = 2 * c, csize // 2
    layers.append(nn.Conv2d(c, nz, 4, 1, 0, bias=False))
    return layers


class DCGANEncoder(nn.Module):
    def __init__(self, isize: int, nz: int, nc: int, ndf: int, extra_layers: int = 0):
        super().__init__()
        self.main = nn.Sequential(*dcgan_encoder_layers(isize, nz, nc, ndf, extra_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class DCGANDecoder(nn.Module):
    def __init__(self, isize: int, nz: int, nc: int, ngf: int, extra_layers: int = 0):
        super().__init__()
        check_size(isize)
        c = ngf // 2 * (isize // 4)
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, c, 4, 1, 0, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
        csize = 4
        while csize < isize // 2:
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c, csize = c // 2, csize * 2
        for _ in range(extra_layers):
            layers += [nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(c, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class NetG(nn.Module):
    """E1 → decoder → E2; returns (x̂, z, ẑ) with z, ẑ of shape (B, nz, 1, 1)."""

    def __init__(self, isize: int, nc: int, nz: int, ngf: int, extra_layers: int = 0):
        super().__init__()
        self.encoder1 = DCGANEncoder(isize, nz, nc, ngf, extra_layers)
        self.decoder = DCGANDecoder(isize, nz, nc, ngf, extra_layers)
        self.encoder2 = DCGANEncoder(isize, nz, nc, ngf, extra_layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encoder1(x)
        x_hat = self.decoder(z)
        return x_hat, z, self.encoder2(x_hat)


class NetD(nn.Module):
    """DCGAN encoder with nz = 1; returns (probability (B,), features (B, C, 4, 4))."""

    def __init__(self, isize: int, nc: int, ndf: int, extra_layers: int = 0):
        super().__init__()
        layers = dcgan_encoder_layers(isize, 1, nc, ndf, extra_layers)
        self.features = nn.Sequential(*layers[:-1])
        self.classifier = nn.Sequential(layers[-1], nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.classifier(f).view(-1), f


def weights_init(module: nn.Module) -> None:
    """The authors' ``weights_init`` (apply with ``net.apply``)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def maybe_reinit_discriminator(netd: nn.Module, d_loss: float, threshold: float) -> bool:
    """The authors' ``reinit_d``: re-initialise D's weights when its loss fell below ``threshold``."""
    if d_loss < threshold:
        netd.apply(weights_init)
        return True
    return False

"""MedAI AnomalyPro's networks (StarGAN-style generator, PatchGAN critic, the authors' InstanceNorm with faster
kernels), the generator heads (mask composition, Eqs. 1-2; Brainomaly's additive head) and the memory layouts;
see :mod:`anomaly_bench.methods.medai_anomalypro.method` for what follows the authors' ``model.py``."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_bench.nn.common import at_least_fp32

CHANNELS_LAST = torch.channels_last
#: ``Generator.channels_last_tail`` per layout (``all`` converts the whole network instead)
GENERATOR_TAIL = {"all": -1, "none": -1, "head": 0, "tail": 3}


def split_head(y: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generator output -> (B_int = tanh(first C channels), M = (tanh(last channel) + 1) / 2)."""
    return torch.tanh(y[:, :channels]), (torch.tanh(y[:, channels:channels + 1]) + 1.0) / 2.0


def compose_healthy(b_int: torch.Tensor, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Eq. 2: B0 = B_int * M + A * (1 - M) (the translated, healthy-looking image)."""
    return b_int * mask + x * (1.0 - mask)


def compose_reconstruction(b_int: torch.Tensor, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Eq. 1: A0 = A * M + B_int * (1 - M) (the complementary reconstruction of the input)."""
    return x * mask + b_int * (1.0 - mask)


def additive_translate(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Brainomaly: translated = tanh(x + G(x))."""
    return torch.tanh(x + delta)


def auto_critic_layers(size: int, cap: int = 6) -> int:
    """Strided critic convs for an image side ``size``: floor(log2(size)) - 2, capped (patch map >= 4 px at 2^k)."""
    return max(1, min(cap, int(math.floor(math.log2(max(size, 2)))) - 2))


def resolve_layout(channels_last: str, device: torch.device, compiled: bool = False) -> str:
    """Memory layout: ``all`` (G and D in channels_last), ``tail`` (the critic and only G's last up-sampling block
    and output conv; the CPU default), ``head`` (only G's output conv) or ``none``. On the CPU oneDNN runs the
    critic, the last transposed conv and the 7x7 output conv to 1-4 channels faster in channels_last, while the
    InstanceNorms and the residual convs are faster in NCHW (1 thread, 64 px, batch 8, widths 32: ``tail`` 1.29x
    the authors' step vs 1.26x for ``head`` in the same process, results/bench). ``auto`` on CUDA: ``none`` in
    eager mode, ``all`` with ``compile`` (H100, paper shape, bf16: eager 1.81x the authors' speed in NCHW vs 1.55x
    in channels_last; compiled 2.10x in NCHW vs 2.35x in channels_last)."""
    if channels_last == "auto":
        if device.type == "cuda":
            return "all" if compiled else "none"
        return "tail"
    return channels_last


class InstanceNorm(nn.InstanceNorm2d):
    """InstanceNorm2d(affine, track_running_stats) as in the authors' model.py, with two switches:

    * ``eval_stats``: ``instance`` (default) normalises with each image's own statistics also in eval mode (what
      the authors' test code does, since it never calls ``G.eval()``); ``running`` uses the tracked statistics.
    * ``impl`` (same function, different kernels; all update the running statistics like ``F.instance_norm``):
      ``torch``: ``F.instance_norm`` (the authors' module; its output is a view, so the in-place ReLU after it
      costs a full copy in the backward pass); ``group``: ``native_group_norm`` with one group per channel, which
      is instance norm with a fused kernel (about 2.5x faster forward+backward on CPU); ``fused``: ``var_mean`` +
      one ``addcmul``, which keeps channels_last layouts (both other kernels make NCHW copies on CUDA).
    """

    def __init__(self, num_features: int, eval_stats: str = "instance", impl: str = "torch"):
        super().__init__(num_features, affine=True, track_running_stats=True)
        self.eval_stats, self.impl = eval_stats, impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_input_stats = self.training or self.eval_stats == "instance"
        if self.impl == "torch":
            if use_input_stats and not self.training:
                return F.instance_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
            return super().forward(x)
        if self.impl == "group" and use_input_stats:
            N, C, H, W = x.shape
            w, b = self.weight, self.bias
            if w.dtype != x.dtype:  # autocast: the kernel wants one dtype (it accumulates in fp32)
                w, b = w.to(x.dtype), b.to(x.dtype)
            if x.device.type != "cpu":  # the CUDA kernel needs NCHW (the CPU one also takes channels_last)
                x = x.contiguous()
            y, mean, rstd = torch.native_group_norm(x, w, b, N, C, H * W, C, self.eps)
            if self.training:
                with torch.no_grad():
                    self._track(mean, rstd.pow(-2) - self.eps, H * W)
            return y
        if use_input_stats:
            xs = at_least_fp32(x)  # statistics in >= fp32
            var, mean = torch.var_mean(xs, dim=(2, 3), keepdim=True, correction=0)
            if self.training:
                with torch.no_grad():
                    self._track(mean.flatten(1), var.flatten(1), x.shape[2] * x.shape[3])
        else:
            mean = self.running_mean.view(1, -1, 1, 1)
            var = self.running_var.view(1, -1, 1, 1)
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        shift = self.bias.view(1, -1, 1, 1) - mean * scale
        return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))

    def _track(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        """Running statistics as ``F.instance_norm``: batch means of the instance means / unbiased variances."""
        dt = self.running_mean.dtype
        self.running_mean.lerp_(mean.mean(0).to(dt), self.momentum)
        self.running_var.lerp_((var * (n / max(n - 1, 1))).mean(0).to(dt), self.momentum)
        self.num_batches_tracked.add_(1)


class ResidualBlock(nn.Module):
    """conv3x3-IN-ReLU-conv3x3-IN with identity skip (no biases)."""

    def __init__(self, dim: int, **norm: Any):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False), InstanceNorm(dim, **norm), nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False), InstanceNorm(dim, **norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x)


class Generator(nn.Module):
    """StarGAN-style generator; ``out_channels`` = C + 1 (mask head) or 1 (additive head)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 2, conv_dim: int = 64, n_res: int = 6,
                 eval_stats: str = "instance", norm_impl: str = "torch"):
        super().__init__()
        norm = {"eval_stats": eval_stats, "impl": norm_impl}
        layers: list[nn.Module] = [nn.Conv2d(in_channels, conv_dim, 7, 1, 3, bias=False),
                                   InstanceNorm(conv_dim, **norm), nn.ReLU(inplace=True)]
        d = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(d, d * 2, 4, 2, 1, bias=False), InstanceNorm(d * 2, **norm), nn.ReLU(inplace=True)]
            d *= 2
        layers += [ResidualBlock(d, **norm) for _ in range(n_res)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(d, d // 2, 4, 2, 1, bias=False), InstanceNorm(d // 2, **norm),
                       nn.ReLU(inplace=True)]
            d //= 2
        self.main = nn.Sequential(*layers)
        self.head = nn.Conv2d(d, out_channels, 7, 1, 3, bias=False)
        #: layout only, same function: run the last ``channels_last_tail`` layers of ``main`` and the output conv in
        #: channels_last (-1: none). A CPU speed-up (see ``resolve_layout``): 0 = the output conv only (oneDNN is
        #: ~1.6x faster there for a 7x7 conv to 1-4 channels), 3 = also the last up-sampling block.
        self.channels_last_tail = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.channels_last_tail
        if k < 0:
            return self.head(self.main(x))
        layers = list(self.main)
        h = x
        for layer in layers[:len(layers) - k]:
            h = layer(h)
        h = h.contiguous(memory_format=CHANNELS_LAST)
        for layer in layers[len(layers) - k:]:
            h = layer(h)
        return self.head(h)


class Critic(nn.Module):
    """PatchGAN critic: ``n_layers`` strided 4x4 convs (widths conv_dim * 2^k) + LeakyReLU(0.01), 3x3 conv to 1."""

    def __init__(self, in_channels: int = 1, conv_dim: int = 64, n_layers: int = 6):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, conv_dim, 4, 2, 1), nn.LeakyReLU(0.01)]
        d = conv_dim
        for _ in range(1, n_layers):
            layers += [nn.Conv2d(d, d * 2, 4, 2, 1), nn.LeakyReLU(0.01)]
            d *= 2
        self.main = nn.Sequential(*layers)
        self.out = nn.Conv2d(d, 1, 3, 1, 1, bias=False)
        #: layout only, same function: inputs are made channels_last (the weights are converted by the trainer)
        self.channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=CHANNELS_LAST)
        return self.out(self.main(x))

    def set_inplace(self, inplace: bool) -> None:
        """In-place LeakyReLU (same values and gradients, incl. the gradient penalty's double backward, since the
        slope is positive; saves one activation copy per layer). The authors' module is not in place."""
        for m in self.main:
            if isinstance(m, nn.LeakyReLU):
                m.inplace = inplace

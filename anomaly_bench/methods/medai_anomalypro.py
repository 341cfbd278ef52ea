"""MedAI AnomalyPro (= HealthyGAN): one-directional, mask-based image-to-image translation to "healthy".

Paper: Kumar et al., "MedAI AnomalyPro: Advancing Unsupervised Anomaly Detection in Medical Imaging" (the seed
paper); the method, its equations and losses are those of HealthyGAN (Siddiquee et al., SASHIMI 2022; official
code github mahfuzmohammad/HealthyGAN, ``model.py``/``solver.py``). The ``head: additive`` variant is Brainomaly
(WACV 2024, github mahfuzmohammad/Brainomaly).

What follows the authors' code
  * StarGAN-style generator (7x7 conv, 2 strided 4x4 down convs, residual bottleneck, 2 transposed 4x4 up convs,
    7x7 conv to C image channels + 1 mask channel, no biases, InstanceNorm(affine, track_running_stats)) and a
    PatchGAN critic (strided 4x4 convs + LeakyReLU(0.01), 3x3 conv to 1 channel, loss on the mean of the map).
  * Eq. 2 ``B0 = B_int*M + A*(1-M)``, Eq. 1 ``A0 = A*M + B_int*(1-M)``, ``B_int = tanh``, ``M = (tanh+1)/2``.
  * WGAN-GP critic (lambda_gp 10, alpha ~ U(0,1) per sample between a B image and B0 of an A image), generator
    every ``n_critic`` = 2 critic steps with adv(A) + adv(B) + id + rec + 0.1 * focus loss (0.5 A-mask + 0.5
    B-mask), Adam 1e-4 (0.5, 0.999), batch 16, random horizontal flips (the authors' training transform).
  * Score: mean over pixels of ``|x - B0(x)| / 2``; map: ``|x - B0(x)| / 2``; reconstruction: ``B0(x)``.
  * At scoring the InstanceNorms use each image's own statistics: the authors never call ``G.eval()`` in their
    test code, so their released scores use instance statistics. ``norm_at_score: running`` uses the tracked
    running statistics instead (PyTorch's eval semantics).

Where we deviate, and the flag that gives the authors' behaviour
  * Grayscale images are processed with C = 1 channel; the authors convert to RGB (3 equal channels).
    ``replicate_rgb: true`` feeds 3 replicated channels and averages the 3 output channels for maps/scores.
  * Learning-rate decay: the authors' StarGAN loop subtracts ``lr/num_iters_decay`` every ``lr_update_step``
    (1000) iterations, so over the last 100k iterations the rate only falls by 0.1 % (a StarGAN quirk). The paper
    and the reference say "decays linearly to 0"; ``lr_decay: linear`` (default) does that per iteration,
    ``lr_decay: stargan`` reproduces the authors' code exactly.
  * Sets A and B are sampled independently (two shuffled streams), where the authors' loader pairs
    ``A[i % |A|]`` with ``B[i % |B|]`` in one shuffled index; the batch size is ``min(batch, |A|, |B|)``.
  * Critic depth: the authors fix 6 strided convs (at 256 px a 4x4 patch map). ``critic_layers: 0`` picks
    ``floor(log2(size)) - 2`` capped at 6, so the map stays 4 px at any power-of-two size (6 at 256 px).

Speed (same algorithm, fewer passes; ``reference_train_step`` below is the authors' step for comparison)
  * On generator iterations G runs once on ``cat(x_A, x_B)`` and the critic step uses the detached A half (G has
    not changed in between, so this equals the authors' separate forward); on critic-only iterations G runs
    under ``no_grad``. The critic sees ``cat(real, fake)`` in one call (it has no batch-coupled layers); its
    weights are frozen during the generator backward. Only the InstanceNorm running statistics (unused at
    scoring by default) see a different update sequence.
  * CUDA: bf16 autocast for G and D (gradient penalty always fp32; composition and losses fp32), NCHW with the
    group-norm kernel for the InstanceNorms, cudnn.benchmark, fused Adam, data resident on the device, no host sync
    per iteration (losses are kept as device tensors and read every ``log_every`` iterations), optional
    ``torch.compile`` of G (``compile``; on in the ``paper`` profile, where G and D then run in channels_last).
    Measured on one H100 at the paper shape (256 px, batch 16, widths 64; benchmarks/bench_anomalypro_step.py):
    the authors' step 13.2 it/s; this step 1.81x in eager mode, 2.35x with ``compile`` (+ channels_last).
  * CPU: fp32; InstanceNorm through the fused group-norm kernel (``norm_impl: auto``); the critic and the
    generator's last up-sampling block and output conv run in channels_last (``channels_last: auto`` = ``tail`` on
    the CPU), the rest of G in NCHW (faster there); in-place LeakyReLU in the critic; fused Adam.
    Measured at 64 px, batch 8, widths 32, 3 res blocks, 1 thread: 1.29-1.31x the authors' step (``head`` layout,
    the previous default: 1.24-1.29x), about 1.4x with ``compile`` (inductor needs a C++ compiler and ~1 min to
    compile, so it is off by default).
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import AnomalyMethod, FitContext, ScoreResult, TrainSets
from anomaly_bench.core.registry import register_method
from anomaly_bench.harness.trainer import ResumableBatchSampler
from anomaly_bench.nn.common import at_least_fp32, linear_decay_lambda, map_batches, seed_everything

log = logging.getLogger("anomaly_bench")

CHANNELS_LAST = torch.channels_last
#: ``Generator.channels_last_tail`` per layout (``all`` converts the whole network instead)
GENERATOR_TAIL = {"all": -1, "none": -1, "head": 0, "tail": 3}
#: a final mean mask above this on both sets is reported as saturated (see MedAIAnomalyPro._check_mask)
MASK_SATURATED = 0.95
#: a final mean D(fake) - D(real) above this is reported as a critic behind its generator (a constant critic
#: scores 0, an up-to-date WGAN critic >= 0; the margin ignores log-window noise). See MedAIAnomalyPro._check_critic
CRITIC_BEHIND = 0.1


class MissingMixedSetError(ConfigError, ValueError):
    """MedAI AnomalyPro needs the unannotated mixed set A (``train.mixed``)."""


# ============================================================================================== #
#  Pure functions (pinned by unit tests on hand-made tensors)                                     #
# ============================================================================================== #

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


def mask_small_loss(mask: torch.Tensor) -> torch.Tensor:
    """(mean M)^2: keeps the mask small (authors' ``mask_small_criterion_square``)."""
    return mask.mean() ** 2


def mask_zero_one_loss(mask: torch.Tensor, center: float = 0.5, eps: float = 0.01) -> torch.Tensor:
    """mean 1/(|M - 0.5| + eps) - 1/(0.5 + eps): pushes M to 0 or 1; 0 when M is all 0 or all 1."""
    return (1.0 / ((mask - center).abs() + eps)).mean() - 1.0 / (center + eps)


def focus_loss(mask: torch.Tensor, lambda_msmall: float = 1.0, lambda_mzerone: float = 1.0,
               eps: float = 0.01) -> torch.Tensor:
    """The paper's focus loss on one mask batch: lambda_msmall * small + lambda_mzerone * zero-one."""
    return lambda_msmall * mask_small_loss(mask) + lambda_mzerone * mask_zero_one_loss(mask, 0.5, eps)


def gradient_penalty(critic: nn.Module, x_hat: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: mean over samples of (||d sum(D(x_hat)) / d x_hat||_2 - 1)^2, computed in fp32.

    ``x_hat`` must require grad; the graph is kept (create_graph) so the penalty can be back-propagated."""
    with _autocast_off(x_hat.device):
        out = critic(x_hat)
        return gradient_penalty_from_output(out, x_hat)


def gradient_penalty_from_output(out: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Gradient penalty when ``out = D(x_hat)`` was already computed (e.g. inside a merged critic batch)."""
    (grad,) = torch.autograd.grad(at_least_fp32(out).sum(), x_hat, create_graph=True)
    norm = grad.flatten(1).pow(2).sum(1).sqrt()
    return ((norm - 1.0) ** 2).mean()


def critic_loss(d_real: torch.Tensor, d_fake: torch.Tensor, gp: torch.Tensor, lambda_gp: float = 10.0
                ) -> torch.Tensor:
    """L_D = -mean D(x_B) + mean D(B0(x_A)) + lambda_gp * GP (Eq. 3)."""
    return -at_least_fp32(d_real).mean() + at_least_fp32(d_fake).mean() + lambda_gp * gp


def generator_losses(x_a: torch.Tensor, x_b: torch.Tensor, b_int_a: torch.Tensor, mask_a: torch.Tensor,
                     b_int_b: torch.Tensor, mask_b: torch.Tensor, d_fake_a: torch.Tensor, d_fake_b: torch.Tensor,
                     lambda_id: float = 1.0, lambda_rec: float = 1.0, lambda_mask: float = 0.1,
                     lambda_msmall: float = 1.0, lambda_mzerone: float = 1.0, eps: float = 0.01
                     ) -> dict[str, torch.Tensor]:
    """HealthyGAN generator objective (Eq. 5). ``d_fake_a = D(B0(x_A))``, ``d_fake_b = D(B0(x_B))``.

    Returns the terms ``adv_a, adv_b, id, rec, mask`` and ``total``."""
    adv_a = -at_least_fp32(d_fake_a).mean()
    adv_b = -at_least_fp32(d_fake_b).mean()
    ident = (x_b - b_int_b).abs().mean()
    rec = (x_a - compose_reconstruction(b_int_a, mask_a, x_a)).abs().mean()
    mask = 0.5 * focus_loss(mask_a, lambda_msmall, lambda_mzerone, eps) \
        + 0.5 * focus_loss(mask_b, lambda_msmall, lambda_mzerone, eps)
    total = adv_a + adv_b + lambda_id * ident + lambda_rec * rec + lambda_mask * mask
    return {"adv_a": adv_a, "adv_b": adv_b, "id": ident, "rec": rec, "mask": mask, "total": total}


def additive_generator_losses(x_b: torch.Tensor, translated_b: torch.Tensor, d_fake_a: torch.Tensor,
                              lambda_id: float = 1.0) -> dict[str, torch.Tensor]:
    """Brainomaly generator objective: -mean D(tanh(x_A + G(x_A))) + lambda_id * mean|x_B - tanh(x_B + G(x_B))|."""
    adv_a = -at_least_fp32(d_fake_a).mean()
    ident = (x_b - translated_b).abs().mean()
    return {"adv_a": adv_a, "id": ident, "total": adv_a + lambda_id * ident}


def anomaly_map(x: torch.Tensor, translated: torch.Tensor) -> torch.Tensor:
    """|x - B0(x)| / 2 averaged over channels: (N, H, W) in [0, 1] for inputs in [-1, 1]."""
    return (at_least_fp32(x) - at_least_fp32(translated)).abs().mean(1) / 2.0


def auto_critic_layers(size: int, cap: int = 6) -> int:
    """Strided critic convs for an image side ``size``: floor(log2(size)) - 2, capped (patch map >= 4 px at 2^k)."""
    return max(1, min(cap, int(math.floor(math.log2(max(size, 2)))) - 2))


def lr_factor(iteration: int, total: int, decay_iters: int, mode: str = "linear", update_step: int = 1000) -> float:
    """LR multiplier used at 0-based ``iteration``.

    ``linear``: 1 until ``total - decay_iters``, then linearly to 0 (the paper's description).
    ``stargan``: the authors' loop: after each iteration count ``m`` with ``m % update_step == 0`` and
    ``m > total - decay_iters`` the rate drops by ``lr / decay_iters`` (so it barely decays)."""
    if mode == "linear":
        return linear_decay_lambda(total, decay_iters)(iteration)
    if decay_iters <= 0:
        return 1.0
    start = max(total - decay_iters, 0)
    k = max(0, iteration // update_step - start // update_step)
    return 1.0 - k / float(decay_iters)


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


def _autocast_off(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False) if device.type == "cuda" \
        else contextlib.nullcontext()


# ============================================================================================== #
#  Networks (plain nn.Module)                                                                     #
# ============================================================================================== #

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


# ============================================================================================== #
#  Training step (fast path) and the authors' step (reference for benchmarks and tests)           #
# ============================================================================================== #

class AnomalyProTrainer:
    """Holds G, D, their optimisers and the loss weights; ``step`` runs one iteration (critic step, plus a
    generator step every ``n_critic``). Losses stay on the device until :meth:`pop_losses`."""

    D_KEYS = ("d_real", "d_fake", "d_gp")

    def __init__(self, G: nn.Module, D: nn.Module, hp: dict[str, Any], device: torch.device, channels: int,
                 amp: bool = True, layout: str = "auto", compile_g: bool = False):
        self.G, self.D, self.hp, self.device, self.C = G, D, hp, device, channels
        cuda = device.type == "cuda"
        self.amp = amp and cuda
        layout = resolve_layout(layout, device, compile_g)
        self.channels_last = layout == "all"
        if self.channels_last:
            G.to(memory_format=CHANNELS_LAST)
        if layout in ("all", "tail"):
            D.to(memory_format=CHANNELS_LAST)
        if isinstance(G, Generator):
            G.channels_last_tail = GENERATOR_TAIL[layout]
        if isinstance(D, Critic):
            D.channels_last = layout == "tail"
            D.set_inplace(not cuda)  # CPU only (the CUDA figures below were measured without it)
        opt_kw: dict[str, Any] = {"fused": True}  # fused Adam kernels (CUDA and CPU)
        betas = (hp["beta1"], hp["beta2"])
        self.g_opt = torch.optim.Adam(G.parameters(), hp["g_lr"], betas, **opt_kw)
        self.d_opt = torch.optim.Adam(D.parameters(), hp["d_lr"], betas, **opt_kw)
        self.G_fwd = torch.compile(G, dynamic=False) if compile_g else G
        self.additive = hp["head"] == "additive"
        #: losses, and for the mask head the mean masks of the A and B batches (a saturated mask, mean near 1,
        #: means B0 = B_int everywhere: see MASK_SATURATED)
        self.g_keys = ("g_adv_a", "g_id") if self.additive else (
            "g_adv_a", "g_adv_b", "g_id", "g_rec", "g_mask", "mask_a_mean", "mask_b_mean")
        self._d_hist: list[torch.Tensor] = []
        self._g_hist: list[torch.Tensor] = []
        self._last_g = {k: 0.0 for k in self.g_keys}
        self._last_d: dict[str, float] = {}

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    def set_lr(self, factor: float) -> None:
        for opt, key in ((self.g_opt, "g_lr"), (self.d_opt, "d_lr")):
            for group in opt.param_groups:
                group["lr"] = self.hp[key] * factor

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=CHANNELS_LAST) if self.channels_last else x

    def _translate(self, y: torch.Tensor, x: torch.Tensor):
        """Raw head output -> (translated B0, B_int, M) (mask) or (tanh(x + y), None, None) (additive), in fp32."""
        y = at_least_fp32(y)
        if self.additive:
            return additive_translate(x, y), None, None
        b_int, m = split_head(y, self.C)
        return compose_healthy(b_int, m, x), b_int, m

    def step(self, i: int, x_a: torch.Tensor, x_b: torch.Tensor, alpha: torch.Tensor) -> None:
        """One iteration ``i`` (0-based) on batches ``x_a`` (set A) and ``x_b`` (set B), GP mix weights ``alpha``."""
        hp, B = self.hp, x_a.shape[0]
        g_step = (i + 1) % hp["n_critic"] == 0
        x_a, x_b = self._prep(x_a), self._prep(x_b)
        with self.autocast():
            if g_step:
                y = self.G_fwd(torch.cat([x_a, x_b]))
            else:
                with torch.no_grad():
                    y = self.G_fwd(x_a)
        fake_a, b_int_a, m_a = self._translate(y[:B], x_a)

        # ---- critic step -----------------------------------------------------------------------
        fake_d = fake_a.detach()
        with self.autocast():
            out = at_least_fp32(self.D(torch.cat([x_b, fake_d])))
        d_real, d_fake = out[:B].mean(), out[B:].mean()
        x_hat = (alpha * x_b + (1.0 - alpha) * fake_d).requires_grad_(True)
        gp = gradient_penalty(self.D, x_hat)  # fp32
        d_loss = critic_loss(d_real, d_fake, gp, hp["lambda_gp"])
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()
        self._d_hist.append(torch.stack([d_real.detach(), d_fake.detach(), gp.detach()]))

        # ---- generator step ----------------------------------------------------------------------
        if not g_step:
            return
        self.D.requires_grad_(False)
        try:
            if self.additive:
                t_b, _, _ = self._translate(y[B:], x_b)
                with self.autocast():
                    d_g = at_least_fp32(self.D(fake_a))
                losses = additive_generator_losses(x_b, t_b, d_g, hp["lambda_id"])
            else:
                fake_b, b_int_b, m_b = self._translate(y[B:], x_b)
                with self.autocast():
                    d_g = at_least_fp32(self.D(torch.cat([fake_a, fake_b])))
                losses = generator_losses(x_a, x_b, b_int_a, m_a, b_int_b, m_b, d_g[:B], d_g[B:],
                                          hp["lambda_id"], hp["lambda_rec"], hp["lambda_mask"], hp["lambda_msmall"],
                                          hp["lambda_mzerone"], hp["mask_eps"])
            self.g_opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            self.g_opt.step()
        finally:
            self.D.requires_grad_(True)
        if self.additive:
            vals = [losses["adv_a"], losses["id"]]
        else:
            vals = [losses[k] for k in ("adv_a", "adv_b", "id", "rec", "mask")] + [m_a.mean(), m_b.mean()]
        self._g_hist.append(torch.stack([at_least_fp32(v.detach()) for v in vals]))

    def pop_losses(self) -> dict[str, float]:
        """Mean of each loss since the last call (one host sync). G losses repeat their last value if no
        generator step happened in between."""
        out: dict[str, float] = {}
        if self._d_hist:
            self._last_d = dict(zip(self.D_KEYS, torch.stack(self._d_hist).mean(0).tolist()))
            out.update(self._last_d)
        if self._g_hist:
            self._last_g = dict(zip(self.g_keys, torch.stack(self._g_hist).mean(0).tolist()))
        out.update(self._last_g)
        self._d_hist, self._g_hist = [], []
        return out

    def state(self) -> dict[str, Any]:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "g_opt": self.g_opt.state_dict(),
                "d_opt": self.d_opt.state_dict(), "last_g": dict(self._last_g), "last_d": dict(self._last_d)}

    def load(self, st: dict[str, Any]) -> None:
        self.G.load_state_dict(st["G"])
        self.D.load_state_dict(st["D"])
        self.g_opt.load_state_dict(st["g_opt"])
        self.d_opt.load_state_dict(st["d_opt"])
        self._last_g = dict(st.get("last_g", self._last_g))
        self._last_d = dict(st.get("last_d", self._last_d))


def reference_train_step(G: nn.Module, D: nn.Module, g_opt: torch.optim.Optimizer, d_opt: torch.optim.Optimizer,
                         x_a: torch.Tensor, x_b: torch.Tensor, i: int, hp: dict[str, Any], alpha: torch.Tensor,
                         channels: int = 1) -> dict[str, float]:
    """The authors' training iteration (HealthyGAN solver.train / Brainomaly), fp32, separate forward passes and a
    ``.item()`` per loss every step. Used as the baseline by benchmarks/bench_anomalypro_step.py and as the
    oracle of the fast path in the tests."""
    loss: dict[str, float] = {}
    additive = hp["head"] == "additive"

    def translate(x):
        y = G(x)
        if additive:
            return torch.tanh(x + y), None, None
        b_int, m = torch.tanh(y[:, :channels]), (torch.tanh(y[:, channels:channels + 1]) + 1.0) / 2.0
        return b_int * m + x * (1 - m), b_int, m

    d_real = -torch.mean(D(x_b))
    fake, _, _ = translate(x_a)
    d_fake = torch.mean(D(fake.detach()))
    x_hat = (alpha * x_b.data + (1 - alpha) * fake.data).requires_grad_(True)
    out = D(x_hat)
    dydx = torch.autograd.grad(out, x_hat, torch.ones_like(out), retain_graph=True, create_graph=True)[0]
    gp = torch.mean((torch.sqrt(torch.sum(dydx.view(dydx.size(0), -1) ** 2, dim=1)) - 1) ** 2)
    d_loss = d_real + d_fake + hp["lambda_gp"] * gp
    g_opt.zero_grad()
    d_opt.zero_grad()
    d_loss.backward()
    d_opt.step()
    loss.update(d_real=-d_real.item(), d_fake=d_fake.item(), d_gp=gp.item())

    if (i + 1) % hp["n_critic"] == 0:
        fake_a, b_int_a, m_a = translate(x_a)
        g_fake = -torch.mean(D(fake_a))
        if additive:
            fake_b, _, _ = translate(x_b)
            g_id = torch.mean(torch.abs(x_b - fake_b))
            g_loss = g_fake + hp["lambda_id"] * g_id
        else:
            g_rec = torch.mean(torch.abs(x_a - (x_a * m_a + b_int_a * (1 - m_a))))

            def mloss(m):
                small = (torch.sum(m) / m.numel()) ** 2
                zo = torch.sum(1 / (torch.abs(m - 0.5) + hp["mask_eps"])) / m.numel() - 1.0 / (0.5 + hp["mask_eps"])
                return hp["lambda_msmall"] * small + hp["lambda_mzerone"] * zo

            fake_b, b_int_b, m_b = translate(x_b)
            g_fake_id = -torch.mean(D(fake_b))
            g_id = torch.mean(torch.abs(x_b - b_int_b))
            g_mask = 0.5 * mloss(m_a) + 0.5 * mloss(m_b)
            g_loss = g_fake + g_fake_id + hp["lambda_id"] * g_id + hp["lambda_rec"] * g_rec + hp["lambda_mask"] * g_mask
            loss.update(g_adv_b=g_fake_id.item(), g_rec=g_rec.item(), g_mask=g_mask.item())
        g_opt.zero_grad()
        d_opt.zero_grad()
        g_loss.backward()
        g_opt.step()
        loss.update(g_adv_a=g_fake.item(), g_id=g_id.item())
    return loss


# ============================================================================================== #
#  Resumable sampling                                                                             #
# ============================================================================================== #

class ResumableStream(ResumableBatchSampler):
    """The shared resumable sampler (:class:`anomaly_bench.harness.trainer.ResumableBatchSampler`: the order of
    ``nn.common.batch_stream``, a ``torch.randperm`` per epoch from its own CPU generator, drop_last) yielding the
    batches themselves. The permutation is moved to the data's device once per epoch, so drawing a batch never
    syncs."""

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int):
        super().__init__(len(data), batch_size, torch.Generator().manual_seed(seed))
        self.data = data
        self.perm_dev: torch.Tensor | None = None

    def next(self) -> torch.Tensor:
        new_epoch = self.perm is None or self.pos >= self.stop
        self.next_indices()
        if new_epoch:
            self.perm_dev = self.perm.to(self.data.device)
        return self.data[self.perm_dev[self.pos - self.bs:self.pos]]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "gen" in state:  # resume files written before the sampler was shared
            state = {"generator": state["gen"], "perm": state["perm"], "pos": state["pos"]}
        super().load_state_dict(state)
        self.perm_dev = None if self.perm is None else self.perm.to(self.data.device)


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


# ============================================================================================== #
#  The method                                                                                     #
# ============================================================================================== #

@register_method("medai_anomalypro")
class MedAIAnomalyPro(AnomalyMethod):
    """MedAI AnomalyPro (HealthyGAN; Brainomaly with ``head: additive``). See the module docstring for what follows
    the authors' code, where we deviate, and the flags offering the authors' behaviour."""

    default_train_sets = "mixed+healthy"
    defaults = {
        # schedule (HealthyGAN train_covid.sh / main.py)
        "iterations": 400000, "batch_size": 16, "g_lr": 1.0e-4, "d_lr": 1.0e-4, "beta1": 0.5, "beta2": 0.999,
        "n_critic": 2, "lr_decay_iters": 100000, "lr_decay": "linear", "lr_update_step": 1000,
        "random_flip": True,
        # losses
        "lambda_gp": 10.0, "lambda_id": 1.0, "lambda_rec": 1.0, "lambda_mask": 0.1, "lambda_msmall": 1.0,
        "lambda_mzerone": 1.0, "mask_eps": 0.01,
        # networks
        "head": "mask", "g_conv_dim": 64, "g_repeat_num": 6, "d_conv_dim": 64, "critic_layers": 0,
        "replicate_rgb": False, "norm_at_score": "instance", "norm_impl": "auto",
        # bookkeeping
        "checkpoint_every": 10000, "resume_every": 5000, "log_every": 100, "score_batch_size": 32,
        # speed (act on CUDA only, except compile)
        "amp": True, "channels_last": "auto", "compile": False, "data_on_device_mb": 4096,
    }
    choices = {"head": ("mask", "additive"), "lr_decay": ("linear", "stargan"),
               "norm_at_score": ("instance", "running"), "norm_impl": ("auto", "torch", "group", "fused"),
               "channels_last": ("auto", "all", "tail", "head", "none")}

    #: parameters that may differ between an interrupted run and its resumption
    RESUME_FREE = ("device", "compile", "log_every", "resume_every", "checkpoint_every", "score_batch_size",
                   "data_on_device_mb", "amp", "channels_last", "norm_impl")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        for k in ("iterations", "batch_size", "n_critic", "g_conv_dim", "d_conv_dim", "log_every",
                  "score_batch_size", "lr_update_step"):
            if p[k] < 1:
                raise ConfigError(f"method 'medai_anomalypro': parameter '{k}' must be >= 1, got {p[k]}")
        for k in ("critic_layers", "g_repeat_num", "checkpoint_every", "resume_every", "lr_decay_iters"):
            if p[k] < 0:
                raise ConfigError(f"method 'medai_anomalypro': parameter '{k}' must be >= 0, got {p[k]}")
        self.G_: Generator | None = None
        self.arch_: dict[str, Any] | None = None

    # -- networks -----------------------------------------------------------------------------------
    def _norm_impl(self) -> str:
        impl = self.params["norm_impl"]
        if impl == "auto":
            layout = resolve_layout(self.params["channels_last"], self.device, self.params["compile"])
            return "fused" if self.device.type == "cuda" and layout == "all" else "group"
        return impl

    def _arch(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        C, H, W = image_shape
        if H % 4 or W % 4:
            raise ValueError(f"medai_anomalypro: image height and width must be multiples of 4 (the generator "
                             f"down-samples twice), got {H}x{W}; resize the dataset (e.g. image_size: 64)")
        n_layers = self.params["critic_layers"] or auto_critic_layers(min(H, W))
        if min(H, W) < 2 ** n_layers:
            raise ValueError(f"medai_anomalypro: critic_layers={n_layers} strided convs need images of at least "
                             f"{2 ** n_layers} px, got {H}x{W}; use critic_layers: 0 (auto)")
        net_c = 3 if self.params["replicate_rgb"] and C == 1 else C
        return {"image_shape": (C, H, W), "net_channels": net_c, "head": self.params["head"],
                "g_conv_dim": self.params["g_conv_dim"], "g_repeat_num": self.params["g_repeat_num"],
                "d_conv_dim": self.params["d_conv_dim"], "critic_layers": n_layers}

    def _build_g(self, arch: dict[str, Any]) -> Generator:
        c = arch["net_channels"]
        out_c = 1 if arch["head"] == "additive" else c + 1
        G = Generator(c, out_c, arch["g_conv_dim"], arch["g_repeat_num"], self.params["norm_at_score"],
                      self._norm_impl())
        layout = resolve_layout(self.params["channels_last"], self.device, self.params["compile"])
        G.channels_last_tail = GENERATOR_TAIL[layout]
        return G

    def _to_net(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if self.arch_ and self.arch_["net_channels"] != x.shape[1] else x

    def _hp(self) -> dict[str, Any]:
        keys = ("g_lr", "d_lr", "beta1", "beta2", "n_critic", "lambda_gp", "lambda_id", "lambda_rec",
                "lambda_mask", "lambda_msmall", "lambda_mzerone", "mask_eps", "head")
        return {k: self.params[k] for k in keys}

    # -- fit ---------------------------------------------------------------------------------------
    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "MedAIAnomalyPro":
        ctx = ctx or FitContext(progress=False)
        p = self.params
        if train.mixed is None:
            raise MissingMixedSetError(
                "medai_anomalypro learns from two sets: the unannotated mixed set A (train.mixed) and the healthy "
                "set B (train.healthy), but no set A was given. Run it with train_sets: mixed+healthy (its default) "
                "and a split with a mixed set (split: mixed_size / mixed_diseased_fraction), or pass "
                "TrainSets(healthy=..., mixed=...) when calling fit directly.")
        if len(train.mixed) == 0:
            raise MissingMixedSetError("medai_anomalypro: the mixed set A (train.mixed) is empty")
        if tuple(train.mixed.shape[1:]) != tuple(train.healthy.shape[1:]):
            raise ValueError(f"medai_anomalypro: sets A {tuple(train.mixed.shape[1:])} and B "
                             f"{tuple(train.healthy.shape[1:])} must have the same image shape")
        dev = self.device
        gen = seed_everything(p["seed"])
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.arch_ = arch = self._arch(train.image_shape)
        G = self._build_g(arch).to(dev)
        D = Critic(arch["net_channels"], arch["d_conv_dim"], arch["critic_layers"]).to(dev)
        G.train()
        D.train()
        self.G_ = G
        trainer = AnomalyProTrainer(G, D, self._hp(), dev, arch["net_channels"], p["amp"], p["channels_last"],
                                    p["compile"])

        # data: resident on the device when small (no per-iteration host transfer)
        nbytes = (train.mixed.numel() + train.healthy.numel()) * 4
        data_dev = dev if nbytes <= p["data_on_device_mb"] * 2 ** 20 else torch.device("cpu")
        bs = min(p["batch_size"], len(train.mixed), len(train.healthy))
        seed_a, seed_b, seed_n = (int(s) for s in torch.randint(0, 2 ** 62, (3,), generator=gen))
        stream_a = ResumableStream(train.mixed.to(data_dev), bs, seed_a)
        stream_b = ResumableStream(train.healthy.to(data_dev), bs, seed_b)
        noise = torch.Generator(device=dev).manual_seed(seed_n)

        start = 0
        state = ctx.load_resume()
        if state is not None:
            start = self._restore(state, trainer, stream_a, stream_b, noise)
            ctx.info(f"medai_anomalypro: resumed from iteration {start} ({ctx.resume_path})")

        total = p["iterations"]
        pbar = ctx.progress_bar(total, "train", initial=min(start, total))
        try:
            for i in range(start, total):
                trainer.set_lr(lr_factor(i, total, p["lr_decay_iters"], p["lr_decay"], p["lr_update_step"]))
                x_a = self._augment(stream_a.next().to(dev, non_blocking=True), noise)
                x_b = self._augment(stream_b.next().to(dev, non_blocking=True), noise)
                alpha = torch.rand(bs, 1, 1, 1, generator=noise, device=dev)
                trainer.step(i, x_a, x_b, alpha)
                it = i + 1
                pbar.update(1)
                save_resume = ctx.resume_path is not None and (
                    it == total or (p["resume_every"] > 0 and it % p["resume_every"] == 0))
                checkpoint = ctx.wants_checkpoint(it)
                if it % p["log_every"] == 0 or it == total or save_resume or checkpoint:
                    losses = trainer.pop_losses()
                    pbar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
                    ctx.log_losses(it, losses)  # raises TrainingError on a non-finite loss
                if save_resume:
                    ctx.save_resume(self._resume_state(it, trainer, stream_a, stream_b, noise))
                if checkpoint:
                    ctx.save_selection_checkpoint(it, self.state_dict())
        finally:
            pbar.close()
        self._check_mask(trainer._last_g, ctx)
        self._check_critic(trainer._last_d, ctx)
        G.to(memory_format=torch.contiguous_format).eval()
        self.fitted_ = True
        return self

    def _check_mask(self, last: dict[str, float], ctx: FitContext) -> None:
        """Say so when the mask ended saturated (mean M above MASK_SATURATED on A and B): then B0 = B_int nearly
        everywhere and the map is the whole-image translation error rather than a localised mask."""
        m_a, m_b = last.get("mask_a_mean"), last.get("mask_b_mean")
        if m_a is None or m_b is None or min(m_a, m_b) < MASK_SATURATED:
            return
        ctx.warn(f"medai_anomalypro: the mask saturated (mean M = {m_a:.3f} on set A, {m_b:.3f} on set B "
                 f"over the last {self.params['log_every']} iterations), so B0 = B_int almost everywhere and the score "
                 f"is the whole-image translation error. At short budgets this happens when the focus loss pushes a "
                 f"near-uniform initial mask above 0.5 to 1; train longer, try other seeds or compare head: additive "
                 f"(mask_a_mean / mask_b_mean in losses.csv show when it happened).")

    def _check_critic(self, last: dict[str, float], ctx: FitContext) -> None:
        """Say so when training ended with the critic rating translated images above real healthy ones (mean
        D(fake) - D(real) above CRITIC_BEHIND over the last log window): the critic is then behind the generator,
        whose adversarial term pushes toward whatever fools it rather than toward healthy-looking images."""
        d_real, d_fake = last.get("d_real"), last.get("d_fake")
        if d_real is None or d_fake is None or d_fake - d_real <= CRITIC_BEHIND:
            return
        ctx.warn(f"medai_anomalypro: the critic ended behind the generator: over the last {self.params['log_every']} "
                 f"iterations it rated translated images above real healthy ones (mean D(real) - D(fake) = "
                 f"{d_real - d_fake:.3f}; a constant critic scores 0, an up-to-date one more), so the adversarial "
                 f"signal is not separating healthy from translated images (g_id in losses.csv typically rises). "
                 f"Seen at short budgets with the published equal learning rates; train longer, or try a faster "
                 f"critic (d_lr: 4e-4 or n_critic: 5; a deviation from the authors' settings).")

    def _augment(self, x: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
        if self.arch_["net_channels"] != x.shape[1]:
            x = x.expand(-1, 3, -1, -1)
        if not self.params["random_flip"]:
            return x
        flip = torch.rand(x.shape[0], 1, 1, 1, generator=noise, device=x.device) < 0.5
        return torch.where(flip, x.flip(-1), x)

    def _resume_state(self, it: int, trainer: AnomalyProTrainer, sa: ResumableStream, sb: ResumableStream,
                      noise: torch.Generator) -> dict[str, Any]:
        return _cpu({"format": 1, "iteration": it, "params": dict(self.params), "arch": dict(self.arch_),
                     "trainer": trainer.state(), "stream_a": sa.state_dict(), "stream_b": sb.state_dict(),
                     "noise": noise.get_state(), "torch_rng": torch.get_rng_state()})

    def _restore(self, st: dict[str, Any], trainer: AnomalyProTrainer, sa: ResumableStream, sb: ResumableStream,
                 noise: torch.Generator) -> int:
        old = {k: v for k, v in st["params"].items() if k not in self.RESUME_FREE}
        new = {k: v for k, v in self.params.items() if k not in self.RESUME_FREE}
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff or st["arch"] != self.arch_:
            raise ConfigError(
                f"medai_anomalypro: the resume state in the work folder was written with other settings "
                f"({', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in diff) or 'image shape'}); "
                f"use a fresh work folder or the original settings")
        trainer.load(st["trainer"])
        sa.load_state_dict(st["stream_a"])
        sb.load_state_dict(st["stream_b"])
        noise.set_state(st["noise"])
        torch.set_rng_state(st["torch_rng"])
        return int(st["iteration"])

    # -- score ---------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.G_ is None:
            raise RuntimeError("medai_anomalypro: call fit() or load_state_dict() before score()")

    @torch.no_grad()
    def translate(self, images: torch.Tensor) -> torch.Tensor:
        """B0(x) for a device batch ``x`` (fp32 result; bf16 autocast on CUDA when ``amp``)."""
        self._check_fitted()
        x = self._to_net(images)
        use_amp = self.params["amp"] and x.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext():
            y = at_least_fp32(self.G_(x))
        if self.arch_["head"] == "additive":
            return additive_translate(x, y)
        b_int, m = split_head(y, x.shape[1])
        return compose_healthy(b_int, m, x)

    def score(self, images: torch.Tensor) -> ScoreResult:
        self._check_fitted()
        self.G_ = self.G_.to(self.device).eval()

        def fn(x: torch.Tensor):
            t = self.translate(at_least_fp32(x))
            amap = anomaly_map(self._to_net(x), t)
            return amap.mean((1, 2)), amap, t.mean(1)

        scores, maps, recon = map_batches(fn, images, self.params["score_batch_size"], self.device)
        return ScoreResult(scores.double().numpy(), maps.numpy(), recon.numpy())

    # -- persistence ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {"format": 1, "arch": dict(self.arch_), "G": _cpu(self.G_.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        arch = dict(state["arch"])
        arch["image_shape"] = tuple(arch["image_shape"])
        self.arch_ = arch
        G = self._build_g(arch)
        G.load_state_dict(state["G"])
        self.G_ = G.to(self.device).eval()
        self.fitted_ = True


__all__ = [
    "MedAIAnomalyPro", "Generator", "Critic", "InstanceNorm", "AnomalyProTrainer", "reference_train_step",
    "ResumableStream", "split_head", "compose_healthy", "compose_reconstruction", "additive_translate",
    "mask_small_loss", "mask_zero_one_loss", "focus_loss", "gradient_penalty", "gradient_penalty_from_output",
    "critic_loss", "generator_losses", "additive_generator_losses", "anomaly_map", "auto_critic_layers",
    "lr_factor", "MissingMixedSetError",
]

"""MedAI AnomalyPro's (HealthyGAN's) losses and anomaly map as pure functions, pinned by unit tests on hand-made
tensors: focus loss, WGAN-GP critic loss and gradient penalty, generator objectives (mask and additive heads)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from anomaly_bench.methods.medai_anomalypro.torch_model import compose_reconstruction
from anomaly_bench.nn.common import at_least_fp32


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


def _autocast_off(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False) if device.type == "cuda" \
        else contextlib.nullcontext()

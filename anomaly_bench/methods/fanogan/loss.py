"""f-AnoGAN's losses as pure functions: the WGAN-GP gradient penalty (stage 1) and the izi_f loss, which is also
the anomaly score (stage 2, ``anomaly_detection.py``)."""

from __future__ import annotations

from typing import Callable

import torch


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     alpha: torch.Tensor) -> torch.Tensor:
    """mean((‖∇_x̃ D(x̃)‖₂ - 1)²) with x̃ = real + alpha·(fake - real), the norm over all pixels."""
    x = (real + alpha * (fake - real)).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    slopes = grad.flatten(1).pow(2).sum(1).sqrt()
    return (slopes - 1.0).pow(2).mean()


def izif_per_sample(x: torch.Tensor, x_rec: torch.Tensor, f_x: torch.Tensor, f_rec: torch.Tensor,
                    kappa: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image (total, pixel MSE, feature MSE): total = mean (x-x̂)² + κ·mean (f(x)-f(x̂))²."""
    pix = (x - x_rec).pow(2).flatten(1).mean(1)
    feat = (f_x - f_rec).pow(2).flatten(1).mean(1)
    return pix + kappa * feat, pix, feat

"""GANomaly's losses and score (samet-akcay/ganomaly ``lib/model.py``, feature-matching version), as pure
functions on tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def generator_losses(feat_real: torch.Tensor, feat_fake: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor,
                     z: torch.Tensor, z_hat: torch.Tensor, w_adv: float, w_con: float,
                     w_enc: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_G, L_adv, L_con, L_enc): feature matching (L2), L1 reconstruction, L2 latent."""
    adv = (feat_real - feat_fake).pow(2).mean()
    con = (x - x_hat).abs().mean()
    enc = (z - z_hat).pow(2).mean()
    return w_adv * adv + w_con * con + w_enc * enc, adv, con, enc


def discriminator_loss(pred_real: torch.Tensor, pred_fake: torch.Tensor) -> torch.Tensor:
    """0.5·[BCE(D(x), 1) + BCE(D(x̂), 0)] on sigmoid outputs (``nn.BCELoss``, log clamped at -100)."""
    return 0.5 * (F.binary_cross_entropy(pred_real, torch.ones_like(pred_real))
                  + F.binary_cross_entropy(pred_fake, torch.zeros_like(pred_fake)))


def latent_score(z: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
    """Per-image anomaly score mean_k (z_k - ẑ_k)²."""
    return (z - z_hat).pow(2).flatten(1).mean(1)

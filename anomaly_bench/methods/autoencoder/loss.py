"""Reconstruction losses of the autoencoder (``loss: l1`` or ``l2``)."""

from __future__ import annotations

import torch
from torch import nn


def reconstruction_loss(kind: str, reconstruction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared (``l2``) or absolute (``l1``) error of the reconstruction."""
    fn = nn.functional.mse_loss if kind == "l2" else nn.functional.l1_loss
    return fn(reconstruction, x)

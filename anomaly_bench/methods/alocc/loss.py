"""ALOCC's losses (``models.py`` build_model) as pure functions, and the training noise
(``kh_tools.get_noisy_data``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def tf_sigmoid_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``tf.nn.sigmoid_cross_entropy_with_logits`` element-wise, valid for any real labels:
    ``max(x, 0) - x * z + log(1 + exp(-|x|))``."""
    return F.relu(logits) - logits * labels + F.softplus(-logits.abs())


def discriminator_loss(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> torch.Tensor:
    return bce(logit_real, 1.0) + bce(logit_fake, 0.0)


def refinement_loss(kind: str, refined: torch.Tensor, noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    if kind == "code_bce_noisy":
        return tf_sigmoid_ce(refined, noisy).mean()
    return (refined - clean).pow(2).mean()


def refiner_loss(logit_fake: torch.Tensor, l_r: torch.Tensor, weight: float) -> torch.Tensor:
    return bce(logit_fake, 1.0) + weight * l_r


def add_noise(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise clipped to [-1, 1] (skimage ``random_noise`` clips to [-1,1] for signed input)."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return (x + std * noise.to(x.device)).clamp_(-1.0, 1.0)

"""ALAD's losses (``alad/run.py``) and its feature-matching score, as pure functions on logits and features."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """``mean(sigmoid_cross_entropy_with_logits(logits, target))`` with a constant target."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def discriminator_losses(l_enc, l_gen, x_real, x_fake, z_real, z_fake) -> dict[str, torch.Tensor]:
    """D losses from the logits of D_xz(x,E(x)), D_xz(G(z),z), D_xx(x,x), D_xx(x,x^), D_zz(z,z), D_zz(z,z^)."""
    return {"dis_xz": bce(l_enc, 1.0) + bce(l_gen, 0.0),
            "dis_xx": bce(x_real, 1.0) + bce(x_fake, 0.0),
            "dis_zz": bce(z_real, 1.0) + bce(z_fake, 0.0)}


def generator_encoder_losses(l_enc, l_gen, x_real, x_fake, z_real, z_fake, enable_dzz: bool):
    """G and E losses with the label-flipped cycle terms (both include the same cycle term)."""
    cost_x = bce(x_real, 0.0) + bce(x_fake, 1.0)
    cost_z = bce(z_real, 0.0) + bce(z_fake, 1.0)
    cycle = cost_x + cost_z if enable_dzz else cost_x
    gen_xz, enc_xz = bce(l_gen, 1.0), bce(l_enc, 0.0)
    return {"gen": gen_xz + cycle, "enc": enc_xz + cycle, "gen_xz": gen_xz, "enc_xz": enc_xz,
            "cost_x": cost_x, "cost_z": cost_z, "cycle": cycle}


def fm_score(f_real: torch.Tensor, f_fake: torch.Tensor, degree: int = 1) -> torch.Tensor:
    return torch.linalg.vector_norm((f_real - f_fake).flatten(1), ord=degree, dim=1)

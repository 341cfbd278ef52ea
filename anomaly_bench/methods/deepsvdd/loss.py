"""Deep SVDD's objectives, centre and radius (authors' ``optim/deepSVDD_trainer.py``, ``optim/ae_trainer.py``)."""

from __future__ import annotations

import torch

from anomaly_bench.core.image_array import ImageArray


def sq_dist(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per-sample squared Euclidean distance ‖φ(x) − c‖² of representations ``z`` (N, rep_dim) to the centre."""
    return ((z - c) ** 2).sum(dim=1)


def svdd_loss(dist: torch.Tensor, objective: str, radius: torch.Tensor, nu: float) -> torch.Tensor:
    """One-class: mean ‖φ(x) − c‖². Soft-boundary: R² + (1/ν)·mean(max(0, ‖φ(x) − c‖² − R²)), R held fixed (it is
    set by :func:`radius_from`, not by the gradient). Weight decay is the optimiser's (Adam ``weight_decay``)."""
    if objective == "soft-boundary":
        r2 = radius**2
        return r2 + torch.clamp(dist - r2, min=0).mean() / nu
    return dist.mean()


def radius_from(dist: torch.Tensor, nu: float) -> torch.Tensor:
    """R = the (1 − ν)-quantile of the distances ‖φ(x) − c‖ (the square roots of ``dist``; linear interpolation, as
    ``np.quantile``)."""
    return torch.quantile(dist.detach().double().sqrt(), 1.0 - nu).to(dist.dtype)


def ae_loss(reconstruction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The pretraining loss: per-image *sum* of squared errors, averaged over the batch (authors' ``AETrainer``)."""
    return ((reconstruction - x) ** 2).flatten(1).sum(1).mean()


def push_from_zero(c: torch.Tensor, eps: float) -> torch.Tensor:
    """A copy of the centre with every coordinate ``|c_i| < eps`` moved to ``±eps`` (its sign; an exact 0 stays 0, as
    in the authors' code): a zero coordinate could be matched trivially by zero weights."""
    c = c.clone()
    small = c.abs() < eps
    c[small & (c < 0)] = -eps
    c[small & (c > 0)] = eps
    return c


@torch.no_grad()
def initial_centre(net: torch.nn.Module, data: torch.Tensor | ImageArray, batch_size: int, eps: float) -> torch.Tensor:
    """c = mean of ``net``'s outputs over ``data`` (in consecutive batches, read by slice), then
    :func:`push_from_zero`. The net's BatchNorm mode is the caller's (the method's ``centre_bn``; in train mode it
    keeps the running statistics with :func:`~anomaly_bench.harness.trainer.keep_bn_stats`)."""
    total, n = None, 0
    for i in range(0, len(data), batch_size):
        z = net(data[i:i + batch_size])
        s = z.sum(0)
        total = s if total is None else total + s
        n += len(z)
    return push_from_zero(total / n, eps)

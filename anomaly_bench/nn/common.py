"""Helpers the methods share: seeding, the reference batch order, batched scoring, EMA, linear LR decay."""

from __future__ import annotations

import copy
import random
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (CPU and CUDA); return a CPU generator for data sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)


def batch_stream(data: torch.Tensor, batch_size: int, generator: torch.Generator,
                 drop_last: bool = True, start: int = 0) -> Iterator[torch.Tensor]:
    """Endless epochs of shuffled batches (indices drawn with ``generator``, so reproducible): the batch order the
    trainer's resumable :class:`anomaly_bench.harness.sampler.BatchSampler` follows (its tests compare with this).

    ``data`` may live on any device; batches are indexed there (no host copy). ``start`` skips the first
    ``start`` batches cheaply (only the permutations are drawn), so a resumed run that re-seeds the
    generator and passes ``start=iteration`` sees exactly the batches an uninterrupted run would."""
    n = len(data)
    bs = min(batch_size, n)
    stop = n - n % bs if drop_last else n
    per_epoch = max(1, -(-stop // bs))
    skip_epochs, offset = divmod(start, per_epoch)
    for _ in range(skip_epochs):
        torch.randperm(n, generator=generator)
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(offset * bs, stop, bs):
            yield data[perm[i:i + bs].to(data.device)]
        offset = 0


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is half precision (bf16/fp16 autocast output); float32 and float64 unchanged
    (the exact regression checks train and score in float64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


@torch.no_grad()
def map_batches(fn: Callable[[torch.Tensor], tuple | torch.Tensor], images: torch.Tensor, batch_size: int,
                device: torch.device) -> list:
    """Apply ``fn`` to device batches of ``images``; return a list of per-output CPU tensors, concatenated."""
    outs: list[list[torch.Tensor]] | None = None
    for i in range(0, len(images), batch_size):
        res = fn(images[i:i + batch_size].to(device, non_blocking=True))
        res = res if isinstance(res, tuple) else (res,)
        if outs is None:
            outs = [[] for _ in res]
        for o, r in zip(outs, res):
            o.append(at_least_fp32(r.detach()).cpu())
    return [torch.cat(o) for o in (outs or [])]


class EMA:
    """Exponential moving average of a module's parameters (buffers are copied from the live model)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach(), 1.0 - self.decay)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)


def linear_decay_lambda(total_iters: int, decay_iters: int) -> Callable[[int], float]:
    """LR factor 1 until ``total - decay`` iterations, then linearly to 0 at ``total``."""
    start = max(total_iters - decay_iters, 0)

    def f(it: int) -> float:
        if decay_iters <= 0 or it < start:
            return 1.0
        return max(0.0, 1.0 - (it - start) / float(decay_iters))

    return f


def set_requires_grad(model: nn.Module, flag: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(flag)

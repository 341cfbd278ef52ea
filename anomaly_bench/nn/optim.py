"""Optimisers with the semantics of the authors' TensorFlow 1 code.

``tf.train.RMSPropOptimizer`` differs from ``torch.optim.RMSprop``: TF initialises the mean-square slot
to **ones** (not zeros), uses decay 0.9 and puts epsilon inside the square root:

    ms  <- decay * ms + (1 - decay) * g**2          (ms starts at 1)
    p   <- p - lr * g / sqrt(ms + eps)

Used by ALOCC (lr 2e-3) and the f-AnoGAN encoder (lr 5e-5).
"""

from __future__ import annotations

import torch


class TFRMSprop(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, decay: float = 0.9, eps: float = 1e-10):
        if lr <= 0 or not 0.0 <= decay < 1.0:
            raise ValueError(f"TFRMSprop: invalid lr={lr} or decay={decay}")
        super().__init__(params, dict(lr=lr, decay=decay, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay, eps = group["lr"], group["decay"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "ms" not in state:
                    state["ms"] = torch.ones_like(p, memory_format=torch.preserve_format)
                ms = state["ms"]
                ms.mul_(decay).addcmul_(p.grad, p.grad, value=1.0 - decay)
                p.addcdiv_(p.grad, (ms + eps).sqrt_(), value=-lr)
        return loss

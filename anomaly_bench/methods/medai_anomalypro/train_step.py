"""MedAI AnomalyPro's training step and learning-rate schedule (the loop: :mod:`anomaly_bench.harness.trainer`).

Speed (same algorithm, fewer passes; ``reference_train_step`` in tests/anomalypro_reference.py is the authors'
step, the oracle of the tests and the baseline of benchmarks/bench_anomalypro_step.py)
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
from typing import Any

import torch
from torch import nn

from anomaly_bench.methods.medai_anomalypro.loss import (
    additive_generator_losses,
    critic_loss,
    generator_losses,
    gradient_penalty,
)
from anomaly_bench.methods.medai_anomalypro.torch_model import (
    CHANNELS_LAST,
    GENERATOR_TAIL,
    Critic,
    Generator,
    additive_translate,
    compose_healthy,
    resolve_layout,
    split_head,
)
from anomaly_bench.nn.common import at_least_fp32, linear_decay_lambda


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

    def step(self, i: int, x_a: torch.Tensor, x_b: torch.Tensor, alpha: torch.Tensor,
             record: bool = True) -> dict[str, torch.Tensor]:
        """One iteration ``i`` (0-based) on batches ``x_a`` (set A) and ``x_b`` (set B), GP mix weights ``alpha``.

        Returns the losses as device tensors (the critic's every iteration, the generator's on generator iterations);
        ``record`` also keeps them for :meth:`pop_losses` (the method's fit leaves that to the harness trainer)."""
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
        d_vals = dict(zip(self.D_KEYS, (d_real.detach(), d_fake.detach(), gp.detach())))
        if record:
            self._d_hist.append(torch.stack(list(d_vals.values())))

        # ---- generator step ----------------------------------------------------------------------
        if not g_step:
            return d_vals
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
        g_vals = dict(zip(self.g_keys, (at_least_fp32(v.detach()) for v in vals)))
        if record:
            self._g_hist.append(torch.stack(list(g_vals.values())))
        return {**d_vals, **g_vals}

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

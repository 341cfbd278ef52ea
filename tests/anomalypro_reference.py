"""The authors' MedAI AnomalyPro (HealthyGAN / Brainomaly) training iteration, kept as the oracle of the fast training
step (tests/test_medai_anomalypro.py) and as the baseline of benchmarks/bench_anomalypro_step.py (which puts tests/ on
``sys.path`` to import it). Not used by the method itself."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def reference_train_step(G: nn.Module, D: nn.Module, g_opt: torch.optim.Optimizer, d_opt: torch.optim.Optimizer,
                         x_a: torch.Tensor, x_b: torch.Tensor, i: int, hp: dict[str, Any], alpha: torch.Tensor,
                         channels: int = 1) -> dict[str, float]:
    """The authors' training iteration (HealthyGAN solver.train / Brainomaly), fp32, separate forward passes and a
    ``.item()`` per loss every step. Used as the baseline by benchmarks/bench_anomalypro_step.py and as the
    oracle of the fast path in the tests."""
    loss: dict[str, float] = {}
    additive = hp["head"] == "additive"

    def translate(x):
        y = G(x)
        if additive:
            return torch.tanh(x + y), None, None
        b_int, m = torch.tanh(y[:, :channels]), (torch.tanh(y[:, channels:channels + 1]) + 1.0) / 2.0
        return b_int * m + x * (1 - m), b_int, m

    d_real = -torch.mean(D(x_b))
    fake, _, _ = translate(x_a)
    d_fake = torch.mean(D(fake.detach()))
    x_hat = (alpha * x_b.data + (1 - alpha) * fake.data).requires_grad_(True)
    out = D(x_hat)
    dydx = torch.autograd.grad(out, x_hat, torch.ones_like(out), retain_graph=True, create_graph=True)[0]
    gp = torch.mean((torch.sqrt(torch.sum(dydx.view(dydx.size(0), -1) ** 2, dim=1)) - 1) ** 2)
    d_loss = d_real + d_fake + hp["lambda_gp"] * gp
    g_opt.zero_grad()
    d_opt.zero_grad()
    d_loss.backward()
    d_opt.step()
    loss.update(d_real=-d_real.item(), d_fake=d_fake.item(), d_gp=gp.item())

    if (i + 1) % hp["n_critic"] == 0:
        fake_a, b_int_a, m_a = translate(x_a)
        g_fake = -torch.mean(D(fake_a))
        if additive:
            fake_b, _, _ = translate(x_b)
            g_id = torch.mean(torch.abs(x_b - fake_b))
            g_loss = g_fake + hp["lambda_id"] * g_id
        else:
            g_rec = torch.mean(torch.abs(x_a - (x_a * m_a + b_int_a * (1 - m_a))))

            def mloss(m):
                small = (torch.sum(m) / m.numel()) ** 2
                zo = torch.sum(1 / (torch.abs(m - 0.5) + hp["mask_eps"])) / m.numel() - 1.0 / (0.5 + hp["mask_eps"])
                return hp["lambda_msmall"] * small + hp["lambda_mzerone"] * zo

            fake_b, b_int_b, m_b = translate(x_b)
            g_fake_id = -torch.mean(D(fake_b))
            g_id = torch.mean(torch.abs(x_b - b_int_b))
            g_mask = 0.5 * mloss(m_a) + 0.5 * mloss(m_b)
            g_loss = g_fake + g_fake_id + hp["lambda_id"] * g_id + hp["lambda_rec"] * g_rec + hp["lambda_mask"] * g_mask
            loss.update(g_adv_b=g_fake_id.item(), g_rec=g_rec.item(), g_mask=g_mask.item())
        g_opt.zero_grad()
        d_opt.zero_grad()
        g_loss.backward()
        g_opt.step()
        loss.update(g_adv_a=g_fake.item(), g_id=g_id.item())
    return loss

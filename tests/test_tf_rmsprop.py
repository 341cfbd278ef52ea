"""TFRMSprop (anomaly_bench/nn/optim.py) against the tf.train.RMSPropOptimizer update rule."""

from __future__ import annotations

import copy

import pytest
import torch

from anomaly_bench.nn.optim import TFRMSprop


def _reference(p0: torch.Tensor, grads: list[torch.Tensor], lr: float, decay: float, eps: float) -> torch.Tensor:
    """TF1: ms starts at ones; ms <- decay*ms + (1-decay)*g^2; p <- p - lr*g/sqrt(ms+eps). In float64."""
    p, ms = p0.double().clone(), torch.ones_like(p0, dtype=torch.float64)
    for g in grads:
        g = g.double()
        ms = decay * ms + (1 - decay) * g * g
        p = p - lr * g / torch.sqrt(ms + eps)
    return p


@pytest.mark.parametrize("lr,decay", [(2e-3, 0.9), (5e-5, 0.9), (1e-2, 0.5)])
def test_matches_tf_update_rule(lr, decay):
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(4, 3, generator=gen)
    grads = [torch.randn(4, 3, generator=gen) * s for s in (1.0, 0.1, 10.0, 0.0, 3.0)]
    p = torch.nn.Parameter(p0.clone())
    opt = TFRMSprop([p], lr=lr, decay=decay)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(p.detach().double(), _reference(p0, grads, lr, decay, 1e-10), rtol=1e-5, atol=1e-7)


def test_first_step_is_smaller_than_torch_rmsprop():
    """ms starts at 1 (not 0): the first step is lr*g/sqrt(0.9+0.1 g^2), about lr*g for small g."""
    g = torch.tensor([0.01, -0.02])
    p = torch.nn.Parameter(torch.zeros(2))
    opt = TFRMSprop([p], lr=1.0)
    p.grad = g.clone()
    opt.step()
    expected = -g / torch.sqrt(0.9 + 0.1 * g * g)
    torch.testing.assert_close(p.detach(), expected)
    q = torch.nn.Parameter(torch.zeros(2))
    ref = torch.optim.RMSprop([q], lr=1.0, alpha=0.9, eps=1e-10)
    q.grad = g.clone()
    ref.step()
    assert (q.detach().abs() > 3 * p.detach().abs()).all()


def test_state_round_trip_and_validation():
    p = torch.nn.Parameter(torch.ones(3))
    opt = TFRMSprop([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())  # state_dict() holds references to the live tensors
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = TFRMSprop([q], lr=0.1)
    opt2.load_state_dict(sd)
    for o, t in ((opt, p), (opt2, q)):
        t.grad = torch.full((3,), 0.5)
        o.step()
    torch.testing.assert_close(p, q, rtol=0, atol=0)
    with pytest.raises(ValueError):
        TFRMSprop([p], lr=0.0)
    with pytest.raises(ValueError):
        TFRMSprop([p], lr=0.1, decay=1.0)

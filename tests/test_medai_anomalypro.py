"""MedAI AnomalyPro (HealthyGAN): equations, losses, gradient penalty, networks, training loop, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from anomalypro_reference import reference_train_step

from anomaly_bench.core.config import method_params
from anomaly_bench.core.errors import ConfigError, TrainingError
from anomaly_bench.core.interface import AnomalyMethod, FitContext, TrainSets
from anomaly_bench.core.registry import get_method
from anomaly_bench.harness.regress_exact import float64_default
from anomaly_bench.methods.medai_anomalypro import (
    AnomalyProTrainer,
    Critic,
    Generator,
    InstanceNorm,
    MedAIAnomalyPro,
    MissingMixedSetError,
    additive_generator_losses,
    anomaly_map,
    auto_critic_layers,
    compose_healthy,
    compose_reconstruction,
    critic_loss,
    focus_loss,
    generator_losses,
    gradient_penalty,
    lr_factor,
    mask_small_loss,
    mask_zero_one_loss,
    split_head,
)

TINY = dict(iterations=24, batch_size=8, g_conv_dim=8, d_conv_dim=8, g_repeat_num=1, lr_decay_iters=8, log_every=4,
            resume_every=4, checkpoint_every=8, seed=0, device="cpu")
HP = dict(g_lr=1e-4, d_lr=1e-4, beta1=0.5, beta2=0.999, n_critic=2, lambda_gp=10.0, lambda_id=1.0, lambda_rec=1.0,
          lambda_mask=0.1, lambda_msmall=1.0, lambda_mzerone=1.0, mask_eps=0.01, head="mask")


def _images(n: int, size: int = 32, seed: int = 0, blob: bool = False):
    """Smooth dark backgrounds; with ``blob`` a bright disc (radius size/8) at a random place. Returns images, masks."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False) * 0.4 - 0.6
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    if blob:
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        c = torch.randint(size // 4, 3 * size // 4, (n, 2), generator=g)
        mask = (yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2 <= (size // 8) ** 2
        x = torch.where(mask[:, None], torch.full_like(x, 0.9), x)
    return x.clamp(-1, 1).contiguous(), mask


def _train_sets(size: int = 32, n: int = 16):
    b, _ = _images(n, size, seed=1)
    a = torch.cat([_images(n // 2, size, seed=2, blob=True)[0], _images(n // 2, size, seed=3)[0]])
    return TrainSets(healthy=b, mixed=a)


# ------------------------------------------------------------------------------------------------ #
# Equations and losses on hand-made tensors                                                          #
# ------------------------------------------------------------------------------------------------ #

def test_split_head_tanh_and_mask():
    y = torch.tensor([0.3, -2.0, 0.0, 1.5]).view(1, 2, 2, 1)  # channel 0: [0.3, -2.0], channel 1: [0.0, 1.5]
    b_int, m = split_head(y, 1)
    assert torch.allclose(b_int, torch.tanh(torch.tensor([0.3, -2.0])).view(1, 1, 2, 1))
    assert torch.allclose(m, ((torch.tanh(torch.tensor([0.0, 1.5])) + 1) / 2).view(1, 1, 2, 1))
    assert m[0, 0, 0, 0] == 0.5  # tanh(0) = 0 -> M = 0.5


def test_compose_eq1_eq2_by_hand():
    x = torch.tensor([[0.5, -1.0, 0.2]]).view(1, 1, 1, 3)
    b_int = torch.tensor([[-0.5, 1.0, 0.2]]).view(1, 1, 1, 3)
    m = torch.tensor([[1.0, 0.25, 0.0]]).view(1, 1, 1, 3)
    # Eq. 2: B0 = B_int*M + A*(1-M)
    assert torch.allclose(compose_healthy(b_int, m, x),
                          torch.tensor([-0.5, 1.0 * 0.25 - 1.0 * 0.75, 0.2]).view(1, 1, 1, 3))
    # Eq. 1: A0 = A*M + B_int*(1-M)
    assert torch.allclose(compose_reconstruction(b_int, m, x),
                          torch.tensor([0.5, -1.0 * 0.25 + 1.0 * 0.75, 0.2]).view(1, 1, 1, 3))
    # the two are complementary: B0 + A0 = A + B_int
    xr, br, mr = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), torch.rand(2, 1, 4, 4)
    assert torch.allclose(compose_healthy(br, mr, xr) + compose_reconstruction(br, mr, xr), xr + br)


def test_mask_losses_by_hand():
    eps = 0.01
    m = torch.tensor([0.0, 1.0, 0.5, 0.25]).view(1, 1, 2, 2)
    assert math.isclose(mask_small_loss(m).item(), 0.4375 ** 2, rel_tol=1e-6)
    zo = (1 / 0.51 + 1 / 0.51 + 1 / 0.01 + 1 / 0.26) / 4 - 1 / 0.51
    assert math.isclose(mask_zero_one_loss(m, eps=eps).item(), zo, rel_tol=1e-6)
    assert math.isclose(focus_loss(m, 2.0, 3.0, eps).item(), 2 * 0.4375 ** 2 + 3 * zo, rel_tol=1e-6)
    # binary masks cost nothing in the zero-one term; an empty mask costs nothing at all
    assert abs(mask_zero_one_loss(torch.tensor([0.0, 1.0, 1.0])).item()) < 1e-6
    assert abs(focus_loss(torch.zeros(1, 1, 3, 3)).item()) < 1e-6


def test_generator_losses_by_hand():
    x_a = torch.tensor([0.5, -0.5]).view(1, 1, 1, 2)
    x_b = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    b_a, m_a = torch.tensor([0.1, 0.3]).view(1, 1, 1, 2), torch.tensor([0.0, 0.5]).view(1, 1, 1, 2)
    b_b, m_b = torch.tensor([0.2, 0.6]).view(1, 1, 1, 2), torch.tensor([1.0, 0.25]).view(1, 1, 1, 2)
    d_a, d_b = torch.tensor([[1.0, 3.0]]), torch.tensor([[-2.0, 0.0]])
    out = generator_losses(x_a, x_b, b_a, m_a, b_b, m_b, d_a, d_b, lambda_id=2.0, lambda_rec=3.0, lambda_mask=0.5)
    assert math.isclose(out["adv_a"].item(), -2.0)
    assert math.isclose(out["adv_b"].item(), 1.0)
    assert math.isclose(out["id"].item(), (0.2 + 0.4) / 2, rel_tol=1e-6)          # mean |x_B - B_int(x_B)|
    a0 = torch.tensor([0.1, -0.5 * 0.5 + 0.3 * 0.5])                               # Eq. 1 on A
    assert math.isclose(out["rec"].item(), float((torch.tensor([0.5, -0.5]) - a0).abs().mean()), rel_tol=1e-6)

    def focus(m):
        m = torch.tensor(m)
        return float(m.mean() ** 2 + (1 / ((m - 0.5).abs() + 0.01)).mean() - 1 / 0.51)

    mask = 0.5 * focus([0.0, 0.5]) + 0.5 * focus([1.0, 0.25])
    assert math.isclose(out["mask"].item(), mask, rel_tol=1e-5)
    total = -2.0 + 1.0 + 2.0 * out["id"].item() + 3.0 * out["rec"].item() + 0.5 * mask
    assert math.isclose(out["total"].item(), total, rel_tol=1e-5)


def test_additive_losses_and_critic_loss_by_hand():
    x_b = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    t_b = torch.tensor([0.5, 0.0]).view(1, 1, 1, 2)
    out = additive_generator_losses(x_b, t_b, torch.tensor([2.0, 4.0]), lambda_id=10.0)
    assert math.isclose(out["adv_a"].item(), -3.0) and math.isclose(out["id"].item(), 0.75)
    assert math.isclose(out["total"].item(), -3.0 + 7.5)
    d = critic_loss(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0]), torch.tensor(0.2), lambda_gp=10.0)
    assert math.isclose(d.item(), -2.0 - 0.5 + 2.0, rel_tol=1e-6)


def test_anomaly_map_is_half_abs_difference():
    x = torch.tensor([1.0, -1.0, 0.0, 0.5]).view(1, 1, 2, 2)
    t = torch.tensor([-1.0, -1.0, 0.5, 0.5]).view(1, 1, 2, 2)
    assert torch.allclose(anomaly_map(x, t), torch.tensor([[[1.0, 0.0], [0.25, 0.0]]]))


def test_gradient_penalty_matches_per_sample_autograd_and_finite_differences():
    torch.manual_seed(0)
    D = Critic(1, 4, 2).double()
    x_hat = torch.randn(3, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    gp = gradient_penalty(D, x_hat)
    norms = []
    for i in range(3):  # independent: each sample on its own
        xi = x_hat[i:i + 1].detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(xi).sum(), xi)
        norms.append(g.norm())
    manual = torch.stack([(n - 1) ** 2 for n in norms]).mean()
    assert torch.allclose(gp, manual, rtol=1e-10)
    # central finite differences of sum(D(x)) for sample 0 reproduce its gradient norm
    x0 = x_hat[0:1].detach().clone()
    fd = torch.zeros_like(x0)
    h = 1e-6
    for j in range(x0.numel()):
        e = torch.zeros(x0.numel(), dtype=torch.float64)
        e[j] = h
        e = e.view_as(x0)
        fd.view(-1)[j] = (D(x0 + e).sum() - D(x0 - e).sum()) / (2 * h)
    assert math.isclose(fd.norm().item(), norms[0].item(), rel_tol=1e-6)
    # the penalty is differentiable w.r.t. the critic's weights (create_graph)
    gp.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in D.parameters())
    assert any(p.grad.abs().sum() > 0 for p in D.parameters())


def test_lr_factor_linear_and_authors_stargan_step():
    assert lr_factor(49, 100, 50) == 1.0 and lr_factor(50, 100, 50) == 1.0
    assert math.isclose(lr_factor(75, 100, 50), 0.5) and math.isclose(lr_factor(99, 100, 50), 0.02)
    assert lr_factor(10, 100, 0) == 1.0
    # authors: after iteration count 301000 (> 400k - 100k, multiple of 1000) lr -= lr0 / 100k
    assert lr_factor(300999, 400000, 100000, "stargan") == 1.0
    assert math.isclose(lr_factor(301000, 400000, 100000, "stargan"), 1 - 1e-5)
    assert math.isclose(lr_factor(399999, 400000, 100000, "stargan"), 1 - 99e-5)


# ------------------------------------------------------------------------------------------------ #
# Networks                                                                                          #
# ------------------------------------------------------------------------------------------------ #

@pytest.mark.parametrize("size", [64, 128])
def test_network_shapes_and_auto_critic_depth(size):
    G = Generator(1, 2, 8, 2)
    y = G(torch.randn(2, 1, size, size))
    assert y.shape == (2, 2, size, size)
    n = auto_critic_layers(size)
    assert n == int(math.log2(size)) - 2
    D = Critic(1, 8, n)
    assert D(torch.randn(2, 1, size, size)).shape == (2, 1, 4, 4)
    strided = [m for m in D.main if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in strided] == [8 * 2 ** k for k in range(n)]
    assert all(m.stride == (2, 2) and m.kernel_size == (4, 4) for m in strided)
    assert D.out.kernel_size == (3, 3) and D.out.bias is None
    assert auto_critic_layers(256) == 6 and auto_critic_layers(1024) == 6  # the authors' 6 is the cap


def test_generator_matches_authors_layout():
    G = Generator(3, 4, 64, 6)
    convs = [m for m in G.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert all(c.bias is None for c in convs)
    assert sum(p.numel() for p in G.parameters()) == 8_417_984  # StarGAN G with c_dim=0, 3 -> 4 channels (by hand)
    norms = [m for m in G.modules() if isinstance(m, InstanceNorm)]
    assert norms and all(m.affine and m.track_running_stats for m in norms)


@pytest.mark.parametrize("impl", ["group", "fused"])
def test_instance_norm_kernels_agree_with_torch(impl):
    x = torch.randn(4, 6, 8, 8, dtype=torch.float64) * 3 + 1
    outs = {}
    for name in ("torch", impl):
        torch.manual_seed(0)
        m = InstanceNorm(6, impl=name).double()
        torch.nn.init.uniform_(m.weight)
        torch.nn.init.uniform_(m.bias)
        xx = x.clone().requires_grad_(True)
        y = m(xx)
        (y * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)).sum().backward()
        m.eval()
        y_inst = m(x)
        m.eval_stats = "running"
        y_run = m(x)
        outs[name] = (y, xx.grad, m.weight.grad, m.running_mean, m.running_var, y_inst, y_run)
    for a, b in zip(outs["torch"], outs[impl]):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("layout", ["auto", "tail", "head", "none", "all"])
def test_fast_step_equals_authors_step(layout):
    """Two iterations (critic only, then critic + generator) of the fast path give the same weights as the
    authors' step on the same batches (float64 to take rounding out of the comparison), in every memory layout
    (``auto`` = ``tail`` on the CPU: channels_last critic and generator tail, in-place LeakyReLU, fused Adam)."""
    torch.manual_seed(0)
    D0 = Critic(1, 4, 2).double()
    x_a = torch.rand(4, 1, 16, 16, dtype=torch.float64) * 2 - 1
    x_b = torch.rand(4, 1, 16, 16, dtype=torch.float64) * 2 - 1
    alphas = torch.rand(2, 4, 1, 1, 1, dtype=torch.float64)
    for head in ("mask", "additive"):
        hp = {**HP, "head": head, "g_lr": 1e-2, "d_lr": 1e-2}
        out_c = 2 if head == "mask" else 1
        Gr, Dr = Generator(1, out_c, 4, 1, norm_impl="torch").double(), Critic(1, 4, 2).double()
        Gf, Df = Generator(1, out_c, 4, 1, norm_impl="group").double(), Critic(1, 4, 2).double()
        Gf.load_state_dict(Gr.state_dict())
        G0 = [p.detach().clone() for p in Gr.parameters()]
        Dr.load_state_dict(D0.state_dict())
        Df.load_state_dict(D0.state_dict())
        g_opt = torch.optim.Adam(Gr.parameters(), hp["g_lr"], (0.5, 0.999))
        d_opt = torch.optim.Adam(Dr.parameters(), hp["d_lr"], (0.5, 0.999))
        tr = AnomalyProTrainer(Gf, Df, hp, torch.device("cpu"), 1, layout=layout)
        ref_losses = {}
        for i in range(2):
            ref_losses.update(reference_train_step(Gr, Dr, g_opt, d_opt, x_a, x_b, i, hp, alphas[i]))
            tr.step(i, x_a, x_b, alphas[i])
        for a, b in zip([*Gr.parameters(), *Dr.parameters()], [*Gf.parameters(), *Df.parameters()]):
            assert torch.allclose(a, b, atol=1e-9), head
        assert all(not torch.equal(a, b) for a, b in zip(Gr.parameters(), G0))  # every G weight moved
        fast_losses = tr.pop_losses()
        for k in ("g_adv_a", "g_id"):  # generator losses happen once: identical values
            assert math.isclose(fast_losses[k], ref_losses[k], rel_tol=1e-6), k
        if head == "mask":
            assert 0.0 < fast_losses["mask_a_mean"] < 1.0 and 0.0 < fast_losses["mask_b_mean"] < 1.0


# ------------------------------------------------------------------------------------------------ #
# The method                                                                                        #
# ------------------------------------------------------------------------------------------------ #

def test_registered_with_profiles_and_published_defaults():
    cls = get_method("medai_anomalypro")
    assert cls is MedAIAnomalyPro and cls.default_train_sets == "mixed+healthy"
    d = cls.defaults
    assert (d["batch_size"], d["iterations"], d["lr_decay_iters"], d["checkpoint_every"]) == (16, 400000, 100000, 10000)
    assert (d["g_lr"], d["d_lr"], d["beta1"], d["beta2"], d["n_critic"]) == (1e-4, 1e-4, 0.5, 0.999, 2)
    lambdas = (d["lambda_gp"], d["lambda_id"], d["lambda_rec"], d["lambda_mask"], d["mask_eps"])
    assert lambdas == (10.0, 1.0, 1.0, 0.1, 0.01)
    paper = method_params("medai_anomalypro", "paper")
    assert (paper["g_conv_dim"], paper["g_repeat_num"], paper["batch_size"], paper["iterations"]) == (64, 6, 16, 400000)
    for prof in ("smoke", "ci"):
        assert method_params("medai_anomalypro", prof)["iterations"] < 1000
    with pytest.raises(ConfigError):
        MedAIAnomalyPro(head="nope")
    with pytest.raises(ConfigError):
        MedAIAnomalyPro(n_critic=0)


def test_needs_set_a_with_a_clear_error():
    m = MedAIAnomalyPro(**TINY)
    with pytest.raises(MissingMixedSetError, match="train_sets: mixed\\+healthy"):
        m.fit(TrainSets(healthy=_images(8)[0]))
    assert issubclass(MissingMixedSetError, ValueError) and issubclass(MissingMixedSetError, ConfigError)
    with pytest.raises(ValueError, match="multiples of 4"):
        MedAIAnomalyPro(**TINY).fit(TrainSets(healthy=_images(8, 30)[0], mixed=_images(8, 30)[0]))


def test_learns_to_flag_bright_blobs():
    """Set A = half blob images + half healthy; set B = healthy. After 100 iterations the blob images score higher
    and the anomaly maps concentrate on the blobs (at initialisation the AUC is about chance)."""
    from sklearn.metrics import roc_auc_score

    b, _ = _images(64, seed=10)
    a = torch.cat([_images(32, seed=11, blob=True)[0], _images(32, seed=12)[0]])
    th, _ = _images(32, seed=13)
    td, md = _images(32, seed=14, blob=True)
    m = MedAIAnomalyPro(iterations=100, batch_size=16, g_conv_dim=8, d_conv_dim=8, g_repeat_num=1, lr_decay_iters=0,
                        log_every=20, seed=0)
    with float64_default():  # in float64 the outcome does not depend on the CPU's kernel path
        res = m.fit(TrainSets(healthy=b.double(), mixed=a.double())).score(torch.cat([th, td]).double())
    auc = roc_auc_score(np.r_[np.zeros(32), np.ones(32)], res.scores)
    assert auc >= 0.9, auc
    maps = torch.as_tensor(res.maps[32:])
    on_blob = float((maps * md).sum() / maps.sum())
    assert on_blob > 2.5 * float(md.float().mean()), on_blob
    # map, score and reconstruction are tied by definition
    x = torch.cat([th, td])[:, 0].numpy()
    np.testing.assert_allclose(res.maps, np.abs(x - res.reconstructions) / 2, atol=1e-6)
    np.testing.assert_allclose(res.scores, res.maps.mean((1, 2)), rtol=1e-5)


def test_determinism_and_save_load_round_trip(tmp_path):
    train = _train_sets()
    test = _images(6, seed=5, blob=True)[0]
    m1 = MedAIAnomalyPro(**TINY).fit(train)
    m2 = MedAIAnomalyPro(**TINY).fit(train)
    s1 = m1.score(test).scores
    np.testing.assert_array_equal(s1, m2.score(test).scores)
    assert not np.array_equal(s1, MedAIAnomalyPro(**{**TINY, "seed": 1}).fit(train).score(test).scores)
    loaded = AnomalyMethod.load(m1.save(tmp_path / "m.pt"))
    assert isinstance(loaded, MedAIAnomalyPro)
    np.testing.assert_array_equal(loaded.score(test).scores, s1)
    fresh = MedAIAnomalyPro(**TINY)
    fresh.load_state_dict(m1.state_dict())
    np.testing.assert_array_equal(fresh.score(test).scores, s1)
    assert "D" not in m1.state_dict()  # scoring needs the generator only


def test_selection_checkpoints_are_loadable(tmp_path):
    ctx = FitContext(workdir=tmp_path, checkpoint_every=8, progress=False)
    m = MedAIAnomalyPro(**TINY).fit(_train_sets(), ctx)
    assert [it for it, _ in ctx.selection_checkpoints] == [8, 16, 24]
    test = _images(4, seed=6)[0]
    last = MedAIAnomalyPro(**TINY)
    last.load_checkpoint(ctx.selection_checkpoints[-1][1])
    np.testing.assert_array_equal(last.score(test).scores, m.score(test).scores)
    rows = (tmp_path / "losses.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["iteration", "d_real", "d_fake", "d_gp"] and len(rows) == 1 + 24 // 4


def test_additive_head_is_brainomaly():
    m = MedAIAnomalyPro(**{**TINY, "head": "additive"}).fit(_train_sets())
    assert m.G_.head.out_channels == 1
    test = _images(4, seed=7)[0]
    res = m.score(test)
    with torch.no_grad():
        expected = torch.tanh(test + m.G_(test))[:, 0]
    np.testing.assert_allclose(res.reconstructions, expected.numpy(), atol=1e-6)
    assert np.isfinite(res.scores).all()


def test_replicated_rgb_variant_runs():
    m = MedAIAnomalyPro(**{**TINY, "replicate_rgb": True, "iterations": 4}).fit(_train_sets())
    assert m.G_.head.out_channels == 4
    res = m.score(_images(3)[0])
    assert res.maps.shape == (3, 32, 32) and res.reconstructions.shape == (3, 32, 32)


def test_non_finite_loss_raises_training_error():
    train = _train_sets()
    bad = train.healthy.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingError, match="non-finite"):
        MedAIAnomalyPro(**{**TINY, "batch_size": 16}).fit(TrainSets(healthy=bad, mixed=train.mixed))


class _Killed(Exception):
    pass


class _KillAt(FitContext):
    """A FitContext that dies (like a killed job) when losses are logged at iteration ``kill_at``."""

    def __init__(self, kill_at: int, **kw):
        super().__init__(**kw)
        self.kill_at = kill_at

    def log_losses(self, iteration, losses):
        super().log_losses(iteration, losses)
        if iteration == self.kill_at:
            raise _Killed


def test_resume_after_kill_ends_with_identical_weights(tmp_path):
    train = _train_sets()
    params = {**TINY, "resume_every": 8, "log_every": 2}
    straight = MedAIAnomalyPro(**params).fit(train, FitContext(workdir=tmp_path / "a", progress=False))
    with pytest.raises(_Killed):  # dies at 14: the last resume state is from iteration 8
        MedAIAnomalyPro(**params).fit(train, _KillAt(14, workdir=tmp_path / "b", progress=False))
    assert torch.load(tmp_path / "b" / "resume.pt", weights_only=False)["iteration"] == 8
    events = []
    resumed = MedAIAnomalyPro(**params).fit(train, FitContext(workdir=tmp_path / "b", progress=False,
                                                              on_event=events.append))
    assert any("resumed from iteration 8" in e for e in events)
    for k, v in straight.G_.state_dict().items():
        assert torch.equal(v, resumed.G_.state_dict()[k]), k
    end_a = torch.load(tmp_path / "a" / "resume.pt", weights_only=False)
    end_b = torch.load(tmp_path / "b" / "resume.pt", weights_only=False)
    for k, v in end_a["trainer"]["D"].items():
        assert torch.equal(v, end_b["trainer"]["D"][k]), k
    test = _images(4, seed=8)[0]
    np.testing.assert_array_equal(straight.score(test).scores, resumed.score(test).scores)
    # a finished run resumes to its end state without training again; other settings restart it with a message
    again = MedAIAnomalyPro(**params).fit(train, FitContext(workdir=tmp_path / "b", progress=False))
    np.testing.assert_array_equal(again.score(test).scores, resumed.score(test).scores)
    events.clear()
    other = MedAIAnomalyPro(**{**params, "g_conv_dim": 4}).fit(
        train, FitContext(workdir=tmp_path / "b", progress=False, on_event=events.append))
    assert any("g_conv_dim" in e and "restart" in e for e in events), events
    assert other.G_.state_dict().keys() and not any("resumed from" in e for e in events)


def test_saturated_mask_is_reported_and_logged(tmp_path):
    """losses.csv carries the mean masks; a final mask above MASK_SATURATED on both sets gets a warning naming
    it, a mask that is not saturated gets none; likewise a critic that ends behind its generator."""
    m = MedAIAnomalyPro()
    events: list[str] = []
    ctx = FitContext(progress=False, on_event=events.append)
    m._check_mask({"mask_a_mean": 0.991, "mask_b_mean": 0.987}, ctx)
    assert len(events) == 1 and "mask saturated" in events[0] and "0.991" in events[0] and "head: additive" in events[0]
    assert ctx.warnings == events
    for last in ({"mask_a_mean": 0.991, "mask_b_mean": 0.40}, {"mask_a_mean": 0.2, "mask_b_mean": 0.2}, {}):
        m._check_mask(last, ctx)
    assert len(events) == 1

    # the critic: behind its generator (D(fake) above D(real) by more than CRITIC_BEHIND) is reported, with numbers
    events.clear()
    m._check_critic({"d_real": -0.048, "d_fake": 0.960}, ctx)
    assert len(events) == 1 and "critic ended behind" in events[0] and "-1.008" in events[0] and "d_lr" in events[0]
    for last in ({"d_real": 0.30, "d_fake": 0.27}, {"d_real": 0.0, "d_fake": 0.05}, {"d_real": 0.1}, {}):
        m._check_critic(last, ctx)
    assert len(events) == 1

    x = torch.rand(24, 1, 16, 16) * 2 - 1
    MedAIAnomalyPro(iterations=6, batch_size=4, g_conv_dim=4, g_repeat_num=1, d_conv_dim=4, lr_decay_iters=0,
                    log_every=2, checkpoint_every=0).fit(TrainSets(healthy=x[:12], mixed=x[12:]),
                                                         FitContext(workdir=tmp_path, progress=False))
    rows = (tmp_path / "losses.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[-2:] == ["mask_a_mean", "mask_b_mean"] and len(rows) == 4
    # the last critic means are kept with the resume state, so a resumed finished run can check them again
    last_d = torch.load(tmp_path / "resume.pt", weights_only=False)["trainer"]["last_d"]
    assert set(last_d) == {"d_real", "d_fake", "d_gp"} and all(math.isfinite(v) for v in last_d.values())
    for row in rows[1:]:
        a, b = (float(v) for v in row.split(",")[-2:])
        assert 0.0 < a < 1.0 and 0.0 < b < 1.0

"""f-AnoGAN from scratch: ResNet shapes at 64/128/256 px, tflib init, WGAN-GP gradient penalty and izif
loss against independent computations, frozen G statistics, training on a synthetic set, determinism,
save/load and resume after a kill."""

import csv
import math

import numpy as np
import pytest
import torch
from torch import nn

from anomaly_bench.core.config import method_params
from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import AnomalyMethod, FitContext, TrainSets
from anomaly_bench.harness.sampler import BatchSampler as ResumableBatchSampler
from anomaly_bench.methods.fanogan import (
    Critic,
    Encoder,
    FAnoGAN,
    Generator,
    frozen_bn_stats,
    gradient_penalty,
    izif_per_sample,
    tf_conv,
)
from anomaly_bench.nn.common import batch_stream
from helpers import KillAfterResumeSave, Killed, checkerboard, fit64, one_blob, score64

FAST = dict(dim=4, z_dim=16, batch_size=8, iterations=2, encoder_iterations=4, log_every=2)


# -- networks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,blocks", [(64, 4), (128, 5), (256, 6)])
def test_shapes_scale_one_block_per_doubling(size, blocks):
    dim = 4
    g, d, e = Generator(1, size, dim, 16), Critic(1, size, dim), Encoder(1, size, dim, 16)
    assert len(g.blocks) == len(d.trunk.blocks) == len(e.trunk.blocks) == blocks
    x = g(torch.randn(2, 16))
    assert x.shape == (2, 1, size, size) and x.abs().max() <= 1
    assert d(x).shape == (2,)
    assert d.features(x).shape == (2, 8 * dim * 4 * 4)  # f(x) stays 8·dim·16 at every size
    z = e(x)
    assert z.shape == (2, 16) and z.abs().max() < 1  # tanh_fc
    widths = [b.conv2.out_channels for b in d.trunk.blocks]
    assert widths == [dim * min(2 ** (i + 1), 8) for i in range(blocks)]
    assert [b.conv2.out_channels for b in g.blocks] == widths[::-1][1:] + [dim]


def test_authors_64px_widths():
    d, g = Critic(1, 64, 64), Generator(1, 64, 64, 128)
    assert [b.conv2.out_channels for b in d.trunk.blocks] == [128, 256, 512, 512]
    assert [b.conv2.out_channels for b in g.blocks] == [512, 256, 128, 64]
    assert g.input.out_features == 8192 and d.output.in_features == 8192


@pytest.mark.parametrize("size", [28, 48, 4])
def test_unsupported_sizes_are_a_clear_error(size):
    with pytest.raises(ConfigError, match="power of two"):
        Critic(1, size, 4)


def test_critic_normalises_per_sample_and_g_e_use_tf_batchnorm():
    d = Critic(1, 64, 4)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())
    gns = [m for m in d.modules() if isinstance(m, nn.GroupNorm)]
    assert gns and all(m.num_groups == 1 and m.affine for m in gns)
    x = torch.randn(5, 1, 64, 64)
    torch.testing.assert_close(d(x)[2:3], d(x[2:3]))  # no batch statistics in the critic
    for net in (Generator(1, 64, 4, 16), Encoder(1, 64, 4, 16)):
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)


def test_tflib_uniform_init():
    torch.manual_seed(0)
    conv = tf_conv(64, 128, 3)  # he_init: sigma = sqrt(4 / (fan_in + fan_out))
    sigma = math.sqrt(4.0 / (64 * 9 + 128 * 9))
    assert conv.weight.abs().max() <= sigma * math.sqrt(3) + 1e-7
    assert abs(conv.weight.std().item() / sigma - 1) < 0.02
    assert torch.all(conv.bias == 0)
    short = tf_conv(64, 128, 1, he_init=False)
    assert short.weight.abs().max() <= math.sqrt(2.0 / (64 + 128)) * math.sqrt(3) + 1e-7


# -- losses ------------------------------------------------------------------------------------------


def test_gradient_penalty_matches_per_sample_autograd():
    torch.manual_seed(0)
    d = Critic(1, 32, 4)
    real, fake = torch.randn(3, 1, 32, 32), torch.randn(3, 1, 32, 32)
    alpha = torch.rand(3, 1, 1, 1)
    gp = gradient_penalty(d, real, fake, alpha)
    want = []
    for i in range(3):  # one sample at a time: ‖∇_x D(x)‖₂ over all pixels
        xi = (alpha[i] * fake[i:i + 1] + (1 - alpha[i]) * real[i:i + 1]).requires_grad_(True)
        (gi,) = torch.autograd.grad(d(xi).sum(), xi)
        want.append((gi.norm() - 1) ** 2)
    torch.testing.assert_close(gp, torch.stack(want).mean())
    gp.backward()  # the penalty trains the critic (double backprop)
    assert d.trunk.input.weight.grad is not None and d.trunk.input.weight.grad.abs().sum() > 0


def test_gradient_penalty_of_a_linear_critic_is_analytic():
    w = torch.randn(1, 1, 8, 8)
    real, fake, alpha = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.rand(4, 1, 1, 1)
    gp = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), real, fake, alpha)
    assert gp.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)


def test_izif_loss_by_hand():
    x = torch.zeros(2, 1, 2, 2)
    x_rec = torch.tensor([[1.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    f_x, f_rec = torch.zeros(2, 3), torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    total, pix, feat = izif_per_sample(x, x_rec, f_x, f_rec, kappa=1.0)
    assert pix.tolist() == [0.5, 1.0] and feat.tolist() == [3.0, 0.0] and total.tolist() == [3.5, 1.0]
    total2, _, _ = izif_per_sample(x, x_rec, f_x, f_rec, kappa=2.0)
    assert total2.tolist() == [6.5, 1.0]
    # the training loss (batch mean of the per-image values) = MSE(x, x̂) + κ·MSE(f, f̂) over the batch
    mse = torch.nn.functional.mse_loss
    assert total.mean().item() == pytest.approx(mse(x_rec, x).item() + mse(f_rec, f_x).item())


def test_critic_steps_do_not_update_generator_statistics():
    g = Generator(1, 32, 4, 16).train()
    z = torch.randn(4, 16)
    before = {k: v.clone() for k, v in g.state_dict().items() if "running" in k}
    with torch.no_grad(), frozen_bn_stats(g):
        out = g(z)
    assert all(torch.equal(before[k], g.state_dict()[k]) for k in before)
    assert all(m.momentum == 0.01 for m in g.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        assert not torch.allclose(out, g.eval()(z))  # batch statistics were used
        g.train()(z)
    assert not torch.equal(before["out_norm.running_mean"], g.out_norm.running_mean)


def test_sampler_draws_the_batch_stream_sequence_and_resumes():
    data = torch.arange(10.0)
    ref = batch_stream(data, 4, torch.Generator().manual_seed(3))
    s = ResumableBatchSampler(10, 4, torch.Generator().manual_seed(3))
    for _ in range(5):
        assert torch.equal(next(ref), data[s.next_indices()])
    state = s.state_dict()
    tail = [s.next_indices() for _ in range(4)]
    s2 = ResumableBatchSampler(10, 4, torch.Generator().manual_seed(99))
    s2.load_state_dict(state)
    assert all(torch.equal(a, s2.next_indices()) for a in tail)


def test_authors_epoch_budget_rule():
    m = FAnoGAN(wgan_epochs=7, batch_size=64)
    assert m.generator_iterations(6400) == math.ceil(7 * (100 - 5) / 5)
    assert FAnoGAN(iterations=123).generator_iterations(6400) == 123


# -- training, scoring, persistence --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """16 px keeps this affordable: 150 WGAN-GP generator iterations + 200 encoder iterations (~25 CPU-s)."""
    work = tmp_path_factory.mktemp("fanogan_fit")
    m = FAnoGAN(dim=8, z_dim=32, batch_size=16, iterations=150, encoder_iterations=200, log_every=25,
                checkpoint_every=50, resume_every=0, seed=0)
    m.fit(TrainSets(one_blob(96, 16, 0)), FitContext(workdir=work, checkpoint_every=50, progress=False))
    return m, work


def anomalies(size: int) -> torch.Tensor:
    return torch.cat([checkerboard(2, size, period=size // 2), -one_blob(2, size, 8)])


def test_training_ranks_an_obvious_anomaly_above_healthy_images():
    """Judged on a float64 fit: what a short float32 WGAN-GP training learns depends on the CPU kernel path."""
    m = fit64(FAnoGAN(dim=8, z_dim=32, batch_size=16, iterations=150, encoder_iterations=200, log_every=25,
                      resume_every=0, seed=0), TrainSets(one_blob(96, 16, 0)), FitContext(progress=False))
    s = score64(m, torch.cat([one_blob(16, 16, 7), anomalies(16)]))
    assert s[16:].min() > s[:16].max(), s


def test_scores_do_not_depend_on_batch_composition(trained):
    m, _ = trained
    x = torch.cat([one_blob(6, 16, 3), anomalies(16)])
    full = m.score(x).scores
    one = np.array([m.score(x[i:i + 1]).scores[0] for i in range(len(x))])
    np.testing.assert_allclose(one, full, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m.score(x.flip(0)).scores[::-1], full, rtol=1e-5, atol=1e-7)


def test_score_is_the_izif_quantity_and_map_is_the_residual(trained):
    m, _ = trained
    x = torch.cat([one_blob(3, 16, 4), anomalies(16)])
    r = m.score(x)
    with torch.no_grad():
        x_rec = m.G(m.E(x))
        want = ((x - x_rec) ** 2).mean((1, 2, 3)) + ((m.D.features(x) - m.D.features(x_rec)) ** 2).mean(1)
    np.testing.assert_allclose(r.scores, want.numpy(), rtol=1e-5)
    np.testing.assert_allclose(r.maps, (x - x_rec).abs()[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(r.reconstructions, x_rec[:, 0].numpy(), atol=1e-6)


def test_logs_and_selection_checkpoints(trained):
    _, work = trained
    rows = list(csv.DictReader(open(work / "losses.csv")))
    assert [int(r["iteration"]) for r in rows] == list(range(25, 351, 25))
    assert [r["stage"] for r in rows] == ["1"] * 6 + ["2"] * 8
    assert float(rows[-1]["enc_loss"]) < float(rows[6]["enc_loss"])  # the encoder learns
    assert float(rows[5]["wdist"]) < float(rows[1]["wdist"])  # the generator catches up with the critic
    ckpts = sorted(int(p.stem.split("_")[1]) for p in (work / "checkpoints").glob("iter_*.pt"))
    assert ckpts == [200, 250, 300, 350]  # encoder steps 50..200 after 150 generator iterations


def test_save_load_round_trip(trained, tmp_path):
    m, _ = trained
    x = torch.cat([one_blob(4, 16, 5), anomalies(16)])
    loaded = AnomalyMethod.load(m.save(tmp_path / "f.pt"))
    assert isinstance(loaded, FAnoGAN)
    np.testing.assert_array_equal(loaded.score(x).scores, m.score(x).scores)


def test_same_seed_same_scores_and_resume_after_a_kill(tmp_path):
    data, x = one_blob(24, 16, 0), torch.cat([one_blob(3, 16, 9), anomalies(16)])
    params = {**FAST, "resume_every": 1}
    ref = FAnoGAN(**params).fit(TrainSets(data)).score(x).scores
    again = FAnoGAN(**params).fit(TrainSets(data)).score(x).scores
    np.testing.assert_array_equal(ref, again)
    assert not np.array_equal(FAnoGAN(**{**params, "seed": 1}).fit(TrainSets(data)).score(x).scores, ref)

    for kill_at in (1, 3):  # during the WGAN stage, and during the encoder stage
        work = tmp_path / f"k{kill_at}"
        with pytest.raises(Killed):
            FAnoGAN(**params).fit(TrainSets(data), KillAfterResumeSave(workdir=work, progress=False, kill_step=kill_at))
        resumed = FAnoGAN(**params).fit(TrainSets(data), FitContext(workdir=work, progress=False))
        np.testing.assert_array_equal(resumed.score(x).scores, ref)


def test_hflip_augmentation():
    x = torch.randn(64, 1, 8, 8)
    out = FAnoGAN()._augment(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert torch.all(flipped ^ kept) and 16 < flipped.sum() < 48
    assert torch.equal(FAnoGAN(hflip=False)._augment(x, torch.Generator().manual_seed(0)), x)


def test_profiles_resolve():
    for prof in ("smoke", "ci", "paper"):
        method_params("fanogan", prof)
    paper = method_params("fanogan", "paper")
    assert (paper["dim"], paper["batch_size"], paper["critic_iters"], paper["encoder_iterations"]) == (64, 64, 5, 50000)

"""GANomaly from scratch: network shapes, the authors' losses and update order, D re-initialisation,
BN test modes, training on a synthetic set, determinism, save/load and resume after a kill."""

import copy
import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomaly_bench.core.config import method_params
from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import AnomalyMethod, FitContext, TrainSets
from anomaly_bench.methods.ganomaly import (
    GANomaly,
    NetD,
    NetG,
    discriminator_loss,
    generator_losses,
    latent_score,
    maybe_reinit_discriminator,
    weights_init,
)
from helpers import KillAfterResumeSave, Killed, checkerboard, fit64, one_blob, score64

FAST = dict(epochs=2, batch_size=8, ngf=8, ndf=8, nz=16, log_every=2)


# -- networks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_shapes_scale_with_image_size(size):
    g, d = NetG(size, 1, 10, 4), NetD(size, 1, 4)
    x = torch.rand(2, 1, size, size) * 2 - 1
    x_hat, z, z_hat = g(x)
    assert x_hat.shape == x.shape and z.shape == z_hat.shape == (2, 10, 1, 1)
    assert x_hat.abs().max() <= 1
    prob, feat = d(x)
    stages = int(math.log2(size)) - 3  # pyramid convs while size > 4 after the first stride-2 conv
    assert prob.shape == (2,) and torch.all((prob > 0) & (prob < 1))
    assert feat.shape == (2, 4 * 2 ** stages, 4, 4)


def test_widths_follow_the_authors_dcgan():
    g = NetG(64, 1, 100, 64)
    enc = [m.out_channels for m in g.encoder1.main if isinstance(m, torch.nn.Conv2d)]
    dec = [m.out_channels for m in g.decoder.main if isinstance(m, torch.nn.ConvTranspose2d)]
    assert enc == [64, 128, 256, 512, 100]
    assert dec == [512, 256, 128, 64, 1]
    assert all(m.bias is None for m in g.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)))
    d = NetD(128, 1, 64)
    assert [m.out_channels for m in d.features if isinstance(m, torch.nn.Conv2d)] == [64, 128, 256, 512, 1024]
    assert isinstance(d.classifier[-1], torch.nn.Sigmoid)


@pytest.mark.parametrize("size", [28, 48, 8])
def test_unsupported_sizes_are_a_clear_error(size):
    with pytest.raises(ConfigError, match="power of two"):
        NetG(size, 1, 10, 4)


def test_weights_init():
    torch.manual_seed(0)
    g = NetG(64, 1, 100, 64)
    g.apply(weights_init)
    w = g.encoder1.main[2].weight  # 64 -> 128 conv
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    bn = g.encoder1.main[3]
    assert abs(bn.weight.mean().item() - 1.0) < 0.01 and 0.01 < bn.weight.std().item() < 0.03
    assert torch.all(bn.bias == 0)


# -- losses ------------------------------------------------------------------------------------------


def test_generator_losses_by_hand():
    fr, ff = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])  # feature MSE = (1 + 4) / 2
    x, xh = torch.tensor([0.5, -0.5, 0.0, 1.0]), torch.tensor([0.0, 0.5, 0.0, 0.0])  # L1 = (0.5+1+0+1)/4
    z, zh = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, 4.0, 1.0])  # L2 = 9/3
    total, adv, con, enc = generator_losses(fr, ff, x, xh, z, zh, 1.0, 50.0, 1.0)
    assert adv.item() == pytest.approx(2.5) and con.item() == pytest.approx(0.625) and enc.item() == pytest.approx(3)
    assert total.item() == pytest.approx(2.5 + 50 * 0.625 + 3)


def test_discriminator_loss_by_hand():
    pr, pf = torch.tensor([0.9, 0.6]), torch.tensor([0.2, 0.3])
    want = 0.5 * (-(math.log(0.9) + math.log(0.6)) / 2 - (math.log(0.8) + math.log(0.7)) / 2)
    assert discriminator_loss(pr, pf).item() == pytest.approx(want, rel=1e-6)


def test_latent_score_is_the_mean_over_latent_dims():
    z = torch.zeros(2, 4, 1, 1)
    zh = torch.tensor([[1.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]]).view(2, 4, 1, 1)
    assert latent_score(z, zh).tolist() == [0.5, 1.0]


def test_discriminator_is_reinitialised_only_below_the_threshold():
    torch.manual_seed(0)
    d = NetD(32, 1, 8)
    d.apply(weights_init)
    before = copy.deepcopy(d.state_dict())
    assert not maybe_reinit_discriminator(d, 1e-4, 1e-5)
    assert all(torch.equal(before[k], v) for k, v in d.state_dict().items())
    assert maybe_reinit_discriminator(d, 5e-6, 1e-5)
    w0, w1 = before["features.0.weight"], d.state_dict()["features.0.weight"]
    assert not torch.equal(w0, w1) and abs(w1.std().item() - 0.02) < 0.005


def _fresh(seed=0, **kw):
    m = GANomaly(**{**FAST, **kw, "seed": seed})
    torch.manual_seed(seed)
    m._build(m._arch((1, 32, 32)))
    m.opt_g = torch.optim.Adam(m.G.parameters(), lr=m.params["lr"], betas=(0.5, 0.999))
    m.opt_d = torch.optim.Adam(m.D.parameters(), lr=m.params["lr"], betas=(0.5, 0.999))
    return m


def test_d_step_ignores_the_generator_loss_and_uses_pre_step_predictions():
    """The D update must be the same whatever G's loss weights are: G's loss gives D no gradient and the
    D step uses the predictions made before the G step (authors' order)."""
    x = one_blob(8, 32, 0)
    a, b = _fresh(), _fresh(w_adv=100.0, w_con=1.0)
    a.training_step(x)
    b.training_step(x)
    for (k, va), vb in zip(a.D.state_dict().items(), b.D.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.G.encoder1.main[0].weight, b.G.encoder1.main[0].weight)


def test_d_step_matches_a_manual_step():
    x = one_blob(8, 32, 1)
    m = _fresh()
    d0, opt0 = copy.deepcopy(m.D), copy.deepcopy(m.opt_d.state_dict())
    with torch.no_grad():
        x_hat = m.G.train()(x)[0]
    ref = copy.deepcopy(d0).train()
    opt = torch.optim.Adam(ref.parameters(), lr=m.params["lr"], betas=(0.5, 0.999))
    opt.load_state_dict(opt0)
    pr, pf = ref(x)[0], ref(x_hat)[0]
    loss = 0.5 * (F.binary_cross_entropy(pr, torch.ones(8)) + F.binary_cross_entropy(pf, torch.zeros(8)))
    opt.zero_grad()
    loss.backward()
    opt.step()
    out = m.training_step(x)
    assert out["d_loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(m.D.features[0].weight, ref.features[0].weight)


# -- training, scoring, persistence --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("ganomaly_fit")
    m = GANomaly(epochs=30, batch_size=16, ngf=16, ndf=16, residual_map=True, log_every=15, checkpoint_every=60,
                 seed=0)
    m.fit(TrainSets(one_blob(96, 32, 0)), FitContext(workdir=work, checkpoint_every=60, progress=False))
    return m, work


def test_training_ranks_an_obvious_anomaly_above_healthy_images():
    """Judged on a float64 fit: what a short float32 training learns depends on the CPU kernel path."""
    m = fit64(GANomaly(epochs=30, batch_size=16, ngf=16, ndf=16, residual_map=True, log_every=15, seed=0),
              TrainSets(one_blob(96, 32, 0)), FitContext(progress=False))
    healthy, anomalous = one_blob(16, 32, 7), checkerboard(4, 32)
    s = score64(m, torch.cat([healthy, anomalous]))
    assert s[16:].min() > s[:16].max(), s


def test_scores_do_not_depend_on_batch_composition(trained):
    m, _ = trained
    x = torch.cat([one_blob(6, 32, 3), checkerboard(2, 32)])
    full = m.score(x).scores
    one = np.array([m.score(x[i:i + 1]).scores[0] for i in range(len(x))])
    np.testing.assert_allclose(one, full, rtol=1e-5, atol=1e-7)


def test_outputs_maps_logs_and_checkpoints(trained):
    m, work = trained
    r = m.score(one_blob(3, 32, 4))
    assert r.maps.shape == r.reconstructions.shape == (3, 32, 32)
    assert np.all(r.maps >= 0)
    assert GANomaly(**{**m.params, "residual_map": False}).params["residual_map"] is False
    rows = list(csv.DictReader(open(work / "losses.csv")))
    assert [int(r["iteration"]) for r in rows] == list(range(15, 181, 15))  # 30 epochs x 6 batches
    assert {"d_loss", "g_loss", "g_adv", "g_con", "g_enc", "d_reinits"} <= set(rows[0])
    assert float(rows[-1]["g_con"]) < float(rows[0]["g_con"])  # reconstruction improves
    assert sorted(p.name for p in (work / "checkpoints").glob("iter_*.pt")) == [
        "iter_000000060.pt", "iter_000000120.pt", "iter_000000180.pt"]


def test_an_iteration_budget_replaces_the_epochs_whatever_the_set_size(tmp_path):
    """``iterations > 0`` (the cpu profile) fixes the number of G/D steps; 0 keeps the authors' epoch budget."""
    for n, work in ((40, tmp_path / "small"), (96, tmp_path / "large")):
        GANomaly(epochs=15, iterations=7, batch_size=16, ngf=8, ndf=8, nz=8, log_every=1, seed=0).fit(
            TrainSets(one_blob(n, 32, 0)), FitContext(workdir=work, progress=False))
        rows = list(csv.DictReader(open(work / "losses.csv")))
        assert [int(r["iteration"]) for r in rows] == list(range(1, 8))
    with pytest.raises(ConfigError, match="iterations"):
        GANomaly(iterations=-1).fit(TrainSets(one_blob(8, 32, 0)))


def test_save_load_round_trip(trained, tmp_path):
    m, _ = trained
    x = torch.cat([one_blob(4, 32, 5), checkerboard(1, 32)])
    path = m.save(tmp_path / "g.pt")
    loaded = AnomalyMethod.load(path)
    assert isinstance(loaded, GANomaly) and not hasattr(loaded, "D")  # scoring needs NetG only
    np.testing.assert_array_equal(loaded.score(x).scores, m.score(x).scores)


def test_train_bs1_mode_is_per_image_and_leaves_the_stored_statistics_alone(trained):
    m, _ = trained
    bs1 = GANomaly(**{**m.params, "bn_test_mode": "train_bs1"})
    bs1.load_state_dict(m.state_dict())
    before = copy.deepcopy(bs1.G.state_dict())
    x = torch.cat([one_blob(4, 32, 6), checkerboard(1, 32)])
    s = bs1.score(x).scores
    assert all(torch.equal(before[k], v) for k, v in bs1.G.state_dict().items())
    np.testing.assert_allclose(bs1.score(x.flip(0)).scores[::-1], s, rtol=1e-5, atol=1e-7)
    assert not np.allclose(s, m.score(x).scores)  # per-image statistics, not the running ones


def test_same_seed_same_scores_and_resume_after_a_kill(tmp_path):
    data, x = one_blob(24, 32, 0), torch.cat([one_blob(3, 32, 9), checkerboard(1, 32)])
    params = {**FAST, "epochs": 3, "resume_every": 2}
    ref = GANomaly(**params).fit(TrainSets(data)).score(x).scores
    again = GANomaly(**params).fit(TrainSets(data)).score(x).scores
    np.testing.assert_array_equal(ref, again)

    with pytest.raises(Killed):
        GANomaly(**params).fit(TrainSets(data), KillAfterResumeSave(workdir=tmp_path, progress=False, kill_step=4))
    assert torch.load(tmp_path / "resume.pt", weights_only=False)["step"] == 4
    resumed = GANomaly(**params).fit(TrainSets(data), FitContext(workdir=tmp_path, progress=False))
    np.testing.assert_array_equal(resumed.score(x).scores, ref)


def test_reinit_is_counted_during_fit(tmp_path):
    m = GANomaly(**{**FAST, "epochs": 1, "d_reinit_threshold": 1.0e9})
    m.fit(TrainSets(one_blob(16, 32, 0)), FitContext(workdir=tmp_path, progress=False))
    assert m.d_reinits_ == 2
    rows = list(csv.DictReader(open(tmp_path / "losses.csv")))
    assert sum(float(r["d_reinits"]) for r in rows) == 2


def test_profiles_resolve():
    for prof in ("smoke", "ci", "paper"):
        p = method_params("ganomaly", prof)
        assert p["bn_test_mode"] == "eval"
    paper = method_params("ganomaly", "paper")
    assert (paper["epochs"], paper["batch_size"], paper["ngf"], paper["nz"]) == (15, 64, 64, 100)

"""Deep SVDD (``deepsvdd``): the authors' network, centre, objectives and radius, their recipe's schedule, what it
learns, determinism, save/load, resume after a kill, configuration errors, and that the quick start leaves it out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from anomaly_bench.core.config import method_params
from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import FitContext, TrainSets
from anomaly_bench.core.registry import default_experiment_methods, get_method, list_methods
from anomaly_bench.harness.trainer import keep_bn_stats
from anomaly_bench.methods.deepsvdd import DeepSVDD, LeNetAutoencoder, LeNetEncoder
from anomaly_bench.methods.deepsvdd.loss import push_from_zero, radius_from, sq_dist, svdd_loss
from anomaly_bench.nn.common import seed_everything
from helpers import KillAfterResumeSave, Killed, fit64, load_both_ways, one_blob, score64

pytestmark = pytest.mark.usefixtures("one_thread")

#: a tiny, fast configuration (32 px, 24 training images -> 3 batches of 8 per epoch)
FAST = dict(width=4, rep_dim=16, batch_size=8, ae_iterations=3, iterations=6, log_every=1, resume_every=0)


def _data(n: int = 24, seed: int = 0) -> torch.Tensor:
    return one_blob(n, 32, seed)


def patched(n: int, size: int, seed: int) -> torch.Tensor:
    """Healthy-looking blobs with a size/4 checkerboard patch (2-px squares) added at a random place, its amplitude
    rising linearly from 0.02 (barely visible) to 0.5 over the ``n`` images."""
    g = torch.Generator().manual_seed(seed)
    x = one_blob(n, size, seed + 100)
    p, amp = size // 4, torch.linspace(0.02, 0.5, n)
    i = torch.arange(p)
    board = torch.where((i[:, None] // 2 + i[None] // 2) % 2 == 0, 0.9, -0.9)
    for k in range(n):
        r, c = torch.randint(0, size - p, (2,), generator=g).tolist()
        x[k, 0, r:r + p, c:c + p] += board * amp[k]
    return x


# -- networks ----------------------------------------------------------------------------------------
def _authors_count(c: int, size: int, w: int, n: int, rep: int) -> int:
    """Weights of their LeNet-type net (cifar10_LeNet.py generalised): bias-free 5x5 convs, affine-free BN (no
    parameters), a bias-free linear layer from the last map (size / 2**n)^2 to rep_dim."""
    widths = [c] + [w * 2**i for i in range(n)]
    return sum(25 * a * b for a, b in zip(widths, widths[1:])) + widths[-1] * (size // 2**n) ** 2 * rep


@pytest.mark.parametrize("size", [32, 64, 128])
def test_encoder_is_the_authors_layer_list(size):
    net = LeNetEncoder(1, size, width=32, n_blocks=3, rep_dim=128)
    assert sum(p.numel() for p in net.parameters()) == _authors_count(1, size, 32, 3, 128)
    assert all(name.endswith("weight") for name, _ in net.named_parameters())  # no bias anywhere
    assert all(not bn.affine and bn.eps == 1e-4 for bn in net.bns)
    ae = LeNetAutoencoder(1, size, width=32, n_blocks=3, rep_dim=128)
    assert all(name.endswith("weight") for name, _ in ae.named_parameters())
    assert ae.encoder.state_dict().keys() == net.state_dict().keys()  # the hand-over loads every encoder tensor
    x = torch.rand(2, 1, size, size) * 2 - 1
    ae.eval()
    out = ae(x)
    assert out.shape == x.shape and out.abs().max() <= 1
    net.eval()
    assert net(x).shape == (2, 128)


def test_encoder_block_order_is_conv_bn_leaky_relu_pool():
    net = LeNetEncoder(1, 32, width=4, n_blocks=2, rep_dim=16).train()
    x = torch.randn(5, 1, 32, 32)
    h = x
    for conv in net.convs:
        h = conv(h)
        h = (h - h.mean((0, 2, 3), keepdim=True)) / torch.sqrt(h.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-4)
        h = F.max_pool2d(F.leaky_relu(h, 0.01), 2)
    torch.testing.assert_close(net(x), h.flatten(1) @ net.fc.weight.T, rtol=1e-4, atol=1e-5)


# -- centre, objectives, radius ---------------------------------------------------------------------
def test_centre_coordinates_near_zero_are_pushed_to_eps():
    c = torch.tensor([0.05, -0.05, 0.0, 0.2, -0.3, 0.1, -0.0999, 1e-9])
    assert push_from_zero(c, 0.1).tolist() == pytest.approx([0.1, -0.1, 0.0, 0.2, -0.3, 0.1, -0.1, 0.1])
    assert c[0] == pytest.approx(0.05)  # a copy: the input is not changed


@pytest.mark.parametrize("centre_bn", ["batch", "running"])
def test_centre_is_the_mean_initial_output_and_stays_fixed(centre_bn):
    """c = the mean of the *initial* network's outputs on the training images (then the eps rule), in the BN mode of
    ``centre_bn``, unchanged by the SVDD steps that follow."""
    data = _data()
    params = {**FAST, "pretrain": False, "batch_size": 32, "lr": 1e-2, "centre_bn": centre_bn, "eps": 0.3}
    m = DeepSVDD(**params).fit(TrainSets(data))
    seed_everything(0)
    net0 = LeNetEncoder(1, 32, width=4, n_blocks=3, rep_dim=16)  # fit builds φ right after seeding
    with torch.no_grad(), keep_bn_stats(net0):
        net0.train(centre_bn == "batch")
        z0 = net0(data)
    expected = push_from_zero(z0.mean(0), 0.3)
    torch.testing.assert_close(m.c_, expected)
    assert (expected.abs() >= 0.3).all()
    with torch.no_grad(), keep_bn_stats(m.net):
        m.net.train(centre_bn == "batch")
        assert not torch.allclose(m.net(data), z0, atol=1e-3)  # the network did move; c did not


def test_pretraining_hands_the_encoder_weights_over():
    m = DeepSVDD(**FAST)
    seen = {}
    original = m._start_svdd

    def spy():
        original()
        seen["net"] = {k: v.clone() for k, v in m.net.state_dict().items()}
        seen["enc"] = m._ae.encoder.state_dict()

    m._start_svdd = spy
    m.fit(TrainSets(_data()))
    assert seen["net"].keys() == seen["enc"].keys()
    assert all(torch.equal(seen["net"][k], seen["enc"][k]) for k in seen["net"])
    assert any(k.endswith("running_var") for k in seen["net"])  # BN running statistics come along
    assert not hasattr(m, "_ae")  # training-only networks are released after fit


def test_objective_and_radius_values():
    dist = torch.tensor([1.0, 4.0, 9.0, 16.0], dtype=torch.float64)
    assert float(svdd_loss(dist, "one-class", torch.tensor(0.0), 0.1)) == pytest.approx(7.5)
    # R = 2: R² + (1/ν)·mean(max(0, d − R²)) = 4 + 2·(0 + 0 + 5 + 12)/4
    assert float(svdd_loss(dist, "soft-boundary", torch.tensor(2.0), 0.5)) == pytest.approx(4 + 2 * 17 / 4)
    d = torch.rand(37, dtype=torch.float64) * 5
    for nu in (0.05, 0.1, 0.5, 1.0):
        assert float(radius_from(d, nu)) == pytest.approx(np.quantile(np.sqrt(d.numpy()), 1 - nu))
    torch.testing.assert_close(sq_dist(torch.tensor([[1.0, 2.0]]), torch.tensor([0.0, 4.0])), torch.tensor([5.0]))


def _radius_log(tmp_path, mode: str) -> np.ndarray:
    params = {**FAST, "pretrain": False, "objective": "soft-boundary", "nu": 0.25, "iterations": 8,
              "radius_warm_up": 4, "radius_update": mode}
    m = DeepSVDD(**params).fit(TrainSets(_data(16)), FitContext(workdir=tmp_path / mode, progress=False))
    x = _data(6, seed=3)
    with torch.no_grad():
        expected = sq_dist(m.net.eval()(x), m.c_) - m.radius_**2
    np.testing.assert_allclose(m.score(x).scores, expected.double().numpy(), rtol=1e-6)  # score = d − R²
    log = pd.read_csv(tmp_path / mode / "losses.csv")
    assert log["iteration"].tolist() == list(range(1, 9)) and (log["phase"] == 2).all()
    return log["radius"].to_numpy()


def test_soft_boundary_radius_waits_for_the_warm_up_then_follows_its_schedule(tmp_path):
    """16 images in batches of 8: an epoch is 2 steps; warm-up 4 steps (``iterations`` given, so it counts steps)."""
    r = _radius_log(tmp_path, "batch")  # the authors' code: every batch once warm
    assert (r[:4] == 0).all() and (r[4:] > 0).all() and len(set(r[4:])) == 4
    r = _radius_log(tmp_path, "epoch")  # the default: at the end of each epoch once warm
    assert (r[:3] == 0).all() and (r[3:] > 0).all()
    assert r[4] == r[3] and r[6] == r[5] and len({r[3], r[5], r[7]}) == 3


def test_lr_milestones_and_the_authors_offset():
    def lrs(**kw):
        m = DeepSVDD(**{**FAST, "pretrain": False, "lr": 1e-3, **kw})
        seen, step = [], m.training_step

        def recording_step(x):
            out = step(x)
            seen.append(m._opt.param_groups[0]["lr"])
            return out

        m.training_step = recording_step
        m.fit(TrainSets(_data(16)))  # 2 steps per epoch
        return [round(v / 1e-3, 6) for v in seen]

    assert lrs(iterations=4, lr_milestones=[2]) == [1, 1, 0.1, 0.1]
    assert lrs(iterations=0, epochs=3, lr_milestones=[2]) == [1, 1, 1, 1, 0.1, 0.1]
    assert lrs(iterations=0, epochs=3, lr_milestones=[2], authors_lr_offset=True) == [1, 1, 0.1, 0.1, 0.1, 0.1]


def test_paper_profile_is_the_authors_recipe():
    m = DeepSVDD(**method_params("deepsvdd", "paper"))
    p = m.params
    assert (p["lr"], p["epochs"], p["lr_milestones"], p["batch_size"], p["weight_decay"]) == (1e-4, 150, [50], 200,
                                                                                                 0.5e-6)
    assert (p["pretrain"], p["ae_lr"], p["ae_epochs"], p["ae_lr_milestones"]) == (True, 1e-4, 350, [250])
    s = m.schedule(5000)  # CIFAR-10's 5,000 images of one class: 25 batches of 200 per epoch
    assert (s["ae_total"], s["ae_milestones"], s["total"], s["milestones"]) == (8750, [6250], 3750, [1250])
    assert DeepSVDD(**{**p, "pretrain": False}).schedule(5000)["ae_total"] == 0
    cpu = method_params("deepsvdd", "cpu")
    assert cpu["iterations"] > 0 and cpu["ae_iterations"] > 0  # a budget independent of the training-set size


# -- what it learns ---------------------------------------------------------------------------------
def test_learns_to_flag_patches_the_initial_network_misses():
    """Float64 (kernel-path independent). The anomalies are chosen *by construction* among patched blobs so that the
    initial network (same seed, lr ~0: its weights, with BN statistics of the training images) scores them below
    the median healthy image (AUC far below 0.5). After training on healthy blobs, they score above the healthy
    images: a network that does not learn the healthy set, a centre that moves, or a score that is not the distance
    to c fails this."""
    train = TrainSets(one_blob(64, 32, 0))
    healthy, pool = one_blob(32, 32, 1), patched(200, 32, 2)
    base = dict(width=8, rep_dim=32, batch_size=16, pretrain=False, lr=1e-3, log_every=1000, resume_every=0)
    init = fit64(DeepSVDD(**{**base, "lr": 1e-12, "iterations": 30}), train)
    h0, p0 = score64(init, healthy), score64(init, pool)
    hard = pool[torch.as_tensor(p0 < np.median(h0))]
    assert len(hard) >= 40
    y = np.r_[np.zeros(len(healthy)), np.ones(len(hard))]
    assert roc_auc_score(y, np.r_[h0, score64(init, hard)]) < 0.3
    m = fit64(DeepSVDD(**{**base, "iterations": 400}), train)
    assert roc_auc_score(y, np.r_[score64(m, healthy), score64(m, hard)]) >= 0.9


# -- determinism, persistence, resume ---------------------------------------------------------------
def test_same_seed_same_scores_other_seed_other_scores():
    data, x = _data(), one_blob(6, 32, 9)
    a, b = (DeepSVDD(**FAST).fit(TrainSets(data)).score(x).scores for _ in range(2))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, DeepSVDD(**{**FAST, "seed": 1}).fit(TrainSets(data)).score(x).scores)


def test_save_load_round_trip(tmp_path):
    m = DeepSVDD(**{**FAST, "objective": "soft-boundary", "radius_warm_up": 0}).fit(TrainSets(_data()))
    assert float(m.radius_) > 0
    x = torch.cat([one_blob(4, 32, 5), patched(4, 32, 6)])
    for loaded in load_both_ways(m, tmp_path / "m.pt"):
        np.testing.assert_array_equal(loaded.score(x).scores, m.score(x).scores)
        assert float(loaded.radius_) == float(m.radius_) and torch.equal(loaded.c_, m.c_)
    with pytest.raises(ConfigError, match="trained on"):
        m.score(torch.zeros(2, 1, 64, 64))
    with pytest.raises(RuntimeError, match="fit"):
        DeepSVDD(**FAST).score(x)
    assert m.score(x[:0]).scores.shape == (0,)


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path):
    """Soft-boundary with the per-epoch radius: killed in pretraining, at the hand-over, and mid-epoch in the SVDD phase
    (the centre, the radius and the epoch's distances so far come back from the resume file)."""
    params = {**FAST, "objective": "soft-boundary", "radius_warm_up": 0, "resume_every": 1}
    data, x = _data(), one_blob(6, 32, 9)
    ref = DeepSVDD(**params).fit(TrainSets(data)).score(x).scores
    for kill_at in (2, 3, 7):
        work = tmp_path / f"k{kill_at}"
        with pytest.raises(Killed):
            killer = KillAfterResumeSave(workdir=work, progress=False, kill_step=kill_at)
            DeepSVDD(**params).fit(TrainSets(data), killer)
        resumed = DeepSVDD(**params).fit(TrainSets(data), FitContext(workdir=work, progress=False))
        np.testing.assert_array_equal(resumed.score(x).scores, ref)


# -- configuration -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, words", [
    ({"nu": 0.0}, "nu must be in"), ({"nu": 1.5}, "nu must be in"), ({"objective": "hard"}, "not one of"),
    ({"lr_milestones": [50, 10]}, "increasing positive"), ({"ae_lr_milestones": [0]}, "increasing positive"),
    ({"lr_milestones": 50}, "must be list"), ({"eps": -0.1}, "eps must be >= 0"),
    ({"radius_update": "x"}, "not one of"), ({"rep_dimension": 8}, "unknown parameter")])
def test_config_errors(bad, words):
    with pytest.raises(ConfigError, match=words):
        DeepSVDD(**bad)


@pytest.mark.parametrize("shape, extra, words", [((4, 1, 32, 16), {}, "square"), ((4, 1, 48, 48), {}, "power of two"),
                                                 ((4, 1, 4, 4), {}, "power of two"),
                                                 ((4, 1, 8, 8), {"n_blocks": 4}, "do not fit")])
def test_image_shapes_that_do_not_fit_get_a_message(shape, extra, words):
    with pytest.raises(ConfigError, match=words):
        DeepSVDD(**{**FAST, **extra}).fit(TrainSets(torch.zeros(shape)))
    with pytest.raises(ConfigError, match="multiple of 16"):
        DeepSVDD(**{**FAST, "rep_dim": 20}).fit(TrainSets(_data()))


def test_registered_not_in_the_quick_start_and_judged_on_its_loss(tmp_path):
    assert "deepsvdd" in list_methods() and get_method("deepsvdd") is DeepSVDD
    assert "deepsvdd" not in default_experiment_methods() and "autoencoder" in default_experiment_methods()
    assert DeepSVDD.health_judge_mae is False and DeepSVDD.health_loss_rows == {"phase": 2.0}
    DeepSVDD(**FAST).fit(TrainSets(_data()), FitContext(workdir=tmp_path, progress=False))
    log = pd.read_csv(tmp_path / "losses.csv")
    assert log["phase"].tolist() == [1.0] * 3 + [2.0] * 6
    assert (log.loc[log["phase"] == 2, DeepSVDD.health_loss] > 0).all()
    assert (log.loc[log["phase"] == 1, "ae_loss"] > 0).all()

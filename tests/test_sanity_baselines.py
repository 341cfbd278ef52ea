"""Sanity baselines (mean_intensity, intensity_sd, pixel_knn): the statistic each computes, the direction fixed in
advance (an AUC below 0.5 stays below), what each one flags, determinism and persistence, and the example plugin that
pixel_knn was promoted from."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomaly_bench.core.config import REPO_DIR, read_yaml
from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import AnomalyMethod, TrainSets
from anomaly_bench.core.registry import default_experiment_methods, get_method, load_plugin
from conftest import EXAMPLE_PLUGIN
from helpers import smooth_images, with_lesion

NAMES = ("mean_intensity", "intensity_sd", "pixel_knn")


def _auc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    return roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(anomalous))], np.r_[normal, anomalous])


@pytest.fixture(scope="module")
def healthy():
    return smooth_images(24, 32, 0)


@pytest.mark.parametrize("name", NAMES)
def test_registered_builtin_trains_on_healthy_and_is_in_every_default_table(name):
    cls = get_method(name)
    assert cls.__module__ == "anomaly_bench.methods.sanity"
    assert cls.default_train_sets == "healthy"
    assert cls.in_default_experiment is True
    assert name in default_experiment_methods()   # the quick start (methods: []) shows the floor
    for exp in ("cpu.yaml", "zoo.yaml"):
        assert name in read_yaml(REPO_DIR / "experiments" / exp)["methods"]


def test_mean_intensity_is_the_image_mean_and_flags_bright_images(healthy):
    m = get_method("mean_intensity")().fit(TrainSets(healthy))
    test = smooth_images(10, 32, 1)
    res = m.score(test)
    np.testing.assert_allclose(res.scores, test.double().mean(dim=(1, 2, 3)).numpy(), rtol=1e-12)
    np.testing.assert_array_equal(res.maps, test[:, 0].numpy())
    assert _auc(res.scores, m.score(test + 0.4).scores) == 1.0
    # blind to contrast: the same mean with twice the contrast scores the same
    centred = test - test.mean(dim=(1, 2, 3), keepdim=True)
    np.testing.assert_allclose(m.score(centred * 2).scores, 0.0, atol=1e-6)
    np.testing.assert_allclose(m.score(centred).scores, 0.0, atol=1e-6)


def test_intensity_sd_flags_high_contrast_and_ignores_brightness(healthy):
    m = get_method("intensity_sd")().fit(TrainSets(healthy))
    test = smooth_images(10, 32, 1)
    res = m.score(test)
    np.testing.assert_allclose(res.scores, test.double().flatten(1).std(1, unbiased=False).numpy(), rtol=1e-12)
    assert _auc(res.scores, m.score(test * 1.7).scores) == 1.0
    np.testing.assert_allclose(m.score(test + 0.3).scores, res.scores, rtol=1e-6)  # float32 input + 0.3
    # map: |x - mean(x)|, whose mean square is the variance
    np.testing.assert_allclose((res.maps.astype(np.float64) ** 2).mean(axis=(1, 2)), res.scores ** 2, rtol=1e-5)


@pytest.mark.parametrize("name", ["mean_intensity", "intensity_sd"])
def test_direction_is_never_flipped(name, healthy):
    """Anomalies that are darker / flatter give an AUC near 0, reported as it is (not turned into 1 - AUC)."""
    m = get_method(name)().fit(TrainSets(healthy))
    test = smooth_images(10, 32, 1)
    low = test * 0.2 - 0.75       # darker and less contrast (still in [-1, 1])
    assert _auc(m.score(test).scores, m.score(low).scores) == 0.0
    assert m.healthy_["n"] == len(healthy)   # healthy statistics kept for reference only


def test_pixel_knn_matches_a_brute_force_knn(healthy):
    m = get_method("pixel_knn")(k=3, pool=4).fit(TrainSets(healthy))
    test = smooth_images(5, 32, 1)
    pool = lambda x: torch.nn.functional.avg_pool2d(x.double(), 4).flatten(1).numpy()  # noqa: E731
    d = np.sqrt(((pool(test)[:, None] - pool(healthy)[None]) ** 2).sum(-1))
    np.testing.assert_allclose(m.score(test).scores, np.sort(d, axis=1)[:, :3].mean(1), rtol=1e-6)


def test_pixel_knn_flags_images_far_from_the_training_set(healthy):
    m = get_method("pixel_knn")(k=1, pool=2).fit(TrainSets(healthy))
    seen = m.score(healthy[:6])
    np.testing.assert_allclose(seen.scores, 0.0, atol=1e-6)          # a training image is its own neighbour
    new = smooth_images(12, 32, 3)
    lesioned = with_lesion(new)
    s_new, s_bad = m.score(new), m.score(lesioned)
    assert np.all(seen.scores < s_new.scores.min())
    assert np.all(s_bad.scores > s_new.scores)
    # the map is at the input resolution and brightest in the lesion (left of centre)
    assert s_bad.maps.shape == (12, 32, 32)
    lesion = (lesioned != new)[:, 0].numpy()
    inside = (s_bad.maps * lesion).sum((1, 2)) / lesion.sum((1, 2))
    outside = (s_bad.maps * ~lesion).sum((1, 2)) / (~lesion).sum((1, 2))
    assert np.all(inside > 2 * outside)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_seed_free_and_save_load(name, healthy, tmp_path):
    test = with_lesion(smooth_images(6, 32, 4))
    a = get_method(name)(seed=0).fit(TrainSets(healthy)).score(test)
    m = get_method(name)(seed=1).fit(TrainSets(healthy))
    b = m.score(test)
    np.testing.assert_array_equal(a.scores, b.scores)    # no random numbers: the seed changes nothing
    loaded = AnomalyMethod.load(m.save(tmp_path / "m.pt"))
    np.testing.assert_array_equal(loaded.score(test).scores, a.scores)
    np.testing.assert_array_equal(loaded.score(test).maps, a.maps)


def test_pixel_knn_config_errors(healthy):
    with pytest.raises(ConfigError, match="divisible by pool=5"):
        get_method("pixel_knn")(pool=5).fit(TrainSets(healthy))
    with pytest.raises(ConfigError, match="k and pool"):
        get_method("pixel_knn")(k=0).fit(TrainSets(healthy))
    with pytest.raises(RuntimeError, match="fit"):
        get_method("pixel_knn")().score(healthy)


def test_example_plugin_keeps_working_under_its_own_name(healthy):
    load_plugin(str(EXAMPLE_PLUGIN))
    plugin = get_method("example_pixel_knn")
    assert plugin is not get_method("pixel_knn") and not plugin.__module__.startswith("anomaly_bench.")
    scores = plugin(k=1).fit(TrainSets(healthy)).score(healthy[:3]).scores
    np.testing.assert_allclose(scores, 0.0, atol=1e-5)
    # a plugin may not take the built-in's name
    from anomaly_bench.registry import register_method

    with pytest.raises(ConfigError, match="registered twice"):
        register_method("pixel_knn")(type("Clash", (plugin,), {}))

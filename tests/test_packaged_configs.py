"""Where method profiles, dataset cards and experiment files come from without a checkout (an installed wheel):
the copy setup.py puts in ``anomaly_bench/_shipped/``. No wheel is built here (.ci/wheel_check.sh does that)."""

import importlib.util
from pathlib import Path

import pytest

from anomaly_bench.cli import _experiment_path
from anomaly_bench.core import config
from anomaly_bench.core.config import REPO_DIR, method_params, method_resources, read_yaml
from anomaly_bench.core.errors import ConfigError
from anomaly_bench.data.loading import list_cards, resolve_card


def _setup_module():
    spec = importlib.util.spec_from_file_location("anomaly_bench_setup_py", REPO_DIR / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # defines copy_shipped; setup() runs only as __main__
    return mod


@pytest.fixture
def installed(tmp_path, monkeypatch) -> Path:
    """No checkout (REPO_DIR is an empty folder, like site-packages) and the package data as the wheel has it."""
    shipped = tmp_path / "site-packages" / "anomaly_bench" / "_shipped"
    _setup_module().copy_shipped(REPO_DIR, shipped)
    monkeypatch.setattr(config, "REPO_DIR", tmp_path / "site-packages")
    monkeypatch.setattr(config, "SHIPPED_DIR", shipped)
    monkeypatch.delenv("ANOMALY_BENCH_METHODS_DIR", raising=False)
    monkeypatch.delenv("ANOMALY_BENCH_DATASETS_DIR", raising=False)
    return shipped


def test_installed_package_data_is_read_without_a_checkout(installed):
    assert config.checkout_dir() is None
    assert config.config_dirs("methods") == [installed / "methods"]
    smoke = read_yaml(REPO_DIR / "methods" / "medai_anomalypro.yaml")["profiles"]["smoke"]["iterations"]
    assert method_params("medai_anomalypro", "smoke")["iterations"] == smoke
    assert method_params("medai_anomalypro", "smoke")["iterations"] != method_params("medai_anomalypro", "paper")[
        "iterations"]
    assert method_resources("padim", "smoke") == method_resources("padim", "smoke",
                                                                  yaml_path=REPO_DIR / "methods" / "padim.yaml")
    names = {c["name"] for c in list_cards()}
    assert names == {p.stem for p in (REPO_DIR / "datasets").glob("*.yaml")}
    assert resolve_card("phantom")["_source"] == str(installed / "datasets" / "phantom.yaml")
    assert _experiment_path("default") == installed / "experiments" / "default.yaml"
    assert _experiment_path("default").is_file()
    assert (installed / "results" / "reference" / "regression.json").is_file()


def test_environment_folders_come_first(installed, tmp_path, monkeypatch):
    own = tmp_path / "own"
    own.mkdir()
    (own / "autoencoder.yaml").write_text("method: autoencoder\nprofiles:\n  smoke: {iterations: 7}\n")
    monkeypatch.setenv("ANOMALY_BENCH_METHODS_DIR", str(own))
    assert method_params("autoencoder", "smoke")["iterations"] == 7
    assert method_params("padim", "smoke")["input_size"] == 64  # the rest still from the package data


def test_missing_builtin_profile_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "REPO_DIR", tmp_path)  # no checkout and no package data
    monkeypatch.setattr(config, "SHIPPED_DIR", tmp_path / "nowhere")
    monkeypatch.delenv("ANOMALY_BENCH_METHODS_DIR", raising=False)
    with pytest.raises(ConfigError, match=r"medai_anomalypro\.yaml was not found .*nowhere/methods/"
                                          r"medai_anomalypro\.yaml.*ANOMALY_BENCH_METHODS_DIR"):
        method_params("medai_anomalypro", "smoke")
    with pytest.raises(ConfigError, match=r"padim\.yaml was not found"):
        method_resources("padim", "smoke")


def test_plugin_without_yaml_keeps_its_class_profiles(tmp_path, monkeypatch):
    from anomaly_bench.core.registry import load_plugin

    load_plugin(str(REPO_DIR / "examples" / "pixel_knn_plugin.py"))
    monkeypatch.setattr(config, "REPO_DIR", tmp_path)
    monkeypatch.setattr(config, "SHIPPED_DIR", tmp_path / "nowhere")
    assert config.method_yaml_path("example_pixel_knn") is None
    assert method_params("example_pixel_knn", "smoke")["k"] == 3

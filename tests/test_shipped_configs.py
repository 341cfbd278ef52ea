"""Every YAML the repository ships parses and validates: experiments, method profiles (with their resources) and
dataset cards. A typo in one of them (an unknown key, a wrong type) fails here, not hours into a run."""

import pytest

from anomaly_bench.core.config import REPO_DIR, method_params, method_resources, read_yaml
from anomaly_bench.core.experiment import load_experiment
from anomaly_bench.core.registry import get_method
from anomaly_bench.data.loading import card_files, resolve_card

EXACT_CONFIG = REPO_DIR / "experiments" / "regression_exact.yaml"  # regress's exact checks, not an experiment
EXPERIMENTS = sorted(p for p in (REPO_DIR / "experiments").glob("*.yaml") if p != EXACT_CONFIG)
METHOD_YAMLS = sorted((REPO_DIR / "methods").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_files_parse_with_at_least_one_seed_and_known_methods(path):
    exp = load_experiment(path)
    assert exp.seeds and exp.datasets
    for m in exp.methods:
        get_method(m.name)
        method_params(m.name, m.profile or exp.profile, m.params)
    for d in exp.datasets:
        resolve_card(d.card)


def test_the_exact_regression_config_validates():
    from anomaly_bench.harness.regress_exact import load_exact_config

    cfg = load_exact_config(EXACT_CONFIG)
    assert {"medai_anomalypro", "alad", "alocc", "fanogan", "ganomaly", "padim", "patchcore"} <= set(cfg["methods"])
    assert cfg["dataset"] in [d if isinstance(d, str) else d["card"]
                              for d in read_yaml(REPO_DIR / "experiments" / "regression.yaml")["datasets"]]


@pytest.mark.parametrize("path", METHOD_YAMLS, ids=lambda p: p.stem)
def test_method_yaml_profiles_and_resources_validate(path):
    data = read_yaml(path)
    name = data["method"]
    assert path.stem == name and get_method(name)
    for profile in ("smoke", "ci", "paper"):
        assert profile in (data.get("profiles") or {}), f"{path.name}: profile '{profile}' missing"
    for profile in data["profiles"]:  # every shipped profile (cpu too) builds the method it names
        params = method_params(name, profile)
        assert get_method(name)(**params).get_params() == params
        res = method_resources(name, profile)
        assert res["cpus"] >= 1 and res["gpus"] >= 0 and res["memory_gb"] > 0


def test_every_method_of_the_cpu_comparison_has_a_cpu_profile():
    """experiments/cpu.yaml runs the `cpu` profile (issue 20): each of its methods must ship one, with a budget that
    does not depend on the training-set size for the iterative ones (iterations, not epochs)."""
    exp = read_yaml(REPO_DIR / "experiments" / "cpu.yaml")
    paper_methods = {"medai_anomalypro", "alad", "alocc", "fanogan", "ganomaly", "autoencoder", "padim", "patchcore"}
    assert exp["profile"] == "cpu" and paper_methods <= set(exp["methods"])
    assert {"mean_intensity", "intensity_sd", "pixel_knn"} <= set(exp["methods"])  # the sanity floor
    for name in exp["methods"]:
        profile = read_yaml(REPO_DIR / "methods" / f"{name}.yaml")["profiles"].get("cpu")
        assert profile is not None, f"methods/{name}.yaml: no cpu profile"
        assert profile or name not in paper_methods, f"methods/{name}.yaml: an empty cpu profile"
        assert "epochs" not in profile, f"methods/{name}.yaml: the cpu budget is counted in epochs"


def test_every_dataset_card_validates():
    files = card_files()
    assert {p.stem for p in files} >= {"phantom", "brain_tumor_mri", "chest_xray_pneumonia", "pneumoniamnist"}
    for p in files:
        card = resolve_card(p.stem)
        assert card["name"] == p.stem and card["format"]

"""`anomaly-bench regress`: a reference is written, matched, and a corrupted/lowered value fails loudly."""

import json

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from anomaly_bench.cli import main
from anomaly_bench.harness.regress import compare, summarise
from conftest import EXAMPLE_PLUGIN

TINY = {"name": "tinyreg", "format": "phantom", "image_size": 64,
        "phantom": {"n_subjects": 30, "slices_per_subject": 2, "seed": 9}, "split": {"test_size": 0.4}}


def _experiment(tmp_path, extra_datasets=()):
    exp = {"name": "reg", "profile": "smoke", "seeds": [0], "settings": ["inductive"], "device": "cpu",
           "plugins": [str(EXAMPLE_PLUGIN)], "datasets": [TINY, *extra_datasets], "methods": ["example_pixel_knn"]}
    path = tmp_path / "regression.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def _regress(tmp_path, ref, *extra):
    return CliRunner().invoke(main, ["regress", "--part", "statistical", "--experiment", str(_experiment(tmp_path)),
                                     "--reference", str(ref), "--out", str(tmp_path / "out"), *extra])


def test_update_then_pass_then_corrupted_reference_fails(tmp_path):
    ref = tmp_path / "ref.json"
    res = _regress(tmp_path, ref, "--update")
    assert res.exit_code == 0, res.output
    values = json.loads(ref.read_text())["values"]
    key = "tinyreg|inductive|example_pixel_knn|last|image|auc"
    assert key in values and 0 <= values[key]["mean"] <= 1 and values[key]["n"] == 1 and values[key]["sd"] == 0

    res = _regress(tmp_path, ref)
    assert res.exit_code == 0, res.output
    assert "regression check passed" in res.output

    blob = json.loads(ref.read_text())
    blob["values"][key]["mean"] = min(1.0, values[key]["mean"] + 0.2)  # the reference says it used to be better
    ref.write_text(json.dumps(blob))
    res = _regress(tmp_path, ref)
    assert res.exit_code == 1
    assert "REGRESSION" in res.output and "example_pixel_knn on tinyreg" in res.output and "AUC fell" in res.output


def test_missing_method_and_nonfinite_are_problems():
    ref = {"values": {"d|inductive|m|last|image|auc": 0.8, "d|inductive|gone|last|image|auc": 0.7}}
    cmp = compare(ref, {"d|inductive|m|last|image|auc": 0.805}, 0.01, [], ["d/m/seed0"])
    assert not cmp.ok
    assert any("gone" in p and "not produced" in p for p in cmp.problems)
    assert any("non-finite" in p for p in cmp.problems)
    ok = compare({"values": {"d|inductive|m|last|image|auc": 0.8}}, {"d|inductive|m|last|image|auc": 0.795},
                 0.01, [], [])
    assert ok.ok and not ok.improvements
    better = compare({"values": {"d|inductive|m|last|image|auc": 0.8}}, {"d|inductive|m|last|image|auc": 0.9},
                     0.01, [], [])
    assert better.ok and better.improvements


def test_summarise_means_over_seeds_and_keeps_only_guarded_metrics():
    m = pd.DataFrame([
        {"dataset": "d", "setting": "inductive", "method": "m", "selection": "last", "seed": s, "level": "image",
         "metric": metric, "value": v}
        for s, v in ((0, 0.7), (1, 0.9)) for metric in ("auc", "f1")])
    assert summarise(m) == {"d|inductive|m|last|image|auc": 0.8}


def test_random_scores_fail_by_rank_correlation_even_when_auc_does_not_drop(tmp_path, monkeypatch):
    """A method edited to score at random is caught by the per-image score check, with its AUC shown."""
    import numpy as np

    from anomaly_bench.core.interface import ScoreResult
    from anomaly_bench.core.registry import get_method

    ref = tmp_path / "ref.json"
    assert _regress(tmp_path, ref, "--update").exit_code == 0
    blob = json.loads(ref.read_text())
    sample = blob["scores"]["tinyreg|inductive|example_pixel_knn|last|0"]
    assert 3 <= len(sample) <= 200 and all(isinstance(v, float) for v in sample.values())
    # the AUC guard alone would let a random method through: pretend the reference AUC was at chance
    key = "tinyreg|inductive|example_pixel_knn|last|image|auc"
    blob["values"][key]["mean"] = 0.0
    ref.write_text(json.dumps(blob))

    cls = get_method("example_pixel_knn")
    rng = np.random.default_rng(123)
    monkeypatch.setattr(cls, "score", lambda self, images: ScoreResult(rng.random(len(images))))
    res = _regress(tmp_path, ref)
    assert res.exit_code == 1, res.output
    assert "per-image scores no longer match" in res.output and "example_pixel_knn on tinyreg" in res.output
    assert "image AUC 0.0000 ->" in res.output and "SCORES CHANGED" in res.output
    assert "AUC fell" not in res.output  # caught by the scores, not by the AUC


def test_rank_corr_and_score_sample():
    from anomaly_bench.harness.regress import rank_corr, score_sample

    old = {str(i): float(i) for i in range(50)}
    rho, n = rank_corr(old, {k: 2 * v + 1 for k, v in old.items()})
    assert n == 50 and rho == pytest.approx(1.0)
    assert rank_corr(old, {k: -v for k, v in old.items()})[0] == pytest.approx(-1.0)
    assert rank_corr(old, {"1": 1.0, "2": 2.0})[1] == 2  # too few common ids -> nan
    assert rank_corr(old, {k: 0.0 for k in old})[0] == 0.0
    scores = pd.DataFrame({"dataset": "d", "setting": "inductive", "method": ["a"] * 300 + ["b"] * 300,
                           "selection": "last", "seed": 0, "id": [f"x{i}" for i in range(300)] * 2,
                           "label": ([0, 1] * 150) * 2, "score": list(range(600))})
    s = score_sample(scores, per_group=40)
    assert set(s) == {"d|inductive|a|last|0", "d|inductive|b|last|0"}
    assert set(s["d|inductive|a|last|0"]) == set(s["d|inductive|b|last|0"])  # same images for every method
    assert len(s["d|inductive|a|last|0"]) == 40


def test_tolerance_follows_the_reference_spread():
    """A chaotic method's reference records its spread over seeds x kernel paths: a drop within k sd passes, a
    drop beyond it fails naming the method; a deterministic one (sd 0) keeps the floor."""
    key = "d|inductive|gan|last|image|auc"
    ref = {"k": 4.0, "values": {key: {"mean": 0.7, "sd": 0.05, "n": 6},
                                "d|inductive|padim|last|image|auc": {"mean": 0.8, "sd": 0.0, "n": 6}}}
    ok = compare(ref, {key: 0.55, "d|inductive|padim|last|image|auc": 0.79}, 0.02, [], [])
    assert ok.ok, ok.problems
    bad = compare(ref, {key: 0.45, "d|inductive|padim|last|image|auc": 0.77}, 0.02, [], [])
    assert len(bad.problems) == 2
    assert any("gan on d" in p and "0.7000 -> 0.4500" in p and "4 x sd 0.0500" in p for p in bad.problems)
    assert any("padim on d" in p and "tolerance 0.0200" in p for p in bad.problems)


def _fake_run(values_by_seed, scores_by_seed, path="native"):
    metrics = pd.DataFrame([{"dataset": "d", "setting": "inductive", "method": m, "selection": "last", "seed": s,
                             "level": "image", "metric": "auc", "value": v}
                            for m, per_seed in values_by_seed.items() for s, v in per_seed.items()])
    scores = pd.DataFrame([{"dataset": "d", "setting": "inductive", "method": m, "selection": "last", "seed": s,
                            "id": f"i{i}", "subject": f"i{i}", "label": i % 2, "score": v}
                           for m, per_seed in scores_by_seed.items() for s, vals in per_seed.items()
                           for i, v in enumerate(vals)])
    info = {"versions": {"cpu": {"kernel_path": path}, "git_commit": "abc", "git_dirty": False},
            "datasets": {"d": {"fingerprint": "f"}}}
    return metrics, scores, info


def test_build_reference_pools_seeds_and_kernel_paths_and_keeps_the_rank_guard_only_where_scores_agree():
    import numpy as np

    from anomaly_bench.harness.regress import build_reference

    rng = np.random.default_rng(0)
    det = list(np.arange(20.0))
    a = _fake_run({"padim": {0: 0.80, 1: 0.85}, "gan": {0: 0.6, 1: 0.7}},
                  {"padim": {0: det, 1: det}, "gan": {0: list(rng.random(20)), 1: list(rng.random(20))}})
    b = _fake_run({"padim": {0: 0.80, 1: 0.85}, "gan": {0: 0.4, 1: 0.65}},
                  {"padim": {0: det, 1: det}, "gan": {0: list(rng.random(20)), 1: list(rng.random(20))}},
                  path="ATEN_CPU_CAPABILITY=default")
    blob = build_reference([a, b], floor=0.02, k=4.0, echo=lambda *_: None)
    gan = blob["values"]["d|inductive|gan|last|image|auc"]
    assert gan["n"] == 4 and gan["samples"] == [0.6, 0.7, 0.4, 0.65]
    assert gan["sd"] == pytest.approx(np.std([0.6, 0.7, 0.4, 0.65], ddof=1))
    assert gan["tolerance"] == pytest.approx(4 * gan["sd"])
    assert set(blob["scores"]) == {"d|inductive|padim|last|0"}      # the chaotic method's scores are not guarded
    assert blob["rank_agreement"]["d|inductive|padim|last|0"] == 1.0
    assert [r["kernel_path"] for r in blob["runs"]] == ["native", "ATEN_CPU_CAPABILITY=default"]
    # padim gave the same seed-0 value on both kernel paths: a seed-0 run is held to that value and the floor,
    # not to the wider spread over seeds; the chaotic gan keeps its spread
    padim_key = "d|inductive|padim|last|image|auc"
    assert blob["values"][padim_key]["fixed_seed"] == 0 and "fixed_seed" not in gan
    drop = {padim_key: 0.77, "d|inductive|gan|last|image|auc": 0.3}
    assert [p.split(":")[0] for p in compare(blob, drop, 0.02, [], [], seeds=[0]).problems] == [
        "padim on d (inductive, last, image)"]
    assert compare(blob, drop, 0.02, [], []).ok  # against the seed spread (mean 0.825, 4 sd 0.115) it passes


def test_regress_never_deletes_a_folder_that_is_not_its_own(tmp_path):
    """`--out` pointed at a user's folder, or at a run in progress, is refused before anything is deleted."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("x")
    res = CliRunner().invoke(main, ["regress", "--part", "statistical", "--experiment", str(tmp_path / "nope.yaml"),
                                    "--out", str(victim)])
    assert res.exit_code == 2 and "nope.yaml" in res.output and (victim / "keep.txt").exists()
    res = _regress(tmp_path, tmp_path / "ref.json", "--update", "--out", str(victim))
    assert res.exit_code == 2 and "not a regress output folder" in res.output and (victim / "keep.txt").exists()
    running = tmp_path / "running"
    (running / "jobs").mkdir(parents=True)
    (running / ".lock").write_text("123")
    res = _regress(tmp_path, tmp_path / "ref.json", "--update", "--out", str(running))
    assert res.exit_code == 2 and "a run is using this folder" in res.output and (running / "jobs").exists()

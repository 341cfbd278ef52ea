"""`anomaly-bench regress`: a reference is written, matched, and a corrupted/lowered value fails loudly."""

import json

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from anomaly_bench.cli import main
from anomaly_bench.regress import compare, summarise
from conftest import EXAMPLE_PLUGIN

TINY = {"name": "tinyreg", "format": "phantom", "image_size": 64,
        "phantom": {"n_subjects": 30, "slices_per_subject": 2, "seed": 9}, "split": {"test_size": 0.4}}


def _experiment(tmp_path, extra_datasets=()):
    exp = {"name": "reg", "profile": "smoke", "seeds": [0], "settings": ["inductive"], "device": "cpu",
           "plugins": [str(EXAMPLE_PLUGIN)], "datasets": [TINY, *extra_datasets], "methods": ["pixel_knn"]}
    path = tmp_path / "regression.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def _regress(tmp_path, ref, *extra):
    return CliRunner().invoke(main, ["regress", "--experiment", str(_experiment(tmp_path)), "--reference", str(ref),
                                     "--out", str(tmp_path / "out"), *extra])


def test_update_then_pass_then_corrupted_reference_fails(tmp_path):
    ref = tmp_path / "ref.json"
    res = _regress(tmp_path, ref, "--update")
    assert res.exit_code == 0, res.output
    values = json.loads(ref.read_text())["values"]
    key = "tinyreg|inductive|pixel_knn|last|image|auc"
    assert key in values and 0 <= values[key] <= 1

    res = _regress(tmp_path, ref)
    assert res.exit_code == 0, res.output
    assert "regression check passed" in res.output

    blob = json.loads(ref.read_text())
    blob["values"][key] = min(1.0, values[key] + 0.2)  # the reference says this method used to be better
    ref.write_text(json.dumps(blob))
    res = _regress(tmp_path, ref)
    assert res.exit_code == 1
    assert "REGRESSION" in res.output and "pixel_knn on tinyreg" in res.output and "AUC fell" in res.output


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

    from anomaly_bench.interface import ScoreResult
    from anomaly_bench.registry import get_method

    ref = tmp_path / "ref.json"
    assert _regress(tmp_path, ref, "--update").exit_code == 0
    blob = json.loads(ref.read_text())
    sample = blob["scores"]["tinyreg|inductive|pixel_knn|last|0"]
    assert 3 <= len(sample) <= 200 and all(isinstance(v, float) for v in sample.values())
    # the AUC guard alone would let a random method through: pretend the reference AUC was at chance
    key = "tinyreg|inductive|pixel_knn|last|image|auc"
    blob["values"][key] = 0.0
    ref.write_text(json.dumps(blob))

    cls = get_method("pixel_knn")
    rng = np.random.default_rng(123)
    monkeypatch.setattr(cls, "score", lambda self, images: ScoreResult(rng.random(len(images))))
    res = _regress(tmp_path, ref)
    assert res.exit_code == 1, res.output
    assert "per-image scores no longer match" in res.output and "pixel_knn on tinyreg" in res.output
    assert "image AUC 0.0000 ->" in res.output and "SCORES CHANGED" in res.output
    assert "AUC fell" not in res.output  # caught by the scores, not by the AUC


def test_rank_corr_and_score_sample():
    from anomaly_bench.regress import rank_corr, score_sample

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

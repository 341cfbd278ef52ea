"""`anomaly-bench regress`: a reference is written, matched, and a corrupted/lowered value fails loudly."""

import json

import pandas as pd
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

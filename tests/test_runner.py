"""End-to-end runner behaviour on a tiny phantom: outputs, resume, determinism, failures, lock, plugins."""

import json
import os

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from anomaly_bench.cli import main
from anomaly_bench.core.errors import BenchError
from anomaly_bench.core.experiment import parse_experiment
from anomaly_bench.harness.runner import Runner
from conftest import EXAMPLE_PLUGIN
from helpers import diverging_plugin_source

TINY_CARD = {"name": "tiny", "format": "phantom", "image_size": 64,
             "phantom": {"n_subjects": 40, "slices_per_subject": 3, "seed": 5},
             "split": {"test_size": 0.3, "holdout_fraction": 0.15}}


def tiny_experiment(**over):
    data = {"name": "t", "profile": "smoke", "seeds": [0], "settings": ["inductive", "transductive"],
            "device": "cpu", "datasets": [TINY_CARD], "plugins": [str(EXAMPLE_PLUGIN)],
            "methods": [{"name": "autoencoder", "params": {"iterations": 30, "checkpoint_every": 10}},
                        "example_pixel_knn"], "n_maps": 4}
    data.update(over)
    return parse_experiment(data)


def test_run_writes_every_output_and_resumes(tmp_path):
    out = tmp_path / "run"
    lines = []
    Runner(tiny_experiment(), out, progress=False, echo=lines.append).run()
    for name in ("table.md", "table.tex", "metrics.csv", "scores.csv", "roc_tiny.png", "maps_tiny.png",
                 "run.json", "experiment.yaml", "splits/tiny_seed0.csv"):
        assert (out / name).is_file(), name
    table = (out / "table.md").read_text()
    assert "autoencoder" in table and "example_pixel_knn" in table
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics["setting"]) == {"inductive", "transductive"}
    assert {"auc", "ap", "precision", "recall", "specificity", "f1"} <= set(metrics["metric"])
    # AUCp selection ran for the method that saves checkpoints, and its rows are labelled
    sel = pd.read_csv(out / "jobs/tiny/autoencoder/seed0/selection.csv")
    assert list(sel["iteration"]) == [10, 20, 30] and sel["aucp"].between(0, 1).all()
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores[scores.method == "autoencoder"]["selection"]) == {"last", "aucp"}
    assert set(scores[scores.method == "example_pixel_knn"]["selection"]) == {"last"}
    # label-free thresholds: the 0.95 quantile of the job's own held-out healthy scores, constant per job/selection
    manifest = pd.read_csv(out / "splits/tiny_seed0.csv", dtype={"id": str})
    assert (manifest["role"] == "holdout_healthy").sum() > 0
    per_job = scores.groupby(["method", "selection"])["threshold"].nunique()
    assert (per_job == 1).all() and scores["threshold"].notna().all()
    # the bootstrap clusters are the split units (subjects of the phantom: 3 slices each)
    test = scores[(scores.method == "example_pixel_knn") & (scores.setting == "inductive")]
    assert test.groupby("subject")["cluster"].nunique().max() == 1 and test["cluster"].duplicated().any()
    m = metrics[(metrics.method == "example_pixel_knn") & (metrics.setting == "inductive") & (metrics.level == "image")]
    assert m.set_index("metric").at["threshold", "value"] == pytest.approx(test["threshold"].iloc[0])
    assert {"oracle_threshold", "oracle_f1"} <= set(m["metric"])
    assert "table_other_selection.md" in os.listdir(out) and "(AUCp)" not in table  # selection: last
    leak = json.loads((out / "run.json").read_text())["datasets"]["tiny"]["leakage"]["0"]
    assert leak["n_test"] == (manifest["role"] == "test").sum() and leak["n_test_with_training_twin"] >= 0
    assert "near-duplicate leakage check" in table and "prevalence" in table
    job = json.loads((out / "jobs/tiny/autoencoder/seed0/job.json").read_text())
    for key in ("fit_seconds", "score_seconds", "peak_rss_mb", "versions", "data_fingerprint", "profile", "device"):
        assert key in job, key
    assert job["versions"]["torch"] and job["profile"] == "smoke"
    # no image is both trained on and tested
    manifest = pd.read_csv(out / "splits/tiny_seed0.csv")
    assert manifest.groupby("subject")["role"].nunique().max() == 1
    # rerun: everything is skipped, results unchanged
    before = scores.copy()
    lines.clear()
    Runner(tiny_experiment(), out, progress=False, echo=lines.append).run()
    assert sum("skipped" in ln for ln in lines) == 2
    pd.testing.assert_frame_equal(pd.read_csv(out / "scores.csv"), before)


def test_same_seed_same_split_and_scores(tmp_path):
    exp = tiny_experiment(methods=[{"name": "autoencoder", "params": {"iterations": 20}}], settings=["inductive"])
    Runner(exp, tmp_path / "a", progress=False, echo=lambda s: None).run()
    Runner(tiny_experiment(methods=[{"name": "autoencoder", "params": {"iterations": 20}}],
                           settings=["inductive"]), tmp_path / "b", progress=False, echo=lambda s: None).run()
    a, b = pd.read_csv(tmp_path / "a/scores.csv"), pd.read_csv(tmp_path / "b/scores.csv")
    pd.testing.assert_frame_equal(a, b)
    assert (tmp_path / "a/splits/tiny_seed0.csv").read_text() == (tmp_path / "b/splits/tiny_seed0.csv").read_text()


def test_failed_job_is_recorded_and_others_continue(tmp_path):
    plugin = tmp_path / "diverging.py"
    plugin.write_text(diverging_plugin_source("diverging_for_test"))
    exp = tiny_experiment(plugins=[str(EXAMPLE_PLUGIN), str(plugin)], settings=["inductive"],
                          methods=["diverging_for_test", "example_pixel_knn"])
    info = Runner(exp, tmp_path / "run", progress=False, echo=lambda s: None).run()
    assert info["failed_jobs"] == ["tiny/diverging_for_test/seed0"]
    job = json.loads((tmp_path / "run/jobs/tiny/diverging_for_test/seed0/job.json").read_text())
    assert job["status"] == "failed" and "loss_d" in job["error"] and "iteration 7" in job["error"]
    assert json.loads((tmp_path / "run/jobs/tiny/example_pixel_knn/seed0/job.json").read_text())["status"] == "done"
    assert "failed" in (tmp_path / "run/table.md").read_text()


def test_fit_warnings_are_kept_in_job_json(tmp_path):
    """A method's ctx.warn (e.g. AnomalyPro's saturated mask) reaches job.json; jobs without one have no key."""
    plugin = tmp_path / "warner.py"
    plugin.write_text(
        "import numpy as np\n"
        "from anomaly_bench.interface import AnomalyMethod, FitContext, ScoreResult\n"
        "from anomaly_bench.registry import register_method\n"
        "@register_method('warner_for_test', overwrite=True)\n"
        "class Warner(AnomalyMethod):\n"
        "    def fit(self, train, ctx=None):\n"
        "        (ctx or FitContext()).warn(f'look at me: {len(train.healthy)} images')\n"
        "        return self\n"
        "    def score(self, images):\n"
        "        return ScoreResult(images.flatten(1).mean(1).double().numpy())\n"
        "    def state_dict(self):\n        return {}\n"
        "    def load_state_dict(self, s):\n        pass\n")
    exp = tiny_experiment(plugins=[str(EXAMPLE_PLUGIN), str(plugin)], settings=["inductive"],
                          methods=["warner_for_test", "example_pixel_knn"])
    Runner(exp, tmp_path / "run", progress=False, echo=lambda s: None).run()
    job = json.loads((tmp_path / "run/jobs/tiny/warner_for_test/seed0/job.json").read_text())
    assert job["status"] == "done" and len(job["warnings"]) == 1
    assert job["warnings"][0].startswith("look at me: ") and not job["warnings"][0].endswith(" 0 images")
    assert "warnings" not in json.loads((tmp_path / "run/jobs/tiny/example_pixel_knn/seed0/job.json").read_text())


def test_lock_refuses_a_second_runner(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(f"{os.getpid()} now\n")
    with pytest.raises(BenchError, match="another anomaly-bench process"):
        Runner(tiny_experiment(), out, progress=False, echo=lambda s: None).run()
    (out / ".lock").write_text("999999999 stale\n")  # a dead pid: the stale lock is taken over
    Runner(tiny_experiment(methods=["example_pixel_knn"]), out, progress=False, echo=lambda s: None).run()
    assert not (out / ".lock").exists()


def test_cli_plugin_file_is_discovered_trained_and_tabled(tmp_path):
    card = tmp_path / "tiny.yaml"
    card.write_text(yaml.safe_dump(TINY_CARD))
    res = CliRunner().invoke(main, ["run", "--plugin", str(EXAMPLE_PLUGIN), "--method", "example_pixel_knn",
                                    "--dataset", str(card), "--out", str(tmp_path / "out"), "--device", "cpu",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "example_pixel_knn" in (tmp_path / "out/table.md").read_text()
    listed = CliRunner().invoke(main, ["list", "methods", "--plugin", str(EXAMPLE_PLUGIN)])
    assert listed.exit_code == 0 and "example_pixel_knn" in listed.output and "autoencoder" in listed.output


def test_cli_rejects_unknown_method_and_bad_experiment_keys(tmp_path):
    res = CliRunner().invoke(main, ["run", "--method", "no_such_method", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unknown method 'no_such_method'" in res.output
    bad = tmp_path / "exp.yaml"
    bad.write_text("name: x\nseeds: [0]\ndatasetz: [phantom]\n")
    res = CliRunner().invoke(main, ["run", "--config", str(bad), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "datasetz" in res.output
    bad.write_text("name: x\ndatasets: [phantom]\nmethods: [{name: autoencoder, params: {itertions: 3}}]\n")
    res = CliRunner().invoke(main, ["run", "--config", str(bad), "--out", str(tmp_path / "o3")])
    assert res.exit_code == 2 and "itertions" in res.output


def test_a_dataset_runs_its_own_seeds_and_an_older_folder_still_resumes(tmp_path):
    other = {**TINY_CARD, "name": "tiny2", "phantom": {**TINY_CARD["phantom"], "seed": 6}}
    exp = tiny_experiment(methods=["example_pixel_knn"], settings=["inductive"], seeds=[0, 1],
                          datasets=[TINY_CARD, {"card": other, "seeds": [2]}])
    out = tmp_path / "run"
    Runner(exp, out, progress=False, echo=lambda s: None).run()
    jobs = sorted(p.relative_to(out / "jobs").as_posix() for p in (out / "jobs").glob("*/*/seed*"))
    assert jobs == ["tiny/example_pixel_knn/seed0", "tiny/example_pixel_knn/seed1", "tiny2/example_pixel_knn/seed2"]
    assert sorted(p.name for p in (out / "splits").glob("*.csv")) == ["tiny2_seed2.csv", "tiny_seed0.csv",
                                                                     "tiny_seed1.csv"]
    scores = pd.read_csv(out / "scores.csv")
    assert scores.groupby("dataset")["seed"].unique().map(sorted).to_dict() == {"tiny": [0, 1], "tiny2": [2]}
    # a folder written before datasets had `seeds` (no such key in its experiment.yaml) resumes unchanged
    plain = tiny_experiment(methods=["example_pixel_knn"], settings=["inductive"])
    old_out = tmp_path / "old"
    Runner(plain, old_out, progress=False, echo=lambda s: None).run()
    saved = yaml.safe_load((old_out / "experiment.yaml").read_text())
    for d in saved["datasets"]:
        d.pop("seeds", None)
    (old_out / "experiment.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    lines: list[str] = []
    Runner(plain, old_out, progress=False, echo=lines.append).run()
    assert any("done already, skipped" in s for s in lines)
    with pytest.raises(BenchError, match=r"datasets\[0\]\.seeds"):
        parse_experiment({"datasets": [{"card": "phantom", "seeds": [-1]}]})

"""The run folder's layout (what existing runs on disk look like) and its job records."""

import json
from pathlib import Path

from anomaly_bench.harness.run_folder import JobFolder, RunFolder


def test_layout_is_the_documented_one(tmp_path):
    f = RunFolder(tmp_path)
    job = f.job("phantom", "padim", 2)
    assert job.path == tmp_path / "jobs" / "phantom" / "padim" / "seed2"
    assert job.meta_path.relative_to(tmp_path) == Path("jobs/phantom/padim/seed2/job.json")
    assert job.scores_path("inductive").name == "scores_inductive.csv"
    assert job.losses_path.relative_to(job.path) == Path("work/losses.csv")
    assert job.resume_path.relative_to(job.path) == Path("work/resume.pt")
    assert f.manifest_path("phantom", 2).relative_to(tmp_path) == Path("splits/phantom_seed2.csv")
    assert f.duplicates_path("phantom").relative_to(tmp_path) == Path("splits/phantom_duplicates.json")
    assert [p.name for p in (f.lock_path, f.run_info_path, f.experiment_path, f.scores_path, f.metrics_path)] == [
        ".lock", "run.json", "experiment.yaml", "scores.csv", "metrics.csv"]


def test_jobs_read_back_with_defaults_and_unreadable_ones_skipped(tmp_path):
    f = RunFolder(tmp_path)
    f.job("ds", "m", 0).write_meta({"status": "done", "config_fingerprint": "abc"})
    bad = f.job("ds", "m", 1)
    bad.path.mkdir(parents=True)
    bad.meta_path.write_text('{"status": "do')  # cut short by a kill
    assert json.loads(f.job("ds", "m", 0).meta_path.read_text()) == {"status": "done", "config_fingerprint": "abc"}
    jobs = f.read_jobs()
    assert [(j["dataset"], j["method"], j["seed"]) for j in jobs] == [("ds", "m", 0)]
    assert f.job("ds", "m", 0).is_done("abc") and not f.job("ds", "m", 0).is_done("other")
    assert bad.read_meta() is None and not bad.is_done("abc")
    assert [jf.path.name for jf in f.seed_folders("ds", "m")] == ["seed0", "seed1"]
    assert JobFolder(tmp_path / "x" / "seedA").seed_from_name() == "seedA"

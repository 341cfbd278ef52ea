"""Fault injection: a tiny run SIGKILLed at random points (during fit, scoring, writing scores, metrics or the
report), then rerun to completion, ends with the very scores.csv and metrics.csv of an uninterrupted run.

The kill delays are drawn by seeded RNGs, one uniformly within each quarter of the uninterrupted run's duration
after start-up (about half of it loading, fitting and scoring, half writing the report and figures), so the four
kills cover every phase. The job that is killed mid-training resumes from its resume state (every 10 iterations)."""

import os
import random
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from conftest import EXAMPLE_PLUGIN, REPO
from test_runner import TINY_CARD

KILLER_SEEDS = (1, 2, 3, 4)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _config(tmp_path):
    exp = {"name": "fault", "profile": "smoke", "seeds": [0], "settings": ["inductive"],
           "device": "cpu", "datasets": [TINY_CARD], "plugins": [str(EXAMPLE_PLUGIN)], "n_maps": 4,
           "methods": ["example_pixel_knn", {"name": "autoencoder",
                                     "params": {"iterations": 30, "checkpoint_every": 10, "resume_every": 10}}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def _start(cfg, out):
    cmd = [sys.executable, "-m", "anomaly_bench.cli", "run", "--config", str(cfg), "--out", str(out), "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def _started(proc, out) -> float:
    """Wait until the run has begun its work (experiment.yaml written: imports done); returns that time."""
    while proc.poll() is None and not (out / "experiment.yaml").exists():
        time.sleep(0.01)
    return time.time()


def _frames(out):
    return pd.read_csv(out / "scores.csv"), pd.read_csv(out / "metrics.csv")


@pytest.mark.slow
def test_random_kills_then_rerun_give_the_uninterrupted_results(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMALY_BENCH_CACHE", str(tmp_path / "cache"))
    ENV["ANOMALY_BENCH_CACHE"] = str(tmp_path / "cache")
    cfg = _config(tmp_path)
    ref = _start(cfg, tmp_path / "ref")
    t0 = _started(ref, tmp_path / "ref")
    log = ref.communicate(timeout=300)[0]
    assert ref.returncode == 0, log
    work = time.time() - t0  # the run's duration after start-up: the span the kills are drawn from
    ref_scores, ref_metrics = _frames(tmp_path / "ref")
    for i, killer in enumerate(KILLER_SEEDS):
        out = tmp_path / f"killed{killer}"
        delay = work * (i + random.Random(killer).random()) / len(KILLER_SEEDS)  # one kill per quarter of the run
        proc = _start(cfg, out)
        _started(proc, out)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        first = proc.communicate(timeout=300)[0]
        again = _start(cfg, out)
        log = again.communicate(timeout=300)[0]
        assert again.returncode == 0, f"killer {killer} (kill after {delay:.2f}s of {work:.2f}s): {first}\n{log}"
        scores, metrics = _frames(out)
        pd.testing.assert_frame_equal(scores, ref_scores, obj=f"scores.csv, killer {killer}")
        pd.testing.assert_frame_equal(metrics, ref_metrics, obj=f"metrics.csv, killer {killer}")

"""A run killed mid-training (SIGKILL) resumes from its last checkpoint and ends with the same scores."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import yaml

from test_runner import TINY_CARD


def _experiment(tmp_path):
    exp = {"name": "kill", "profile": "smoke", "seeds": [0], "settings": ["inductive"], "device": "cpu",
           "datasets": [TINY_CARD],
           "methods": [{"name": "autoencoder", "params": {"iterations": 240, "resume_every": 20, "log_every": 20}}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def _run(cfg, out, **kw):
    cmd = [sys.executable, "-m", "anomaly_bench.cli", "run", "--config", str(cfg), "--out", str(out), "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_sigkill_then_rerun_resumes_and_matches_uninterrupted(tmp_path):
    cfg = _experiment(tmp_path)
    ref = _run(cfg, tmp_path / "ref")
    assert ref.wait(timeout=600) == 0, ref.stdout.read()

    out = tmp_path / "killed"
    proc = _run(cfg, out)
    resume = out / "jobs/tiny/autoencoder/seed0/work/resume.pt"
    deadline = time.time() + 600
    while proc.poll() is None and deadline > time.time():  # a safety timeout, not a speed assertion
        losses = resume.parent / "losses.csv"
        if resume.exists() and losses.exists() and len(losses.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; raise the iteration count"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "jobs/tiny/autoencoder/seed0/model.pt").exists()
    first = pd.read_csv(resume.parent / "losses.csv")["iteration"].max()

    again = _run(cfg, out)  # the stale lock of the killed run is taken over
    log = again.communicate(timeout=600)[0]
    assert again.returncode == 0, log
    losses = pd.read_csv(resume.parent / "losses.csv")
    assert losses["iteration"].min() == 20 and losses["iteration"].max() == 240
    # it resumed from the last resume point (saved every 20 iterations right after the log line), not from
    # scratch: at most the one log line written between that save and the kill appears twice
    assert first >= 60
    assert losses["iteration"].duplicated().sum() <= 1
    a = pd.read_csv(tmp_path / "ref/scores.csv")
    b = pd.read_csv(out / "scores.csv")
    pd.testing.assert_frame_equal(a, b)

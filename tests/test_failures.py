"""A job that runs out of memory is recorded as failed with the reason, a hint and its last good checkpoint; the
other jobs finish; the table says 'failed'; rerunning resumes the failed job from that checkpoint. The loss log
survives a resume by a version that logs more columns."""

import json

import pandas as pd
import pytest

from anomaly_bench.core.errors import TrainingError
from anomaly_bench.core.experiment import parse_experiment
from anomaly_bench.core.interface import FitContext
from anomaly_bench.harness.runner import Runner
from conftest import EXAMPLE_PLUGIN

PLUGIN = '''
import numpy as np
import torch
from anomaly_bench.interface import AnomalyMethod, FitContext, ScoreResult
from anomaly_bench.registry import register_method

@register_method("oom_once_for_test", overwrite=True)
class OOMOnce(AnomalyMethod):
    """Saves a resume state at 'iteration 5', then dies of CUDA OOM; resumed, it finishes."""
    def fit(self, train, ctx=None):
        ctx = ctx or FitContext()
        state = ctx.load_resume()
        if state is None:
            ctx.save_resume({"iteration": 5})
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.resumed_from = state["iteration"]
        self.mean = train.healthy.mean(0)
        return self
    def score(self, images):
        return ScoreResult((images - self.mean).abs().mean((1, 2, 3)).double().numpy())
    def state_dict(self):
        return {"mean": self.mean}
    def load_state_dict(self, s):
        self.mean = s["mean"]
'''

CARD = {"name": "tiny", "format": "phantom", "image_size": 64,
        "phantom": {"n_subjects": 30, "slices_per_subject": 2, "seed": 3}, "split": {"test_size": 0.3}}


def test_out_of_memory_is_recorded_others_continue_and_rerun_resumes(tmp_path):
    plugin = tmp_path / "oom_plugin.py"
    plugin.write_text(PLUGIN)
    exp = parse_experiment({"name": "oom", "profile": "smoke", "seeds": [0], "settings": ["inductive"],
                            "device": "cpu", "datasets": [CARD], "plugins": [str(EXAMPLE_PLUGIN), str(plugin)],
                            "methods": ["oom_once_for_test", "example_pixel_knn"]})
    out = tmp_path / "run"
    lines: list[str] = []
    info = Runner(exp, out, progress=False, echo=lines.append).run()
    assert info["failed_jobs"] == ["tiny/oom_once_for_test/seed0"]
    job = json.loads((out / "jobs/tiny/oom_once_for_test/seed0/job.json").read_text())
    assert job["status"] == "failed" and job["error"].startswith("OutOfMemoryError")
    assert "batch_size" in job["error"]  # the hint says what to change
    assert job["last_checkpoint"] and job["last_checkpoint"].endswith(".pt")
    assert any("last good checkpoint" in s for s in lines)
    assert json.loads((out / "jobs/tiny/example_pixel_knn/seed0/job.json").read_text())["status"] == "done"
    assert "failed" in (out / "table.md").read_text()

    lines.clear()
    info = Runner(exp, out, progress=False, echo=lines.append).run()  # the same command again
    assert info["failed_jobs"] == []
    assert json.loads((out / "jobs/tiny/oom_once_for_test/seed0/job.json").read_text())["status"] == "done"
    assert any("done already, skipped" in s for s in lines)  # example_pixel_knn was not retrained
    assert "failed" not in (out / "table.md").read_text()


def test_loss_log_widens_when_a_resumed_run_logs_more_columns(tmp_path):
    """A run resumed by a version that logs more losses keeps one well-formed losses.csv: the new columns are
    added to the header, the old rows get blanks, and a NaN still stops training after it is written."""
    FitContext(workdir=tmp_path, progress=False).log_losses(10, {"d": 1.0, "g": 2.0})
    ctx = FitContext(workdir=tmp_path, progress=False)  # the resumed run: a fresh context on the same folder
    ctx.log_losses(20, {"d": 3.0, "g": 4.0, "mask": 0.5})
    ctx.log_losses(30, {"g": 5.0, "mask": 0.25})
    with pytest.raises(TrainingError, match="mask"):
        ctx.log_losses(40, {"d": 6.0, "g": 7.0, "mask": float("nan")})
    df = pd.read_csv(tmp_path / "losses.csv")
    assert list(df.columns) == ["iteration", "d", "g", "mask"]
    assert df["iteration"].tolist() == [10, 20, 30, 40]
    assert df["mask"].isna().tolist() == [True, False, False, True]  # blank before the resume; NaN at the end
    assert df["d"].isna().tolist() == [False, False, True, False]
    assert df["g"].tolist() == [2.0, 4.0, 5.0, 7.0]

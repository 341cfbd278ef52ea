"""The harness trainer (anomaly_bench/harness/trainer.py) and its batch sampler, on a toy method: loss log windows,
boundaries, selection checkpoints and their hook, resume after a kill (mid-window, with the global RNG in use), the
settings check, resume files of another format, and the release of training-only attributes."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from anomaly_bench.core.interface import AnomalyMethod, FitContext, ScoreResult, TrainSets
from anomaly_bench.harness.sampler import BatchSampler
from anomaly_bench.harness.trainer import RESUME_FORMAT, Trainer
from anomaly_bench.nn.common import seed_everything
from helpers import KillAfterResumeSave, Killed

pytestmark = pytest.mark.usefixtures("one_thread")


class Toy(AnomalyMethod):
    """A linear scorer trained by SGD with input noise from the global RNG (not registered)."""

    name = "toy_for_trainer_test"
    defaults = {"iterations": 10, "batch_size": 4, "lr": 0.1, "log_every": 3, "resume_every": 4,
                "checkpoint_every": 0, "score_batch_size": 8}

    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "Toy":
        p = self.params
        gen = seed_everything(p["seed"])
        self.net = torch.nn.Linear(train.healthy[0].numel(), 1)
        self._opt = torch.optim.SGD(self.net.parameters(), lr=p["lr"])
        sampler = BatchSampler(len(train.healthy), p["batch_size"], gen, data=train.healthy)
        self.hooked: list[int] = []
        Trainer(self, ctx, total=p["iterations"], arch={"inputs": train.healthy[0].numel()},
                samplers={"x": sampler}, state={"net": self.net, "opt": self._opt}, boundaries=(5,),
                log_sums=("count",), log_defaults={"odd": -1.0},
                on_checkpoint=lambda it, state: self.hooked.append(it), release=("_opt",)).run(self.training_step)
        self.fitted_ = True
        return self

    def training_step(self, x: torch.Tensor) -> dict:
        x = x.flatten(1) + 0.01 * torch.randn(x.shape[0], x[0].numel())  # the global RNG
        loss = self.net(x).pow(2).mean()
        self._opt.zero_grad()
        loss.backward()
        self._opt.step()
        losses = {"loss": loss.detach(), "count": 1.0}
        if self._trainer.iteration % 2:  # reported on odd iterations only: carried over otherwise
            losses["odd"] = float(self._trainer.iteration)
        return losses

    def score(self, images: torch.Tensor) -> ScoreResult:
        with torch.no_grad():
            return ScoreResult(self.net(images.flatten(1))[:, 0].double().numpy())

    def state_dict(self) -> dict:
        return {"net": {k: v.clone() for k, v in self.net.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.net = torch.nn.Linear(state["net"]["weight"].shape[1], 1)
        self.net.load_state_dict(state["net"])


def _data() -> TrainSets:
    return TrainSets(torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(0)))


def _rows(path) -> list[dict]:
    return list(csv.DictReader(open(path / "losses.csv")))


def test_sampler_yields_data_batches_streams_and_epochs():
    data = torch.arange(10.0)[:, None]
    a = BatchSampler(10, 4, torch.Generator().manual_seed(1), data=data)
    b = BatchSampler(10, 4, torch.Generator().manual_seed(1))
    for _ in range(5):
        assert torch.equal(a.next_batch(), data[b.next_indices()])
    assert a.epoch == 2 and a.batches_per_epoch == 2
    two = BatchSampler(10, 4, torch.Generator().manual_seed(1), streams=2, data=data)
    x, y = two.next_batch()
    assert x.shape == y.shape == (4, 1) and not torch.equal(x, y)
    fixed = BatchSampler(5, 2, torch.Generator().manual_seed(1), shuffle=False)
    assert [fixed.next_indices().tolist() for _ in range(3)] == [[0, 1], [2, 3], [0, 1]] and fixed.epoch == 1


def test_loss_log_windows_boundaries_checkpoints_and_release(tmp_path):
    ctx = FitContext(workdir=tmp_path, checkpoint_every=4, progress=False)
    m = Toy().fit(_data(), ctx)
    rows = _rows(tmp_path)
    assert [int(r["iteration"]) for r in rows] == [3, 5, 6, 9, 10]  # log_every 3, the boundary 5 and the end
    assert [float(r["count"]) for r in rows] == [3, 2, 1, 3, 1]  # summed, not averaged
    assert [float(r["odd"]) for r in rows] == [1, 3, 5, 7, 9]  # the mean of the window, carried over when absent
    assert [it for it, _ in ctx.selection_checkpoints] == [4, 8] and m.hooked == [4, 8]
    state = torch.load(tmp_path / "resume.pt", weights_only=False)
    assert state["format"] == RESUME_FORMAT and state["iteration"] == state["step"] == 10
    assert not hasattr(m, "_opt") and not hasattr(m, "_trainer")  # training-only attributes released


def test_resume_after_a_kill_mid_window_matches_an_uninterrupted_run(tmp_path):
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    full = Toy().fit(_data(), FitContext(workdir=tmp_path / "full", progress=False))
    with pytest.raises(Killed):  # dies right after the resume state of iteration 4, inside the log window 4-5
        Toy().fit(_data(), KillAfterResumeSave(workdir=tmp_path / "killed", progress=False, kill_step=4))
    events: list[str] = []
    resumed = Toy().fit(_data(), FitContext(workdir=tmp_path / "killed", progress=False, on_event=events.append))
    assert any("resumed from iteration 4/10" in e for e in events)
    np.testing.assert_array_equal(resumed.score(x).scores, full.score(x).scores)
    assert _rows(tmp_path / "killed") == _rows(tmp_path / "full")
    again = Toy().fit(_data(), FitContext(workdir=tmp_path / "killed", progress=False))  # finished: no training
    np.testing.assert_array_equal(again.score(x).scores, full.score(x).scores)


def test_resume_with_other_settings_restarts_but_free_ones_resume(tmp_path):
    Toy(iterations=4).fit(_data(), FitContext(workdir=tmp_path, progress=False))
    events: list[str] = []
    Toy(iterations=4, lr=0.2).fit(_data(), FitContext(workdir=tmp_path, progress=False, on_event=events.append))
    assert any("configuration changed since the checkpoint: lr 0.1 -> 0.2" in e and "restarting" in e
               for e in events)
    assert (tmp_path / "resume.pt.stale").is_file()
    events.clear()
    Toy(iterations=4, lr=0.2, log_every=1, score_batch_size=2).fit(
        _data(), FitContext(workdir=tmp_path, progress=False, on_event=events.append))
    assert any("resumed from iteration 4/4" in e for e in events)
    events.clear()
    Toy(iterations=4, lr=0.2).fit(TrainSets(torch.rand(10, 1, 2, 2)),
                                  FitContext(workdir=tmp_path, progress=False, on_event=events.append))
    assert any("architecture" in e and "restarting" in e for e in events)


def test_a_resume_file_of_another_format_restarts_from_scratch(tmp_path):
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    fresh = Toy().fit(_data()).score(x).scores
    torch.save({"iteration": 4, "net": {}, "opt": {}, "torch_rng": torch.get_rng_state()}, tmp_path / "resume.pt")
    (tmp_path / "losses.csv").write_text("iteration,recon\n2,0.5\n4,0.25\n")
    events: list[str] = []
    m = Toy().fit(_data(), FitContext(workdir=tmp_path, progress=False, on_event=events.append))
    assert any("older version" in e and "from scratch" in e for e in events)
    np.testing.assert_array_equal(m.score(x).scores, fresh)
    assert (tmp_path / "losses.before-restart.csv").read_text().startswith("iteration,recon")
    assert [int(r["iteration"]) for r in _rows(tmp_path)] == [3, 5, 6, 9, 10]

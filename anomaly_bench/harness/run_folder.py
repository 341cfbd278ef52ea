"""The output folder of a run (``--out``): every path in it, and reading and writing its records.

Layout::

    <out>/.lock                       held while a runner works on the folder (:class:`RunLock`)
    <out>/.ray_run                    token of a Ray run: a worker that reads it shares the folder
    <out>/experiment.yaml             resolved experiment
    <out>/run.json                    versions, git commit, data fingerprints, timings
    <out>/splits/<dataset>_seed<k>.csv, <dataset>_duplicates.json
    <out>/jobs/<dataset>/<method>/seed<k>/          one job (:class:`JobFolder`)
        job.json                      status, params, profile, timings, memory, versions, fingerprint
        model.pt                      the fitted method (last iteration)
        scores_<setting>.csv          id, subject, cluster, label, score, threshold, subject_threshold
        selection.csv                 per checkpoint: AUCp (and the oracle test AUC, for analysis only)
        maps.npz                      a few test images, their reconstructions and anomaly maps
        work/                         checkpoints/, resume.pt, losses.csv (written by ``FitContext``)
    <out>/scores.csv, metrics.csv, table.{md,tex}, table_paper.{md,tex,csv}, table_full.csv,
          table_other_selection.md (the checkpoint rule the experiment did not choose; analysis only),
          roc_/pr_/scores_/maps_<dataset>[_<setting>].png, losses_/checkpoints_<dataset>.png, report.html,
          regression_comparison.csv

Nothing else in the package builds or globs these paths. Scores files of earlier versions (no ``cluster`` or
``threshold`` column) still report: clusters fall back to subjects, label-free thresholded metrics to NaN.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import yaml

from anomaly_bench.core.errors import BenchError, DataError

log = logging.getLogger("anomaly_bench")

JOB_GLOB = "jobs/*/*/seed*/job.json"
FIGURE_PREFIXES = ("roc_", "pr_", "scores_", "maps_", "losses_", "checkpoints_")
#: the columns every job's scores file has (earlier versions lack cluster and the thresholds)
JOB_SCORE_COLUMNS = ("dataset", "setting", "method", "seed", "id", "label", "score")


def dump_json(data: Any) -> str:
    """The text of every JSON record of a run folder (job.json, run.json, duplicates)."""
    return json.dumps(data, indent=1, default=str)


def read_scores_csv(path: str | Path) -> pd.DataFrame:
    """A scores file with ids and subjects kept as text (leading zeros matter)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.DtypeWarning)
        return pd.read_csv(path, dtype={"id": str, "subject": str, "cluster": str})


def atomic_write(path: Path, write) -> Path:
    """``write(tmp)`` then rename onto ``path``: a run killed meanwhile leaves the old file (or none), never a
    half-written one that a resumed run would read back."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    return atomic_write(path, lambda p: frame.to_csv(p, index=False))


class JobFolder:
    """``jobs/<dataset>/<method>/seed<k>/``: one job's files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"JobFolder({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------ paths
    @property
    def meta_path(self) -> Path:
        return self.path / "job.json"

    @property
    def model_path(self) -> Path:
        return self.path / "model.pt"

    @property
    def selection_path(self) -> Path:
        return self.path / "selection.csv"

    @property
    def maps_path(self) -> Path:
        return self.path / "maps.npz"

    @property
    def work_dir(self) -> Path:
        """The method's ``FitContext.workdir``: checkpoints/, resume.pt, losses.csv."""
        return self.path / "work"

    @property
    def losses_path(self) -> Path:
        return self.work_dir / "losses.csv"

    @property
    def checkpoints_dir(self) -> Path:
        """Selection checkpoints ``iter_<n>.pt`` (written by ``FitContext``)."""
        return self.work_dir / "checkpoints"

    @property
    def resume_path(self) -> Path:
        """The resume state of a job killed mid-training (written by ``FitContext``)."""
        return self.work_dir / "resume.pt"

    def scores_path(self, setting: str) -> Path:
        return self.path / f"scores_{setting}.csv"

    def score_files(self) -> list[Path]:
        """The job's ``scores_<setting>.csv`` files, sorted by name."""
        return sorted(self.path.glob("scores_*.csv"))

    def seed_from_name(self) -> int | str:
        """The seed the folder name says (``seed3`` -> 3; the name itself when it is not a number)."""
        try:
            return int(self.path.name.removeprefix("seed"))
        except ValueError:
            return self.path.name

    # ------------------------------------------------------------------------------------------ records
    def read_meta(self) -> dict[str, Any] | None:
        """``job.json``; None when there is none or it is unreadable (cut short by a kill while written)."""
        if not self.meta_path.is_file():
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
        except ValueError:
            return None
        return meta if isinstance(meta, dict) else None

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.meta_path, dump_json(meta))

    def is_done(self, fingerprint: str, settings: tuple[str, ...] | list[str] = (),
                echo: Callable[[str], None] | None = None) -> bool:
        """True when ``job.json`` says done with this configuration fingerprint and the scores files of
        ``settings`` are there (a done job whose scores were deleted is rerun, saying so through ``echo``)."""
        meta = self.read_meta()
        if meta is None or meta.get("status") != "done" or meta.get("config_fingerprint") != fingerprint:
            return False
        missing = [self.scores_path(s).name for s in settings if not self.scores_path(s).is_file()]
        if missing and echo is not None:
            echo(f"  {self.meta_path} says done but {', '.join(missing)} is missing; rerunning the job")
        return not missing

    def write_scores(self, setting: str, frame: pd.DataFrame) -> None:
        write_csv(self.scores_path(setting), frame)

    def read_scores(self) -> list[pd.DataFrame]:
        """Every ``scores_<setting>.csv`` of the job, in file-name order; a damaged one (unparsable, a required
        column missing, labels other than 0/1, scores not numbers) raises a :class:`DataError` naming it."""
        frames = []
        for f in self.score_files():
            fix = (f"the file is damaged: delete it and rerun the same `anomaly-bench run` command to score the job "
                   f"again (its job.json: {self.meta_path})")
            try:
                df = read_scores_csv(f)
            except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
                raise DataError(f"{f}: cannot read the scores ({type(exc).__name__}: {exc}); {fix}") from None
            missing = sorted(set(JOB_SCORE_COLUMNS) - set(df.columns))
            if missing:
                raise DataError(f"{f}: column(s) {missing} missing; {fix}")
            if not df["label"].isin([0, 1]).all() or not pd.api.types.is_numeric_dtype(df["score"]):
                raise DataError(f"{f}: labels other than 0/1 or scores that are not numbers; {fix}")
            frames.append(df)
        return frames

    def write_selection(self, table: pd.DataFrame) -> None:
        write_csv(self.selection_path, table)

    def write_maps(self, arrays: dict[str, np.ndarray]) -> None:
        def save(p: Path) -> None:
            with open(p, "wb") as fh:
                np.savez_compressed(fh, **arrays)

        atomic_write(self.maps_path, save)

    def read_losses(self) -> pd.DataFrame | None:
        return pd.read_csv(self.losses_path) if self.losses_path.is_file() else None

    def relocate(self, old: Path, new: Path) -> None:
        """Rewrite the paths under ``old`` in ``job.json`` and ``selection.csv`` (which name checkpoints) to
        ``new``: a job run in a temporary folder and gathered back into the run folder."""
        for f in (self.meta_path, self.selection_path):
            if f.is_file():
                write_text(f, f.read_text().replace(str(old), str(new)))


class RunFolder:
    """A run's output folder: see the module docstring for its layout."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        """A top-level file of the run (``scores.csv``, ``table.md``, a figure, ...)."""
        return self.path / name

    # ------------------------------------------------------------------------------------------ paths
    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    @property
    def ray_token_path(self) -> Path:
        return self.path / ".ray_run"

    @property
    def experiment_path(self) -> Path:
        return self.path / "experiment.yaml"

    @property
    def run_info_path(self) -> Path:
        return self.path / "run.json"

    @property
    def scores_path(self) -> Path:
        return self.path / "scores.csv"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    @property
    def comparison_path(self) -> Path:
        """``regress``'s comparison with the reference."""
        return self.path / "regression_comparison.csv"

    @property
    def splits_dir(self) -> Path:
        return self.path / "splits"

    @property
    def jobs_dir(self) -> Path:
        return self.path / "jobs"

    def manifest_path(self, dataset: str, seed: int) -> Path:
        return self.splits_dir / f"{dataset}_seed{seed}.csv"

    def duplicates_path(self, dataset: str) -> Path:
        return self.splits_dir / f"{dataset}_duplicates.json"

    def job(self, dataset: str, method: str, seed: int) -> JobFolder:
        return JobFolder(self.jobs_dir / dataset / method / f"seed{seed}")

    def job_folders(self) -> list[JobFolder]:
        """Every job folder with a ``job.json``, sorted by path."""
        return [JobFolder(p.parent) for p in sorted(self.path.glob(JOB_GLOB))]

    def seed_folders(self, dataset: str, method: str) -> list[JobFolder]:
        """The seed folders of one (dataset, method), lowest seed first (non-numeric names last)."""
        d = self.jobs_dir / dataset / method
        return [JobFolder(p) for p in sorted(d.glob("seed*"), key=lambda p: (
            int(p.name[4:]) if p.name[4:].isdigit() else 1 << 30, p.name))]

    def figures(self) -> list[Path]:
        """The figure files, grouped by kind (roc, pr, scores, maps, losses, checkpoints), then by name."""
        return sorted((p for p in self.path.glob("*.png") if p.name.startswith(FIGURE_PREFIXES)),
                      key=lambda p: (FIGURE_PREFIXES.index(p.name.split("_", 1)[0] + "_"), p.name))

    # ------------------------------------------------------------------------------------------ records
    def read_jobs(self, strict: bool = False) -> list[dict[str, Any]]:
        """Every ``job.json``, sorted by path, with ``_path``; ``dataset``/``method``/``seed`` default to the
        folder names. An unreadable file raises with ``strict``, else is skipped with a warning."""
        return [meta for _, meta in self.jobs(strict)]

    def jobs(self, strict: bool = False) -> list[tuple[JobFolder, dict[str, Any]]]:
        """(folder, job.json) of every job, as :meth:`read_jobs`."""
        out = []
        for jf in self.job_folders():
            try:
                meta = json.loads(jf.meta_path.read_text())
                if not isinstance(meta, dict):
                    raise ValueError(f"a JSON {type(meta).__name__}, not an object")
            except (OSError, ValueError) as exc:
                if strict:
                    raise DataError(f"{jf.meta_path}: the job record is damaged or empty ({exc}); rerun the same "
                                    f"`anomaly-bench run` command to redo the job, or delete its folder "
                                    f"{jf.path} to leave it out") from None
                log.warning("skipping %s: %s", jf.meta_path, exc)
                continue
            meta.setdefault("dataset", jf.path.parents[1].name)
            meta.setdefault("method", jf.path.parent.name)
            if "seed" not in meta:
                meta["seed"] = jf.seed_from_name()
            meta["_path"] = str(jf.meta_path)
            out.append((jf, meta))
        return out

    def write_experiment(self, data: dict[str, Any]) -> None:
        write_text(self.experiment_path, yaml.safe_dump(data, sort_keys=False))

    def read_experiment(self) -> dict[str, Any] | None:
        """``experiment.yaml`` as a mapping; None when absent or unreadable."""
        if not self.experiment_path.is_file():
            return None
        try:
            data = yaml.safe_load(self.experiment_path.read_text())
        except Exception:  # noqa: BLE001 - a broken file reads as absent
            return None
        return data if isinstance(data, dict) else None

    def write_run_info(self, info: dict[str, Any]) -> None:
        write_text(self.run_info_path, dump_json(info))

    def read_run_info(self) -> Any:
        """``run.json`` (raises ValueError when it is not JSON, OSError when absent)."""
        return json.loads(self.run_info_path.read_text())

    def write_duplicates(self, dataset: str, report: dict[str, Any]) -> None:
        self.splits_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.duplicates_path(dataset), dump_json(report))

    def write_scores(self, frame: pd.DataFrame) -> None:
        write_csv(self.scores_path, frame)

    def read_scores(self) -> pd.DataFrame:
        return read_scores_csv(self.scores_path)

    def write_metrics(self, frame: pd.DataFrame) -> None:
        write_csv(self.metrics_path, frame)

    def read_metrics(self) -> pd.DataFrame:
        return pd.read_csv(self.metrics_path)

    def write_text(self, name: str, text: str) -> Path:
        return write_text(self.file(name), text)

    def write_csv(self, name: str, frame: pd.DataFrame) -> Path:
        return write_csv(self.file(name), frame)

    def lock(self) -> RunLock:
        return RunLock(self.path)


class RunLock:
    """A lock file so that two runners on one output folder cannot corrupt it."""

    def __init__(self, out: Path):
        self.path = RunFolder(out).lock_path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(self.path.read_text().split()[0])
                os.kill(pid, 0)
                alive = True
            except (ValueError, IndexError, ProcessLookupError, PermissionError, OSError):
                alive = False
            if alive:
                raise BenchError(f"{self.path.parent}: another anomaly-bench process (pid {pid}) is running on this "
                                 f"output folder; wait for it, or use another --out") from None
            self.path.unlink(missing_ok=True)  # stale lock of a killed run
            return self.__enter__()
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)

"""The method contract every anomaly detector in the suite follows (scikit-learn style).

A method is configured entirely in its constructor (``Method(**params)``), learns in ``fit`` and scores in
``score``. The harness (``anomaly_bench.harness.runner``) does the rest: splits, seeding, selection, metrics, reports.

* ``fit(train, ctx=None)`` gets a :class:`TrainSets`: the healthy set B and, for methods that use it, the
  unannotated mixed set A (whose labels never reach a method).
* ``score(images)`` returns a :class:`ScoreResult`: one score per image (higher = more anomalous) and, where the
  method has them, per-pixel anomaly maps and reconstructed/translated images.
* ``state_dict()`` / ``load_state_dict()`` carry everything needed to score; ``save``/``load`` wrap them.
* During ``fit`` a method may call ``ctx.save_selection_checkpoint(iteration, self.state_dict())`` so that the
  harness can pick a checkpoint without labels (pseudo-AUC, :mod:`anomaly_bench.harness.selection`).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from anomaly_bench.core.errors import ConfigError, TrainingError
from anomaly_bench.core.params import check_param_value
from anomaly_bench.core.registry import METHODS, get_method
from anomaly_bench.core.sets import ScoreResult, TrainSets  # noqa: F401  (part of the method contract)
from anomaly_bench.nn.common import at_least_fp32

log = logging.getLogger("anomaly_bench")

#: Which sets a method trains on. ``healthy``: set B only (one-class protocol);
#: ``mixed+healthy``: A and B as separate sets (MedAI AnomalyPro); ``mixed_union``: B ∪ A pooled
#: into ``healthy`` for one-class methods (the contaminated setting).
TRAIN_SET_CHOICES = ("healthy", "mixed+healthy", "mixed_union")

#: Parameters every method accepts; the runner sets them.
COMMON_PARAMS: dict[str, Any] = {"seed": 0, "device": "cpu"}


@dataclass
class FitContext:
    """What the harness lends a method during ``fit``: a work folder, progress, checkpoints, logs.

    Everything is optional; ``FitContext()`` (or ``ctx=None``) trains silently with no files.
    """

    workdir: Path | None = None
    checkpoint_every: int = 0
    progress: bool = True
    description: str = ""
    selection_checkpoints: list[tuple[int, Path]] = field(default_factory=list)
    on_event: Callable[[str], None] | None = None
    #: what :meth:`warn` said during this fit (the runner stores them in job.json)
    warnings: list[str] = field(default_factory=list)
    _loss_columns: list[str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.workdir is not None:
            self.workdir = Path(self.workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._rescan_checkpoints()

    # -- progress ---------------------------------------------------------------------------------
    def progress_bar(self, total: int, desc: str = "", initial: int = 0):
        from tqdm.auto import tqdm

        label = f"{self.description} {desc}".strip()
        return tqdm(total=total, initial=initial, desc=label, disable=not self.progress,
                    dynamic_ncols=True, mininterval=1.0, leave=False)

    def info(self, msg: str) -> None:
        log.info(msg)
        if self.on_event:
            self.on_event(msg)

    def warn(self, msg: str) -> None:
        """Something the user should know about the fitted model (shown by default, kept in job.json)."""
        self.warnings.append(msg)
        log.warning(msg)
        if self.on_event:
            self.on_event(msg)

    # -- label-free model selection -----------------------------------------------------------------
    def wants_checkpoint(self, iteration: int) -> bool:
        return self.workdir is not None and self.checkpoint_every > 0 and iteration % self.checkpoint_every == 0

    def save_selection_checkpoint(self, iteration: int, state: dict) -> Path | None:
        """Store a scoring state at ``iteration`` for checkpoint selection (AUCp)."""
        if self.workdir is None:
            return None
        path = self.workdir / "checkpoints" / f"iter_{iteration:09d}.pt"
        atomic_torch_save(state, path)
        self.selection_checkpoints = [c for c in self.selection_checkpoints if c[0] != iteration]
        self.selection_checkpoints.append((iteration, path))
        self.selection_checkpoints.sort()
        return path

    def _rescan_checkpoints(self) -> None:
        d = self.workdir / "checkpoints" if self.workdir else None
        if d and d.is_dir():
            self.selection_checkpoints = sorted(
                (int(p.stem.split("_")[1]), p) for p in d.glob("iter_*.pt"))

    # -- resume after a kill ----------------------------------------------------------------------
    @property
    def resume_path(self) -> Path | None:
        return None if self.workdir is None else self.workdir / "resume.pt"

    def save_resume(self, state: dict) -> None:
        """Atomically store the full training state (networks, optimisers, RNG, iteration)."""
        if self.resume_path is not None:
            atomic_torch_save(state, self.resume_path)

    def load_resume(self) -> dict | None:
        """The saved training state; None when there is none, or when the file is unreadable (it is then moved
        aside as ``resume.pt.corrupt`` and training restarts from scratch, see :meth:`restart`)."""
        p = self.resume_path
        if p is None or not p.exists():
            return None
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file, training starts again
            self.restart(f"the resume state {p} is unreadable ({type(exc).__name__}: {str(exc)[:200]}); moved to "
                         f"{p.name}.corrupt", aside=p.name + ".corrupt")
            return None

    def restart(self, reason: str, aside: str = "resume.pt.stale") -> None:
        """Training starts from scratch, saying ``reason``: the resume file is set aside as ``aside``, the loss
        log as ``losses.before-restart.csv``, and the selection checkpoints of the abandoned run are deleted."""
        if self.workdir is None:
            return
        if self.resume_path.exists():
            self.resume_path.replace(self.resume_path.with_name(aside))
        if (self.workdir / "losses.csv").exists():
            (self.workdir / "losses.csv").replace(self.workdir / "losses.before-restart.csv")
        for _, c in self.selection_checkpoints:
            c.unlink(missing_ok=True)
        self.selection_checkpoints, self._loss_columns = [], None
        self.info(f"{self.description or 'training'}: {reason}; restarting from scratch (old loss log: "
                  f"losses.before-restart.csv)")

    def truncate_losses(self, iteration: int) -> None:
        """Drop the loss-log rows after ``iteration`` (written after the resume state a killed run resumes from,
        so they would repeat)."""
        path = None if self.workdir is None else self.workdir / "losses.csv"
        if path is None or not path.exists():
            return
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        keep = rows[:1] + [r for r in rows[1:] if r and r[0].lstrip("-").isdigit() and int(r[0]) <= iteration]
        if len(keep) < len(rows):
            with open(path, "w", newline="") as fh:
                csv.writer(fh).writerows(keep)

    def last_checkpoint(self) -> str | None:
        if self.resume_path is not None and self.resume_path.exists():
            return str(self.resume_path)
        return str(self.selection_checkpoints[-1][1]) if self.selection_checkpoints else None

    # -- loss log ---------------------------------------------------------------------------------
    def log_losses(self, iteration: int, losses: dict[str, float]) -> None:
        """Append losses to ``workdir/losses.csv`` and stop with a clear error if one is not finite."""
        bad = [k for k, v in losses.items() if not math.isfinite(float(v))]
        if self.workdir is not None:
            self._append_loss_row(self.workdir / "losses.csv", iteration, losses)
        if bad:
            raise TrainingError(
                f"{self.description or 'training'}: loss {', '.join(bad)} became non-finite at iteration "
                f"{iteration} ({', '.join(f'{k}={float(losses[k])}' for k in bad)}). Lower the learning rate "
                f"or check the input data; last good checkpoint: {self.last_checkpoint() or 'none'}",
                last_checkpoint=self.last_checkpoint())

    def _append_loss_row(self, path: Path, iteration: int, losses: dict[str, float]) -> None:
        """One row per call; a run resumed by a version that logs more columns widens the file (old rows blank)."""
        if self._loss_columns is None and path.exists():
            with open(path, newline="") as fh:
                self._loss_columns = next(csv.reader(fh), ["iteration"])[1:]
        extra = [k for k in losses if self._loss_columns is not None and k not in self._loss_columns]
        if extra:
            with open(path, newline="") as fh:
                rows = list(csv.reader(fh))[1:]
            self._loss_columns = [*self._loss_columns, *extra]
            with open(path, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["iteration", *self._loss_columns])
                w.writerows(r + [""] * (len(self._loss_columns) + 1 - len(r)) for r in rows)
        with open(path, "a", newline="") as fh:
            w = csv.writer(fh)
            if self._loss_columns is None:
                self._loss_columns = list(losses)
                w.writerow(["iteration", *self._loss_columns])
            w.writerow([iteration, *(f"{float(losses[k]):.6g}" if k in losses else "" for k in self._loss_columns)])


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write then rename, so a kill never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def resolve_device(spec: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU. ``cuda`` without a GPU is an error, not a silent fallback."""
    if spec in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device: unknown device {spec!r}; use one of cpu, cuda (or cuda:N), auto, mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: '{spec}' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return dev


class AnomalyMethod(ABC):
    """Base class of every method. Subclasses declare ``defaults`` (the published hyper-parameters,
    which also serve as the schema: unknown keys and wrong types are rejected) and implement
    ``fit``, ``score``, ``state_dict`` and ``load_state_dict``.

    Class attributes:
      * ``name``: registry name (set by :func:`anomaly_bench.core.registry.register_method`).
      * ``default_train_sets``: ``"healthy"`` (one-class) or ``"mixed+healthy"`` (also learns from mixed set A).
      * ``defaults``: dict of hyper-parameters with their default values.
      * ``choices``: optional dict ``param -> allowed values``.
      * ``profiles``: fallback profiles for plugins that ship no YAML file.
      * ``resources``: likewise, what one job asks a Ray cluster for, per profile name or ``default``:
        ``{"default": {"cpus": 1, "gpus": 0, "memory_gb": 2}}``
        (see :func:`anomaly_bench.core.config.method_resources`).
      * ``health_loss`` (column(s) of the main loss in losses.csv, or None), ``health_loss_rows``/``health_critic_rows``
        (the rows that count), ``health_judge_mae``: see :mod:`anomaly_bench.evaluation.health`.
      * ``in_default_experiment``: False keeps it out of ``methods: []`` (the quick start); see its docstring.
      * ``streams_images``: True when ``fit`` only reads its training images by index or slice
        (``images[idx]``, ``images[i:j]``, ``len``, ``.shape``, ``.to(device)``): the harness then hands it
        :class:`~anomaly_bench.core.image_array.ImageArray` views of the dataset's compact (uint8) images
        instead of float32 copies, and :func:`~anomaly_bench.harness.contract.check_method` checks that both
        give the same model bit for bit. ``score`` always gets float32 tensors, in bounded chunks.
    """

    name: ClassVar[str] = ""
    default_train_sets: ClassVar[str] = "healthy"
    defaults: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple]] = {}
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    resources: ClassVar[dict[str, dict[str, Any]]] = {}
    health_loss: ClassVar[str | tuple[str, ...] | None] = None
    health_loss_rows: ClassVar[dict[str, float]] = {}
    health_critic_rows: ClassVar[dict[str, float]] = {}
    health_judge_mae: ClassVar[bool] = True
    in_default_experiment: ClassVar[bool] = True
    streams_images: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.params = self.validate_params(params)
        self.fitted_ = False

    # -- configuration ----------------------------------------------------------------------------
    @classmethod
    def all_defaults(cls) -> dict[str, Any]:
        return {**COMMON_PARAMS, **cls.defaults}

    @classmethod
    def validate_params(cls, params: dict[str, Any], where: str = "") -> dict[str, Any]:
        schema = cls.all_defaults()
        where = where or f"method '{cls.name or cls.__name__}'"
        unknown = sorted(set(params) - set(schema))
        if unknown:
            raise ConfigError(f"{where}: unknown parameter(s) {unknown}; allowed: {sorted(schema)}")
        merged = dict(schema)
        for k, v in params.items():
            check_param_value(k, schema[k], v, where)
            allowed = cls.choices.get(k)
            if allowed is not None and v not in allowed:
                raise ConfigError(f"{where}: parameter '{k}'={v!r} is not one of {list(allowed)}")
            merged[k] = v
        return merged

    def get_params(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def device(self) -> torch.device:
        return resolve_device(self.params["device"])

    # -- the contract -----------------------------------------------------------------------------
    @abstractmethod
    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "AnomalyMethod":
        """Learn from ``train``; return ``self``."""

    @abstractmethod
    def score(self, images: torch.Tensor) -> ScoreResult:
        """Score ``(N, 1, H, W)`` images in ``[-1, 1]``; higher = more anomalous."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything ``score`` needs (weights, fitted statistics), as CPU tensors/plain values."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the method is already constructed)."""

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        atomic_torch_save({"method": self.name, "params": self.params, "state": self.state_dict()}, Path(path))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> "AnomalyMethod":
        blob = torch.load(path, map_location="cpu", weights_only=False)
        klass = cls if cls is not AnomalyMethod else get_method(blob["method"])
        obj = klass(**{**blob["params"], **overrides})
        obj.load_state_dict(blob["state"])
        obj.fitted_ = True
        return obj

    def load_checkpoint(self, path: str | Path) -> None:
        """Load a selection checkpoint written during ``fit`` (a ``state_dict``)."""
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))
        self.fitted_ = True

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.params.items() if self.all_defaults().get(k) != v}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


def batched(images: torch.Tensor, batch_size: int):
    """Yield consecutive CPU batches of ``images``."""
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size]


def to_numpy_scores(t: torch.Tensor) -> np.ndarray:
    return at_least_fp32(t.detach()).cpu().numpy().astype(np.float64)


def register_method(name: str, *, overwrite: bool = False) -> Callable[[type], type]:
    """Class decorator: ``@register_method("my_method")`` on an :class:`AnomalyMethod` subclass."""
    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, AnomalyMethod)):
            raise TypeError(f"@register_method('{name}') must decorate an AnomalyMethod subclass, got {cls!r}")
        if cls.default_train_sets not in TRAIN_SET_CHOICES:
            raise ConfigError(f"method '{name}': default_train_sets={cls.default_train_sets!r} "
                              f"is not one of {TRAIN_SET_CHOICES}")
        cls.name = name
        METHODS.register(name, cls, f"{cls.__module__}.{cls.__qualname__}", overwrite)
        return cls

    return deco

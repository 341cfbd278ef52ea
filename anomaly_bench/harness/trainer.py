"""The one trainer of the iteration-counted methods (ALAD, ALOCC, autoencoder, f-AnoGAN, GANomaly, MedAI AnomalyPro).

A method builds its networks and optimisers and supplies a ``training_step(batch) -> dict of losses``; schedules
that differ (f-AnoGAN's two stages, AnomalyPro's critic steps per generator step, GANomaly's discriminator
re-initialisation, ALAD's EMA) stay in the method's step. :class:`Trainer` owns the rest: the loop, the batch
samplers (:class:`BatchSampler`, the one resumable sampler), the global RNG state, the resume file and the check
that it was written with the same settings (else a restart), the loss log (``losses.csv``; a non-finite loss stops
the run), label-free selection checkpoints with a per-checkpoint hook, and the progress bar. Also here: a BatchNorm
context that uses batch statistics without updating the running ones, module-mode and input checks around scoring,
RNG and state snapshots. PaDiM and PatchCore (no iterative training) keep their own ``fit``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable

import torch
from torch import nn

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import AnomalyMethod, FitContext
from anomaly_bench.harness.sampler import BatchSampler

#: the resume file format written by :class:`Trainer` (files of other formats restart the job from scratch)
RESUME_FORMAT = "anomaly_bench.trainer/1"
#: parameters that may differ between an interrupted run and its resumption (methods add their own)
RESUME_FREE = ("device", "log_every", "resume_every", "checkpoint_every", "score_batch_size")


# --------------------------------------------------------------------------------------------------
# module modes and scoring checks
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def keep_bn_stats(*modules: nn.Module):
    """Train-mode BatchNorm forwards that use batch statistics but leave the running statistics alone
    (``track_running_stats`` is switched off for the duration; no in-place change, so autograd is safe)."""
    bns = [bn for m in modules for bn in m.modules()
           if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.track_running_stats]
    for bn in bns:
        bn.track_running_stats = False
    try:
        yield
    finally:
        for bn in bns:
            bn.track_running_stats = True


@contextlib.contextmanager
def train_mode(modules: Iterable[nn.Module], training: bool):
    """``modules`` in train (``True``) or eval mode for the duration; each one's own mode restored after."""
    modules = list(modules)
    modes = [m.training for m in modules]
    for m in modules:
        m.train(training)
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def check_fitted(method: AnomalyMethod, *attrs: str) -> None:
    """``score()`` and ``state_dict()`` need a fitted (or loaded) model: ``fitted_`` set and, when named,
    the attributes ``attrs`` (its networks) present."""
    if not getattr(method, "fitted_", False) or not all(hasattr(method, a) for a in attrs):
        raise RuntimeError(f"{method.name}: call fit() or load a state before score()")


def check_scorable(method: AnomalyMethod, images: torch.Tensor) -> None:
    """:func:`check_fitted`, and images of the shape the model's ``arch_`` was built for."""
    check_fitted(method)
    trained = method.arch_["image_shape"]
    if tuple(images.shape[1:]) != tuple(trained):
        raise ConfigError(f"{method.name}: model was trained on {trained} images, got {tuple(images.shape[1:])}")


# --------------------------------------------------------------------------------------------------
# resume states
# --------------------------------------------------------------------------------------------------
def rng_state(device: torch.device) -> dict:
    """The global torch RNG state (and the CUDA one of ``device`` when it is a GPU)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module.state_dict()`` (safe to save while training goes on)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def cpu_copy(obj: Any) -> Any:
    """A detached CPU copy of the tensors in nested dicts, lists and tuples (safe to save while training goes on)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def due(every: int, it: int) -> bool:
    """Every ``every`` iterations (never when ``every <= 0``)."""
    return every > 0 and it % every == 0


# --------------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------------
class Trainer:
    """The loop and the bookkeeping of one method's ``fit`` around its own networks, optimisers and training step.

    * ``total`` iterations of ``training_step(batch)``; ``batch`` is the next batch of the one sampler in
      ``samplers`` (:meth:`BatchSampler.next_batch`), or a tuple with one batch per sampler. A step that needs more
      batches (f-AnoGAN's critic steps) draws them from its sampler itself. :attr:`iteration` is the number of
      finished iterations (the 0-based index of the running one inside ``training_step``).
    * ``state``: what a resume file holds besides the samplers and the global RNG, by name: modules, optimisers,
      ``torch.Generator``\\ s (anything with ``state_dict``/``load_state_dict``); ``extra``: a ``(get, set)`` pair for
      more (plain values; saved beside ``state``).
    * Resume: the context's resume file (format :data:`RESUME_FORMAT`) is loaded by :meth:`run` when the method's
      parameters (but those in :data:`RESUME_FREE` and ``resume_free``) and ``arch`` are the ones it was written
      with; else (other settings, another format, an unreadable file) training restarts from scratch with a message
      naming the differences (:meth:`FitContext.restart`). Loss-log rows after the resumed iteration are dropped. It
      is written every ``params["resume_every"]`` iterations, at the ``boundaries`` and at the end.
    * Loss log: each loss's mean (``log_sums``: its sum) over the iterations since the last row, every
      ``params["log_every"]`` iterations, at the ``boundaries`` and at the end, to ``losses.csv``; a loss missing from
      a window repeats its last value (``log_defaults`` before the first). A non-finite loss stops the run
      (:meth:`FitContext.log_losses`). Losses may be device tensors: they are read once per row.
    * Selection checkpoints: ``method.state_dict()`` at iteration ``it`` when the context wants one for
      ``checkpoint_index(it)`` (default ``it``; ``None``: never), then ``on_checkpoint(it, state)``.
    * During :meth:`run` the method reaches the trainer as ``method._trainer``; that attribute and the method's
      training-only attributes named in ``release`` (optimisers, training data, generators) are deleted when the
      run ends, so a fitted model holds only what scoring needs.
    """

    def __init__(self, method: AnomalyMethod, ctx: FitContext | None, *, total: int, arch: dict,
                 samplers: dict[str, BatchSampler], state: dict[str, Any], resume_free: Iterable[str] = (),
                 extra: tuple[Callable[[], dict], Callable[[dict], None]] | None = None,
                 boundaries: Iterable[int] = (), log_sums: Iterable[str] = (), log_defaults: dict | None = None,
                 checkpoint_index: Callable[[int], int | None] | None = None,
                 on_checkpoint: Callable[[int, dict], None] | None = None, release: Iterable[str] = ()):
        self.method, self.ctx = method, ctx or FitContext(progress=False)
        self.name, self.device, params = method.name, method.device, method.params
        self.total, self.arch, self.samplers, self.state, self.extra = total, arch, samplers, state, extra
        self.log_every, self.resume_every = params["log_every"], params["resume_every"]
        self.resume_free = {*RESUME_FREE, *resume_free}
        self.boundaries, self.log_sums = set(boundaries), set(log_sums)
        self.checkpoint_index = checkpoint_index or (lambda it: it)
        self.on_checkpoint, self.release = on_checkpoint, tuple(release)
        #: the last row written to the loss log
        self.last_row: dict[str, float] = dict(log_defaults or {})
        self.iteration = 0
        self._acc: dict[str, list] = {}

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, training_step: Callable[[Any], dict[str, Any]]) -> None:
        self.method._trainer = self
        try:
            self.iteration = self._resume()
            with self.ctx.progress_bar(self.total, "train", initial=min(self.iteration, self.total)) as pbar:
                while self.iteration < self.total:
                    batches = [s.next_batch() for s in self.samplers.values()]
                    losses = training_step(batches[0] if len(batches) == 1 else tuple(batches))
                    self.iteration += 1
                    pbar.update(1)
                    self._end_iteration(losses, pbar)
        finally:
            for name in ("_trainer", *self.release):
                if hasattr(self.method, name):
                    delattr(self.method, name)

    def _end_iteration(self, losses: dict[str, Any], pbar) -> None:
        it = self.iteration
        for k, v in losses.items():
            self._acc.setdefault(k, []).append(v.detach() if isinstance(v, torch.Tensor) else v)
        if due(self.log_every, it) or it == self.total or it in self.boundaries:
            row = {k: self._reduce(k, v) for k, v in self._acc.items()}
            row.update({k: v for k, v in self.last_row.items() if k not in row})
            self.last_row, self._acc = row, {}
            pbar.set_postfix({k: f"{v:.3g}" for k, v in row.items()}, refresh=False)
            self.ctx.log_losses(it, row)  # raises TrainingError on a non-finite loss
        index = self.checkpoint_index(it)
        if index is not None and self.ctx.wants_checkpoint(index):
            self.method.fitted_ = True
            scoring_state = self.method.state_dict()
            self.ctx.save_selection_checkpoint(it, scoring_state)
            if self.on_checkpoint is not None:
                self.on_checkpoint(it, scoring_state)
        if self.ctx.resume_path is not None and (due(self.resume_every, it) or it == self.total
                                                 or it in self.boundaries):
            self.ctx.save_resume(self.resume_state())

    def _reduce(self, key: str, values: list) -> float:
        if isinstance(values[0], torch.Tensor):
            t = torch.stack(values)
            return float(t.sum() if key in self.log_sums else t.mean())
        return float(sum(values)) if key in self.log_sums else float(sum(values)) / len(values)

    # -- resume -----------------------------------------------------------------------------------
    def resume_state(self) -> dict[str, Any]:
        held = {k: v.get_state() if isinstance(v, torch.Generator) else v.state_dict() for k, v in self.state.items()}
        if self.extra is not None:
            held.update(self.extra[0]())
        return cpu_copy({
            "format": RESUME_FORMAT, "method": self.name, "iteration": self.iteration,
            "step": self.iteration,  # the same count under the name the GAN methods used
            "params": dict(self.method.params), "arch": self.arch, "trainer": held,
            "samplers": {k: s.state_dict() for k, s in self.samplers.items()}, "rng": rng_state(self.device),
            "log": {"window": self._acc, "last_row": self.last_row}})

    def _resume(self) -> int:
        st = self.ctx.load_resume()
        if st is None:
            return 0
        if st.get("format") != RESUME_FORMAT:
            self.ctx.restart(f"{self.name}: the resume state in {self.ctx.resume_path} was written by an older "
                             f"version (another format)", aside="resume.pt.old-format")
            return 0
        changed = self._changed_settings(st)
        if changed:
            self.ctx.restart(f"configuration changed since the checkpoint: {changed} (resume state "
                             f"{self.ctx.resume_path} set aside as resume.pt.stale)")
            return 0
        for k, v in self.state.items():
            if isinstance(v, torch.Generator):
                v.set_state(st["trainer"][k])
            else:
                v.load_state_dict(st["trainer"][k])
        if self.extra is not None:
            self.extra[1](st["trainer"])
        for k, s in self.samplers.items():
            s.load_state_dict(st["samplers"][k])
        set_rng_state(st["rng"], self.device)
        self._acc = {k: [v.to(self.device) if isinstance(v, torch.Tensor) else v for v in vals]
                     for k, vals in st["log"]["window"].items()}
        self.last_row = dict(st["log"]["last_row"])
        it = int(st["iteration"])
        self.ctx.truncate_losses(it)  # rows logged between this resume state and the kill are trained again
        self.ctx.info(f"{self.name}: resumed from iteration {it}/{self.total} ({self.ctx.resume_path})")
        return it

    def _changed_settings(self, st: dict[str, Any]) -> str:
        """How the settings and architecture differ from those the resume file was written with ('' if not)."""
        old = {k: v for k, v in st["params"].items() if k not in self.resume_free}
        new = {k: v for k, v in self.method.params.items() if k not in self.resume_free}
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        what = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in diff]
        if st["arch"] != self.arch:
            what.append(f"architecture {st['arch']} -> {self.arch}")
        return ", ".join(what)

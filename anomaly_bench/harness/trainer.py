"""Training-loop helpers shared by the from-scratch GAN methods (ALAD, ALOCC, f-AnoGAN, GANomaly).

Resumable batch samplers, a BatchNorm context that uses batch statistics without updating the running
ones, module-mode and input checks around scoring, RNG and state snapshots for resume files, the
resume-state checks, and the end-of-iteration bookkeeping (loss log, selection checkpoints, resume states)
of an iteration-counted trainer.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable

import torch
from torch import nn

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import AnomalyMethod, FitContext


# --------------------------------------------------------------------------------------------------
# batch samplers
# --------------------------------------------------------------------------------------------------
class EpochSampler:
    """Reproducible, resumable epochs of shuffled index batches (drop-last).

    ``streams`` independent permutations are drawn per epoch (ALAD: one for the D step, one for the G/E
    step). The state is the generator state at the start of the current epoch plus the position, so a
    resumed run replays exactly the same batches.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, streams: int = 1,
                 shuffle: bool = True):
        self.n, self.bs, self.gen, self.streams, self.shuffle = n, min(batch_size, n), generator, streams, shuffle
        self.batches_per_epoch = n // self.bs
        self.epoch, self.pos = 0, 0
        self._start_epoch()

    def _start_epoch(self) -> None:
        self._epoch_state = self.gen.get_state()
        if self.shuffle:
            self.perms = [torch.randperm(self.n, generator=self.gen) for _ in range(self.streams)]
        else:
            self.perms = [torch.arange(self.n) for _ in range(self.streams)]

    def next(self) -> list[torch.Tensor]:
        if self.pos >= self.batches_per_epoch:
            self.epoch += 1
            self.pos = 0
            self._start_epoch()
        s = slice(self.pos * self.bs, (self.pos + 1) * self.bs)
        self.pos += 1
        return [p[s] for p in self.perms]

    def state_dict(self) -> dict:
        return {"epoch_state": self._epoch_state.clone(), "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["epoch_state"])
        self.epoch = state["epoch"]
        self._start_epoch()
        self.pos = state["pos"]


class ResumableBatchSampler:
    """Shuffled batch indices, epoch after epoch, drawn with ``generator`` (same sequence as
    :func:`anomaly_bench.nn.common.batch_stream` with ``drop_last=True``), whose position can be saved
    so that a resumed run draws exactly the batches an uninterrupted run would have drawn."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.bs, self.generator = n, min(batch_size, n), generator
        self.stop = n - n % self.bs
        self.perm: torch.Tensor | None = None
        self.pos = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.stop // self.bs

    def next_indices(self) -> torch.Tensor:
        if self.perm is None or self.pos >= self.stop:
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.bs]
        self.pos += self.bs
        return idx

    def state_dict(self) -> dict[str, Any]:
        return {"perm": self.perm, "pos": self.pos, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.perm, self.pos = state["perm"], int(state["pos"])
        self.generator.set_state(state["generator"])


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


def check_resume_arch(method: str, ctx: FitContext, saved: Any, arch: dict) -> None:
    """A resume state must have been written for the architecture this run builds."""
    if saved != arch:
        raise ConfigError(f"{method}: resume state in {ctx.resume_path} was written for another architecture "
                          f"({saved} vs {arch}); delete it or use a fresh work folder")


# --------------------------------------------------------------------------------------------------
# end-of-iteration bookkeeping
# --------------------------------------------------------------------------------------------------
def due(every: int, it: int) -> bool:
    """Every ``every`` iterations (never when ``every <= 0``)."""
    return every > 0 and it % every == 0


class IterationRun:
    """The bookkeeping of an iteration-counted trainer (ALAD, ALOCC) around its own networks and optimisers.

    * ``total``: ``params["iterations"]`` when > 0, else ``params["epochs"]`` epochs of ``sampler``;
    * :meth:`resume`: the context's resume state, if any (architecture checked, sampler and RNG restored);
    * :meth:`resume_header`: what a resume state holds besides networks and optimisers (architecture,
      iteration, sampler position, global RNG state);
    * :meth:`end_iteration`: loss means over ``params["log_every"]`` iterations (and the last) to
      ``losses.csv``, a selection checkpoint when the context wants one, and a resume state every
      ``params["resume_every"]`` iterations and at the end; both states are built only when saved.
    """

    def __init__(self, method: str, ctx: FitContext, params: dict, arch: dict, sampler: EpochSampler,
                 device: torch.device):
        self.method, self.ctx, self.arch, self.sampler, self.device = method, ctx, arch, sampler, device
        self.total = params["iterations"] if params["iterations"] > 0 else params["epochs"] * sampler.batches_per_epoch
        self.log_every, self.resume_every = params["log_every"], params["resume_every"]
        self._acc: dict[str, list[torch.Tensor]] = {}

    def resume(self) -> tuple[dict | None, int]:
        """``(state, iteration)`` of the context's resume state (``(None, 0)`` on a fresh start); the caller
        restores its networks and optimisers from ``state``."""
        state = self.ctx.load_resume()
        if state is None:
            return None, 0
        check_resume_arch(self.method, self.ctx, state.get("arch"), self.arch)
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"], self.device)
        it = state["iteration"]
        self.ctx.info(f"{self.method}: resumed at iteration {it}/{self.total}")
        return state, it

    def resume_header(self, it: int) -> dict:
        return {"arch": self.arch, "iteration": it, "sampler": self.sampler.state_dict(),
                "rng": rng_state(self.device)}

    def end_iteration(self, it: int, losses: dict[str, torch.Tensor], scoring_state: Callable[[], dict],
                      resume_state: Callable[[], dict]) -> None:
        for k, v in losses.items():
            self._acc.setdefault(k, []).append(v.detach())
        if due(self.log_every, it) or it == self.total:
            self.ctx.log_losses(it, {k: torch.stack(v).mean().item() for k, v in self._acc.items()})
            self._acc = {}
        if self.ctx.wants_checkpoint(it):
            self.ctx.save_selection_checkpoint(it, scoring_state())
        if due(self.resume_every, it) or it == self.total:
            self.ctx.save_resume(resume_state())

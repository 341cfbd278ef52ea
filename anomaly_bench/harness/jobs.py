"""What a job of the grid is and what it needs: :class:`Job` (dataset, seed, method, folder), :class:`PlannedJob`
(with its data and split), loading a dataset entry of the experiment, its split settings and training sets.
Shared by the runner (:mod:`anomaly_bench.harness.runner`) and the executors (:mod:`anomaly_bench.harness.executors`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from anomaly_bench.core.errors import DataError
from anomaly_bench.core.experiment import DatasetSpec, Experiment, MethodSpec
from anomaly_bench.core.interface import TrainSets
from anomaly_bench.data.loading import load_dataset, resolve_card
from anomaly_bench.data.records import ImageDataset
from anomaly_bench.data.split import Split, SplitConfig
from anomaly_bench.harness.run_folder import JobFolder


@dataclass
class Job:
    dataset: str
    seed: int
    method: MethodSpec
    dir: Path

    @property
    def folder(self) -> JobFolder:
        return JobFolder(self.dir)

    @property
    def name(self) -> str:
        """``dataset/method/seed<k>``: how lists of failed jobs name it."""
        return f"{self.dataset}/{self.method.key}/seed{self.seed}"


@dataclass
class PlannedJob:
    """One job of the grid with everything the driver knows about it."""

    job: Job
    spec: DatasetSpec
    ds: ImageDataset
    split: Split


def dataset_label(spec: DatasetSpec, ds: ImageDataset) -> str:
    return spec.label or ds.name


def load_dataset_for(spec: DatasetSpec, exp: Experiment, data_root: str | None) -> ImageDataset:
    card = resolve_card(spec.card)
    if spec.limit_per_class is not None:
        card = {**card, "limit_per_class": spec.limit_per_class}
    kwargs: dict[str, Any] = {"data_root": spec.data_root or data_root or exp.data_root,
                              "image_size": spec.image_size}
    if spec.on_bad_image:
        kwargs["on_bad_image"] = spec.on_bad_image
    return load_dataset(card, **kwargs)


def split_config_for(ds: ImageDataset, spec: DatasetSpec, exp: Experiment) -> SplitConfig:
    card_split = (ds.meta.get("card") or {}).get("split") or {}
    return SplitConfig.from_dict({**card_split, **exp.split, **(spec.split or {})},
                                 where=f"dataset '{ds.name}' split")


def build_train_sets(ds: ImageDataset, split: Split, train_sets: str, stream: bool = False) -> TrainSets:
    """The job's training sets: views of the dataset's compact images for a method that streams them
    (``AnomalyMethod.streams_images``), else float32 tensors (a copy of just these images)."""
    def pick(idx):
        return ds.images.take(idx) if stream else ds.images[torch.as_tensor(idx)]

    b_idx, a_idx = split.indices("healthy"), split.indices("mixed")
    b = pick(b_idx)
    a = pick(a_idx) if len(a_idx) else None
    if train_sets == "healthy":
        return TrainSets(healthy=b)
    if train_sets == "mixed_union":
        return TrainSets(healthy=b if a is None else pick(np.r_[b_idx, a_idx]))
    if a is None:
        raise DataError(f"dataset '{ds.name}': mixed set A is empty but the method trains on mixed+healthy; "
                        f"give A images with split.mixed_size / mixed_diseased_fraction (in the dataset card's or "
                        f"the experiment's `split:`), or run the method with train_sets: healthy")
    return TrainSets(healthy=b, mixed=a)


def fmt_duration(s: float) -> str:
    """``1h02m`` or ``3m07s``: job times and ETAs in progress lines."""
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def restart_if_changed(jf: JobFolder, old: dict[str, Any] | None, new: dict[str, Any], method_cls: type,
                       echo: Callable[[str], None]) -> None:
    """A job whose work folder (resume state, checkpoints, loss log) was written under another configuration than
    ``new`` (its ``job.json`` record) must not resume from it: the folder is moved aside as
    ``work.before-restart`` and the job restarts from scratch, saying what changed. Parameters a resumed run may
    change (the trainer's ``RESUME_FREE`` and the method's) do not count."""
    if not old or old.get("config_fingerprint") == new.get("config_fingerprint") or not jf.work_dir.is_dir():
        return
    # lazy: the trainer (torch training loop) is needed only when a work folder is reused
    from anomaly_bench.harness.trainer import RESUME_FREE

    free = {*RESUME_FREE, *getattr(method_cls, "RESUME_FREE", ())}
    a, b = old.get("params") or {}, new.get("params") or {}
    what = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in free and a.get(k) != b.get(k)]
    what += [f"{k} {old[k]!r} -> {new.get(k)!r}" for k in ("train_sets", "data_fingerprint")
             if old.get(k) is not None and old.get(k) != new.get(k)]
    if not what:
        return
    aside = jf.path / "work.before-restart"
    shutil.rmtree(aside, ignore_errors=True)
    jf.work_dir.replace(aside)
    echo(f"  configuration changed since the checkpoint: {', '.join(what)}; restarting (old work folder: {aside})")

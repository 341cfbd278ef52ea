"""Run an experiment: for every (dataset, seed, method) job build the split, fit, score, write results.

The output folder and its layout belong to :class:`anomaly_bench.harness.run_folder.RunFolder`; one job is run by
:class:`anomaly_bench.harness.job_runner.JobRunner`, which :class:`Runner` extends with the grid, the split
manifests, ``run.json`` and the report (:func:`anomaly_bench.reporting.write.build_reports`).

A job whose ``job.json`` says ``done`` with the same configuration is skipped, so rerunning a killed
run resumes it (and a job killed mid-training resumes from its last checkpoint in ``work/``).
A failed job (non-finite loss, out of memory, any exception) is recorded with its reason and the last
good checkpoint; the other jobs continue and the table marks the failure.

Jobs run one after another in this process (``executor="local"``, the default) or as Ray tasks with the
resources of their method profile (``executor="ray"``, see :mod:`anomaly_bench.harness.executors`); the output
folder is the same either way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from anomaly_bench.core.errors import BenchError, DataError
from anomaly_bench.core.experiment import DatasetSpec, Experiment
from anomaly_bench.data.leakage import leakage_record
from anomaly_bench.data.published_split import read_manifest
from anomaly_bench.data.records import ImageDataset
from anomaly_bench.data.split import Split, SplitConfig, make_split, write_manifest
from anomaly_bench.evaluation.confound import confound_record
from anomaly_bench.harness.executors import check_executor, run_on_ray
from anomaly_bench.harness.job_runner import JobRunner
from anomaly_bench.harness.jobs import Job, PlannedJob, dataset_label, fmt_duration, load_dataset_for, split_config_for
from anomaly_bench.harness.run_folder import RunFolder
from anomaly_bench.harness.versions import versions
from anomaly_bench.reporting.write import build_reports


def _method_keys(methods: Any) -> list[str] | None:
    """The table keys (label, else name) of an experiment dict's methods, in order; None when unreadable."""
    try:
        return [str(m.get("label") or m["name"]) for m in methods]
    except (TypeError, KeyError, AttributeError):
        return None


def _without_unset_dataset_keys(exp: Any) -> Any:
    """An experiment dict whose dataset entries leave out unset (null) keys, so that a folder written before a
    dataset key existed (e.g. per-dataset ``seeds``) compares equal to the same experiment read now."""
    if not isinstance(exp, dict) or not isinstance(exp.get("datasets"), list):
        return exp
    return {**exp, "datasets": [{k: v for k, v in d.items() if v is not None} if isinstance(d, dict) else d
                                for d in exp["datasets"]]}


class Runner(JobRunner):
    """``executor``: ``local`` (jobs one after another here) or ``ray`` (one Ray task per job, connecting to
    ``ray_address`` — ``auto``, ``host:port`` or ``ray://…`` — or, when None, to ``$RAY_ADDRESS`` or a local
    instance started for the run). ``ray_gather``: always ship job folders back through Ray, even when the
    workers see the output folder (normally detected)."""

    def __init__(self, exp: Experiment, out: str | Path, data_root: str | None = None, progress: bool = True,
                 echo: Callable[[str], None] = print, executor: str = "local", ray_address: str | None = None,
                 ray_gather: bool = False):
        check_executor(executor)
        self.out, self.folder, self.data_root = Path(out), RunFolder(out), data_root
        self.executor, self.ray_address, self.ray_gather = executor, ray_address, ray_gather
        # with Ray each task picks its device (its node may have a GPU the driver lacks): see executors.job_request
        super().__init__(exp, progress=progress, echo=echo, resolve=executor == "local")

    # ------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        with self.folder.lock():
            return self._run()

    def _run(self) -> dict[str, Any]:
        exp, folder = self.exp, self.folder
        t_start = time.time()
        self._check_same_experiment()
        folder.write_experiment(exp.to_dict())
        info: dict[str, Any] = {"versions": versions(), "device": str(self.device), "profile": exp.profile,
                                "datasets": {}, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        datasets: list[tuple[DatasetSpec, ImageDataset]] = []
        for spec in exp.datasets:  # validate/load all data before any training starts
            t0 = time.time()
            ds = load_dataset_for(spec, exp, self.data_root)
            name = dataset_label(spec, ds)
            info["datasets"][name] = {**ds.summary(), "fingerprint": ds.fingerprint(),
                                      "load_seconds": round(time.time() - t0, 2),
                                      "duplicates": _short_dup(ds.meta.get("duplicates")),
                                      "skipped_images": ds.meta.get("skipped_images", [])}
            if ds.meta.get("duplicates") is not None:
                folder.write_duplicates(name, ds.meta["duplicates"])
            datasets.append((spec, ds))
        planned: list[PlannedJob] = []
        empty_a: dict[str, list[int]] = {}  # dataset -> seeds whose mixed set A is empty
        for spec, ds in datasets:
            name = dataset_label(spec, ds)
            split_cfg = split_config_for(ds, spec, exp)
            for seed in exp.seeds_of(spec):
                split = self._split(ds, name, split_cfg, seed)
                info["datasets"][name].setdefault("splits", {})[str(seed)] = split.report["counts"]
                info["datasets"][name].setdefault("confound", {})[str(seed)] = _confound(ds, split)
                info["datasets"][name].setdefault("leakage", {})[str(seed)] = leakage_record(ds.images, split.roles)
                if "published" in split.report and "published_split" not in info["datasets"][name]:
                    self._record_published(info["datasets"][name], ds, name, split)
                if "transductive" in exp.settings and len(split.indices("mixed")) == 0:
                    empty_a.setdefault(name, []).append(seed)
                for mspec in exp.methods:
                    job = Job(name, seed, mspec, folder.job(name, mspec.key, seed).path)
                    planned.append(PlannedJob(job, spec, ds, split))
        for name, seeds in empty_a.items():
            why = (f"transductive setting skipped for dataset '{name}' (seed(s) {', '.join(map(str, seeds))}): its "
                   f"split leaves mixed set A empty (e.g. healthy-only training data, or split.mixed_size: 0). "
                   f"Methods that train on healthy images still run (inductive setting); methods that need set A "
                   f"fail. To score it, give A images: split.mixed_size / mixed_diseased_fraction in the card or "
                   f"the experiment")
            info["datasets"][name]["skipped_settings"] = {"transductive": why}
            self.echo(f"note: {why}")
        if self.executor == "ray":
            failures = run_on_ray(self, folder, planned, info, data_root=self.data_root, address=self.ray_address,
                                  gather=self.ray_gather)
        else:
            failures = self._run_local(planned)
        info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        info["wall_seconds"] = round(time.time() - t_start, 1)
        info["failed_jobs"] = failures
        folder.write_run_info(info)
        self.report()
        return info

    def _check_same_experiment(self) -> None:
        """Refuse an output folder that holds results (job records or run.json) of another experiment: writing
        this one's experiment.yaml there would put the wrong configuration beside the old results."""
        folder = self.folder
        old = folder.read_experiment()
        if old is None or not (folder.run_info_path.is_file() or folder.job_folders()):
            return
        new = _without_unset_dataset_keys(yaml.safe_load(yaml.safe_dump(self.exp.to_dict(), sort_keys=False)))
        old = _without_unset_dataset_keys(old)
        default = yaml.safe_load(yaml.safe_dump(Experiment().to_dict(), sort_keys=False))
        changed = [k for k in {**old, **new} if old.get(k, default.get(k)) != new.get(k, default.get(k))]
        old_keys, new_keys = _method_keys(old.get("methods")), _method_keys(new.get("methods"))
        if changed == ["methods"] and old_keys is not None and new_keys is not None and set(old_keys) <= set(new_keys):
            # the same methods (plus new ones, e.g. a plugin to compare) with possibly other settings: new jobs run,
            # a job whose configuration changed (e.g. its lr) restarts by its fingerprint, the others are kept
            self.echo("note: the methods differ from this folder's experiment.yaml (added methods or changed "
                      "settings); new and changed jobs run, the others are kept")
            return
        if changed:
            raise BenchError(f"--out {self.out}: this folder holds the results of another experiment (its "
                             f"{folder.experiment_path.name} differs in: {', '.join(changed)}). Use a new --out, or "
                             f"rerun the very same experiment to resume it; only added methods or changed "
                             f"method settings are accepted; other seeds, settings or datasets, or a removed method, "
                             f"need a new --out")

    def _run_local(self, planned: list[PlannedJob]) -> list[str]:
        n_jobs, done_times, failures = len(planned), [], []
        for k, pj in enumerate(planned, 1):
            job = pj.job
            eta = ""
            if done_times:
                eta = f", ETA {fmt_duration(np.mean(done_times) * (n_jobs - k + 1))}"
            self.echo(f"[{k}/{n_jobs}] {job.dataset} / {job.method.key} / seed {job.seed}{eta}")
            t0 = time.time()
            status = self.run_job(job, pj.ds, pj.split)
            if status == "failed":
                failures.append(job.name)
            if status != "skipped":
                done_times.append(time.time() - t0)
        return failures

    def _split(self, ds: ImageDataset, name: str, cfg: SplitConfig, seed: int) -> Split:
        path = self.folder.manifest_path(name, seed)
        split = make_split(ds, cfg, seed)
        if path.exists():  # a resumed run must use the very same split
            old = read_manifest(path, ds)
            if not np.array_equal(old.roles, split.roles):
                raise DataError(f"{path}: the split of this output folder differs from the one the current "
                                f"data and settings give (data or split settings changed); use a new --out")
        else:
            write_manifest(split, ds, path)
        return split

    def _record_published(self, record: dict[str, Any], ds: ImageDataset, name: str, split: Split) -> None:
        """A published split taken as given (manifest, data.json): its source, names matched / missing, hold-out
        and cross-role duplicates go to run.json (``published_split``, from the first seed: the file fixes the
        roles, only hold-outs carved with ``holdout_fraction > 0`` vary by seed) and to the duplicate report."""
        cross = split.report.get("published_split_cross_role_duplicates")
        record["published_split"] = {**split.report["published"], "cross_role_duplicates": cross}
        if ds.meta.get("duplicates") is not None:
            ds.meta["duplicates"]["published_split_cross_role_duplicates"] = cross
            self.folder.write_duplicates(name, ds.meta["duplicates"])
        copies = (cross or {}).get("test_with_training_copy") or {}
        self.echo(f"note: dataset '{name}': published split ({split.report['published']['source']}) taken as "
                  f"given: {copies.get('exact')} test image(s) with an exact copy in training, "
                  f"{copies.get('near')} more with a near copy; hold-out: {split.report['published']['holdout']}")

    # ------------------------------------------------------------------------------------------
    def report(self) -> None:
        build_reports(self.out, self.exp.threshold_rule, selection=self.exp.selection)


def _confound(ds: ImageDataset, split: Split) -> dict[str, Any]:
    """The test set's confound check (:mod:`anomaly_bench.evaluation.confound`): per label-free statistic its
    AUC, and whether any is far from 0.5. No training; the transductive (mixed) set is not checked."""
    idx = split.indices("test")
    return confound_record(ds.images.take(idx), ds.labels[idx])


def _short_dup(rep: dict | None) -> dict | None:
    if not rep:
        return None
    return {k: v for k, v in rep.items() if not isinstance(v, (list, dict))}

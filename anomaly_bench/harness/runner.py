"""Run an experiment: for every (dataset, seed, method) job build the split, fit, score, write results.

Output folder layout::

    <out>/experiment.yaml         resolved experiment
    <out>/run.json                versions, git commit, data fingerprints, timings
    <out>/splits/<dataset>_seed<k>.csv, <dataset>_duplicates.json
    <out>/jobs/<dataset>/<method>/seed<k>/
        job.json                  status, params, profile, timings, memory, versions, fingerprint
        model.pt                  the fitted method (last iteration)
        scores_<setting>.csv      id, subject, label, score[, score_aucp]
        selection.csv             per checkpoint: AUCp (and the oracle test AUC, for analysis only)
        maps.npz                  a few test images, their reconstructions and anomaly maps
        work/                     checkpoints, resume state, losses.csv
    <out>/scores.csv, metrics.csv, table.md, table.tex, roc_<dataset>.png, maps_<dataset>.png, ...

A job whose ``job.json`` says ``done`` with the same configuration is skipped, so rerunning a killed
run resumes it (and a job killed mid-training resumes from its last checkpoint in ``work/``).
A failed job (non-finite loss, out of memory, any exception) is recorded with its reason and the last
good checkpoint; the other jobs continue and the table marks the failure.

Jobs run one after another in this process (``executor="local"``, the default) or as Ray tasks with the
resources of their method profile (``executor="ray"``, see :mod:`anomaly_bench.harness.executors`); the output
folder is the same either way.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import yaml

import anomaly_bench
from anomaly_bench.core.config import REPO_DIR, method_params
from anomaly_bench.core.errors import BenchError, ConfigError, DataError
from anomaly_bench.core.experiment import DatasetSpec, Experiment, MethodSpec
from anomaly_bench.core.interface import FitContext, TrainSets, resolve_device
from anomaly_bench.core.registry import get_method, load_plugin
from anomaly_bench.data.records import ImageDataset
from anomaly_bench.data.split import Split, SplitConfig, make_split, read_manifest, write_manifest
from anomaly_bench.harness.cpu_info import cpu_info
from anomaly_bench.nn.common import seed_everything

SCORE_COLUMNS = ["dataset", "setting", "method", "selection", "seed", "id", "subject", "label", "score"]
SETTING_ROLE = {"inductive": "test", "transductive": "mixed"}


def versions() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except Exception:
            return None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    import sklearn
    try:  # only PaDiM/PatchCore need anomalib; a run of the other methods records that it is absent
        import anomalib
        anomalib_version = getattr(anomalib, "__version__", None)
    except ImportError:
        anomalib_version = "not installed"
    return {"anomaly_bench": anomaly_bench.__version__, "git_commit": commit, "git_dirty": bool(dirty),
            "torch": torch.__version__, "anomalib": anomalib_version,
            "sklearn": sklearn.__version__, "numpy": np.__version__, "python": sys.version.split()[0],
            "platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None, "cpu": cpu_info()}


class RunLock:
    """A lock file so that two runners on one output folder cannot corrupt it."""

    def __init__(self, out: Path):
        self.path = out / ".lock"

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


@dataclass
class Job:
    dataset: str
    seed: int
    method: MethodSpec
    dir: Path


def dataset_label(spec: DatasetSpec, ds: ImageDataset) -> str:
    return spec.label or ds.name


def load_dataset_for(spec: DatasetSpec, exp: Experiment, data_root: str | None) -> ImageDataset:
    from anomaly_bench.data.loading import load_dataset, resolve_card

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


def build_train_sets(ds: ImageDataset, split: Split, train_sets: str) -> TrainSets:
    b = ds.images[torch.as_tensor(split.indices("healthy"))]
    a_idx = split.indices("mixed")
    a = ds.images[torch.as_tensor(a_idx)] if len(a_idx) else None
    if train_sets == "healthy":
        return TrainSets(healthy=b)
    if train_sets == "mixed_union":
        return TrainSets(healthy=b if a is None else torch.cat([b, a]))
    if a is None:
        raise DataError(f"dataset '{ds.name}': mixed set A is empty but the method trains on mixed+healthy; "
                        f"set split.mixed_size / mixed_diseased_fraction")
    return TrainSets(healthy=b, mixed=a)


def _map_indices(ds: ImageDataset, test_idx: np.ndarray, k: int) -> np.ndarray:
    """A fixed, balanced handful of test images for the map gallery (diseased with masks first)."""
    lab = ds.labels[test_idx]
    dis = test_idx[lab == 1]
    if ds.masks is not None:
        order = np.argsort(-ds.masks[dis].reshape(len(dis), -1).sum(1), kind="stable")
        dis = dis[order[: max(1, len(order) // 2)]]
    healthy = test_idx[lab == 0]
    kd = min(len(dis), (k + 1) // 2)
    return np.concatenate([dis[:kd], healthy[: k - kd]])


class Runner:
    """``executor``: ``local`` (jobs one after another here) or ``ray`` (one Ray task per job, connecting to
    ``ray_address`` — ``auto``, ``host:port`` or ``ray://…`` — or, when None, to ``$RAY_ADDRESS`` or a local
    instance started for the run). ``ray_gather``: always ship job folders back through Ray, even when the
    workers see the output folder (normally detected)."""

    def __init__(self, exp: Experiment, out: str | Path, data_root: str | None = None, progress: bool = True,
                 echo: Callable[[str], None] = print, executor: str = "local", ray_address: str | None = None,
                 ray_gather: bool = False):
        from anomaly_bench.harness.executors import check_executor

        check_executor(executor)
        self.exp, self.out, self.data_root = exp, Path(out), data_root
        self.progress, self.echo = progress, echo
        self.executor, self.ray_address, self.ray_gather = executor, ray_address, ray_gather
        for p in exp.plugins:
            load_plugin(p)
        # with Ray each task picks its device (its node may have a GPU the driver lacks): see executors.job_request
        self.device = resolve_device(exp.device) if executor == "local" else None
        if self.device is None and exp.device not in ("auto", "", None):
            torch.device(exp.device)  # still a valid device name
        for m in exp.methods:  # validate every method's config before any training starts
            get_method(m.name)
            method_params(m.name, m.profile or exp.profile, m.params)

    # ------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        with RunLock(self.out):
            return self._run()

    def _run(self) -> dict[str, Any]:
        exp = self.exp
        t_start = time.time()
        (self.out / "experiment.yaml").write_text(yaml.safe_dump(exp.to_dict(), sort_keys=False))
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
                (self.out / "splits").mkdir(parents=True, exist_ok=True)
                (self.out / "splits" / f"{name}_duplicates.json").write_text(
                    json.dumps(ds.meta["duplicates"], indent=1, default=str))
            datasets.append((spec, ds))
        from anomaly_bench.harness.executors import PlannedJob, run_on_ray

        planned: list[PlannedJob] = []
        for spec, ds in datasets:
            name = dataset_label(spec, ds)
            split_cfg = split_config_for(ds, spec, exp)
            for seed in exp.seeds:
                split = self._split(ds, name, split_cfg, seed)
                info["datasets"][name].setdefault("splits", {})[str(seed)] = split.report["counts"]
                for mspec in exp.methods:
                    job = Job(name, seed, mspec, self.out / "jobs" / name / mspec.key / f"seed{seed}")
                    planned.append(PlannedJob(job, spec, ds, split))
        if self.executor == "ray":
            failures = run_on_ray(self, planned, info)
        else:
            failures = self._run_local(planned)
        info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        info["wall_seconds"] = round(time.time() - t_start, 1)
        info["failed_jobs"] = failures
        (self.out / "run.json").write_text(json.dumps(info, indent=1, default=str))
        self.report()
        return info

    def _run_local(self, planned) -> list[str]:
        n_jobs, done_times, failures = len(planned), [], []
        for k, pj in enumerate(planned, 1):
            job = pj.job
            eta = ""
            if done_times:
                eta = f", ETA {_fmt_s(np.mean(done_times) * (n_jobs - k + 1))}"
            self.echo(f"[{k}/{n_jobs}] {job.dataset} / {job.method.key} / seed {job.seed}{eta}")
            t0 = time.time()
            status = self.run_job(job, pj.ds, pj.split)
            if status == "failed":
                failures.append(f"{job.dataset}/{job.method.key}/seed{job.seed}")
            if status != "skipped":
                done_times.append(time.time() - t0)
        return failures

    def _split(self, ds: ImageDataset, name: str, cfg: SplitConfig, seed: int) -> Split:
        path = self.out / "splits" / f"{name}_seed{seed}.csv"
        split = make_split(ds, cfg, seed)
        if path.exists():  # a resumed run must use the very same split
            old = read_manifest(path, ds)
            if not np.array_equal(old.roles, split.roles):
                raise DataError(f"{path}: the split of this output folder differs from the one the current "
                                f"data and settings give (data or split settings changed); use a new --out")
        else:
            write_manifest(split, ds, path)
        return split

    # ------------------------------------------------------------------------------------------
    def job_config(self, job: Job, device: str | torch.device | None = None) -> tuple[dict[str, Any], str]:
        """The job's resolved parameters and its configuration fingerprint (on ``device``, default the run's)."""
        m = job.method
        params = method_params(m.name, m.profile or self.exp.profile,
                               {**m.params, "seed": job.seed, "device": str(device or self.device)})
        return params, m.fingerprint(self.exp.profile, params)

    @staticmethod
    def job_is_done(job: Job, fingerprint: str) -> bool:
        """True when ``job.json`` says done with this configuration: the job is skipped."""
        meta_path = job.dir / "job.json"
        if not meta_path.exists():
            return False
        try:
            old = json.loads(meta_path.read_text())
        except ValueError:  # cut short by a kill while written: run the job again
            return False
        return old.get("status") == "done" and old.get("config_fingerprint") == fingerprint

    def run_job(self, job: Job, ds: ImageDataset, split: Split, extra_meta: dict[str, Any] | None = None) -> str:
        exp, m = self.exp, job.method
        profile = m.profile or exp.profile
        cls = get_method(m.name)
        params, fp = self.job_config(job)
        meta_path = job.dir / "job.json"
        if self.job_is_done(job, fp):
            self.echo("  done already, skipped")
            return "skipped"
        job.dir.mkdir(parents=True, exist_ok=True)
        train_sets = m.train_sets or cls.default_train_sets
        meta: dict[str, Any] = {
            "status": "running", "dataset": job.dataset, "method": m.key, "method_name": m.name, "seed": job.seed,
            "profile": profile, "params": params, "train_sets": train_sets, "config_fingerprint": fp,
            "data_fingerprint": ds.fingerprint(), "versions": versions(), "device": str(self.device),
            **(extra_meta or {}),
        }
        meta_path.write_text(json.dumps(meta, indent=1, default=str))
        ctx = FitContext(workdir=job.dir / "work", checkpoint_every=int(params.get("checkpoint_every", 0) or 0),
                         progress=self.progress, description=f"{job.dataset}/{m.key}/s{job.seed}")
        try:
            train = build_train_sets(ds, split, train_sets)
            meta["n_train"] = {"healthy": len(train.healthy), "mixed": 0 if train.mixed is None else len(train.mixed)}
            seed_everything(job.seed)
            model = cls(**params)
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.time()
            model.fit(train, ctx)
            meta["fit_seconds"] = round(time.time() - t0, 2)
            if ctx.warnings:
                meta["warnings"] = list(ctx.warnings)
            model.save(job.dir / "model.pt")
            t0 = time.time()
            frames, last_test = self._score_settings(model, ds, split, job, "last")
            meta["score_seconds"] = round(time.time() - t0, 2)
            self._save_maps(model, ds, split, job)
            meta["pixel_metrics"] = self._pixel_metrics(ds, split, last_test)
            meta["backbone_weights"] = getattr(model, "backbone_weights", None)
            meta["approximate"] = getattr(model, "approximate", None)
            if m.selection and ctx.selection_checkpoints:
                frames += self._select(model, ds, split, job, ctx, meta)
            for setting in exp.settings:
                df = pd.concat([f for f in frames if f["setting"].iloc[0] == setting])
                df.to_csv(job.dir / f"scores_{setting}.csv", index=False)
            meta["status"] = "done"
        except (BenchError, RuntimeError, ValueError, torch.cuda.OutOfMemoryError, MemoryError) as exc:
            if isinstance(exc, ConfigError):
                raise
            error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower():
                error += (" -- out of memory: lower the method's batch_size (or score_batch_size), use a smaller "
                          "--image-size or the `ci` profile, or run on a device with more memory; rerunning the "
                          "same command resumes this job from its last checkpoint")
            if self.device.type == "cuda":  # free the failed job's memory for the jobs that follow
                torch.cuda.empty_cache()
            meta.update(status="failed", error=error,
                        traceback=traceback.format_exc(limit=8), last_checkpoint=ctx.last_checkpoint())
            self.echo(f"  FAILED: {meta['error']}\n  last good checkpoint: {ctx.last_checkpoint() or 'none'}")
        meta["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        if self.device.type == "cuda":
            meta["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        meta_path.write_text(json.dumps(meta, indent=1, default=str))
        if meta["status"] == "done":
            self.echo(f"  fit {meta['fit_seconds']}s, score {meta['score_seconds']}s")
        return meta["status"]

    def _score_settings(self, model, ds: ImageDataset, split: Split, job: Job, selection: str):
        frames, test_result = [], None
        for setting in self.exp.settings:
            idx = split.indices(SETTING_ROLE[setting])
            if len(idx) == 0:
                continue
            res = model.score(ds.images[torch.as_tensor(idx)])
            if setting == "inductive":
                test_result = res
            frames.append(pd.DataFrame({
                "dataset": job.dataset, "setting": setting, "method": job.method.key, "selection": selection,
                "seed": job.seed, "id": [ds.ids[i] for i in idx], "subject": [ds.subject_ids[i] for i in idx],
                "label": ds.labels[idx], "score": res.scores}))
        return frames, test_result

    def _select(self, model, ds, split, job, ctx: FitContext, meta: dict) -> list[pd.DataFrame]:
        from anomaly_bench.harness.selection import select_checkpoint

        hm, hh = split.indices("holdout_mixed"), split.indices("holdout_healthy")
        if len(hm) == 0 or len(hh) == 0:
            meta["selection"] = "skipped: empty hold-out sets (split.holdout_fraction)"
            return []
        test = split.indices("test")
        sel = select_checkpoint(model, ctx.selection_checkpoints, ds.images[torch.as_tensor(hm)],
                                ds.images[torch.as_tensor(hh)], ds.images[torch.as_tensor(test)], ds.labels[test])
        sel.table.to_csv(job.dir / "selection.csv", index=False)
        meta["selection"] = {"rule": "max pseudo-AUC on held-out A vs B", "best_iteration": sel.best_iteration,
                             "n_checkpoints": len(sel.table), "table": "selection.csv",
                             "note": "oracle_test_auc in selection.csv is for analysis only; never used to select"}
        frames, _ = self._score_settings(model, ds, split, job, "aucp")
        return frames

    def _save_maps(self, model, ds: ImageDataset, split: Split, job: Job) -> None:
        idx = _map_indices(ds, split.indices("test"), self.exp.n_maps)
        if len(idx) == 0:
            return
        res = model.score(ds.images[torch.as_tensor(idx)])
        arrays = {"images": ds.images[torch.as_tensor(idx)][:, 0].numpy(), "labels": ds.labels[idx],
                  "ids": np.array([ds.ids[i] for i in idx]), "scores": res.scores}
        if res.maps is not None:
            arrays["maps"] = res.maps
        if res.reconstructions is not None:
            arrays["reconstructions"] = res.reconstructions
        if ds.masks is not None:
            arrays["masks"] = ds.masks[idx]
        np.savez_compressed(job.dir / "maps.npz", **arrays)

    def _pixel_metrics(self, ds: ImageDataset, split: Split, res) -> dict | None:
        if res is None or res.maps is None or ds.masks is None:
            return None
        from anomaly_bench.evaluation.metrics import pixel_metrics

        masks = ds.masks[split.indices("test")]
        if not masks.any():
            return None
        return pixel_metrics(res.maps, masks)

    # ------------------------------------------------------------------------------------------
    def report(self) -> None:
        build_reports(self.out, self.exp.threshold_rule)


def collect_scores(out: Path) -> pd.DataFrame:
    """All jobs' per-image scores, plus NaN rows for failed jobs (so tables show the failure)."""
    frames = []
    for meta_path in sorted((out / "jobs").glob("*/*/seed*/job.json")):
        meta = json.loads(meta_path.read_text())
        d = meta_path.parent
        if meta.get("status") == "done":
            for f in sorted(d.glob("scores_*.csv")):
                frames.append(pd.read_csv(f, dtype={"id": str, "subject": str}))
        else:
            frames.append(pd.DataFrame([{"dataset": meta["dataset"], "setting": "inductive", "method": meta["method"],
                                         "selection": "last", "seed": meta["seed"], "id": "", "subject": "",
                                         "label": -1, "score": np.nan}]))
    if not frames:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def build_reports(out: str | Path, threshold_rule: str = "youden", html: bool = True) -> None:
    """(Re)build scores.csv, metrics.csv, tables and figures from the saved per-job scores."""
    from anomaly_bench.evaluation.metrics import compute_metrics
    from anomaly_bench.reporting.reports import write_reports

    out = Path(out)
    scores = collect_scores(out)
    if scores.empty:
        raise BenchError(f"{out}: no job results found (expected {out}/jobs/<dataset>/<method>/seed<k>/job.json)")
    scores.to_csv(out / "scores.csv", index=False)
    metrics = compute_metrics(scores, threshold_rule=threshold_rule)
    pix = []
    for meta_path in sorted((out / "jobs").glob("*/*/seed*/job.json")):
        meta = json.loads(meta_path.read_text())
        for k, v in (meta.get("pixel_metrics") or {}).items():
            pix.append({"dataset": meta["dataset"], "setting": "inductive", "method": meta["method"],
                        "selection": "last", "seed": meta["seed"], "level": "pixel", "metric": k, "value": v})
    if pix:
        metrics = pd.concat([metrics, pd.DataFrame(pix)], ignore_index=True)
    write_reports(out, metrics, scores, threshold_rule=threshold_rule, html=html)


def _short_dup(rep: dict | None) -> dict | None:
    if not rep:
        return None
    return {k: v for k, v in rep.items() if not isinstance(v, (list, dict))}


def _fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


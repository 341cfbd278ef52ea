"""Where the jobs of a run execute: ``local`` (the default: one after another in this process) or ``ray``
(``anomaly-bench run --executor ray [--ray-address auto|<addr>]``, ``pip install anomaly-bench[ray]``).

With Ray, every (dataset, method, seed) job that is not finished already becomes one Ray task that asks for
the resources its method profile declares (``resources:`` in ``methods/<name>.yaml``, see
:func:`anomaly_bench.core.config.method_resources`): ``num_cpus`` (the task's torch thread count), ``num_gpus``
and ``memory``. The driver (the ``anomaly-bench run`` process) keeps everything else exactly as the local
executor does: the lock on the output folder, the data check, the split manifests, ``run.json`` and the
report, so ``report`` and ``regress`` cannot tell the two apart.

Each task loads its dataset itself from the experiment's dataset entry (the decoded-image cache makes this
cheap for real sets; a worker process keeps the last one loaded) and checks that its fingerprint equals the
driver's, so a node with other data fails the job instead of scoring something else. The split is sent with
the task. The task writes its job folder straight into the output folder when that folder is on a file
system the worker sees (the driver leaves a token file there to tell); otherwise it runs in a temporary
folder and the driver gathers the job folder back through the object store (then a job killed mid-training
restarts from scratch rather than from its last checkpoint).

Failures behave as locally: a job that fails is recorded in its ``job.json`` and the others go on; so is a
task that dies (worker killed for memory, node lost) or raises something the local executor would let
through. Rerunning skips finished jobs (the driver checks before submitting).
"""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import os
import shutil
import socket
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch

import anomaly_bench
from anomaly_bench.core.config import method_resources
from anomaly_bench.core.errors import BenchError, ConfigError, DataError
from anomaly_bench.core.experiment import DatasetSpec, Experiment
from anomaly_bench.data.loading import resolve_card
from anomaly_bench.data.records import ImageDataset
from anomaly_bench.harness.job_runner import JobRunner
from anomaly_bench.harness.jobs import Job, PlannedJob, fmt_duration, load_dataset_for
from anomaly_bench.harness.run_folder import RunFolder

EXECUTORS = ("local", "ray")
ENV_PREFIX = "ANOMALY_BENCH_"  # the driver's settings (cards/methods folders, data root, cache) go with each task
RAY_EXTRA_HINT = "pip install 'anomaly-bench[ray]'"


def import_ray():
    try:  # optional dependency (the `ray` extra): imported only when --executor ray asks for it
        import ray
    except ImportError:
        raise BenchError(f"--executor ray needs Ray, which is not installed: {RAY_EXTRA_HINT}") from None
    return ray


# ---------------------------------------------------------------------------------------------- resources
def job_request(res: dict[str, float], device: str, cluster_has_gpu: bool) -> tuple[dict[str, Any], str]:
    """Ray task options and the job's device from a profile's resources and the experiment's ``device``:
    ``cpu`` asks for no GPU whatever the profile says; ``cuda`` asks for at least one; ``auto`` uses the GPUs
    the profile declares when the cluster has any, else runs on the CPU (as ``auto`` does locally)."""
    gpus = float(res["gpus"])
    if device == "cpu" or (device in ("auto", "", None) and not cluster_has_gpu):
        gpus = 0.0
    elif device.startswith("cuda"):
        gpus = max(gpus, 1.0)
    job_device = "cuda" if gpus > 0 else "cpu"
    if device.startswith("cuda:"):
        job_device = "cuda"  # a task sees only the GPU(s) Ray gave it: cuda:k of the driver means nothing there
    opts: dict[str, Any] = {"num_cpus": float(res["cpus"]), "num_gpus": gpus}
    if res.get("memory_gb"):
        opts["memory"] = int(float(res["memory_gb"]) * 2**30)
    return opts, job_device


def _infeasible(opts: dict[str, Any], nodes: list[dict[str, float]]) -> str | None:
    """Why no node of the cluster can ever run a task with these options (None when one can)."""
    need = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"], "memory": opts.get("memory", 0)}
    for node in nodes:
        if all(node.get(k, 0.0) >= v for k, v in need.items() if v):
            return None
    have = ", ".join(f"{n.get('CPU', 0):g} CPU / {n.get('GPU', 0):g} GPU / {n.get('memory', 0) / 2**30:.1f} GB"
                     for n in nodes) or "no alive node"
    return (f"no node of the Ray cluster can run this job: it asks for {need['CPU']:g} CPU, {need['GPU']:g} GPU, "
            f"{need['memory'] / 2**30:.1f} GB memory (the method profile's `resources:`); the nodes have {have}")


# ------------------------------------------------------------------------------------------------ worker
_LOADED: dict[str, Any] = {}  # the dataset a worker process loaded last: {"key": ..., "ds": ..., "fingerprint": ...}


def _dataset_in_worker(spec: DatasetSpec, exp: Experiment, data_root: str | None) -> tuple[ImageDataset, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    key = json.dumps([dataclasses.asdict(spec), data_root, exp.data_root, env], sort_keys=True, default=str)
    if _LOADED.get("key") != key:
        _LOADED.clear()
        ds = load_dataset_for(spec, exp, data_root)
        _LOADED.update(key=key, ds=ds, fingerprint=ds.fingerprint())
    return _LOADED["ds"], _LOADED["fingerprint"]


def run_job_task(payload: dict[str, Any]) -> dict[str, Any]:
    """The body of one Ray task (also callable directly): run one job with the local runner's ``run_job``."""
    t0 = time.time()
    saved_env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    for k in saved_env:
        del os.environ[k]
    os.environ.update(payload["env"])
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(payload["threads"])
    tmp = None
    try:
        if payload["version"] != anomaly_bench.__version__:
            raise BenchError(f"this node has anomaly-bench {anomaly_bench.__version__}, the driver "
                             f"{payload['version']}: install the same version on every node")
        folder = RunFolder(payload["out"])
        shared = not payload["gather"]
        if shared:
            try:
                shared = folder.ray_token_path.read_text() == payload["token"]
            except OSError:
                shared = False
        if not shared:
            tmp = Path(tempfile.mkdtemp(prefix="anomaly_bench_job_"))
            folder = RunFolder(tmp)
        exp = payload["exp"]
        lines: list[str] = []
        runner = JobRunner(exp, progress=False, echo=lines.append)
        ds, fingerprint = _dataset_in_worker(payload["spec"], exp, payload["data_root"])
        if fingerprint != payload["fingerprint"]:
            raise DataError(f"dataset '{payload['dataset']}' on node {socket.gethostname()} has fingerprint "
                            f"{fingerprint}, the driver's {payload['fingerprint']}: the nodes must read the same "
                            f"data (a shared data folder, or --data-root pointing at identical copies)")
        job = Job(payload["dataset"], payload["seed"], payload["method"],
                  folder.job(payload["dataset"], payload["method"].key, payload["seed"]).path)
        extra = {"executor": "ray", "node": socket.gethostname(), "torch_threads": payload["threads"],
                 "ray_resources": payload["resources"], "output": "shared" if shared else "gathered"}
        status = runner.run_job(job, ds, payload["split"], extra_meta=extra)
        archive = None
        if not shared and job.dir.is_dir():
            final = RunFolder(payload["out"]).job(job.dataset, job.method.key, job.seed).path
            job.folder.relocate(job.dir, final)  # they name checkpoints: where they will be, not here
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                tar.add(job.dir, arcname=".")
            archive = buf.getvalue()
        return {"status": status, "lines": lines, "seconds": round(time.time() - t0, 2),
                "node": socket.gethostname(), "archive": archive}
    finally:
        torch.set_num_threads(saved_threads)
        for k in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
            del os.environ[k]
        os.environ.update(saved_env)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ driver
def _absolute(exp: Experiment, data_root: str | None) -> tuple[Experiment, str | None]:
    """The experiment with the paths a worker must find made absolute (a worker's working folder differs)."""
    def absify(p: str | None) -> str | None:
        return str(Path(p).expanduser().resolve()) if p and Path(p).expanduser().exists() else p

    def card(c):
        if isinstance(c, str) and ("/" in c or os.sep in c or c.endswith((".yaml", ".yml"))):
            return absify(c)
        if isinstance(c, str):
            src = resolve_card(c).get("_source", "")  # a card name: fine unless it is a same-named data path
            return c if src and Path(src).is_file() else absify(c)
        return c

    plugins = [absify(p) if (p.endswith(".py") or Path(p).is_file()) else p for p in exp.plugins]
    datasets = [dataclasses.replace(d, card=card(d.card), data_root=absify(d.data_root)) for d in exp.datasets]
    exp = dataclasses.replace(exp, plugins=plugins, datasets=datasets, data_root=absify(exp.data_root))
    return exp, absify(data_root)


def _record_failure(job: Job, error: str, tb: str, extra: dict[str, Any]) -> None:
    """Mark a job whose task died (or never could run) as failed in its job.json, as the runner does."""
    meta: dict[str, Any] = job.folder.read_meta() or {}
    meta.update({"dataset": job.dataset, "method": job.method.key, "method_name": job.method.name,
                 "seed": job.seed, **{k: v for k, v in extra.items() if k not in meta}})
    meta.update(status="failed", error=error, traceback=tb)
    job.folder.write_meta(meta)


def _unpack(archive: bytes, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            for m in tar.getmembers():
                if m.name.startswith(("/", "..")) or "/../" in m.name or m.issym() or m.islnk():
                    raise BenchError(f"gathered job folder for {dest}: unsafe member {m.name!r}")
            tar.extractall(dest)


def _error_of(exc: BaseException) -> tuple[str, str]:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}", str(exc)[-4000:]
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[-1] if first else ''}", str(exc)[-4000:]


def run_on_ray(runner: JobRunner, folder: RunFolder, planned: list[PlannedJob], info: dict[str, Any], *,
               data_root: str | None, address: str | None, gather: bool) -> list[str]:
    """Run the planned jobs (of ``runner``'s experiment, into ``folder``) as Ray tasks on the cluster at
    ``address``; returns the failed jobs (``dataset/method/seed<k>``) in grid order."""
    ray = import_ray()
    exp, echo = runner.exp, runner.echo
    started_here = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address, "log_to_driver": True}
        if address is None and not os.environ.get("RAY_ADDRESS"):
            kwargs["include_dashboard"] = False  # a local instance for this run
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise BenchError(f"--ray-address {address}: cannot connect to a Ray cluster ({exc}); "
                             f"start one with `ray start --head`, or leave --ray-address out for a local "
                             f"instance") from None
        started_here = True
    token = uuid.uuid4().hex
    token_path = folder.ray_token_path
    token_path.write_text(token)
    remote = ray.remote(max_retries=1)(run_job_task)
    pending: dict[Any, tuple[int, PlannedJob, dict[str, Any]]] = {}
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        has_gpu = any(n.get("GPU", 0) > 0 for n in nodes)
        total = ray.cluster_resources()
        info["executor"] = "ray"
        info["ray"] = {"address": address or "local", "version": ray.__version__, "nodes": len(nodes),
                       "cluster_resources": {k: v for k, v in total.items() if k in ("CPU", "GPU", "memory")},
                       "gather": gather}
        echo(f"ray {ray.__version__}: {len(nodes)} node(s), {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU")
        w_exp, w_root = _absolute(exp, data_root)
        env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
        failures: dict[int, str] = {}
        devices: set[str] = set()
        n_jobs = len(planned)
        fingerprints: dict[int, str] = {}
        for k, pj in enumerate(planned, 1):
            job, m = pj.job, pj.job.method
            label = f"{job.dataset} / {m.key} / seed {job.seed}"
            res = method_resources(m.name, m.profile or exp.profile)
            opts, device = job_request(res, exp.device, has_gpu)
            devices.add(device)
            _, fp = runner.job_config(job, device)
            if runner.job_is_done(job, fp):
                echo(f"[{k}/{n_jobs}] {label}")
                echo("  done already, skipped")
                continue
            extra = {"executor": "ray", "profile": m.profile or exp.profile, "config_fingerprint": fp,
                     "ray_resources": res, "device": device}
            why = _infeasible(opts, nodes)
            if why:
                _record_failure(job, f"BenchError: {why}", "", extra)
                failures[k] = job.name
                echo(f"[{k}/{n_jobs}] {label}")
                echo(f"  FAILED: {why}")
                continue
            if id(pj.ds) not in fingerprints:
                fingerprints[id(pj.ds)] = pj.ds.fingerprint()
            payload = {"exp": dataclasses.replace(w_exp, device=device), "out": str(folder.path.resolve()),
                       "data_root": w_root, "spec": w_exp.datasets[exp.datasets.index(pj.spec)],
                       "dataset": job.dataset, "fingerprint": fingerprints[id(pj.ds)], "split": pj.split,
                       "seed": job.seed, "method": m, "threads": max(1, int(res["cpus"])), "resources": res,
                       "token": token, "gather": bool(gather), "env": env,
                       "version": anomaly_bench.__version__}
            ref = remote.options(**opts, name=job.name).remote(payload)
            pending[ref] = (k, pj, extra)
        info["device"] = ", ".join(sorted(devices)) or exp.device
        n_sub, n_done, t_sub = len(pending), 0, time.time()
        if n_sub:
            echo(f"submitted {n_sub} job(s) as Ray tasks; {n_jobs - n_sub} finished or not runnable")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                k, pj, extra = pending.pop(ref)
                job = pj.job
                n_done += 1
                label = f"{job.dataset} / {job.method.key} / seed {job.seed}"
                try:
                    result = ray.get(ref)
                except Exception as exc:  # the task raised, or its worker/node died: recorded, the rest go on
                    error, tb = _error_of(exc)
                    _record_failure(job, error, tb, extra)
                    result = {"status": "failed", "lines": [f"  FAILED: {error}"], "seconds": None, "node": "?"}
                if result.get("archive") is not None:
                    _unpack(result["archive"], job.dir)
                if result["status"] == "failed":
                    failures[k] = job.name
                eta = ""
                if pending:
                    eta = f", ETA {fmt_duration((time.time() - t_sub) / n_done * (n_sub - n_done))}"
                took = f" in {fmt_duration(result['seconds'])}" if result.get("seconds") is not None else ""
                echo(f"[{k}/{n_jobs}] {label}: {result['status']}{took} on {result['node']} "
                     f"({n_done}/{n_sub} of this run){eta}")
                for line in result["lines"]:
                    echo(line)
        return [failures[k] for k in sorted(failures)]
    except BaseException:
        for ref in pending:  # Ctrl-C or a driver error: stop the rest; a rerun resumes them
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - best effort
                pass
        raise
    finally:
        token_path.unlink(missing_ok=True)
        if started_here:
            ray.shutdown()


def check_executor(executor: str) -> None:
    if executor not in EXECUTORS:
        raise ConfigError(f"executor {executor!r}: one of {list(EXECUTORS)}")
    if executor == "ray":
        import_ray()



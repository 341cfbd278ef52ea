"""The Ray executor (``anomaly-bench run --executor ray``): a smoke grid through a local 2-CPU Ray instance gives
the local executor's results bit for bit; failures are recorded, reruns skip finished jobs."""

import json
import os
import re
import sys

import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

import anomaly_bench
from anomaly_bench.cli import main
from anomaly_bench.core.config import method_resources
from anomaly_bench.core.errors import BenchError, ConfigError, DataError
from anomaly_bench.core.experiment import parse_experiment
from anomaly_bench.core.registry import load_plugin
from anomaly_bench.harness.executors import job_request, run_job_task
from anomaly_bench.harness.runner import Runner
from conftest import EXAMPLE_PLUGIN, REPO
from helpers import diverging_plugin_source
from test_runner import TINY_CARD

PLUGIN = diverging_plugin_source("diverging_ray_test") + (
    "@register_method('greedy_ray_test', overwrite=True)\n"
    "class Greedy(Diverging):\n"
    "    resources = {'default': {'cpus': 64, 'memory_gb': 1}}\n"
    "@register_method('crashing_ray_test', overwrite=True)\n"
    "class Crashing(Diverging):\n"
    "    def fit(self, train, ctx=None):\n"
    "        import os\n        os._exit(3)  # the worker process dies (as when killed for memory)\n")


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray", reason="the Ray executor needs the extra: pip install 'anomaly-bench[ray]'")
    # a local instance of 2 CPUs, no dashboard, a small object store
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, configure_logging=False)
    yield ray
    ray.shutdown()


def grid_data(plugin, **over) -> dict:
    data = {"name": "ray-smoke", "profile": "smoke", "seeds": [0, 1], "settings": ["inductive", "transductive"],
            "device": "cpu", "datasets": [TINY_CARD], "plugins": [str(plugin)], "n_maps": 2,
            "methods": [{"name": "autoencoder", "params": {"iterations": 20, "checkpoint_every": 10}},
                        "padim", "diverging_ray_test"]}
    data.update(over)
    return data


def grid(plugin, **over):
    return parse_experiment(grid_data(plugin, **over))


def one_cpu_profiles(tmp_path, monkeypatch) -> None:
    """The method YAMLs with 1 CPU per job (two 1-thread tasks side by side on 2 cores; 2-thread jobs on a busy
    2-core machine crawl), through the documented ``ANOMALY_BENCH_METHODS_DIR``; Ray tasks get it too."""
    d = tmp_path / "methods"
    d.mkdir()
    for m in ("autoencoder", "padim"):
        text = re.sub(r"(?ms)^resources:.*\Z", "", (REPO / "methods" / f"{m}.yaml").read_text())
        (d / f"{m}.yaml").write_text(text + "resources:\n  default: {cpus: 1, gpus: 0, memory_gb: 0.5}\n")
    monkeypatch.setenv("ANOMALY_BENCH_METHODS_DIR", str(d))


def run_local(exp, out, threads: int) -> dict:
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return Runner(exp, out, progress=False, echo=lambda s: None).run()
    finally:
        torch.set_num_threads(saved)


def job(out, method, seed=0):
    return json.loads((out / f"jobs/tiny/{method}/seed{seed}/job.json").read_text())


def test_job_request_follows_profile_and_device():
    res = {"cpus": 8, "gpus": 1, "memory_gb": 32}
    assert job_request(res, "auto", cluster_has_gpu=True) == ({"num_cpus": 8.0, "num_gpus": 1.0,
                                                              "memory": 32 * 2**30}, "cuda")
    assert job_request(res, "auto", cluster_has_gpu=False)[0]["num_gpus"] == 0 and \
        job_request(res, "auto", cluster_has_gpu=False)[1] == "cpu"
    assert job_request(res, "cpu", cluster_has_gpu=True)[1] == "cpu"
    small = {"cpus": 1, "gpus": 0, "memory_gb": 0}
    assert job_request(small, "cuda", cluster_has_gpu=True) == ({"num_cpus": 1.0, "num_gpus": 1.0}, "cuda")
    # profiles: the profile's entry over `default`; a plugin without a YAML asks for 1 CPU
    assert method_resources("autoencoder", "paper") == {"cpus": 8, "gpus": 1, "memory_gb": 16}
    assert method_resources("autoencoder", "ci") == method_resources("autoencoder", None)
    load_plugin(str(EXAMPLE_PLUGIN))
    assert method_resources("example_pixel_knn", "smoke") == {"cpus": 1, "gpus": 0, "memory_gb": 0}


def test_bad_resources_and_missing_ray_are_clear(tmp_path, monkeypatch):
    bad = tmp_path / "methods"
    bad.mkdir()
    (bad / "autoencoder.yaml").write_text("resources: {default: {cpus: 2, gpu: 1}}\n")
    with pytest.raises(ConfigError, match="gpu"):
        method_resources("autoencoder", "smoke", yaml_path=bad / "autoencoder.yaml")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    exp = grid(EXAMPLE_PLUGIN, methods=["example_pixel_knn"])
    with pytest.raises(BenchError, match=r"anomaly-bench\[ray\]"):
        Runner(exp, tmp_path / "out", progress=False, echo=lambda s: None, executor="ray")
    res = CliRunner().invoke(main, ["run", "--ray-address", "auto", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--ray-address needs --executor ray" in res.output


def test_task_refuses_other_data_or_version(tmp_path, monkeypatch):
    """A task whose node reads other data (or runs another anomaly-bench) fails instead of scoring it; the
    worker's environment and torch threads are restored after the task."""
    exp = grid(EXAMPLE_PLUGIN, methods=["example_pixel_knn"], seeds=[0])
    monkeypatch.setenv("ANOMALY_BENCH_IO_WORKERS", "1")
    payload = {"exp": exp, "out": str(tmp_path), "data_root": None, "spec": exp.datasets[0], "dataset": "tiny",
               "fingerprint": "0" * 16, "split": None, "seed": 0, "method": exp.methods[0], "threads": 1,
               "resources": {}, "token": "t", "gather": False, "env": {"ANOMALY_BENCH_CACHE": "off"},
               "version": anomaly_bench.__version__}
    threads, env = torch.get_num_threads(), dict(os.environ)
    with pytest.raises(DataError, match="fingerprint"):
        run_job_task(payload)
    with pytest.raises(BenchError, match="same version"):
        run_job_task({**payload, "version": "0.0.0"})
    assert torch.get_num_threads() == threads and dict(os.environ) == env
    assert not (tmp_path / "jobs").exists()


@pytest.mark.slow
def test_ray_grid_equals_local_records_failures_and_resumes(ray_instance, tmp_path, monkeypatch):
    plugin = tmp_path / "ray_test_plugin.py"
    plugin.write_text(PLUGIN)
    one_cpu_profiles(tmp_path, monkeypatch)
    # torch results may depend on the intra-op thread count: a Ray task uses its profile's CPUs as threads,
    # so the local run uses the same number
    threads = int(method_resources("autoencoder", "smoke")["cpus"])
    assert threads == 1 and method_resources("padim", "smoke")["cpus"] == threads
    local, remote = tmp_path / "local" / "run", tmp_path / "ray" / "run"  # one name: tables carry it as title
    info_l = run_local(grid(plugin), local, threads)
    lines: list[str] = []
    info_r = Runner(grid(plugin), remote, progress=False, echo=lines.append, executor="ray").run()

    # a failing task is recorded and the others finish, exactly as locally
    assert info_r["failed_jobs"] == info_l["failed_jobs"] == ["tiny/diverging_ray_test/seed0",
                                                              "tiny/diverging_ray_test/seed1"]
    failed = job(remote, "diverging_ray_test", 1)
    assert failed["status"] == "failed" and "loss_d" in failed["error"] and failed["executor"] == "ray"
    for m in ("autoencoder", "padim"):
        for seed in (0, 1):
            j = job(remote, m, seed)
            assert j["status"] == "done" and j["executor"] == "ray" and j["output"] == "shared"
            assert j["torch_threads"] == threads and j["ray_resources"]["cpus"] == threads
            assert j["config_fingerprint"] == job(local, m, seed)["config_fingerprint"]
            for f in ("scores_inductive.csv", "scores_transductive.csv", "selection.csv" if m == "autoencoder"
                      else "model.pt"):
                assert (remote / f"jobs/tiny/{m}/seed{seed}/{f}").is_file(), f
    assert info_r["executor"] == "ray" and info_r["device"] == "cpu"
    assert not (remote / ".lock").exists() and not (remote / ".ray_run").exists()

    # identical results and tables through both executors
    for name in ("scores.csv", "metrics.csv", "table.md", "table.tex", "table_full.csv", "table_paper.md",
                 "splits/tiny_seed0.csv", "splits/tiny_seed1.csv", "jobs/tiny/padim/seed1/scores_inductive.csv"):
        assert (remote / name).read_bytes() == (local / name).read_bytes(), name
    sel_r, sel_l = (pd.read_csv(d / "jobs/tiny/autoencoder/seed1/selection.csv") for d in (remote, local))
    pd.testing.assert_frame_equal(sel_r.drop(columns="checkpoint"), sel_l.drop(columns="checkpoint"))
    assert sel_r["checkpoint"].str.startswith(str(remote)).all()
    assert "failed" in (remote / "table.md").read_text()
    before = pd.read_csv(remote / "scores.csv")

    # rerun through Ray from the command line: finished jobs are skipped, the failed ones retried (and fail
    # again); a job no node can run (64 CPUs asked) is recorded as failed without being submitted; a job whose
    # worker dies is recorded as failed
    data = grid_data(plugin)
    data["methods"] += ["greedy_ray_test", "crashing_ray_test"]
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(main, ["run", "--config", str(cfg), "--executor", "ray", "--out", str(remote),
                                    "--no-progress"])
    assert res.exit_code == 1, res.output  # failed jobs: exit status 1, as locally
    lines = res.output.splitlines()
    assert sum("skipped" in ln for ln in lines) == 4
    assert sum("diverging_ray_test" in ln and ": failed" in ln for ln in lines) == 2
    info2 = json.loads((remote / "run.json").read_text())
    assert info2["failed_jobs"] == [f"tiny/{m}_ray_test/seed{s}" for s in (0, 1)  # in grid order
                                    for m in ("diverging", "greedy", "crashing")]
    greedy = job(remote, "greedy_ray_test")
    assert greedy["status"] == "failed" and "no node of the Ray cluster" in greedy["error"]
    crashed = job(remote, "crashing_ray_test", 1)
    assert crashed["status"] == "failed" and crashed["executor"] == "ray" and crashed["dataset"] == "tiny"
    assert "worker" in crashed["error"].lower()
    after = pd.read_csv(remote / "scores.csv")
    pd.testing.assert_frame_equal(after[after.method.isin(["autoencoder", "padim"])].reset_index(drop=True),
                                  before[before.method.isin(["autoencoder", "padim"])].reset_index(drop=True))


@pytest.mark.slow
def test_ray_gathers_job_folders_back(ray_instance, tmp_path, monkeypatch):
    """Without a shared output folder the job folder comes back through Ray: same scores as locally, and the
    folder as a shared file system would have it (checkpoints, and the paths that name them)."""
    one_cpu_profiles(tmp_path, monkeypatch)
    methods = ["example_pixel_knn", {"name": "autoencoder", "params": {"iterations": 10, "checkpoint_every": 5}}]
    exp = lambda: grid(EXAMPLE_PLUGIN, seeds=[0], settings=["inductive"], methods=methods)  # noqa: E731
    local, remote = tmp_path / "local" / "run", tmp_path / "ray" / "run"
    run_local(exp(), local, threads=1)
    Runner(exp(), remote, progress=False, echo=lambda s: None, executor="ray", ray_gather=True).run()
    for m in ("example_pixel_knn", "autoencoder"):
        j = job(remote, m)
        assert j["status"] == "done" and j["output"] == "gathered" and j["torch_threads"] == 1
        assert (remote / f"jobs/tiny/{m}/seed0/model.pt").is_file()
    sel = pd.read_csv(remote / "jobs/tiny/autoencoder/seed0/selection.csv")
    assert len(sel) == 2 and all(p.startswith(str(remote)) and os.path.isfile(p) for p in sel["checkpoint"])
    for name in ("scores.csv", "metrics.csv", "table.md"):
        assert (remote / name).read_bytes() == (local / name).read_bytes(), name

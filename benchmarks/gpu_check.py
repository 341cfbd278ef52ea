"""One prepared GPU check: CUDA correctness of every GAN method and the MedAI AnomalyPro speed-up.

    python benchmarks/gpu_check.py --out results/gpu            # on a machine with a CUDA GPU

For each method that runs without anomalib (the GAN baselines, MedAI AnomalyPro, the autoencoder):

1. fit on the CPU at the ``smoke`` profile, then score the same test images on the CPU and, with the very
   same weights, on CUDA (fp32): the scores must agree within 1e-3 (relative) — the CUDA inference path is
   correct;
2. fit on CUDA with the method's defaults for that device (bf16 autocast etc. where the method has it):
   training must finish with finite losses and scores; the test AUC is printed next to the CPU fit's;
3. time scoring throughput on CUDA (images/s).

Then run ``benchmarks/bench_anomalypro_step.py --device cuda`` (paper shape, fast path vs the authors'
step) and record its output. Everything goes to ``<out>/gpu_check.json`` and is printed.
Run with ``--device cpu`` for a dry run of the script itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomaly_bench.core.config import method_params  # noqa: E402
from anomaly_bench.core.interface import AnomalyMethod, FitContext, TrainSets  # noqa: E402
from anomaly_bench.core.registry import METHODS  # noqa: E402
from anomaly_bench.data.phantom import generate_phantom  # noqa: E402

GAN_METHODS = ["medai_anomalypro", "alad", "alocc", "fanogan", "ganomaly", "autoencoder"]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if np.all(np.isfinite(scores)) else float("nan")


def data(size: int):
    ds = generate_phantom(n_subjects=80, slices_per_subject=5, size=size, seed=3)
    h, d = np.flatnonzero(ds.labels == 0), np.flatnonzero(ds.labels == 1)
    b = ds.images[torch.as_tensor(h[:150])]
    a = ds.images[torch.as_tensor(np.r_[h[150:170], d[:60]])]
    test_idx = np.r_[h[170:], d[60:]]
    return TrainSets(healthy=b, mixed=a), ds.images[torch.as_tensor(test_idx)], ds.labels[test_idx]


def check_method(name: str, dev: str, train: TrainSets, test: torch.Tensor, labels: np.ndarray, tmp: Path) -> dict:
    cls = METHODS.get(name)
    ts = train if cls.default_train_sets == "mixed+healthy" else TrainSets(healthy=train.healthy)
    row: dict = {"method": name}
    p_cpu = method_params(name, "smoke", {"seed": 0, "device": "cpu"})
    t0 = time.time()
    m = cls(**p_cpu).fit(ts, FitContext(progress=False))
    row["cpu_fit_s"] = round(time.time() - t0, 2)
    s_cpu = m.score(test).scores
    row["cpu_auc"] = auc(labels, s_cpu)
    path = m.save(tmp / f"{name}.pt")
    m_dev = AnomalyMethod.load(path, device=dev)
    s_dev = m_dev.score(test).scores
    rel = np.abs(s_dev - s_cpu) / np.maximum(np.abs(s_cpu), 1e-6)
    row["same_weights_max_rel_diff"] = float(rel.max())
    row["same_weights_ok"] = bool(rel.max() < 1e-3)
    # scoring throughput on the device
    big = test.repeat(max(1, 2048 // len(test)), 1, 1, 1)
    m_dev.score(big[:64])
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.time()
    m_dev.score(big)
    if dev == "cuda":
        torch.cuda.synchronize()
    row["score_images_per_s"] = round(len(big) / (time.time() - t0), 1)
    # training on the device with its fast path
    p_dev = method_params(name, "smoke", {"seed": 0, "device": dev})
    t0 = time.time()
    try:
        m2 = cls(**p_dev).fit(ts, FitContext(workdir=tmp / f"{name}_dev", progress=False))
        row["device_fit_s"] = round(time.time() - t0, 2)
        s2 = m2.score(test).scores
        row["device_fit_finite"] = bool(np.all(np.isfinite(s2)))
        row["device_auc"] = auc(labels, s2)
    except Exception as exc:  # report, keep checking the others
        row["device_fit_error"] = f"{type(exc).__name__}: {exc}"
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="results/gpu")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--methods", nargs="*", default=GAN_METHODS)
    ap.add_argument("--bench-steps", type=int, default=20)
    ap.add_argument("--skip-bench", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": args.device}
    if args.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    train, test, labels = data(args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods:
            if name not in METHODS.names():
                rows.append({"method": name, "error": "not available here"})
                continue
            t0 = time.time()
            try:
                rows.append(check_method(name, args.device, train, test, labels, Path(tmp)))
            except Exception as exc:
                rows.append({"method": name, "error": f"{type(exc).__name__}: {exc}"})
            print(json.dumps(rows[-1]), f"({time.time() - t0:.0f} s)", flush=True)
    report["methods"] = rows
    if not args.skip_bench:
        cmd = [sys.executable, str(Path(__file__).with_name("bench_anomalypro_step.py")), "--device", args.device,
               "--steps", str(args.bench_steps)]
        t0 = time.time()
        res = subprocess.run(cmd, capture_output=True, text=True)
        report["anomalypro_step_bench"] = {"cmd": " ".join(cmd[1:]), "rc": res.returncode,
                                           "seconds": round(time.time() - t0, 1),
                                           "stdout": res.stdout[-6000:], "stderr": res.stderr[-3000:]}
        print(res.stdout[-6000:], res.stderr[-2000:], flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    ok = all(r.get("same_weights_ok", False) and r.get("device_fit_finite", False) for r in rows
             if "error" not in r)
    print("GPU CHECK", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

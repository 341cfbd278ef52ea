"""Benchmark: peak memory of one job on a paper-scale set, and of two Ray tasks on one node (issue 24).

    python benchmarks/bench_memory.py --root /tmp/bench-mem                 # 50,000 x 256 px: AE + PaDiM, ci
    python benchmarks/bench_memory.py --root /tmp/bench-mem --ray           # + two Ray tasks on this node
    python benchmarks/bench_memory.py --root /tmp/bench-mem --tree ../old   # the same jobs with another checkout

1. Generates once, under ``--root`` (outside the repository), a class-folder set of ``--n`` PNGs of ``--size`` px:
   ``NORMAL/`` and ``ABNORMAL/`` (90 % / 10 %), smooth random fields (an abnormal one carries a bright disc).
2. Decodes it in a process of its own (the decode cache, ``$ANOMALY_BENCH_CACHE`` or ``--cache``), whose peak RSS
   is printed too: a user's first run pays it once.
3. Runs each ``--methods`` job (profile ``ci``, seed 0, inductive, ``--iterations`` training iterations: the
   memory a job holds does not grow with them) as ``anomaly-bench run`` in a fresh process and reads its peak
   RSS (``os.wait4``: the child's ``ru_maxrss``; memory-mapped image pages it touched count). Loading a set
   reads every image (fingerprint, duplicate check), so every page of the images is resident in each job.
   Split: ``--test-size`` test images and a ``--mixed-size`` set A; set B is the rest.
4. ``--ray``: the first method as two Ray tasks (seeds 0 and 1) at once on this node; every 0.5 s it sums the
   PSS (proportional set size, ``/proc/<pid>/smaps_rollup``) of every process of the run: pages shared through
   the memory-mapped cache count once across the processes that map them, so the sum is what the node holds.
   Compared with one uint8 copy of the images (shared) and two (doubled).

Prints one table: peak RSS (GB) and its ratio to the uint8 size of the set; the peak summed PSS split into
file-backed pages (the memory-mapped images, counted once however many processes map them) and anonymous memory
(the model, activations, working copies).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def generate(root: Path, n: int, size: int, seed: int = 0) -> None:
    """``root/NORMAL``, ``root/ABNORMAL``: ``n`` PNGs, smooth fields (bilinear up-sampled 8x8 noise)."""
    from PIL import Image

    done = root / f".complete_{n}_{size}"
    if done.is_file():
        return
    rng = np.random.default_rng(seed)
    n_ab = n // 10
    yy, xx = np.mgrid[0:size, 0:size]
    for cls, count in (("NORMAL", n - n_ab), ("ABNORMAL", n_ab)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            low = rng.integers(40, 200, (8, 8), dtype=np.uint8)
            img = np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
            if cls == "ABNORMAL":
                cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (size // 10) ** 2
                img = np.where(disc, 250, img).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{i:06d}.png", compress_level=1)
            if (i + 1) % 5000 == 0:
                print(f"  generated {cls} {i + 1}/{count}", flush=True)
    done.write_text("ok\n")


def run_child(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd``; its peak RSS (``ru_maxrss``, GB) and, sampled every 0.25 s over the child's process tree and
    every Ray process, the peak summed PSS with its file-backed part (the memory-mapped images) and anonymous
    part at that peak (GB), and the seconds it took."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, stop = {"pss": 0.0, "file": 0.0, "anon": 0.0}, threading.Event()

    def sampler() -> None:
        while not stop.wait(0.25):
            now = tree_pss_gb(proc.pid)
            if now["pss"] > peak["pss"]:
                peak.update(now)

    threading.Thread(target=sampler, daemon=True).start()
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    stop.set()
    if status != 0:
        sys.exit(f"child failed (status {status}): {' '.join(cmd)}\n{out[-3000:]}")
    return {"rss": usage.ru_maxrss / 2**20, **peak, "seconds": time.time() - t0}


def tree_pss_gb(root_pid: int) -> dict[str, float]:
    """Summed PSS, its file-backed and anonymous parts (GB) of ``root_pid``, every process descending from it and
    every Ray process of this machine (raylet, GCS, workers: started by ``ray start``, not the driver's
    descendants)."""
    children: dict[int, list[int]] = {}
    ray_pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = Path(f"/proc/{d}/cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
            if b"ray::" in cmd or b"default_worker" in cmd or b"raylet" in cmd or b"gcs_server" in cmd:
                ray_pids.append(int(d))
    seen, todo = set(), [root_pid, *ray_pids]
    total = {"pss": 0, "file": 0, "anon": 0}
    keys = {"Pss:": "pss", "Pss_File:": "file", "Pss_Anon:": "anon"}
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                k = line.split()[0] if line.strip() else ""
                if k in keys:
                    total[keys[k]] += int(line.split()[1])
        except OSError:
            pass
    return {k: v / 2**20 for k, v in total.items()}


def experiment(path: Path, root: Path, methods: list[str], iterations: int, seeds: list[int], args) -> None:
    overrides = {"autoencoder": {"iterations": iterations, "checkpoint_every": 0},
                 "padim": {}, "patchcore": {}}
    lines = ["name: bench_memory", "profile: ci", f"seeds: {seeds}", "settings: [inductive]",
             "selection: last", "device: cpu", "datasets:",
             f"  - {{card: {root}, image_size: {args.size},",
             f"     split: {{test_size: {args.test_size}, mixed_size: {args.mixed_size}}}}}", "methods:"]
    for m in methods:
        lines.append(f"  - {{name: {m}, params: {json.dumps(overrides.get(m, {}))}}}")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="folder for the synthetic set (outside the repo)")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--methods", default="autoencoder,padim")
    ap.add_argument("--iterations", type=int, default=20, help="training iterations of the autoencoder job")
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--mixed-size", type=int, default=2000)
    ap.add_argument("--ray", action="store_true", help="also two Ray tasks of the first method on this node")
    ap.add_argument("--tree", type=Path, default=REPO, help="the checkout whose code runs (default: this one)")
    ap.add_argument("--cache", type=Path, default=None, help="decode cache folder (default: $ANOMALY_BENCH_CACHE)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    args.root = args.root.resolve()
    u8_gb = args.n * args.size * args.size / 2**30
    print(f"set: {args.n} x {args.size} px under {args.root}: uint8 size {u8_gb:.2f} GB", flush=True)
    generate(args.root, args.n, args.size)
    env = {**os.environ, "PYTHONPATH": str(args.tree.resolve()), "MPLBACKEND": "Agg"}
    if args.cache:
        env["ANOMALY_BENCH_CACHE"] = str(args.cache)
    py = [sys.executable, "-m", "anomaly_bench.cli"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        warm = ("from anomaly_bench.data.loading import load_dataset; "
                f"ds = load_dataset({str(args.root)!r}, image_size={args.size}); print(len(ds))")
        rows.append(("decode + duplicate check (first load, cached after)",
                     run_child([sys.executable, "-c", warm], env)))
        for m in args.methods.split(","):
            cfg = Path(tmp) / f"{m}.yaml"
            experiment(cfg, args.root, [m], args.iterations, [0], args)
            rows.append((f"{m} (ci, 1 job)", run_child(py + ["run", "--config", str(cfg), "--out", f"{tmp}/run_{m}",
                                                               "--no-progress"], env)))
        if args.ray:  # a local Ray node with 4 logical CPUs, so that two 2-CPU tasks run at once on 2 cores
            m = args.methods.split(",")[0]
            cfg = Path(tmp) / "ray.yaml"
            experiment(cfg, args.root, [m], args.iterations, [0, 1], args)
            ray = str(Path(sys.executable).with_name("ray"))
            subprocess.run([ray, "start", "--head", "--num-cpus", "4", "--include-dashboard", "false"], env=env,
                           check=True, stdout=subprocess.DEVNULL)
            try:
                res = run_child(py + ["run", "--config", str(cfg), "--out", f"{tmp}/run_ray", "--executor", "ray",
                                      "--ray-address", "auto", "--no-progress"], env)
            finally:
                subprocess.run([ray, "stop", "--force"], env=env, stdout=subprocess.DEVNULL)
            res["rss"] = float("nan")  # the driver's own RSS says nothing about the node: the PSS columns do
            rows.append((f"{m} x2 Ray tasks at once (driver + every Ray process)", res))
    print(f"\n| what | peak RSS GB (/ uint8 {u8_gb:.2f} GB) | peak summed PSS GB = file-backed (images) + anonymous "
          f"| seconds |\n|---|---|---|---|")
    for what, r in rows:
        print(f"| {what} | {r['rss']:.2f} ({r['rss'] / u8_gb:.2f}x) | {r['pss']:.2f} = {r['file']:.2f} + "
              f"{r['anon']:.2f} | {r['seconds']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "size": args.size, "uint8_gb": u8_gb, "tree": str(args.tree),
                                         "rows": [{"what": w, **r} for w, r in rows]}, indent=1))


if __name__ == "__main__":
    main()

"""Measured per-job budgets of a profile (issue 20): what one job of each method costs on the machine that ran it.

Reads the job records of a finished (or partly finished) run folder, e.g. the ``cpu`` comparison
(``anomaly-bench run --config experiments/cpu.yaml --out ../runs/cpu``), and prints one Markdown row per
(profile, method, dataset): the median over seeds of the fit, scoring and whole-job seconds (fit + test scoring as the
job records them; the checkpoint selection's hold-out scoring comes on top), the iterations trained (the last
row of its loss log), the threads and CPU the job ran on, and whether the job passed the training-health check.
The README's table of profiles quotes this output. Nothing is timed here: the numbers are the runs' own records,
so they measure the real jobs on real data, not a synthetic stand-in.

    python benchmarks/profile_budgets.py ../runs/cpu [--markdown]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomaly_bench.harness.run_folder import RunFolder  # noqa: E402


def _iterations(jf) -> int | None:
    try:
        losses = jf.read_losses()
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    if losses is None or "iteration" not in losses.columns or losses.empty:
        return None
    return int(losses["iteration"].max())


def _job_seconds(meta: dict) -> float | None:
    parts = [meta.get("fit_seconds"), meta.get("score_seconds")]
    return float(sum(parts)) if all(p is not None for p in parts) else None


def _cpu(versions: dict) -> str | None:
    cpu = versions.get("cpu")
    if not isinstance(cpu, dict):
        return None if cpu is None else str(cpu)
    return f"{cpu.get('model')} ({cpu.get('aten_cpu_capability')}, {cpu.get('kernel_path')} kernels)"


def budget_rows(run_dir: str | Path) -> pd.DataFrame:
    """One row per finished job: profile, method, dataset, seed, fit/score/job seconds, iterations, threads, cpu,
    health verdict."""
    rows = []
    for jf, meta in RunFolder(run_dir).jobs():
        if meta.get("status") != "done":
            continue
        h = meta.get("health") if isinstance(meta.get("health"), dict) else {}
        versions = meta.get("versions") or {}
        verdict = ("not iterative" if h.get("not_iterative") else
                   "under-trained" if h.get("under_trained") else "not flagged" if h else "not recorded")
        rows.append({"profile": meta.get("profile"), "method": meta.get("method"), "dataset": meta.get("dataset"),
                     "seed": meta.get("seed"), "fit_s": meta.get("fit_seconds"), "score_s": meta.get("score_seconds"),
                     "job_s": _job_seconds(meta), "iterations": _iterations(jf),
                     "threads": versions.get("cpu_threads"), "cpu": _cpu(versions), "health": verdict,
                     "mae_ratio": h.get("mae_ratio")})
    return pd.DataFrame(rows)


def _median(g: pd.DataFrame, col: str, digits: int = 1) -> float | None:
    vals = [float(v) for v in g[col] if v is not None and pd.notna(v)]
    return round(statistics.median(vals), digits) if vals else None


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Median seconds over seeds per (profile, method, dataset), the seeds' health verdicts counted."""
    out = []
    for (profile, method, dataset), g in rows.groupby(["profile", "method", "dataset"], sort=False):
        job_s, iterations = _median(g, "job_s"), _median(g, "iterations")
        verdicts = g["health"].value_counts()
        out.append({"profile": profile, "method": method, "dataset": dataset, "seeds": len(g),
                    "fit_s": _median(g, "fit_s"), "score_s": _median(g, "score_s"), "job_s": job_s,
                    "job_min": None if job_s is None else round(job_s / 60, 1),
                    "iterations": None if iterations is None else int(iterations), "threads": g["threads"].iloc[0],
                    "health": ", ".join(f"{n} {v}" for v, n in verdicts.items()),
                    "mae_ratio": _median(g, "mae_ratio", 3)})
    return pd.DataFrame(out)


def to_markdown(table: pd.DataFrame) -> str:
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return ""
        return format(v, "g") if isinstance(v, float) else str(v)
    cells = [[cell(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--markdown", action="store_true", help="a Markdown table (default: plain text)")
    args = ap.parse_args(argv)
    if not (args.run_dir / "jobs").is_dir():
        print(f"{args.run_dir}: not a run folder (no jobs/); pass the --out of an anomaly-bench run", file=sys.stderr)
        return 2
    rows = budget_rows(args.run_dir)
    if rows.empty:
        print(f"{args.run_dir}: no finished job yet", file=sys.stderr)
        return 1
    table = summarise(rows)
    cpus = sorted({str(c) for c in rows["cpu"].dropna()})
    print(to_markdown(table) if args.markdown else table.to_string(index=False))
    print(f"\n{len(rows)} finished job(s); CPU: {'; '.join(cpus) or 'not recorded'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

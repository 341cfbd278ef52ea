"""Metric regression against committed references (``anomaly-bench regress``): exact where the computation
is deterministic, statistical where it is chaotic.

1. **Exact** (:mod:`anomaly_bench.harness.regress_exact`, ``results/reference/regression_exact.json``): the regression
   experiment's splits (image ids per role) and, for every method, float64 scores after a few float64 training
   steps on fixed batches, to a relative tolerance of 1e-6. Float64 kernel differences between CPUs are ~1e-15,
   so this part holds on any CPU and catches a changed loss, sign, default, preprocessing, score formula or split.
2. **Statistical** (this module, ``results/reference/regression.json``): the regression experiment
   (``experiments/regression.yaml``: every paper method at the ``ci`` profile, one fixed split) is run at seed 0 on
   this machine and each end-of-training AUC/AP is compared with the reference's *spread*: the values of several
   seeds on at least two CPU kernel paths (short GAN training turns last-bit kernel differences into different
   models, so another CPU is like another seed). A value fails when it falls below the reference mean by more
   than ``max(floor, k * sd)``; one above it by as much is reported (the reference may be stale).
   The per-image rank guard (Spearman of sampled test scores, at least ``min_rank_corr``) applies only to the
   method/dataset/setting combinations whose scores agreed across the reference's kernel paths (the
   deterministic ones: PaDiM, PatchCore); for the GANs the exact part guards the scores.

It also fails when a dataset, method or metric of the reference is missing, or a job failed or produced non-finite
scores. ``--update --from RUN ...`` rebuilds the statistical reference from runs of the regression experiment (made
with ``anomaly-bench run --config experiments/regression.yaml --seeds 0,1,2`` under each kernel path) and the exact
reference from this code.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from anomaly_bench.core.config import shipped_path
from anomaly_bench.core.errors import BenchError
from anomaly_bench.core.experiment import load_experiment
from anomaly_bench.data.loading import resolve_card, root_present
from anomaly_bench.harness.run_folder import RunFolder
from anomaly_bench.harness.runner import Runner

GUARDED = ("auc", "ap")
SAMPLE_PER_GROUP = 200
DEFAULT_MIN_RANK_CORR = 0.9
DEFAULT_FLOOR = 0.02   # least tolerance of an AUC/AP (also the tolerance of a reference made from one sample)
DEFAULT_K = 4.0        # tolerance = max(floor, k * sd of the reference's samples: seeds x kernel paths)
FIXED_SEED_AGREEMENT = 0.002  # AUC/AP spread across kernel paths at one seed below which a method is deterministic
DETERMINISTIC_RHO = 0.99  # rank guard only where the reference runs' seed-0 scores agree at least this well
SCORE_KEY = ["dataset", "setting", "method", "selection", "seed"]
DEFAULT_REFERENCE = shipped_path("results/reference/regression.json")  # the checkout's, else the installed wheel's
DEFAULT_EXPERIMENT = shipped_path("experiments/regression.yaml")
KEY = ["dataset", "setting", "method", "selection", "level", "metric"]


@dataclass
class Comparison:
    table: pd.DataFrame  # KEY + old, new, delta, status
    problems: list[str]
    improvements: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def summarise(metrics: pd.DataFrame) -> dict[str, float]:
    """Mean over seeds of the guarded metrics, keyed 'dataset|setting|method|selection|level|metric'."""
    m = metrics[metrics["metric"].isin(GUARDED)]
    g = m.groupby(KEY, dropna=False)["value"].mean()
    return {"|".join(str(x) for x in k): float(v) for k, v in g.items()}


def score_sample(scores: pd.DataFrame, per_group: int = SAMPLE_PER_GROUP) -> dict[str, dict[str, float]]:
    """Per-image scores of a fixed sample of labelled images, keyed 'dataset|setting|method|selection|seed'.

    The sample is chosen from the image ids alone (evenly spaced in sorted order per dataset and setting), so
    every method and every run sample the same images. Scores keep 7 significant digits.
    """
    s = scores[scores["label"] >= 0]
    out: dict[str, dict[str, float]] = {}
    for (dataset, setting), grp in s.groupby(["dataset", "setting"], sort=True):
        ids = np.array(sorted(grp["id"].astype(str).unique()))
        keep = set(ids[np.unique(np.linspace(0, len(ids) - 1, min(per_group, len(ids))).round().astype(int))])
        sub = grp[grp["id"].astype(str).isin(keep)]
        for key, g in sub.groupby(["method", "selection", "seed"], sort=True):
            name = "|".join(str(x) for x in (dataset, setting, *key))
            out[name] = {str(i): float(f"{v:.7g}") for i, v in zip(g["id"].astype(str), g["score"].astype(float))}
    return out


def rank_corr(old: dict[str, float], new: dict[str, float]) -> tuple[float, int]:
    """Spearman correlation of two id -> score mappings on their common ids (and how many there are)."""
    common = sorted(set(old) & set(new))
    if len(common) < 3:
        return math.nan, len(common)
    a = np.array([old[i] for i in common])
    b = np.array([new[i] for i in common])
    if not np.all(np.isfinite(b)):
        return math.nan, len(common)
    if np.ptp(a) == 0 or np.ptp(b) == 0:  # a constant score vector: agreement only if both are identical
        return (1.0 if np.array_equal(a, b) else 0.0), len(common)
    return float(spearmanr(a, b).statistic), len(common)


def _compare_scores(reference: dict[str, Any], new_scores: dict[str, dict[str, float]], new: dict[str, float],
                    skipped: set[str], rows: list, problems: list[str]) -> None:
    min_corr = float(reference.get("min_rank_corr", DEFAULT_MIN_RANK_CORR))
    values = reference.get("values", {})
    for key, old in sorted((reference.get("scores") or {}).items()):
        parts = dict(zip(SCORE_KEY, key.split("|")))
        row = {**{k: parts[k] for k in ("dataset", "setting", "method", "selection")}, "level": "image",
               "metric": f"score_rank_corr(seed{parts['seed']})", "old": 1.0}
        if parts["dataset"] in skipped:
            rows.append({**row, "new": math.nan, "delta": math.nan, "status": "skipped (no data)"})
            continue
        if key not in new_scores:
            rows.append({**row, "new": math.nan, "delta": math.nan, "status": "MISSING"})
            problems.append(f"{key}: per-image scores in the reference but not produced by this run")
            continue
        rho, n = rank_corr(old, new_scores[key])
        status = "ok"
        if n < max(3, len(old) // 2):
            status = "MISSING"
            problems.append(f"{key}: only {n} of the reference's {len(old)} sampled test images were scored "
                            f"(the split changed?)")
        elif not (rho >= min_corr):
            status = "SCORES CHANGED"
            auc_key = "|".join([parts["dataset"], parts["setting"], parts["method"], parts["selection"], "image",
                                "auc"])
            auc = (f"; image AUC {reference_stats(values[auc_key], 0.0, 0.0)[0]:.4f} -> "
                   f"{new.get(auc_key, math.nan):.4f}" if auc_key in values else "")
            problems.append(f"{parts['method']} on {parts['dataset']} ({parts['setting']}, {parts['selection']}, "
                            f"seed {parts['seed']}): per-image scores no longer match the reference "
                            f"(Spearman {rho:.3f} < {min_corr} on {n} images){auc}. The method now ranks the "
                            f"test images differently: a scoring or training change, or random scores")
        rows.append({**row, "new": rho, "delta": rho - 1.0, "status": status})


def reference_stats(entry: Any, floor: float, k: float, seeds: list[int] | None = None
                    ) -> tuple[float, float, float, int]:
    """(mean, sd, tolerance, n samples) of one reference value: a ``{mean, sd, n, samples}`` record or, in a
    reference of one sample, a bare number (sd 0: the tolerance is the floor). When this run is exactly the
    seed at which the reference's kernel paths agreed (``fixed_seed``: a deterministic method), that seed's value
    with the floor, not the spread over seeds."""
    if isinstance(entry, dict):
        if seeds is not None and entry.get("fixed_seed") is not None and list(seeds) == [entry["fixed_seed"]]:
            return float(entry["fixed_value"]), 0.0, floor, len(entry.get("samples") or [1])
        mean, sd, n = float(entry["mean"]), float(entry.get("sd") or 0.0), int(entry.get("n", 1))
    else:
        mean, sd, n = float(entry), 0.0, 1
    return mean, sd, max(floor, k * sd), n


def compare(reference: dict[str, Any], new: dict[str, float], tolerance: float, failed_jobs: list[str],
            nonfinite: list[str], skipped_datasets: set[str] = frozenset(),
            new_scores: dict[str, dict[str, float]] | None = None, k: float | None = None,
            seeds: list[int] | None = None) -> Comparison:
    """Each reference value against this run's: DROP below ``mean - max(tolerance, k * sd)``, improved above
    ``mean + max(tolerance, k * sd)``; ``tolerance`` is the floor (the reference's ``floor`` by default)."""
    k = float(reference.get("k", DEFAULT_K) if k is None else k)
    rows, problems, improvements = [], [], []
    ref_values: dict[str, Any] = reference["values"]
    for key, entry in sorted(ref_values.items()):
        parts = dict(zip(KEY, key.split("|")))
        old, sd, tol, n = reference_stats(entry, tolerance, k, seeds)
        base = {**parts, "old": old, "sd": sd, "tol": tol}
        if parts["dataset"] in skipped_datasets:
            rows.append({**base, "new": math.nan, "delta": math.nan, "status": "skipped (no data)"})
            continue
        val = new.get(key)
        if val is None:
            status = "MISSING"
            problems.append(f"{key}: in the reference but not produced by this run")
        elif not math.isfinite(val):
            status = "NON-FINITE"
            problems.append(f"{key}: value {val} (scores not finite)")
        elif val < old - tol:
            status = "DROP"
            problems.append(f"{parts['method']} on {parts['dataset']} ({parts['setting']}, {parts['selection']}, "
                            f"{parts['level']}): {parts['metric'].upper()} fell {old:.4f} -> {val:.4f} "
                            f"(delta {val - old:+.4f}; tolerance {tol:.4f} = max({tolerance}, {k:g} x sd {sd:.4f} "
                            f"over the reference's {n} seed/kernel-path samples)")
        elif val > old + tol:
            status = "improved"
            improvements.append(f"{key}: {old:.4f} -> {val:.4f} ({val - old:+.4f}, tolerance {tol:.4f}); "
                                f"rebuild the reference (--update) to accept")
        else:
            status = "ok"
        rows.append({**base, "new": val, "delta": (val - old) if val is not None else math.nan, "status": status})
    for key in sorted(set(new) - set(ref_values)):
        parts = dict(zip(KEY, key.split("|")))
        rows.append({**parts, "old": math.nan, "sd": math.nan, "tol": math.nan, "new": new[key], "delta": math.nan,
                     "status": "new (not in reference)"})
    if new_scores is not None:
        _compare_scores(reference, new_scores, new, set(skipped_datasets), rows, problems)
    for j in failed_jobs:
        problems.append(f"job {j} failed (see its job.json)")
    for j in nonfinite:
        problems.append(f"{j}: non-finite scores")
    return Comparison(pd.DataFrame(rows), problems, improvements)


def format_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "(nothing compared)"
    t = table.copy()
    for c in ("old", "tol", "new", "delta"):
        if c not in t:
            t[c] = math.nan
        t[c] = t[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}")
    cols = ["dataset", "setting", "method", "selection", "level", "metric", "old", "tol", "new", "delta", "status"]
    widths = {c: max(len(c), *(len(str(v)) for v in t[c])) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for _, r in t.iterrows()]
    return "\n".join(lines)


def nonfinite_jobs(scores: pd.DataFrame) -> list[str]:
    bad = scores[~np.isfinite(scores["score"].astype(float)) & (scores["label"] >= 0)]
    return sorted({f"{r.dataset}/{r.method}/seed{r.seed}" for r in bad.itertuples()})


def prepare_out(out: Path, fresh: bool) -> None:
    """Empty ``out`` for a fresh regression run, refusing a folder that is not one of ``regress``'s own or that a
    run is using (its ``.lock``): ``--out`` pointed at a wrong folder must never delete it."""
    if not fresh or not out.exists():
        return
    if not out.is_dir():
        raise BenchError(f"--out {out}: exists and is not a folder; choose another --out")
    folder = RunFolder(out)
    if folder.lock_path.exists():
        raise BenchError(f"--out {out}: a run is using this folder (its .lock exists); wait for it, or choose "
                         f"another --out (delete {folder.lock_path} only if no run is alive)")
    entries = {p.name for p in out.iterdir()}
    ours = {p.name for p in (folder.run_info_path, folder.experiment_path, folder.comparison_path, folder.jobs_dir,
                             folder.splits_dir)}
    if entries and not entries & ours:
        raise BenchError(f"--out {out}: not empty and not a regress output folder ({sorted(entries)[:5]}); "
                         f"regress empties its --out, so choose a new or former regress folder")
    shutil.rmtree(out)


def run_regression(out: Path, experiment: Path = DEFAULT_EXPERIMENT, data_root: str | None = None,
                   progress: bool = False, echo=print) -> tuple[pd.DataFrame, pd.DataFrame, dict, set[str]]:
    """Run the regression experiment; return (metrics, scores, run info, datasets skipped for lack of data)."""
    exp = load_experiment(experiment)
    skipped = set()
    kept = []
    for spec in exp.datasets:
        card = resolve_card(spec.card)
        if root_present(card, spec.data_root or data_root):
            kept.append(spec)
        else:
            skipped.add(spec.label or card["name"])
            echo(f"regress: real-data part SKIPPED: dataset '{card['name']}' not found "
                 f"(expected under {card.get('root')}; pass --data-root). Only the other datasets are checked.")
    exp.datasets = kept
    t0 = time.time()
    info = Runner(exp, out, data_root=data_root, progress=progress, echo=echo).run()
    info["regress_seconds"] = round(time.time() - t0, 1)
    folder = RunFolder(out)
    return folder.read_metrics(), folder.read_scores(), info, skipped


def read_run(run: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """metrics, scores and run.json of a finished run (``regress --from``)."""
    folder = RunFolder(run)
    missing = [p.name for p in (folder.metrics_path, folder.scores_path, folder.run_info_path) if not p.is_file()]
    if missing:
        raise BenchError(f"--from {run}: not a finished run of the regression experiment (no {missing}); make one "
                         f"with `anomaly-bench run --config experiments/regression.yaml --seeds 0,1,2 --out {run}`")
    return folder.read_metrics(), folder.read_scores(), folder.read_run_info()


def build_reference(runs: list[tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]], floor: float = DEFAULT_FLOOR,
                    k: float = DEFAULT_K, min_rank_corr: float = DEFAULT_MIN_RANK_CORR,
                    echo=print) -> dict[str, Any]:
    """The statistical reference from runs of the regression experiment (each: metrics, scores, run info).

    Every (seed, run) value of a key is one sample; the reference keeps them with their mean and sample sd. The
    per-image score sample is kept for the first seed of the first run, only for keys whose sampled scores agree
    across the runs (Spearman >= :data:`DETERMINISTIC_RHO`; all keys when there is one run)."""
    samples: dict[str, list[float]] = {}
    by_seed: dict[str, dict[int, list[float]]] = {}
    for metrics, _, _ in runs:
        m = metrics[metrics["metric"].isin(GUARDED)]
        for key_vals, g in m.groupby([*KEY[:4], "seed", *KEY[4:]], dropna=False):
            parts = list(key_vals)
            key = "|".join(str(x) for x in parts[:4] + parts[5:])
            samples.setdefault(key, []).extend(float(v) for v in g["value"])
            by_seed.setdefault(key, {}).setdefault(int(parts[4]), []).extend(float(v) for v in g["value"])
    first_seed = int(runs[0][1]["seed"].min())
    per_run = [{k_: v_ for k_, v_ in score_sample(sc[sc["seed"] == first_seed]).items()} for _, sc, _ in runs]
    kept, agreement = {}, {}
    for key, sample in per_run[0].items():
        rhos = [rank_corr(sample, other[key])[0] for other in per_run[1:] if key in other]
        rho = min(rhos) if rhos else math.nan
        agreement[key] = None if math.isnan(rho) else round(rho, 4)
        if len(runs) == 1 or rho >= DETERMINISTIC_RHO:
            kept[key] = sample
    values = {}
    for key, v in sorted(samples.items()):
        arr = np.asarray(v, dtype=float)
        sd = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
        values[key] = {"mean": float(arr.mean()), "sd": sd, "n": len(arr), "min": float(arr.min()),
                       "max": float(arr.max()), "tolerance": max(floor, k * sd),
                       "samples": [float(f"{x:.6g}") for x in arr]}
        at_first = by_seed[key].get(first_seed, [])
        rho = agreement.get("|".join(key.split("|")[:4] + [str(first_seed)]))
        if (len(runs) > 1 and len(at_first) == len(runs) and np.ptp(at_first) <= FIXED_SEED_AGREEMENT
                and rho is not None and rho >= DETERMINISTIC_RHO):
            # every kernel path gave (nearly) the same value and ranking at this seed: a deterministic method,
            # checked at this seed against that value with the floor (the seed spread would hide a real drop)
            values[key].update(fixed_seed=first_seed, fixed_value=float(np.mean(at_first)))
    if len(runs) == 1:
        echo("regress --update: one run (one kernel path): the spread covers its seeds only and every score sample "
             "is kept; rebuild from runs on two kernel paths (--from A --from B) for a reference that holds on other "
             "CPUs")
    first_info = runs[0][2]
    return {"format": 2,
            "description": "anomaly-bench statistical regression reference: per dataset|setting|method|selection|"
                           "level|metric the AUC/AP of every seed of every recorded run (experiments/regression.yaml, "
                           "ci profile, CPU), their mean, sd and tolerance max(floor, k*sd)",
            "floor": floor, "k": k, "min_rank_corr": min_rank_corr,
            "runs": [{"kernel_path": ((info.get("versions") or {}).get("cpu") or {}).get("kernel_path"),
                      "cpu": (info.get("versions") or {}).get("cpu"),
                      "seeds": sorted(int(x) for x in sc["seed"].unique()),
                      "git_commit": (info.get("versions") or {}).get("git_commit"),
                      "git_dirty": (info.get("versions") or {}).get("git_dirty"),
                      "torch": (info.get("versions") or {}).get("torch"),
                      "cpu_threads": (info.get("versions") or {}).get("cpu_threads"),
                      "wall_seconds": info.get("wall_seconds")} for _, sc, info in runs],
            "data_fingerprints": {k_: v_.get("fingerprint") for k_, v_ in first_info.get("datasets", {}).items()},
            "values": values,
            "scores_description": f"per-image test scores of a fixed sample of up to {SAMPLE_PER_GROUP} images per "
                                  f"dataset and setting (seed {first_seed} of the first run), keyed dataset|setting|"
                                  f"method|selection|seed; only where the runs' scores agree (rank_agreement >= "
                                  f"{DETERMINISTIC_RHO})",
            "rank_agreement": agreement, "scores": kept}


def write_reference(path: Path, blob: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_reference(blob))


def dump_reference(blob: dict[str, Any]) -> str:
    """JSON with one line per score sample (readable diffs; a few hundred kB instead of ~10k lines)."""
    scores = blob.get("scores") or {}
    head = json.dumps({k: v for k, v in blob.items() if k != "scores"}, indent=1, default=str)
    lines = [f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in scores.items()]
    return head[:-2] + ',\n "scores": {\n' + ",\n".join(lines) + "\n }\n}\n"

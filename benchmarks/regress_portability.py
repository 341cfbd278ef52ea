"""How often would the statistical half of `anomaly-bench regress` fail clean code on another CPU?

Leave-one-kernel-path-out: for each recorded run of the regression experiment (e.g. seeds 0-2 natively and
seeds 0-2 under ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2``), build the reference from the
*other* runs only and compare every seed of the held-out run with it, as a CI run on a machine of that kernel
path would be compared. Prints, per rule (k, floor), how many held-out (seed, key) values fall outside the
tolerance; the committed rule must give none on clean code.

    python benchmarks/regress_portability.py runs/ref-native runs/ref-avx2 [--k 3 4 5] [--floor 0.02]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anomaly_bench.harness.regress import GUARDED, KEY, build_reference, compare, read_run


def held_out_values(metrics, seed: int) -> dict[str, float]:
    m = metrics[(metrics["metric"].isin(GUARDED)) & (metrics["seed"] == seed)]
    return {"|".join(str(v) for v in r[KEY]): float(r["value"]) for _, r in m.iterrows()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--k", nargs="+", type=float, default=[2.0, 3.0, 4.0, 5.0])
    ap.add_argument("--floor", type=float, default=0.02)
    args = ap.parse_args()
    runs = [read_run(r) for r in args.runs]
    for k in args.k:
        total = fails = 0
        lines = []
        for i, (metrics, _, _) in enumerate(runs):
            others = [r for j, r in enumerate(runs) if j != i]
            if not others:
                continue
            ref = build_reference(others, floor=args.floor, k=k, echo=lambda *_: None)
            ref["scores"] = {}  # the rank guard is checked separately (rank_agreement in the reference)
            for seed in sorted(metrics["seed"].unique()):
                new = held_out_values(metrics, int(seed))
                cmp = compare(ref, new, args.floor, [], [], k=k, seeds=[int(seed)])
                total += len(new)
                fails += len(cmp.problems)
                lines += [f"    held out {args.runs[i].name} seed {seed}: {p}" for p in cmp.problems]
        print(f"k={k:g} floor={args.floor}: {fails} of {total} held-out values outside the tolerance")
        for line in lines:
            print(line)


if __name__ == "__main__":
    main()

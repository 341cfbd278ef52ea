#!/usr/bin/env bash
# Installable as a wheel: build the sdist and, from it, the wheel (python -m build, so MANIFEST.in and setup.py's
# package data are both exercised), install the wheel into a fresh virtual environment outside the repository,
# and from an empty folder: list methods and cards, run two cheap methods on the phantom at the smoke profile
# with the default experiment, check its table, and check that the method profiles are the shipped YAML files
# (not the class defaults: medai_anomalypro's smoke profile, not its 400,000-iteration paper schedule).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
start=$(date +%s)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# nothing may reach the checkout except through the wheel
unset PYTHONPATH ANOMALY_BENCH_METHODS_DIR ANOMALY_BENCH_DATASETS_DIR
export MPLBACKEND=Agg

echo "-- build (sdist, then the wheel from it)"
"$PY" -m venv "$WORK/venv"
V="$WORK/venv/bin"
pipi() { "$V/python" -m pip install -q "$@" >>"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log"; exit 1; }; }
pipi --upgrade pip build
"$V/python" -m build -q --outdir "$WORK/dist" "$REPO" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
WHEEL="$(ls "$WORK"/dist/*.whl)"
echo "$(basename "$WHEEL")"
"$V/python" - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
top = sorted({n.split("/")[0] for n in names})
assert all(t == "anomaly_bench" or t.endswith(".dist-info") for t in top), f"unexpected top-level entries: {top}"
for need in ("methods/medai_anomalypro.yaml", "datasets/phantom.yaml", "experiments/default.yaml",
             "results/reference/regression.json"):
    assert f"anomaly_bench/_shipped/{need}" in names, f"the wheel lacks anomaly_bench/_shipped/{need}"
print(f"wheel: {len(names)} files, top level {top}, "
      f"{sum(n.startswith('anomaly_bench/_shipped/') for n in names)} shipped config files")
EOF

echo "-- install into a fresh venv ($WORK/venv)"
# torch 2.14.1 / torchvision 0.29.1 from local disk, as in .ci/run; the rest as the wheel's metadata asks
pipi "torch==2.14.1" "torchvision==0.29.1"
pipi "$WHEEL"

mkdir "$WORK/cwd"
cd "$WORK/cwd"
echo "-- anomaly-bench list methods / datasets (from $PWD)"
"$V/anomaly-bench" list methods
"$V/anomaly-bench" list datasets

echo "-- method profiles come from the wheel's package data"
"$V/python" - "$REPO/methods/medai_anomalypro.yaml" <<'EOF'
import sys
from pathlib import Path

import yaml

import anomaly_bench
from anomaly_bench.core.config import checkout_dir, config_dirs, method_params
from anomaly_bench.data.loading import list_cards

pkg = Path(anomaly_bench.__file__).resolve().parent
assert "site-packages" in pkg.parts, f"anomaly_bench imported from {pkg}, not from the installed wheel"
assert checkout_dir() is None, checkout_dir()
assert config_dirs("methods") == [pkg / "_shipped" / "methods"], config_dirs("methods")
want = yaml.safe_load(open(sys.argv[1]))["profiles"]["smoke"]["iterations"]
got = method_params("medai_anomalypro", "smoke")["iterations"]
assert got == want, f"medai_anomalypro smoke iterations {got}, methods/medai_anomalypro.yaml says {want}"
cards = sorted(c["name"] for c in list_cards())
assert "phantom" in cards, cards
print(f"ok: medai_anomalypro smoke iterations {got} (= methods/medai_anomalypro.yaml); cards {cards}")
EOF

echo "-- anomaly-bench run (default experiment, smoke profile, phantom, padim + autoencoder, seed 0)"
"$V/anomaly-bench" run --profile smoke --dataset phantom --method padim --method autoencoder --seeds 0 \
    --device cpu --no-progress --out runs/wheel >"$WORK/run.log" 2>&1 || { tail -50 "$WORK/run.log"; exit 1; }
tail -3 "$WORK/run.log"
test -s runs/wheel/table.md
grep -q padim runs/wheel/table.md && grep -q autoencoder runs/wheel/table.md
"$V/python" - "$REPO/methods/autoencoder.yaml" <<'EOF'
import json, sys

import yaml

want = yaml.safe_load(open(sys.argv[1]))["profiles"]["smoke"]["iterations"]
job = json.load(open("runs/wheel/jobs/phantom/autoencoder/seed0/job.json"))
assert job["status"] == "done" and job["profile"] == "smoke", (job["status"], job["profile"])
assert job["params"]["iterations"] == want, f"autoencoder trained {job['params']['iterations']} iterations, not {want}"
print(f"ok: autoencoder job trained the smoke profile's {want} iterations")
EOF
head -12 runs/wheel/table.md
echo "wheel check took $(( $(date +%s) - start )) s"

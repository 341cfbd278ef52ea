#!/usr/bin/env bash
# Everything issue 3 (MedAI AnomalyPro) still needs from a GPU, as two device calls that fit a 15-minute lease.
#
#   bash benchmarks/gpu_session.sh checks    # ~4 min: CUDA correctness of every GAN method (gpu_check.py) and
#                                            # the AnomalyPro step vs the authors' step at 256 px, batch 16,
#                                            # eager and torch.compile (bench_anomalypro_step.py)
#   bash benchmarks/gpu_session.sh phantom   # ~7 min: the authors' widths on the phantom at 64 px, 12,000
#                                            # iterations, a checkpoint every 2,000 (experiments/phantom_budget_gpu.yaml):
#                                            # per checkpoint AUCp, mean mask and the oracle test AUC
#
# Results go to $OUT (the device tool's folder) or runs/gpu_session. It uses the python3 that holds torch and runs
# the package from the working tree (PYTHONPATH), so nothing is installed; each step has its own time limit and
# a failed step does not stop the next one. The last lines print the figures to paste into the issue note.
set -u
part=${1:-checks}
out=${OUT:-runs/gpu_session}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
device=${DEVICE:-cuda}                                              # DEVICE=cpu for a dry run of the mechanics
phantom_config=${PHANTOM_CONFIG:-experiments/phantom_budget_gpu.yaml}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

step() {  # step NAME LIMIT_S CMD...: run with a time limit, log to $out/NAME.log, report the status
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc in $((SECONDS - t0)) s (limit $limit s)" | tee -a "$out/summary.txt"
    return $rc
}

case "$part" in
checks)
    step gpu_check 150 $py benchmarks/gpu_check.py --device "$device" --out "$out" --skip-bench
    step bench_step 240 $py benchmarks/bench_anomalypro_step.py --device "$device" --compile \
        --json "$out/anomalypro_step_cuda.json"
    tail -n 15 "$out/bench_step.log"
    ;;
phantom)
    step phantom_budget 420 $py -m anomaly_bench.cli run --config "$phantom_config" \
        --device "$device" --out /tmp/phantom_budget --no-progress
    sel=$(find /tmp/phantom_budget -name selection.csv | head -n 1)
    losses=$(find /tmp/phantom_budget -name losses.csv | head -n 1)
    [ -n "$sel" ] && cp "$sel" "$out/phantom_selection.csv" && cat "$sel"
    [ -n "$losses" ] && cp "$losses" "$out/phantom_losses.csv" && tail -n 3 "$losses"
    cp /tmp/phantom_budget/table.md "$out/phantom_table.md" 2>/dev/null
    ;;
*)
    echo "usage: bash benchmarks/gpu_session.sh checks|phantom" >&2
    exit 2
    ;;
esac
cat "$out/summary.txt"

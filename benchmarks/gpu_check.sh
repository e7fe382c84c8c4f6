#!/usr/bin/env bash
# GPU check for a one-H100 machine, run from the repository root; finishes in under 8 minutes.
#   OUT=/some/folder bash benchmarks/gpu_check.sh
# Writes into $OUT: env.txt (nvidia-smi, versions), python.log, pytest_gpu.log, bench_*.log
# and bench_*.json (benchmarks/train_throughput.py), jpegs.log, summary.txt. Every step has its
# own timeout, capped by what is left of the overall budget (BUDGET_S, default 450 s), so one
# hang cannot eat the rest. Set COMPILE=1 to add a torch.compile run if time is left.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-450}
START=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# step NAME TIMEOUT_S CMD...: runs CMD with stdout+stderr to $OUT/NAME.log (and the console),
# under min(TIMEOUT_S, time left - 10 s); skipped when under 20 s would be left.
step() {
    local name=$1 limit=$2
    shift 2
    local avail=$(($(left) - 10))
    ((avail < limit)) && limit=$avail
    if ((limit < 20)); then
        echo "$name: SKIPPED (budget spent)" | tee -a "$SUMMARY"
        return 0
    fi
    echo "=== $name (timeout ${limit}s, $(left)s of budget left): $*"
    local t0=$(date +%s)
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    local msg="rc=$rc"
    ((rc == 124 || rc == 137)) && msg="TIMED OUT after ${limit}s"
    echo "$name: $msg ($(($(date +%s) - t0))s)" | tee -a "$SUMMARY"
    return 0
}

# 1. environment: the Python to use (benchmarks/device_python.sh; `make install` only where no
# Python here holds torch and timm)
source benchmarks/device_python.sh >"$OUT/python.log" 2>&1
tail -n 1 "$OUT/python.log" | tee -a "$SUMMARY"
{
    nvidia-smi
    echo
    $PY -c 'import torch, timm; print("torch", torch.__version__, "cuda", torch.version.cuda,
"available", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available()
else ""); print("timm", timm.__version__)'
    nproc
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 2. the GPU tests (exit code 5 = none collected); -rP keeps the printed measurements (bf16 run's
# loss drop, CPU-vs-CUDA differences) in pytest_gpu.log
step pytest_gpu 200 $PY -m pytest -m gpu -q -rP tests/test_gpu.py

# 3. synthetic batches: the paper's recipe (2 global crops), ViT-S/16 at 224, bf16
BENCH=(benchmarks/train_throughput.py --device cuda --precision bf16 --recipe paper_vits16
    --arch vit_small_patch16_224 --patch 16 --img 224 --warmup 5)
step bench_b64 120 $PY "${BENCH[@]}" --batch 64 --steps 20 --baseline --breakdown 3 \
    --json "$OUT/bench_b64.json"
step bench_b128 100 $PY "${BENCH[@]}" --batch 128 --steps 15 --baseline \
    --json "$OUT/bench_b128.json"

# 4. the real data loader on JPEGs
JPEGS=${JPEGS:-/tmp/mcssl_jpegs}
WORKERS=${WORKERS:-$(($(nproc) > 16 ? 14 : $(nproc) - 2))}
step jpegs 60 $PY benchmarks/make_jpegs.py "$JPEGS" -n 2000
step bench_loader_b64 120 $PY "${BENCH[@]}" --batch 64 --steps 5 --data-dir "$JPEGS" \
    --workers "$WORKERS" --loader-batches 25 --json "$OUT/bench_loader_b64.json"

step bench_loader_device_b64 100 $PY "${BENCH[@]}" --batch 64 --steps 5 --data-dir "$JPEGS" \
    --workers "$WORKERS" --loader-batches 25 --set data.pipeline=device \
    --json "$OUT/bench_loader_device_b64.json"

# 4b. the loader alone, plain and device pipelines, JPEGs and the cache, against the model
step data_throughput 180 $PY benchmarks/data_throughput.py --data-dir "$JPEGS" \
    --workers 4 "$WORKERS" --batches 10 --json "$OUT/data_throughput.json" optim.batch_size=64

# 5. optional: torch.compile
if [[ ${COMPILE:-0} == 1 ]]; then
    step bench_b64_compile 150 $PY "${BENCH[@]}" --batch 64 --steps 20 --compile \
        --json "$OUT/bench_b64_compile.json"
fi

echo "=== done in $(($(date +%s) - START))s"
cat "$SUMMARY"

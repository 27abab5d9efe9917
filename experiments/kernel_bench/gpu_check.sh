#!/usr/bin/env bash
# `make gpu-check`: the GPU tests, then the kernel benchmark grids, inside one time budget.
#
#   experiments/kernel_bench/gpu_check.sh [OUT_DIR] [BUDGET_S]
#
# Stages, in order of importance, each capped so that one slow stage cannot starve the rest:
#   tests        pytest -m gpu (kernels, topk_blocks, bench harness), 8 workers (compiling is the cost)
#   bench_gpu    conf/bench/gpu.yaml         dense causal / non-causal, N = 4k, 16k, 1k
#   bench_swa    conf/bench/gpu_swa.yaml     sliding windows at N = 16k
#   bench_topk   conf/bench/gpu_topk.yaml    content-selected blocks (topk_blocks) at N = 16k
#   bench_sparse conf/bench/gpu_sparse.yaml  block-sparse layouts and 8 documents at N = 16k
# A stage that hits its cap is stopped with SIGINT: pytest prints its summary and the bench
# keeps the rows it measured (results.csv is rewritten after every case). Everything lands in
# OUT_DIR (default outputs/gpu_check/<date>): one log per stage, status.txt, the bench folders,
# targets.md (`python -m attnlab.bench.targets`: each issue target, met or not) and
# OUT_DIR.tar.gz of all of it. Copy that folder under experiments/kernel_bench/ with the date.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${1:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
BUDGET_S=${2:-900}
PYTHON=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HYDRA_FULL_ERROR=1
mkdir -p "$OUT_DIR"
START=$(date +%s)

left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# stage NAME CAP_S CMD...: run CMD for at most min(CAP_S, time left), log to OUT_DIR/NAME.log
stage() {
    local name=$1 cap=$2 t rc s0
    shift 2
    t=$(left)
    ((t < cap)) && cap=$t
    if ((cap < 30)); then
        echo "$name: not run (budget spent)" | tee -a "$OUT_DIR/status.txt"
        return
    fi
    echo "=== $name (at most ${cap}s): $*"
    s0=$(date +%s)
    timeout --signal=INT --kill-after=20 "$cap" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    echo "$name: rc=$rc in $(($(date +%s) - s0))s$( ((rc == 124)) && echo ' (stopped at its time cap)')" |
        tee -a "$OUT_DIR/status.txt"
}

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    git rev-parse HEAD 2>/dev/null
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    "$PYTHON" -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT_DIR/env.txt"
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check needs a CUDA device')" || exit 1

# budget shares: tests 25%, dense 35%, sliding window 17%, topk_blocks 10%, block-sparse +
# documents the rest
stage tests $((BUDGET_S * 25 / 100)) "$PYTHON" -m pytest -m gpu -p no:cacheprovider -n 8 -v --durations=15 \
    tests/kernels tests/attention/test_topk_blocks_gpu.py tests/test_bench.py
stage bench_gpu $((BUDGET_S * 35 / 100)) "$PYTHON" -m attnlab.bench bench=gpu "hydra.run.dir=$OUT_DIR/bench_gpu"
stage bench_swa $((BUDGET_S * 17 / 100)) "$PYTHON" -m attnlab.bench bench=gpu_swa "hydra.run.dir=$OUT_DIR/bench_swa"
stage bench_topk $((BUDGET_S * 10 / 100)) "$PYTHON" -m attnlab.bench bench=gpu_topk "hydra.run.dir=$OUT_DIR/bench_topk"
stage bench_sparse "$BUDGET_S" "$PYTHON" -m attnlab.bench bench=gpu_sparse "hydra.run.dir=$OUT_DIR/bench_sparse"

"$PYTHON" -m attnlab.bench.targets "$OUT_DIR" --out "$OUT_DIR/targets.md" > /dev/null &&
    echo "targets: $OUT_DIR/targets.md" && head -12 "$OUT_DIR/targets.md"
tar -czf "$OUT_DIR.tar.gz" -C "$(dirname "$OUT_DIR")" "$(basename "$OUT_DIR")"
echo "gpu-check done in $(($(date +%s) - START))s: $OUT_DIR, $OUT_DIR.tar.gz"
cat "$OUT_DIR/status.txt"

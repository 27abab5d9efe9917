#!/usr/bin/env bash
# `make gpu-check`: the GPU tests, the kernel benchmark grids, the per-kernel breakdown, host
# overhead at N = 1k and end-to-end training throughput, inside one time budget (default 480 s).
#
#   experiments/kernel_bench/gpu_check.sh [--dry-run] [OUT_DIR] [BUDGET_S]
#
# Stages, in this order, each capped at a share of the budget so that one slow stage cannot
# starve the rest (the percentages are in STAGES below; --dry-run prints the caps in seconds):
#   tests        pytest -m gpu (kernels, topk_blocks, bench harness), 8 workers (compiling is the cost)
#   bench_gpu    conf/bench/gpu.yaml         dense causal / non-causal, N = 4k, 16k, 1k
#   breakdown    attnlab.bench.breakdown     per-kernel CUDA events (fwd, preprocess, dK/dV, dQ),
#                                            causal N = 16k, D = 64 and 128
#   e2e          attnlab.bench.e2e           ~162M Llama-style model, N = 16k: tokens/s triton vs
#                                            sdpa, dense and window 1024
#   host         attnlab.bench.host_overhead host us per fwd+bwd call at N = 1k, eager and CUDA graph
#   bench_swa    conf/bench/gpu_swa.yaml     sliding windows at N = 16k
#   bench_topk   conf/bench/gpu_topk.yaml    content-selected blocks (topk_blocks) at N = 16k
#   bench_sparse conf/bench/gpu_sparse.yaml  block-sparse layouts and 8 documents at N = 16k
# bench_gpu runs before the breakdown and e2e stages so that their N = 16k kernels find the
# autotuning results on disk. RESERVE_S of the budget is kept for the target table and the
# archive, and a stage past its cap gets SIGINT, then SIGKILL KILL_AFTER_S later, so the whole
# script ends within BUDGET_S. A stopped stage keeps what it measured: pytest prints its
# summary, the bench rewrites results.csv after every case and the other stages their tables
# after every row. Everything lands in OUT_DIR (default outputs/gpu_check/<date>): one log per
# stage, status.txt, the bench and stage folders, targets.md (`python -m attnlab.bench.targets`:
# each issue target, met / not met / not measured) and OUT_DIR.tar.gz of all of it. Copy that
# folder under experiments/kernel_bench/ with the date.
set -uo pipefail
cd "$(dirname "$0")/../.."
DRY_RUN=0
if [[ ${1:-} == --dry-run ]]; then
    DRY_RUN=1
    shift
fi
OUT_DIR=${1:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
BUDGET_S=${2:-480}
PYTHON=${PYTHON:-.venv/bin/python}
RESERVE_S=20
KILL_AFTER_S=10
MIN_STAGE_S=30
if ! [[ $BUDGET_S =~ ^[0-9]+$ ]] || ((BUDGET_S < RESERVE_S + MIN_STAGE_S)); then
    echo "error: BUDGET_S=$BUDGET_S must be a whole number of seconds >= $((RESERVE_S + MIN_STAGE_S))" >&2
    exit 2
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HYDRA_FULL_ERROR=1

# name, percent of BUDGET_S, command: split at spaces, then {PY} -> $PYTHON and {OUT} -> $OUT_DIR
# in each word. The caps and RESERVE_S add up to at most BUDGET_S at the default budget
# (--dry-run prints the sum); at any budget a stage never takes more than the time left.
STAGES=(
    "tests 15 {PY} -m pytest -m gpu -p no:cacheprovider -n 8 -v --durations=15 tests/kernels tests/attention/test_topk_blocks_gpu.py tests/test_bench.py"
    "bench_gpu 18 {PY} -m attnlab.bench bench=gpu hydra.run.dir={OUT}/bench_gpu"
    "breakdown 9 {PY} -m attnlab.bench.breakdown --out {OUT}/breakdown --seq-len 16384 --head-dims 64 128"
    "e2e 16 {PY} -m attnlab.bench.e2e --out {OUT}/e2e --seq-len 16384 --attention dense swa1024"
    "host 7 {PY} -m attnlab.bench.host_overhead --out {OUT}/host --seq-len 1024 --head-dims 64 128"
    "bench_swa 12 {PY} -m attnlab.bench bench=gpu_swa hydra.run.dir={OUT}/bench_swa"
    "bench_topk 6 {PY} -m attnlab.bench bench=gpu_topk hydra.run.dir={OUT}/bench_topk"
    "bench_sparse 13 {PY} -m attnlab.bench bench=gpu_sparse hydra.run.dir={OUT}/bench_sparse"
)

# stage_args ENTRY: sets name, pct, cap (seconds) and the command array args of a STAGES entry
stage_args() {
    local rest word words
    read -r name pct rest <<<"$1"
    read -ra words <<<"$rest"
    args=()
    for word in "${words[@]}"; do
        word=${word//\{OUT\}/$OUT_DIR}
        args+=("${word//\{PY\}/$PYTHON}")
    done
    cap=$((BUDGET_S * pct / 100))
}

if ((DRY_RUN)); then
    total=0
    echo "gpu-check plan: budget ${BUDGET_S}s, ${RESERVE_S}s kept for targets.md and the archive, OUT_DIR=$OUT_DIR"
    for entry in "${STAGES[@]}"; do
        stage_args "$entry"
        total=$((total + cap))
        printf '%-13s cap %4ss (%2s%%)  %s\n' "$name" "$cap" "$pct" "${args[*]}"
    done
    echo "sum of caps ${total}s + reserve ${RESERVE_S}s = $((total + RESERVE_S))s of ${BUDGET_S}s"
    exit 0
fi

mkdir -p "$OUT_DIR"
START=$(date +%s)

left() { echo $((BUDGET_S - RESERVE_S - ($(date +%s) - START))); }

# stage NAME CAP_S CMD...: run CMD for at most min(CAP_S, time left), log to OUT_DIR/NAME.log
stage() {
    local name=$1 cap=$2 t rc s0
    shift 2
    t=$(left)
    ((t < cap)) && cap=$((t - KILL_AFTER_S))
    if ((cap < MIN_STAGE_S)); then
        echo "$name: not run (budget spent)" | tee -a "$OUT_DIR/status.txt"
        return
    fi
    echo "=== $name (at most ${cap}s): $*"
    s0=$(date +%s)
    timeout --signal=INT --kill-after="$KILL_AFTER_S" "$cap" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
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

for entry in "${STAGES[@]}"; do
    stage_args "$entry"
    stage "$name" "$cap" "${args[@]}"
done

"$PYTHON" -m attnlab.bench.targets "$OUT_DIR" --out "$OUT_DIR/targets.md" > /dev/null &&
    echo "targets: $OUT_DIR/targets.md" && sed '/^$/q' "$OUT_DIR/targets.md"
tar -czf "$OUT_DIR.tar.gz" -C "$(dirname "$OUT_DIR")" "$(basename "$OUT_DIR")"
echo "gpu-check done in $(($(date +%s) - START))s: $OUT_DIR, $OUT_DIR.tar.gz"
cat "$OUT_DIR/status.txt"

#!/usr/bin/env bash
# experiments/lm_ablation: language-model quality where the window binds (CPU, ~3.5 h on 2 cores).
# 1. the sweep (conf/experiment/lm_ablation.yaml: small char model, context 256, 1500 steps;
#    dense, swa32, swa (64), hybrid, random25, swa16, swa8 x seeds 0, 1, 2; completed runs are skipped on a rerun);
# 2. on every run's final checkpoint: bits per byte by token position (how much context each
#    layout uses) and zero-shot passkey retrieval, into <run>/eval/ (skipped when eval.json exists);
# 3. the report (paired intervals against dense, the 3- and 5-gram floor on the same windows)
#    into experiments/lm_ablation/results, with the per-run evaluations gathered beside it.
# STEPS / SEEDS / OUT override the sweep for a quick smoke run (tests/ runs a tiny one).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 WANDB_MODE=${WANDB_MODE:-offline}
PY=${PYTHON:-.venv/bin/python}
SWEEP=${SWEEP:-multirun/lm_ablation}
OUT=${OUT:-experiments/lm_ablation/results}
EXTRA=${EXTRA:-}
$PY -m attnlab.train experiment=lm_ablation hydra.sweep.dir="$SWEEP" $EXTRA
for run in "$SWEEP"/*/; do
  [ -f "$run/metrics.json" ] || continue
  [ -f "$run/eval/eval.json" ] && continue
  $PY -m attnlab.eval source="$run" tasks=[bpb_by_position,passkey] data.context=256 windows=${WINDOWS:-256} \
    batch_size=16 passkey.distances=${PASSKEY_DISTANCES:-[64,80,96]} passkey.samples=${PASSKEY_SAMPLES:-20} \
    passkey.context=256 out_dir="$run/eval" > /dev/null
done
mkdir -p "$OUT"
$PY -m attnlab.report "$SWEEP" --baseline dense --out "$OUT"
$PY experiments/lm_ablation/gather_evals.py "$SWEEP" "$OUT"

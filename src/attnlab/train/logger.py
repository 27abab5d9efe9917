"""Run logging: JSONL in the run dir (always), wandb (offline by default), a progress bar."""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class RunLogger:
    """Appends one JSON object per log event to `<run_dir>/metrics.jsonl`; mirrors to wandb."""

    def __init__(self, run_dir: Path, cfg, config_record: dict, resume: bool):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.wandb = None
        if cfg.logger == "wandb" and cfg.wandb_mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.wandb = wandb.init(
                project=cfg.wandb_project, group=cfg.wandb_group, mode=cfg.wandb_mode, dir=str(run_dir),
                config=config_record, resume="allow" if resume else None,
                id=_wandb_id(run_dir, resume),
            )

    def log(self, record: dict) -> None:
        record = {k: _clean(v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=record.get("step"))

    def close(self, summary: dict | None = None) -> None:
        if self.wandb is not None:
            if summary:
                self.wandb.summary.update({k: _clean(v) for k, v in summary.items()})
            self.wandb.finish()


def _wandb_id(run_dir: Path, resume: bool) -> str:
    """One wandb id per run dir, kept in the run dir, so a resumed run continues its wandb run."""
    id_file = Path(run_dir) / "wandb_id.txt"
    if id_file.exists():
        return id_file.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    return run_id


def read_jsonl(path, skip_torn: bool = False) -> list[dict]:
    """The records of a JSONL file. ``skip_torn``: drop lines that do not parse (a process
    killed mid-write leaves a torn last line)."""
    records = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if not skip_torn:
                    raise
    return records

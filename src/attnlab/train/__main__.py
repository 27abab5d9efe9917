"""`python -m attnlab.train`: the Hydra entry point of the training job.

    python -m attnlab.train model=small attention=swa train.steps=500
    python -m attnlab.train resume=true hydra.run.dir=outputs/train/<run>   # continue a run

Writes into the run dir: config.json, metrics.jsonl (train/eval records), metrics.json
(final), checkpoints/latest.pt, and a wandb run (offline by default; train.logger=none
turns it off, train.wandb_mode=online logs online when you have a key).
"""

from __future__ import annotations

import hashlib
import json
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from attnlab.configs import from_dict
from attnlab.data import DataConfig
from attnlab.model import ModelConfig
from attnlab.paths import CONF_DIR
from attnlab.train.config import TrainConfig
from attnlab.train.loop import train


def configs_from(cfg: DictConfig) -> tuple[ModelConfig, DataConfig, TrainConfig]:
    """DictConfig -> the three plain dataclasses (errors name the config key)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    return (
        from_dict(ModelConfig, container["model"], "model"),
        from_dict(DataConfig, container["data"], "data"),
        from_dict(TrainConfig, container["train"], "train"),
    )


def config_hash(container: dict) -> str:
    """Identity of a run's settings (everything but `resume`): a sweep rerun skips a run
    whose dir already holds a complete metrics.json with this hash."""
    body = {k: v for k, v in container.items() if k != "resume"}
    return hashlib.sha1(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def already_complete(run_dir: Path, digest: str) -> bool:
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return metrics.get("status") == "complete" and metrics.get("config_hash") == digest


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        model_cfg, data_cfg, train_cfg = configs_from(cfg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    record = OmegaConf.to_container(cfg, resolve=True)
    record["config_hash"] = digest = config_hash(record)
    if already_complete(run_dir, digest):
        print(f"skip: {run_dir} already holds a complete run of this config ({digest})")
        done = json.loads((run_dir / "metrics.json").read_text())
        return done.get("val_bpb", done.get("val_loss"))
    if hydra_cfg.mode == RunMode.MULTIRUN and train_cfg.wandb_group is None:
        train_cfg.wandb_group = Path(hydra_cfg.sweep.dir).name  # wandb groups a sweep's runs
    (run_dir / "error.txt").unlink(missing_ok=True)
    try:
        metrics = train(model_cfg, data_cfg, train_cfg, run_dir, resume=bool(cfg.resume), config_record=record)
    except Exception as err:
        # Recorded for `python -m attnlab.report`; in a sweep the other runs go on.
        (run_dir / "error.txt").write_text(traceback.format_exc())
        print(f"error: run {run_dir} failed: {type(err).__name__}: {err}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return float("nan")  # a failed trial for a sweeper; the sweep goes on
        sys.exit(1)
    print(json.dumps(metrics, indent=2))
    print(f"run dir: {run_dir}")
    return metrics.get("val_bpb", metrics.get("val_loss"))  # the objective of hparams_search sweeps


if __name__ == "__main__":
    main()

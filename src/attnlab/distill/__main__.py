"""`python -m attnlab.distill`: the Hydra entry point of the distillation job.

    python -m attnlab.distill teacher=outputs/train/<run> model=tiny baseline=scratch
    python -m attnlab.distill teacher=<run> distill=transfer attention=swa32      # attention transfer
    python -m attnlab.distill teacher=smollm2 model=tiny data.context=256 distill=topk

Writes into the run dir: config.json, metrics.jsonl, metrics.json (student / teacher /
scratch val bpb, parameter and tokens/s ratios), checkpoints/latest.pt; ``scratch/`` for
``baseline=scratch``. A rerun with the same config in the same run dir is skipped.
"""

from __future__ import annotations

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
from attnlab.distill.config import DistillConfig
from attnlab.distill.trainer import distill
from attnlab.model import ModelConfig
from attnlab.paths import CONF_DIR
from attnlab.train.__main__ import already_complete, config_hash
from attnlab.train.config import TrainConfig


def configs_from(cfg: DictConfig) -> tuple[ModelConfig, DataConfig, DistillConfig, TrainConfig]:
    """DictConfig -> the plain dataclasses (errors name the config key)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    return (from_dict(ModelConfig, c["model"], "model"), from_dict(DataConfig, c["data"], "data"),
            from_dict(DistillConfig, c["distill"], "distill"), from_dict(TrainConfig, c["train"], "train"))


@hydra.main(config_path=str(CONF_DIR), config_name="distill", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        if cfg.get("teacher") in (None, "", "???") or OmegaConf.is_missing(cfg, "teacher"):
            raise ValueError("teacher is not set: teacher=<run dir of python -m attnlab.train | .pt | smollm2 | gguf:<path>>")
        model_cfg, data_cfg, distill_cfg, train_cfg = configs_from(cfg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    record = OmegaConf.to_container(cfg, resolve=True)
    record["config_hash"] = digest = config_hash(record)
    if already_complete(run_dir, digest):
        print(f"skip: {run_dir} already holds a complete run of this config ({digest})")
        return
    (run_dir / "error.txt").unlink(missing_ok=True)
    try:
        metrics = distill(model_cfg, data_cfg, distill_cfg, train_cfg, run_dir, teacher=str(cfg.teacher),
                          baseline=str(cfg.baseline), resume=bool(cfg.resume), config_record=record)
    except Exception as err:
        (run_dir / "error.txt").write_text(traceback.format_exc())
        print(f"error: run {run_dir} failed: {type(err).__name__}: {err}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return
        sys.exit(1)
    print(json.dumps(metrics, indent=2))
    print(f"run dir: {run_dir}")


if __name__ == "__main__":
    main()

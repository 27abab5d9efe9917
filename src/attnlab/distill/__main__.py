"""`python -m attnlab.distill`: the Hydra entry point of the distillation job.

    python -m attnlab.distill teacher=outputs/train/<run> model=tiny baseline=scratch
    python -m attnlab.distill teacher=<run> distill=transfer attention=swa32      # attention transfer
    python -m attnlab.distill teacher=smollm2 model=tiny data.context=256 distill=topk
    torchrun --nproc_per_node=4 -m attnlab.distill teacher=<run> train.distributed=ddp   # or fsdp

Writes into the run dir: config.json, metrics.jsonl, metrics.json (student / teacher /
scratch val bpb, parameter and tokens/s ratios), checkpoints/latest.pt (step_<N>.dcp/ +
latest_dcp.json with FSDP); ``scratch/`` for ``baseline=scratch``. A rerun with the same
config in the same run dir is skipped; ``resume=auto|true|false|force`` and run-dir locking
are the training job's (`python -m attnlab.train`). Under torchrun every process takes its rows of each
global batch and rank 0 alone writes files, as `python -m attnlab.train` does.
Bad input (a config value, an unknown key, a teacher that is missing or not a model) prints
one line `error: ...` naming the key and exits with status 2 (HYDRA_FULL_ERROR=1: the traceback).
"""

from __future__ import annotations

import json
import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from attnlab.configs import from_dict
from attnlab.data import DataConfig, data_config_from_dict
from attnlab.distill.config import DistillConfig
from attnlab.distill.trainer import BASELINES, distill
from attnlab.errors import UserInputError, hydra_cli, print_error, user_error_types
from attnlab.model import ModelConfig
from attnlab.paths import CONF_DIR
from attnlab.pretrained.sources import load_source
from attnlab.train import checkpoint as ckpt
from attnlab.train.__main__ import _quiet_other_ranks, _record_failed_config, open_run
from attnlab.train.config import TrainConfig
from attnlab.train.distributed import Dist, setup, world_size_from_env
from attnlab.train.loop import check_world_size
from attnlab.train.rundir import RunDirError, locked, parse_resume


def configs_from(cfg: DictConfig) -> tuple[ModelConfig, DataConfig, DistillConfig, TrainConfig]:
    """DictConfig -> the plain dataclasses (errors name the config key)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    return (from_dict(ModelConfig, c["model"], "model"), data_config_from_dict(c["data"], "data"),
            from_dict(DistillConfig, c["distill"], "distill"), from_dict(TrainConfig, c["train"], "train"))


@hydra.main(config_path=str(CONF_DIR), config_name="distill", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        if cfg.get("teacher") in (None, "", "???") or OmegaConf.is_missing(cfg, "teacher"):
            raise ValueError("teacher is not set: teacher=<run dir of python -m attnlab.train | .pt | smollm2 | gguf:<path>>")
        model_cfg, data_cfg, distill_cfg, train_cfg = configs_from(cfg)
        if train_cfg.frozen:
            raise UserInputError(f"train.trainable={train_cfg.trainable!r}: python -m attnlab.distill trains every "
                                 "parameter of the student (train.trainable=all); freezing and LoRA are "
                                 "python -m attnlab.train's (init=<teacher>)")
        if cfg.baseline not in BASELINES:
            raise UserInputError(f"baseline={cfg.baseline!r} is not allowed: one of {', '.join(BASELINES)}")
        parse_resume(cfg.resume)
        if train_cfg.distributed != "none":
            check_world_size(data_cfg, world_size_from_env())
        dist = setup(train_cfg.distributed, train_cfg.device)
    except user_error_types() as err:
        print_error(err)  # one line (HYDRA_FULL_ERROR=1: the traceback first)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            _record_failed_config(cfg, err)
            return
        sys.exit(2)
    try:
        _run(cfg, model_cfg, data_cfg, distill_cfg, train_cfg, dist)
    finally:
        dist.close()


def _run(cfg: DictConfig, model_cfg, data_cfg, distill_cfg, train_cfg, dist: Dist) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir, record, _, done = open_run(cfg, dist)
    if done:
        return
    try:  # the teacher is the user's input: a missing or unreadable one is one line, status 2
        teacher = load_source(str(cfg.teacher), "teacher", context=None, cache_dir=data_cfg.resolved_cache_dir(),
                              needed_context=data_cfg.context)
    except UserInputError as err:
        print_error(err)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            if dist.is_main:
                _record_failed_config(cfg, err)
            return
        sys.exit(2)
    try:
        with locked(run_dir, dist):
            if dist.is_main:
                (run_dir / "error.txt").unlink(missing_ok=True)
            metrics = distill(model_cfg, data_cfg, distill_cfg, train_cfg, run_dir, teacher=teacher,
                              baseline=str(cfg.baseline), resume=parse_resume(cfg.resume), config_record=record,
                              dist=dist)
    except RunDirError as err:  # locked, or a run it would destroy: the run dir is left as it is
        print(f"error: {err}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return
        sys.exit(2)
    except Exception as err:
        where = f"rank {dist.rank} of {dist.world}\n" if dist.active else ""
        ckpt.atomic_write_text(where + traceback.format_exc(), run_dir / "error.txt")
        print(f"error: run {run_dir} failed: {type(err).__name__}: {err}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return
        sys.exit(1)
    if dist.is_main:
        print(json.dumps(metrics, indent=2))
        print(f"run dir: {run_dir}")


def cli() -> None:
    """The command: Hydra's own errors (an unknown key or config option) end as one line, status 2."""
    sys.argv = _quiet_other_ranks(sys.argv)
    hydra_cli(main)()


if __name__ == "__main__":
    cli()

"""`python -m attnlab.train`: the Hydra entry point of the training job.

    python -m attnlab.train model=small attention=swa train.steps=500
    python -m attnlab.train hydra.run.dir=outputs/train/<run>     # rerun: skip, or continue
    python -m attnlab.train init=smollm2 attention=swa_sink train.trainable=lora   # from a pretrained model
    torchrun --nproc_per_node=4 -m attnlab.train train.distributed=ddp   # or fsdp (README: "Training on several GPUs or nodes")

Writes into the run dir: config.json, metrics.jsonl (train/eval records), metrics.json
(final), checkpoints/ (latest.pt, or step_<N>.dcp/ + latest_dcp.json with FSDP), and a
wandb run (offline by default; train.logger=none turns it off, train.wandb_mode=online logs
online when you have a key). A failed run writes error.txt.

Rerunning into the same run dir (a sweep rerun, a run restarted after a kill) never destroys
a run, and a run dir has one writer at a time (`attnlab.train.rundir`: a second job writing
it is refused, naming the holder's pid and host):
- a complete run of the same config (hash of the keys that change results) is skipped;
- `resume=auto` (default): an unfinished run of the same config continues from its latest
  checkpoint (the result equals an uninterrupted run: batches are a function of the step,
  checkpoints hold every RNG state); a run of another config is kept and the job stops,
  naming the keys that differ;
- `resume=true` continues from the checkpoint whatever its config (e.g. more train.steps);
  `resume=false` starts only where there is no run to lose; `resume=force` starts over
  (removes the run's checkpoints and metrics).
``init=<source>`` (smollm2, gguf:<path>, a run dir, a .pt; anything `load_source` takes) starts
from that model: its architecture, weights and tokenizer (`attnlab.train.pretrained_init`).
The ``model=`` preset and ``model.*`` keys other than the attention layout, context, attn_impl
and dropout are refused, naming them. ``train.trainable`` freezes the rest of the model
(``lora`` adds adapters; `attnlab.train.trainable`).

Config errors (a bad value, an unknown key or config option) print one line `error: ...` naming
the key (e.g. `train.lr=-1.0 ...`) and exit with status 2; in a sweep (-m) the run is recorded
as failed and the sweep goes on. HYDRA_FULL_ERROR=1 shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from attnlab.attention import AttentionSpec
from attnlab.configs import from_dict
from attnlab.data import DataConfig, build_data, data_config_from_dict
from attnlab.errors import hydra_cli, print_error, user_error_types
from attnlab.model import ModelConfig
from attnlab.paths import CONF_DIR
from attnlab.train import checkpoint as ckpt
from attnlab.train import pretrained_init
from attnlab.train.config import TrainConfig
from attnlab.train.distributed import Dist, rank_from_env, setup, world_size_from_env
from attnlab.train.loop import check_against_corpus, check_world_size, train
from attnlab.train.rundir import RunDirError, config_hash, holds_run, locked, parse_resume
from attnlab.train.trainable import check_trainable


def configs_from(cfg: DictConfig) -> tuple[ModelConfig | None, DataConfig, TrainConfig]:
    """DictConfig -> the three plain dataclasses (errors name the config key). With ``init``
    set the model is the pretrained one's (`init_configs`): None here."""
    container = OmegaConf.to_container(cfg, resolve=True)
    check_attention_specs(container["model"])
    init = container.get("init") is not None
    return (
        None if init else from_dict(ModelConfig, container["model"], "model"),
        data_config_from_dict(container["data"], "data"),
        from_dict(TrainConfig, container["train"], "train"),
    )


MODEL_GROUPS = ("model", "attention")  # the config groups that make up `model`


def _default_presets() -> dict[str, str]:
    """conf/train.yaml's default option of each of `MODEL_GROUPS`."""
    defaults = OmegaConf.load(CONF_DIR / "train.yaml").defaults
    found = {k: v for entry in defaults if isinstance(entry, dict | DictConfig) for k, v in entry.items()}
    return {g: found.get(g) for g in MODEL_GROUPS}


def user_model_keys(cfg: DictConfig) -> list[str]:
    """The `ModelConfig` fields this job's config sets beyond the default presets (``model``
    for the ``model=`` preset itself): from command-line overrides (even to a preset's own
    value), group choices and experiment files (any value that differs from the presets')."""
    hydra_cfg = HydraConfig.get()
    choices = hydra_cfg.runtime.choices
    keys: list[str] = []

    def add(*names):
        keys.extend(n for n in names if n not in keys)

    for override in hydra_cfg.overrides.task:
        name = override.split("=", 1)[0].lstrip("+~")
        if name in ("model", "attention"):
            add(*(("model",) if name == "model" else ("attention", "layer_pattern")))
        elif name.startswith("model."):
            add(name.split(".")[1])
    for group, default in _default_presets().items():
        if choices.get(group) != default:
            add(*(("model",) if group == "model" else ("attention", "layer_pattern")))
    presets = OmegaConf.merge(*(OmegaConf.load(CONF_DIR / g / f"{choices.get(g)}.yaml") for g in MODEL_GROUPS))
    presets = OmegaConf.to_container(presets, resolve=True)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    add(*(k for k in model if model[k] != presets.get(k)))
    if "attention" in keys or "layer_pattern" in keys:  # a layout is the pair
        add("attention", "layer_pattern")
    return keys


def init_configs(cfg: DictConfig, data_cfg: DataConfig):
    """``init=<source>``: refuse model keys it cannot take (before loading anything), load the
    source, and return ``(pretrained, model config, corpus in its tokens)``."""
    source = str(cfg.init)
    keys = user_model_keys(cfg)
    pretrained_init.check_model_keys(source, keys, HydraConfig.get().runtime.choices.get("model"))
    model = OmegaConf.to_container(cfg.model, resolve=True)
    overrides = {k: model[k] for k in keys}
    pre = pretrained_init.load_init(source, data_cfg, context=overrides.get("context"))
    model_cfg = pretrained_init.init_model_config(pre, overrides)
    pretrained_init.check_init_context(data_cfg, model_cfg, pre)
    corpus = pretrained_init.init_corpus(data_cfg, pre)
    return pre, model_cfg, corpus


def check_attention_specs(model: dict) -> None:
    """Build the spec of every attention name the layer pattern uses, so that a bad value
    fails at load time naming its key, e.g. ``model.attention.swa.kind='spiral'``."""
    attention, pattern = model.get("attention"), model.get("layer_pattern")
    if not isinstance(attention, dict) or not isinstance(pattern, list):
        return  # ModelConfig says what is wrong with the shape
    causal = model.get("objective", "causal") == "causal"
    for name in dict.fromkeys(pattern):
        kwargs = attention.get(name)
        if not isinstance(kwargs, dict):
            continue
        cls = AttentionSpec
        if kwargs.get("kind") == "nsa":  # a model layer (attnlab.model.nsa), not a mask spec
            from attnlab.model.nsa import NSASpec as cls
        try:
            cls(**{"causal": causal, **kwargs})
        except TypeError as err:  # an unknown field
            unknown = sorted(set(kwargs) - set(cls.__dataclass_fields__))
            keys = ", ".join(f"model.attention.{name}.{k}" for k in unknown) or f"model.attention.{name}"
            raise ValueError(f"{keys}: not an AttentionSpec field ({err})") from None
        except ValueError as err:
            field = next((f for f in AttentionSpec.__dataclass_fields__ if f"AttentionSpec.{f}" in str(err)), None)
            key = f"model.attention.{name}.{field}" if field else f"model.attention.{name}"
            value = f"={kwargs[field]!r}" if field in kwargs else ""
            raise ValueError(f"{key}{value}: {err}") from None


def load_corpus(data_cfg: DataConfig):
    """`build_data`, with a corpus-size error turned into one that leads with `data.context`."""
    try:
        return build_data(data_cfg)
    except ValueError as err:
        if "context" in str(err) and "data.context=" not in str(err):
            raise ValueError(f"data.context={data_cfg.context} is too long for this corpus: {err}") from None
        raise


def already_complete(run_dir: Path, digest: str) -> bool:
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return metrics.get("status") == "complete" and metrics.get("config_hash") == digest


def _agree_on_run_dir(own: Path, dist: Dist) -> Path:
    """Every rank uses rank 0's run dir (`${now:...}` may differ by a second across ranks)."""
    run_dir = Path(dist.broadcast_object(str(own)))
    if run_dir != own:
        try:
            own.rmdir()  # the empty folder Hydra made for this rank
        except OSError:
            pass
    return run_dir


def open_run(cfg: DictConfig, dist: Dist, record_update: dict | None = None) -> tuple[Path, dict, str, bool]:
    """Start of a training or distillation job: (run dir, resolved config record with its
    ``config_hash``, the hash, done?). Every rank takes rank 0's run dir; done = the dir already
    holds a complete run of this config (rank 0 says so), so the job is skipped.
    ``record_update``: entries that replace or join the config's before it is hashed."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if dist.active:
        run_dir = _agree_on_run_dir(run_dir, dist)
    record = OmegaConf.to_container(cfg, resolve=True) | (record_update or {})
    record["config_hash"] = digest = config_hash(record)
    done = already_complete(run_dir, digest)
    if done and dist.is_main:
        print(f"skip: {run_dir} already holds a complete run of this config ({digest})")
    return run_dir, record, digest, done


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Returns the run's final val bpb (val loss for MLM): the objective of hparams_search sweeps."""
    try:
        model_cfg, data_cfg, train_cfg = configs_from(cfg)
        resume = parse_resume(cfg.resume)
        if train_cfg.distributed != "none":
            check_world_size(data_cfg, world_size_from_env())
        if cfg.get("init") is not None:
            pre, model_cfg, corpus = init_configs(cfg, data_cfg)
            data_cfg = corpus.config
        else:
            pre, corpus = None, load_corpus(data_cfg)
        model_cfg = check_against_corpus(model_cfg, data_cfg, corpus)
        check_trainable(model_cfg, train_cfg)
        dist = setup(train_cfg.distributed, train_cfg.device)
    except user_error_types() as err:
        print_error(err)  # one line (HYDRA_FULL_ERROR=1: the traceback first)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return _record_failed_config(cfg, err)
        sys.exit(2)
    try:
        return _run(cfg, model_cfg, data_cfg, train_cfg, corpus, resume, dist, pre)
    finally:
        dist.close()


def _record_failed_config(cfg: DictConfig, err: Exception) -> float:
    """In a sweep, a run whose config is invalid is recorded as failed and the sweep goes on."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if holds_run(run_dir):  # a run of another config: it is kept as it is
        return float("nan")
    record = OmegaConf.to_container(cfg, resolve=False)
    ckpt.atomic_write_text(json.dumps(record, indent=2, default=str), run_dir / "config.json")
    ckpt.atomic_write_text(f"invalid config\n{type(err).__name__}: {err}\n", run_dir / "error.txt")
    return float("nan")


def _objective(metrics: dict) -> float | None:
    return metrics.get("val_bpb", metrics.get("val_loss"))


def _run(cfg, model_cfg, data_cfg, train_cfg, corpus, resume, dist: Dist, pre=None) -> float | None:
    hydra_cfg = HydraConfig.get()
    update = None
    if pre is not None:  # the model and data actually trained, the source's checksum and tokenizer
        update = {"model": asdict(model_cfg), "data": asdict(data_cfg), **pretrained_init.init_record(pre, corpus)}
    run_dir, record, _, done = open_run(cfg, dist, update)
    if done:
        return _objective(json.loads((run_dir / "metrics.json").read_text()))
    if hydra_cfg.mode == RunMode.MULTIRUN and train_cfg.wandb_group is None:
        train_cfg.wandb_group = Path(hydra_cfg.sweep.dir).name  # wandb groups a sweep's runs
    try:
        with locked(run_dir, dist):
            metrics = train(model_cfg, data_cfg, train_cfg, run_dir, resume=resume, config_record=record,
                            corpus=corpus, dist=dist, init=pre)
    except RunDirError as err:  # locked, or a run it would destroy: the run dir is left as it is
        print(f"error: {err}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return float("nan")
        sys.exit(2)
    except Exception as err:
        # Recorded for `python -m attnlab.report`; in a sweep the other runs go on.
        where = f"rank {dist.rank} of {dist.world}\n" if dist.active else ""
        ckpt.atomic_write_text(where + traceback.format_exc(), run_dir / "error.txt")
        print(f"error: run {run_dir} failed: {type(err).__name__}: {err}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return float("nan")  # a failed trial for a sweeper; the sweep goes on
        sys.exit(1)
    if dist.is_main:
        print(json.dumps(metrics, indent=2))
        print(f"run dir: {run_dir}")
    return _objective(metrics)


def _quiet_other_ranks(argv: list[str]) -> list[str]:
    """Under torchrun only rank 0 lets Hydra write `.hydra/` and the job log into the run dir."""
    if rank_from_env() == 0:
        return argv
    given = {a.split("=", 1)[0].lstrip("+~") for a in argv[1:]}
    quiet = {"hydra.output_subdir": "null", "hydra/job_logging": "none", "hydra/hydra_logging": "none"}
    return argv + [f"{k}={v}" for k, v in quiet.items() if k not in given]


def cli() -> None:
    """The command: Hydra's own errors (an unknown key or config option) end as one line, status 2."""
    sys.argv = _quiet_other_ranks(sys.argv)
    hydra_cli(main)()


if __name__ == "__main__":
    cli()

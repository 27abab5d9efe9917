"""`python -m attnlab.eval`: validation bits per byte of any model on any corpus.

    python -m attnlab.eval source=smollm2 data.context=512 windows=16       # SmolLM2-135M (GGUF)
    python -m attnlab.eval source=outputs/train/<run>                      # an attnlab run
    python -m attnlab.eval source=outputs/train/<run> +attention=swa32      # with another attention

``source``: smollm2, gguf:<path>, a run dir of `python -m attnlab.train` / `attnlab.distill`,
or a checkpoint .pt. The corpus (``data``, conf/data) is tokenized with the model's own
tokenizer (``data.tokenizer`` is not used), cut into the fixed validation windows of
``data.context`` tokens (`attnlab.data`: non-overlapping, from the start of the val split),
and the first ``windows`` of them are scored (null = all; CPUs want a bound). bpb =
summed next-token loss in bits over the exact UTF-8 bytes of the scored target tokens, so it
compares across tokenizers. Prints (and with ``out=<file>`` writes) a JSON record that says
how many windows were scored out of how many.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from attnlab.data import DataConfig, bits_per_byte, data_config_from_dict
from attnlab.model import Transformer, num_params
from attnlab.pretrained import Pretrained, build_corpus, load_pretrained
from attnlab.train.config import TrainConfig
from attnlab.train.loop import evaluate, resolve_device


def with_attention(pre: Pretrained, attention: dict, layer_pattern: list[str]) -> Pretrained:
    """The same weights with another per-layer attention layout (no training)."""
    from attnlab.distill.student import transfer_config

    cfg = transfer_config(pre.config, attention, layer_pattern)
    model = Transformer(cfg)
    model.load_state_dict(pre.model.state_dict())
    return replace(pre, model=model.eval(), config=cfg)


def evaluate_bpb(pre: Pretrained, data_cfg: DataConfig, windows: int | None = None, batch_size: int = 1,
                 device: str = "auto") -> dict:
    """Val loss and bits per byte of ``pre`` on the first ``windows`` validation windows of
    ``data_cfg``'s corpus (tokenized with ``pre.tokenizer``)."""
    if windows is not None and (isinstance(windows, bool) or not isinstance(windows, int) or windows < 1):
        raise ValueError(f"windows={windows!r} must be a positive int or null (all validation windows)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")
    if data_cfg.context > pre.config.context:
        raise ValueError(f"data.context={data_cfg.context} exceeds the model's context={pre.config.context}")
    dev = resolve_device(device)
    corpus = build_corpus(replace(data_cfg, batch_size=batch_size), pre.tokenizer)
    batches = None if windows is None else math.ceil(min(windows, corpus.val_windows) / batch_size)
    model = pre.model.to(dev).eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
    t0 = time.perf_counter()
    out = evaluate(model, corpus, pre.config, TrainConfig(eval_batches=batches, device=str(dev)), dev, autocast)
    seconds = time.perf_counter() - t0
    model.eval()
    ctx = corpus.config.context
    scored = out["val_tokens"] // ctx
    targets = np.asarray(corpus.val_tokens[1 : out["val_tokens"] + 1], dtype=np.int64)
    n_bytes = int(corpus.tokenizer.token_byte_lengths()[targets].sum())
    return {
        "source": pre.source,
        "kind": pre.kind,
        "val_bpb": out["val_bpb"],
        "val_bpb_check": bits_per_byte(out["val_loss"], out["val_tokens"], n_bytes),
        "val_loss": out["val_loss"],
        "val_ppl": out["val_ppl"],
        "windows": scored,
        "windows_total": corpus.val_windows,
        "context": ctx,
        "tokens": out["val_tokens"],
        "bytes": n_bytes,
        "bytes_per_token": n_bytes / max(1, out["val_tokens"]),
        "tokens_per_s": out["val_tokens"] / seconds if seconds > 0 else None,
        "seconds": seconds,
        "params": num_params(model),
        "attention": _runs([s.name for s in pre.config.layer_specs()]),
        "tokenizer": corpus.tokenizer.fingerprint(),
        "corpus": corpus.config.name,
        "val_documents": [name for name, _ in corpus.val_documents],
        "device": str(dev),
    }


def _runs(names: list[str]) -> str:
    """``[a, a, b, a] -> "2 x a, b, a"``: a per-layer list, short."""
    out, i = [], 0
    while i < len(names):
        j = i
        while j < len(names) and names[j] == names[i]:
            j += 1
        out.append(names[i] if j - i == 1 else f"{j - i} x {names[i]}")
        i = j
    return ", ".join(out)


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from attnlab.paths import CONF_DIR

    @hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
    def run(cfg: DictConfig) -> None:
        c = OmegaConf.to_container(cfg, resolve=True)
        try:
            if c.get("source") in (None, "", "???"):
                raise ValueError("source is not set: source=<smollm2 | gguf:<path> | run dir | checkpoint .pt>")
            data_cfg = data_config_from_dict(c["data"], "data")
            override = c.get("model") or {}
            unknown = sorted(set(override) - {"attention", "layer_pattern"})
            if unknown:
                raise ValueError(f"eval: model.{unknown[0]} cannot be changed; only model.attention and "
                                 "model.layer_pattern (e.g. +attention=swa32) can")
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        pre = load_pretrained(c["source"], attn_impl=c.get("attn_impl"), cache_dir=data_cfg.resolved_cache_dir())
        if override:
            pre = with_attention(pre, override.get("attention", pre.config.attention),
                                 override.get("layer_pattern", pre.config.layer_pattern))
        result = evaluate_bpb(pre, data_cfg, c.get("windows"), c.get("batch_size", 1), c.get("device", "auto"))
        text = json.dumps(result, indent=2)
        print(text)
        print(f"{pre.source}: val bpb {result['val_bpb']:.4f} over {result['windows']} of {result['windows_total']} "
              f"windows of {result['context']} tokens ({result['bytes']:,} bytes)")
        if c.get("out"):
            Path(c["out"]).parent.mkdir(parents=True, exist_ok=True)
            Path(c["out"]).write_text(text + "\n")

    run()




if __name__ == "__main__":
    main()

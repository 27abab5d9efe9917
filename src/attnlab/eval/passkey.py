"""Zero-shot passkey retrieval (``tasks=[passkey]``) for any model with a text tokenizer
(SmolLM2's GGUF BPE, a byte-level or BPE attnlab run).

Each prompt is built in the model's own tokens, piece by piece (so distances are exact):

    INSTRUCTION | filler A | " The pass key is KEY. Remember it. " | filler B | " What is the pass key? The pass key is " KEY
                                               ^ hidden digit                                                    ^ answer digit

- filler: held-out play text without digits (`attnlab.data.passkey.filler_text("val")`),
  one contiguous stretch from a random offset, cut into A and B around the sentence;
- **distance** (tokens): position of the token holding the answer's first digit minus
  position of the token holding the hidden key's first digit, exactly as configured: B is
  sized for it (so the smallest distance is the sentence's and question's own length);
- **length**: every prompt has the same number of tokens, ``context`` (default: the
  smallest that fits the largest distance with an empty A), so the sentence sits at depth
  ``1 - distance / length`` and only the distance varies between points;
- the answer: the tokens of the whole question-and-key text after the longest prefix it
  shares with the question alone (the key's canonical tokenization; for SmolLM2 the digits
  one per token).

Scoring is one teacher-forced forward pass per prompt: a prompt counts as retrieved when
the argmax at every answer token is that token, which is exactly when greedy decoding
produces the answer tokens. Reported per distance: exact-match accuracy (with a 95% Wilson
interval over the independent prompts), per-token accuracy and mean log-probability of the
answer. Keys and filler offsets are a function of ``(seed, distance, sample)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from attnlab.data.passkey import MAX_DIGITS, QUESTION, SENTENCE_PREFIX, SENTENCE_SUFFIX, filler_text

INSTRUCTION = ("There is an important piece of information hidden inside a lot of irrelevant text. "
               "Find it and memorize it. I will quiz you about it.\n\n")


@dataclass(frozen=True)
class PasskeyPrompt:
    """One prompt: ``tokens`` (prompt then answer), ``answer_start`` (index of the first answer
    token), the hidden/answer first-digit token positions and their ``distance``."""

    tokens: tuple[int, ...]
    answer_start: int
    key: str
    distance: int
    hidden_digit: int
    answer_digit: int

    @property
    def depth(self) -> float:
        """Where the hidden digit sits in the prompt: 0 = start, 1 = end."""
        return self.hidden_digit / len(self.tokens)


def _bad(key: str, value, allowed: str) -> ValueError:
    return ValueError(f"passkey.{key}={value!r} is not allowed: {allowed}")


def check_options(distances, samples, digits, seed, context) -> tuple[int, ...]:
    """Validate the ``passkey.*`` options; returns the distances as a tuple."""
    if isinstance(distances, str | bytes) or not hasattr(distances, "__iter__"):
        raise _bad("distances", distances, "a non-empty list of distinct positive integers (tokens)")
    out = tuple(distances)
    if not out or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in out) \
            or len(set(out)) != len(out):
        raise _bad("distances", distances, "a non-empty list of distinct positive integers (tokens)")
    for key, value, low, high in (("samples", samples, 1, None), ("digits", digits, 1, MAX_DIGITS),
                                  ("seed", seed, 0, 2**63 - 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
            raise _bad(key, value, f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]")
    if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context < 1):
        raise _bad("context", context, "a positive integer (tokens per prompt) or null (the shortest that fits)")
    return out


_FILLER_TOKENS: dict[str, np.ndarray] = {}


def filler_tokens(tokenizer) -> np.ndarray:
    """The held-out filler text in ``tokenizer``'s tokens (cached per tokenizer fingerprint)."""
    key = tokenizer.fingerprint()
    if key not in _FILLER_TOKENS:
        _FILLER_TOKENS[key] = np.asarray(tokenizer.encode(filler_text("val")), dtype=np.int64)
    return _FILLER_TOKENS[key]


def _token_at_byte(tokenizer, tokens: list[int], offset: int) -> int:
    """Index of the token of ``tokens`` that holds byte ``offset`` of their text."""
    ends = np.cumsum(np.asarray(tokenizer.token_byte_lengths())[np.asarray(tokens, dtype=np.int64)])
    i = int(np.searchsorted(ends, offset, side="right"))
    if i >= len(tokens):
        raise ValueError(f"byte {offset} lies beyond the {int(ends[-1]) if len(ends) else 0} bytes of the tokens")
    return i


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _pieces(tokenizer, key: str):
    """``(sentence tokens, hidden-digit index, question+answer tokens, answer start, answer-digit index)``."""
    sentence = tokenizer.encode(SENTENCE_PREFIX + key + SENTENCE_SUFFIX)
    hidden = _token_at_byte(tokenizer, sentence, len(SENTENCE_PREFIX.encode()))
    question = tokenizer.encode(QUESTION)
    qa = tokenizer.encode(QUESTION + key)
    start = _common_prefix(question, qa)
    if start == len(qa):
        raise ValueError(f"the tokenizer {tokenizer!r} gives the key {key!r} no tokens after the question")
    answer = _token_at_byte(tokenizer, qa, len(QUESTION.encode()))
    return sentence, hidden, qa, start, answer


def build_prompts(tokenizer, distances, samples: int, digits: int = 5, seed: int = 0,
                  context: int | None = None, max_tokens: int | None = None) -> list[PasskeyPrompt]:
    """``samples`` prompts per distance (module docstring), all ``context`` tokens long (None:
    the shortest length that fits every distance). ``max_tokens``: the model's context + 1
    (its inputs are ``tokens[:-1]``); longer prompts raise ``ValueError`` naming the option."""
    distances = check_options(distances, samples, digits, seed, context)
    if not hasattr(tokenizer, "encode") or not hasattr(tokenizer, "token_byte_lengths"):
        raise ValueError(f"passkey prompts need a text tokenizer; {tokenizer!r} has none")
    instruction = tokenizer.encode(INSTRUCTION)
    filler = filler_tokens(tokenizer)
    plans = []
    for d in distances:
        for s in range(samples):
            rng = np.random.default_rng([seed, d, s])
            key = str(rng.integers(1, 10)) + "".join(str(v) for v in rng.integers(0, 10, digits - 1))
            sentence, hidden, qa, start, answer = _pieces(tokenizer, key)
            b = d - (len(sentence) - hidden) - answer  # filler tokens between sentence and question
            if b < 0:
                raise _bad("distances", list(distances),
                           f"each at least {d - b} tokens here (the key sentence and the question alone span that)")
            plans.append((d, rng, key, sentence, hidden, qa, start, answer, b))
    fixed = len(instruction)
    need = max(fixed + len(p[3]) + p[8] + len(p[5]) for p in plans)  # with an empty filler A
    length = need if context is None else context
    if length < need:
        raise _bad("context", context, f"at least {need} tokens: the largest distance needs that many")
    if max_tokens is not None and length > max_tokens:
        what = "passkey.context" if context is not None else f"passkey.distances={list(distances)}"
        raise ValueError(f"{what}: prompts of {length} tokens do not fit the model's context of {max_tokens - 1} "
                         f"(+1 answer token); use smaller distances")
    prompts = []
    for d, rng, key, sentence, hidden, qa, start, answer, b in plans:
        a = length - (fixed + len(sentence) + b + len(qa))
        if a + b > len(filler):
            raise ValueError(f"passkey: the filler text has {len(filler)} tokens, fewer than the {a + b} needed")
        offset = int(rng.integers(0, len(filler) - (a + b) + 1))
        chunk = filler[offset : offset + a + b].tolist()
        tokens = [*instruction, *chunk[:a], *sentence, *chunk[a:], *qa]
        base = fixed + a
        hidden_pos, answer_pos = base + hidden, base + len(sentence) + b + answer
        assert answer_pos - hidden_pos == d and len(tokens) == length  # by construction
        prompts.append(PasskeyPrompt(tuple(tokens), base + len(sentence) + b + start, key, d, hidden_pos, answer_pos))
    return prompts


@torch.no_grad()
def score_prompts(model, prompts: list[PasskeyPrompt], batch_size: int = 1, device="cpu") -> list[dict]:
    """Teacher-forced answer scores of each prompt: ``correct`` (every answer token is the
    argmax), ``token_accuracy``, ``logprob`` (summed, nats) and ``argmax`` (the argmax tokens)."""
    model.eval()
    out: list[dict] = [{} for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].tokens))
    for i in range(0, len(order), batch_size):
        group = order[i : i + batch_size]
        by_len: dict[int, list[int]] = {}
        for j in group:
            by_len.setdefault(len(prompts[j].tokens), []).append(j)
        for _, rows in by_len.items():
            x = torch.tensor([prompts[j].tokens[:-1] for j in rows], dtype=torch.long, device=device)  # (B, L-1)
            logits, _ = model(x)  # (B, L-1, V)
            for r, j in enumerate(rows):
                p = prompts[j]
                target = torch.tensor(p.tokens[p.answer_start :], device=device)  # (A,)
                pred = logits[r, p.answer_start - 1 :].float()  # (A, V): position t predicts token t + 1
                logp = torch.log_softmax(pred, dim=-1).gather(1, target[:, None])[:, 0]
                hits = pred.argmax(dim=-1) == target
                out[j] = {"correct": bool(hits.all()), "token_accuracy": float(hits.float().mean()),
                          "logprob": float(logp.sum()), "argmax": pred.argmax(dim=-1).tolist()}
    return out


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def passkey_zero_shot(pre, distances, samples: int = 4, digits: int = 5, seed: int = 0, context: int | None = None,
                      batch_size: int = 1, device: str = "auto", prompts: list[PasskeyPrompt] | None = None) -> dict:
    """Zero-shot passkey accuracy by distance of ``pre`` (a `attnlab.pretrained.Pretrained`)."""
    from attnlab.train.loop import resolve_device

    if prompts is None:
        prompts = build_prompts(pre.tokenizer, distances, samples, digits, seed, context, pre.config.context + 1)
    dev = resolve_device(device)
    model = pre.model.to(dev).eval()
    t0 = time.perf_counter()
    scores = score_prompts(model, prompts, batch_size, dev)
    seconds = time.perf_counter() - t0
    by: dict[int, list[dict]] = {}
    for p, s in zip(prompts, scores, strict=True):
        by.setdefault(p.distance, []).append(s)
    decode = getattr(pre.tokenizer, "decode", None)
    n_ok = sum(s["correct"] for s in scores)
    return {
        "mode": "zero_shot",
        "source": pre.source,
        "digits": digits,
        "samples": samples,
        "seed": seed,
        "prompt_tokens": len(prompts[0].tokens),
        "accuracy": n_ok / len(scores),
        "prompts_scored": len(scores),
        "chance_accuracy": 10.0 ** -digits,
        "accuracy_by_distance": {str(d): sum(s["correct"] for s in v) / len(v) for d, v in sorted(by.items())},
        "ci95_by_distance": {str(d): wilson(sum(s["correct"] for s in v), len(v)) for d, v in sorted(by.items())},
        "token_accuracy_by_distance": {str(d): float(np.mean([s["token_accuracy"] for s in v]))
                                       for d, v in sorted(by.items())},
        "answer_logprob_by_distance": {str(d): float(np.mean([s["logprob"] for s in v])) for d, v in sorted(by.items())},
        "prompts": [{"distance": p.distance, "depth": round(p.depth, 4), "key": p.key,
                     "argmax": decode(s["argmax"]) if decode else s["argmax"], "correct": s["correct"]}
                    for p, s in zip(prompts, scores, strict=True)],
        "scoring": "one teacher-forced pass: correct = every answer token is the argmax (= greedy decoding's output)",
        "seconds": seconds,
        "device": str(dev),
    }

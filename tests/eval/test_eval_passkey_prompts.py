"""Zero-shot passkey prompts in a model's own tokens: the key sits where intended, distances
and lengths are exact, the answer tokens are the key, and scoring counts exact matches."""

import re

import pytest
import torch

from attnlab.data import ByteTokenizer
from attnlab.data.passkey import QUESTION, SENTENCE_PREFIX
from attnlab.data.tokenizers import _bytes_to_unicode
from attnlab.eval import build_prompts, passkey_zero_shot, score_prompts
from attnlab.eval.passkey import INSTRUCTION
from attnlab.model import ModelConfig, Transformer
from attnlab.pretrained import GGUFTokenizer, Pretrained


def gguf_tokenizer(pre: str, merges: list[str]) -> GGUFTokenizer:
    """A byte-level BPE like the synthetic GGUF fixture's (tests/pretrained/test_gguf_synthetic.py)."""
    tokens = ["<|endoftext|>", *_bytes_to_unicode().values(), *(m.replace(" ", "") for m in merges)]
    return GGUFTokenizer(tokens, merges, [3] + [1] * (len(tokens) - 1), pre)


SMOLLM_LIKE = gguf_tokenizer("smollm", ["Ġ t", "h e", "Ġt he"])  # digits split one by one
GPT2_LIKE = gguf_tokenizer("gpt2", ["Ġ t", "h e", "Ġt he", "Ġ 1", "Ġ 4", "2 3"])  # " 1", " 4", "23" merge


def check_prompt(tokenizer, p, length):
    text = tokenizer.decode(list(p.tokens))
    assert len(p.tokens) == length and text.startswith(INSTRUCTION)
    assert re.findall(r"\d+", text) == [p.key, p.key], "the key twice, no other digits"
    assert (SENTENCE_PREFIX + p.key) in text and text.endswith(QUESTION + p.key)
    assert tokenizer.decode(list(p.tokens[p.answer_start :])).strip() == p.key
    assert not re.search(r"\d", tokenizer.decode(list(p.tokens[: p.answer_start]))[: -len(QUESTION)].split(
        SENTENCE_PREFIX)[0]), "nothing of the key before the hidden sentence"
    # the tokens at the two recorded positions hold the key's first digit
    assert tokenizer.decode([p.tokens[p.hidden_digit]]).strip().startswith(p.key[0])
    assert tokenizer.decode([p.tokens[p.answer_digit]]).strip().startswith(p.key[0])
    assert p.answer_digit - p.hidden_digit == p.distance and p.answer_digit >= p.answer_start


@pytest.mark.parametrize("tokenizer", [SMOLLM_LIKE, GPT2_LIKE, ByteTokenizer()], ids=["smollm", "gpt2", "byte"])
def test_prompts_put_the_key_where_intended(tokenizer):
    prompts = build_prompts(tokenizer, [60, 150], samples=3, digits=5, seed=1)
    assert [p.distance for p in prompts] == [60] * 3 + [150] * 3
    length = len(prompts[0].tokens)
    for p in prompts:
        check_prompt(tokenizer, p, length)
    assert len({p.key for p in prompts}) == 6
    if tokenizer is GPT2_LIKE:  # some answers start with a merged " 1" / " 4": the prompt ends before it
        assert any(tokenizer.decode([p.tokens[p.answer_start]]).startswith(" ") for p in prompts)
    again = build_prompts(tokenizer, [150], samples=3, digits=5, seed=1)  # a function of (seed, distance, sample)
    assert [p.tokens for p in again] == [p.tokens for p in prompts[3:]]


def test_digit_split_answer_is_one_token_per_digit():
    p = build_prompts(SMOLLM_LIKE, [80], samples=1, digits=7)[0]
    assert len(p.tokens) - p.answer_start == 7 and p.answer_digit == p.answer_start


def test_fixed_context_moves_the_sentence_not_the_distance():
    prompts = build_prompts(ByteTokenizer(), [100, 300], samples=2, context=600)
    assert {len(p.tokens) for p in prompts} == {600}
    for p in prompts:
        check_prompt(ByteTokenizer(), p, 600)
    assert prompts[0].depth > prompts[-1].depth


def test_smollm2_tokenizer_prompts():
    from attnlab.pretrained.gguf_file import _open, read_metadata, smollm2_gguf_path

    tokenizer = GGUFTokenizer.from_metadata(read_metadata(_open(smollm2_gguf_path())))
    prompts = build_prompts(tokenizer, [64, 1024], samples=2)
    for p in prompts:
        check_prompt(tokenizer, p, len(prompts[0].tokens))
        assert len(p.tokens) - p.answer_start == 5, "SmolLM2 splits digits: one answer token each"
    assert 1024 < len(prompts[0].tokens) < 1100


@pytest.mark.parametrize("kwargs,message", [
    ({"distances": [10]}, "passkey.distances=[10] is not allowed: each at least"),
    ({"distances": [60], "context": 100}, "passkey.context=100 is not allowed: at least"),
    ({"distances": [60, 60]}, "passkey.distances=[60, 60]"),
    ({"distances": [60], "samples": 0}, "passkey.samples=0"),
    ({"distances": [60], "digits": 0}, "passkey.digits=0"),
    ({"distances": [400], "max_tokens": 300}, "do not fit the model's context of 299"),
])
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_prompts(ByteTokenizer(), **{"samples": 1, **kwargs})


class KeyOracle(torch.nn.Module):
    """A 'model' that puts all its mass on the true next token of the prompts it knows."""

    def __init__(self, prompts, vocab, wrong_at=()):
        super().__init__()
        self.prompts, self.vocab, self.wrong_at = prompts, vocab, set(wrong_at)

    def forward(self, idx, targets=None, doc_ids=None):
        logits = torch.zeros(*idx.shape, self.vocab)
        for b, row in enumerate(idx.tolist()):
            p = next(p for p in self.prompts if list(p.tokens[:-1]) == row)
            nxt = torch.tensor(p.tokens[1:])
            if p.key in self.wrong_at:
                nxt[-1] = (nxt[-1] + 1) % self.vocab  # the last digit wrong
            logits[b, torch.arange(len(row)), nxt] = 10.0
        return logits, None


def test_scoring_counts_exact_matches_by_distance():
    tok = ByteTokenizer()
    prompts = build_prompts(tok, [60, 120], samples=2)
    wrong = prompts[1].key  # one prompt at distance 60 misses its last digit
    scores = score_prompts(KeyOracle(prompts, 256, [wrong]), prompts, batch_size=3)
    assert [s["correct"] for s in scores] == [True, False, True, True]
    assert scores[1]["token_accuracy"] == pytest.approx(4 / 5)
    cfg = ModelConfig(vocab_size=256, d_model=16, n_layers=1, n_heads=2, context=512)
    pre = Pretrained(KeyOracle(prompts, 256, [wrong]), cfg, tok, "oracle", "attnlab", "test")
    out = passkey_zero_shot(pre, [60, 120], samples=2, device="cpu", prompts=prompts)
    assert out["accuracy_by_distance"] == {"60": 0.5, "120": 1.0} and out["accuracy"] == 0.75
    lo, hi = out["ci95_by_distance"]["60"]
    assert 0 < lo < 0.5 < hi < 1
    assert [q["argmax"] == q["key"] for q in out["prompts"]] == [True, False, True, True]


def test_a_random_model_runs_end_to_end():
    cfg = ModelConfig(vocab_size=256, d_model=16, n_layers=1, n_heads=2, context=512)
    pre = Pretrained(Transformer(cfg).eval(), cfg, ByteTokenizer(), "random", "attnlab", "test")
    out = passkey_zero_shot(pre, [60, 200], samples=2, device="cpu")
    assert set(out["accuracy_by_distance"]) == {"60", "200"} and out["prompts_scored"] == 4
    assert all(v < 0 for v in out["answer_logprob_by_distance"].values())

"""The n-gram floor: Witten-Bell probabilities by hand, normalisation, window truncation,
the cached ``ngram_floor`` and the CLI's one-line errors."""

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from text_samples import SMALL_TEXT

from attnlab.data import DataConfig, build_data
from attnlab.data.ngram import NgramModel, main, max_order_for_vocab, ngram_floor, score_corpus

# Stream for the hand-computed values (V = 3): 0 1 0 1 0 2
HAND = np.array([0, 1, 0, 1, 0, 2])


def _p(model, history, target, order):
    return 2.0 ** model.log2_probs(np.array([history], dtype=np.int64).reshape(1, -1), np.array([target]), order)[0]


def _brute_force(tokens, V, history, w, order):
    """P_order(w | history) by scanning the stream for every order (no keys, no tables)."""
    tokens = [int(t) for t in tokens]
    p = Fraction(1, V)
    for n in range(1, order + 1):
        if len(history) < n - 1:
            break
        h = tuple(history[len(history) - (n - 1):]) if n > 1 else ()
        followers = [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i:i + n - 1]) == h]
        if followers:
            c_h, t_h = len(followers), len(set(followers))
            p = (followers.count(w) + t_h * p) / (c_h + t_h)
    return p


def test_witten_bell_by_hand():
    model = NgramModel(3, max_order=3).fit(HAND)
    # Unigrams: c = (3, 2, 1), N = 6, T() = 3 distinct: P1(w) = (c(w) + 3 * 1/3) / (6 + 3).
    p1 = [Fraction(3 + 1, 9), Fraction(2 + 1, 9), Fraction(1 + 1, 9)]
    for w in range(3):
        assert _p(model, [], w, 1) == pytest.approx(float(p1[w]), abs=1e-15)
    # History (0): followers 1, 1, 2 -> c(0) = 3, T(0) = 2; c(0 1) = 2, c(0 2) = 1, c(0 0) = 0.
    p2_given_0 = [
        (0 + 2 * p1[0]) / (3 + 2),  # 8/45
        (2 + 2 * p1[1]) / (3 + 2),  # 8/15
        (1 + 2 * p1[2]) / (3 + 2),  # 13/45
    ]
    assert p2_given_0 == [Fraction(8, 45), Fraction(8, 15), Fraction(13, 45)]
    for w in range(3):
        assert _p(model, [0], w, 2) == pytest.approx(float(p2_given_0[w]), abs=1e-15)
    # History (2) only ends the stream: never seen as a history, so P2(w | 2) = P1(w).
    assert _p(model, [2], 0, 2) == pytest.approx(float(p1[0]), abs=1e-15)
    # History (1 0): followers 1, 2 -> c = 2, T = 2; c(1 0 1) = 1.
    p3 = (1 + 2 * p2_given_0[1]) / (2 + 2)
    assert p3 == Fraction(31, 60)
    assert _p(model, [1, 0], 1, 3) == pytest.approx(31 / 60, abs=1e-15)
    # History (2 0) unseen: back to P2(1 | 0) = 8/15.
    assert _p(model, [2, 0], 1, 3) == pytest.approx(8 / 15, abs=1e-15)
    # History (0 1): followers 0, 0 -> c = 2, T = 1; c(0 1 2) = 0; P2(2 | 1) = (0 + 1 * 2/9) / 3.
    assert _p(model, [0, 1], 2, 3) == pytest.approx(float(Fraction(2, 27) / 3), abs=1e-15)


def test_matches_brute_force_on_a_random_stream():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 4, size=120)
    model = NgramModel(4, max_order=4).fit(tokens)
    for order in range(1, 5):
        for history in ([], [3], [1, 2], [0, 0, 1], list(tokens[-3:])):
            got = model.probs(history, order)
            want = [float(_brute_force(tokens, 4, history, w, order)) for w in range(4)]
            np.testing.assert_allclose(got, want, rtol=1e-12)


def test_probabilities_sum_to_one_for_seen_and_unseen_histories():
    rng = np.random.default_rng(2)
    V = 7
    tokens = rng.integers(0, V - 1, size=500)  # token 6 never occurs
    model = NgramModel(V, max_order=5).fit(tokens)
    seen = list(tokens[100:104])
    histories = [[], seen, [6, 6, 6, 6], [6, *seen[1:]], [0, 6, 1, 2], seen[:2]]
    for order in range(1, 6):
        for history in histories:
            assert model.probs(history, order).sum() == pytest.approx(1.0, abs=1e-12)
    # every order's tables say: the 4-token history `seen` occurred (so the 5-gram is used)
    hist_key = sum(int(t) * V ** (3 - i) for i, t in enumerate(seen))
    assert hist_key in set(model.history_keys[5].tolist())
    assert model.probs([6, 6, 6, 6], 5) == pytest.approx(model.probs([], 1))
    short = NgramModel(V, max_order=5).fit(np.array([1, 2]))  # shorter than the order
    for order in range(1, 6):
        assert short.probs([1, 2, 1, 2], order).sum() == pytest.approx(1.0, abs=1e-12)


def test_window_start_truncates_the_history():
    model = NgramModel(3, max_order=3).fit(HAND)
    # Two windows of context 2 over val = 2 1 0 1 2; window 1 has inputs (0, 1), targets (1, 2).
    val = np.array([2, 1, 0, 1, 2])
    logp = model.log2_probs_of_windows(val, n_windows=2, context=2, order=3)
    assert logp.shape == (2, 2)
    # Window 1, position 0: target 1 after input 0; the stream's earlier 1 is in window 0, so
    # the trigram history (1 0) is not available: P2(1 | 0) = 8/15, not P3(1 | 1 0) = 31/60.
    assert 2.0 ** logp[1, 0] == pytest.approx(8 / 15, abs=1e-15)
    assert 2.0 ** logp[1, 0] != pytest.approx(31 / 60, abs=1e-6)
    # Window 1, position 1: the whole window is history: P3(2 | 0 1) = 2/81.
    assert 2.0 ** logp[1, 1] == pytest.approx(2 / 81, abs=1e-15)
    # Window 0, position 0: target 1 after input 2, whose history (2) is unseen: P1(1) = 3/9.
    assert 2.0 ** logp[0, 0] == pytest.approx(3 / 9, abs=1e-15)


def test_windows_match_a_per_target_loop():
    rng = np.random.default_rng(3)
    train = rng.integers(0, 3, size=300)
    val = rng.integers(0, 3, size=40)
    model = NgramModel(3, max_order=4).fit(train)
    context, n_windows = 6, 5
    for order in (1, 2, 4):
        got = model.log2_probs_of_windows(val, n_windows, context, order)
        for i in range(n_windows):
            for t in range(context):
                history = [int(x) for x in val[i * context: i * context + t + 1]][-(order - 1):] if order > 1 else []
                want = math.log2(_brute_force(train, 3, history, int(val[i * context + t + 1]), order))
                assert got[i, t] == pytest.approx(want, abs=1e-12)


def test_higher_orders_score_a_patterned_stream_better():
    phrase = np.frombuffer(b"to be or not to be, that is the question. ", dtype=np.uint8).astype(np.int64)
    rng = np.random.default_rng(4)
    train = np.concatenate([np.concatenate([phrase, rng.integers(97, 123, size=3)]) for _ in range(60)])
    val = np.tile(phrase, 4)
    model = NgramModel(256, max_order=5).fit(train)
    bits = [-model.log2_probs_of_windows(val, 4, 32, order).mean() for order in range(1, 6)]
    assert all(a > b for a, b in zip(bits, bits[1:], strict=False)), bits
    assert bits[-1] < 0.5 < 3.0 < bits[0]


def test_refuses_orders_whose_keys_overflow():
    assert (max_order_for_vocab(256), max_order_for_vocab(1024), max_order_for_vocab(65536)) == (7, 6, 3)
    with pytest.raises(ValueError, match="orders <= 3 fit"):
        NgramModel(65536, max_order=4)
    with pytest.raises(ValueError, match="ids are 0..2"):
        NgramModel(3, max_order=2).fit(np.array([0, 1, 3]))


def _text_cfg(tmp_path, **kw):
    path = tmp_path / "doc.txt"
    if not path.exists():
        path.write_text(SMALL_TEXT * 30, encoding="utf-8")
    kw = {"context": 32, "val_tokens": 512, "cache_dir": str(tmp_path / "cache"), **kw}
    return DataConfig(name="text", path=str(path), **kw)


def test_ngram_floor_caches_and_matches_a_direct_unigram(tmp_path, monkeypatch):
    cfg = _text_cfg(tmp_path)
    bpb = ngram_floor(cfg)
    assert list(bpb) == [1, 2, 3, 4, 5] and all(isinstance(v, float) for v in bpb.values())
    assert bpb[5] < bpb[3] < bpb[1]
    corpus = build_data(cfg)
    # 1-gram directly: P1(w) = (c(w) + T/V) / (N + T) over the val targets.
    counts = np.bincount(np.asarray(corpus.train_tokens, dtype=np.int64), minlength=256)
    n, distinct = counts.sum(), np.count_nonzero(counts)
    targets = np.asarray(corpus.val_tokens[1: corpus.val_target_tokens + 1], dtype=np.int64)
    p1 = (counts[targets] + distinct / 256) / (n + distinct)
    assert bpb[1] == pytest.approx(-np.log2(p1).sum() / corpus.val_bytes, rel=1e-12)
    assert corpus.val_bytes == corpus.val_target_tokens  # byte tokenizer
    assert score_corpus(corpus, (2, 4)) == {2: pytest.approx(bpb[2]), 4: pytest.approx(bpb[4])}
    files = list((tmp_path / "cache" / "ngram").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["context"] == 32

    def no_fit(self, tokens):
        raise AssertionError("fit called although the result is cached")

    monkeypatch.setattr(NgramModel, "fit", no_fit)
    assert ngram_floor(cfg) == bpb
    with pytest.raises(AssertionError, match="fit called"):  # another context is another entry
        ngram_floor(_text_cfg(tmp_path, context=16))


def test_ngram_floor_refuses_a_bpe_vocab_too_big_for_the_order(tmp_path):
    with pytest.raises(ValueError, match=r"data.tokenizer=bpe.*data.vocab_size=10000.*orders <= 4"):
        ngram_floor(_text_cfg(tmp_path, tokenizer="bpe", vocab_size=10000))
    assert not (tmp_path / "cache").exists()  # refused before training a tokenizer


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--orders", "1,x"], "--orders"),
        (["--orders", "0,2"], "--orders"),
        (["--context", "0"], "data.context=0"),
        (["--context", "abc"], "--context"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    argv = [*argv, "--name", "text", "--path", str(tmp_path / "missing.txt")]
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_cli_prints_a_table(tmp_path, capsys):
    cfg = _text_cfg(tmp_path)
    argv = ["--name", "text", "--path", cfg.path, "--context", "32", "--val-tokens", "512",
            "--orders", "1,3", "--cache-dir", cfg.cache_dir]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| order | val bpb |" in out and "| 3 |" in out and "| 5 |" not in out

"""Byte and BPE tokenizers: round trips, byte counts, the BPE cache."""

import pytest
from text_samples import SMALL_TEXT

from attnlab.data import BPETokenizer, ByteTokenizer, DataConfig, build_data, train_bpe
from attnlab.data.tokenizers import bpe_cache_path

TRICKY = [
    "",
    "a",
    "Hamlet — “to be”, naïve café 日本語 🎭\n",
    "tabs\tand\r\nCRLF  ",
    "\x00\x7f",
    SMALL_TEXT,
]


@pytest.mark.parametrize("text", TRICKY)
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode_array(text).tolist() == ids


def test_byte_interface():
    tok = ByteTokenizer()
    assert (tok.name, tok.vocab_size, tok.fingerprint()) == ("byte", 256, "byte-v1")
    assert tok.token_byte_lengths().tolist() == [1] * 256


@pytest.fixture
def bpe(tmp_path):
    texts = [SMALL_TEXT * 10, "Another document with words, words and more words.\n" * 20]
    return train_bpe(texts, 300, tmp_path / "bpe_cache"), texts, tmp_path / "bpe_cache"


@pytest.mark.parametrize("text", TRICKY)
def test_bpe_round_trip(bpe, text):
    tok, _, _ = bpe
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(tok.token_bytes_of(ids)) == len(text.encode("utf-8"))
    assert sum(tok.token_byte_lengths()[i] for i in ids) == len(text.encode("utf-8"))


def test_bpe_compresses_and_has_requested_vocab(bpe):
    tok, texts, _ = bpe
    assert tok.name == "bpe" and tok.vocab_size == 300
    assert len(tok.encode(texts[0])) < 0.8 * len(texts[0].encode("utf-8"))


def test_bpe_cache_is_reused(bpe, monkeypatch):
    tok, texts, cache = bpe
    path = bpe_cache_path(cache, texts, 300)
    assert path.exists()

    def no_training(*args, **kwargs):
        raise AssertionError("BPE was retrained instead of loaded from the cache")

    monkeypatch.setattr("attnlab.data.tokenizers._train_backend", no_training)
    again = train_bpe(texts, 300, cache)
    assert again.fingerprint() == tok.fingerprint()
    assert again.encode(SMALL_TEXT) == tok.encode(SMALL_TEXT)
    assert BPETokenizer.from_file(path).fingerprint() == tok.fingerprint()


def test_damaged_bpe_cache_is_trained_again(bpe, caplog):
    tok, texts, cache = bpe
    path = bpe_cache_path(cache, texts, 300)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # still parses, perhaps as another tokenizer: only the checksum can tell
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="attnlab.data.tokenizers"):
        again = train_bpe(texts, 300, cache)
    assert str(path) in caplog.text and "checksum mismatch" in caplog.text
    assert again.fingerprint() == tok.fingerprint() and path.read_bytes() != bytes(data)


def test_bpe_fingerprint_depends_on_vocab_and_text(bpe, tmp_path):
    tok, texts, cache = bpe
    assert train_bpe(texts, 280, cache).fingerprint() != tok.fingerprint()
    assert train_bpe(texts[:1], 300, cache).fingerprint() != tok.fingerprint()


def test_bpe_corpus_trains_on_train_split_only(text_folder):
    data = build_data(
        DataConfig(
            name="text",
            path=str(text_folder),
            tokenizer="bpe",
            vocab_size=300,
            context=16,
            batch_size=2,
            val_tokens=64,
        )
    )
    train_texts = [t for _, t in data.iter_documents("train")]
    assert data.describe()["cache"]["tokenizer"] == str(
        bpe_cache_path(data.config.resolved_cache_dir(), train_texts, 300)
    )
    targets = data.val_tokens[1 : data.val_target_tokens + 1].tolist()
    assert data.val_bytes == len(data.tokenizer.token_bytes_of(targets))
    assert data.val_bytes > data.val_target_tokens  # BPE tokens average more than a byte

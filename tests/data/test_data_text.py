"""The `text` corpus: reading, splitting and every error path."""

import pytest
from text_samples import SMALL_TEXT

from attnlab.data import DataConfig, build_data
from attnlab.data.corpus import load_split


def _cfg(path, **kw):
    kw.setdefault("context", 16)
    kw.setdefault("batch_size", 2)
    kw.setdefault("val_tokens", 64)
    return DataConfig(name="text", path=str(path), **kw)


def test_single_file_splits_last_fraction_at_a_line(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text(SMALL_TEXT * 20, encoding="utf-8")
    (train_name, train), (val_name, val) = [d for docs in load_split(_cfg(path)) for d in docs]
    assert train_name == val_name == "one.txt"
    assert train + val == SMALL_TEXT * 20
    assert train.endswith("\n") and 0.08 < len(val) / (len(train) + len(val)) < 0.12


def test_small_folder_splits_each_file(text_folder):
    train, val = load_split(_cfg(text_folder))
    assert [n for n, _ in train] == [n for n, _ in val] == ["part0.txt", "part1.txt", "part2.md"]


def test_big_folder_holds_out_whole_files(tmp_path):
    for i in range(12):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i}\n" + SMALL_TEXT, encoding="utf-8")
    (tmp_path / "skip.csv").write_text("not text")
    (tmp_path / ".hidden.txt").write_text("hidden")
    train, val = load_split(_cfg(tmp_path, val_fraction=0.2))
    assert [n for n, _ in val] == ["doc10.txt", "doc11.txt"]  # round(0.2 * 12) = 2 last files
    assert len(train) == 10 and not {n for n, _ in train} & {n for n, _ in val}


def test_text_corpus_builds_and_round_trips(text_folder):
    data = build_data(_cfg(text_folder))
    assert data.val_plays == () and data.describe()["val_documents"] == [
        "part0.txt",
        "part1.txt",
        "part2.md",
    ]
    stream = "".join(
        t + ("\n" if t.endswith("\n") else "\n\n") for _, t in data.iter_documents("train")
    )
    assert data.tokenizer.decode(data.train_tokens.tolist()) == stream


def test_missing_path(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist.*data\.path"):
        build_data(_cfg(tmp_path / "nope.txt"))


def test_folder_without_text_files(tmp_path):
    (tmp_path / "a.csv").write_text("x,y")
    with pytest.raises(ValueError, match="no .txt or .md files"):
        build_data(_cfg(tmp_path))


@pytest.mark.parametrize("content", ["", "  \n\n\t \n"])
def test_empty_corpus(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"empty\.txt.*empty \(no text"):
        build_data(_cfg(path))


def test_non_utf8_names_file_and_offset(text_folder):
    bad = text_folder / "latin1.txt"
    bad.write_bytes(b"caf" + "é au lait".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt: not valid UTF-8 at byte offset 3 .*iconv"):
        build_data(_cfg(text_folder))


def test_too_short_val(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("line one is here\n" * 40)  # 680 bytes: val ~68 < 129
    with pytest.raises(
        ValueError,
        match=r"short\.txt.*val split has \d+ tokens, fewer than context \+ 1 = 129.*val_fraction",
    ):
        build_data(_cfg(path, context=128, val_tokens=128))


def test_too_short_train(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("a few words\n" * 3)
    with pytest.raises(
        ValueError, match=r"tiny\.txt.*train split has \d+ tokens.*lower data\.context"
    ):
        build_data(_cfg(path, context=64, val_tokens=64, val_fraction=0.5))


def test_empty_split(tmp_path):
    path = tmp_path / "one_line.txt"
    path.write_text("x")
    with pytest.raises(ValueError, match="val split is empty"):
        build_data(_cfg(path, val_fraction=0.1))

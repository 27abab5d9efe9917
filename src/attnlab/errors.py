"""One way for the command-line jobs to fail on bad input.

Every ``python -m attnlab.<job>`` turns bad user input (a config value, a missing or
unreadable file, an unknown override) into ONE line on stderr, ``error: <what>``, naming
the key or file, the value and what is allowed, and exits with status 2: no traceback.
``HYDRA_FULL_ERROR=1`` prints the full traceback before that line (for debugging), as Hydra
does; the exit status stays 2.

- `UserInputError`: what the jobs raise for bad input (a ``ValueError``, so code that
  catches the config dataclasses' ``ValueError`` catches it too).
- `user_errors()`: a context manager around a job's validation phase (parse the config,
  check files, load the model) that ends bad input as ``error: ...`` + exit 2. Only the
  validation phase: an exception while the job runs is a bug or a failed run, not bad input.
- `hydra_cli(main)`: runs a ``@hydra.main`` function so that Hydra's and OmegaConf's own
  errors (an unknown key, a config group option that does not exist, an override that does
  not parse, a ``???`` value left unset) end the same way.
- `ArgumentParser`: argparse whose usage errors are one ``error:`` line too.
- `check_seed`: the one bound for every seed (``[0, 2**63 - 1]``, what torch and numpy take).

Kept free of torch, Hydra and OmegaConf imports (the attention package and the kernels use
it without them).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import NoReturn

EXIT_USAGE = 2  # bad input (argparse's and the shell's convention); 1 stays "the run failed"
SEED_MAX = 2**63 - 1  # torch.manual_seed / torch.Generator / numpy default_rng all take [0, 2**63 - 1]


class UserInputError(ValueError):
    """Bad user input: the message names the key or file, the value and what is allowed."""


# What validation raises: our UserInputError and the config dataclasses' ValueError /
# TypeError, a file that does not exist (FileNotFoundError), and OmegaConf's errors for a
# value that is missing or does not resolve (they subclass ValueError / KeyError / ...).
VALIDATION_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError)



def user_error_types() -> tuple[type[BaseException], ...]:
    """`VALIDATION_ERRORS` and Hydra's / OmegaConf's exceptions: what a job's validation phase
    turns into one line (for jobs that need their own handling, e.g. a sweep that goes on)."""
    return (*VALIDATION_ERRORS, *_framework_errors())


_full_traceback: bool | None = None  # the user's HYDRA_FULL_ERROR, saved by hydra_cli


def wants_traceback() -> bool:
    """True when the user set ``HYDRA_FULL_ERROR=1``: print the traceback too."""
    if _full_traceback is not None:
        return _full_traceback
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _framework_errors() -> tuple[type[BaseException], ...]:
    """Hydra's and OmegaConf's exception bases, when installed (bad overrides, ??? values)."""
    found: list[type[BaseException]] = []
    with contextlib.suppress(ImportError):
        from omegaconf.errors import OmegaConfBaseException

        found.append(OmegaConfBaseException)
    with contextlib.suppress(ImportError):
        from hydra.errors import HydraException

        found.append(HydraException)
    return tuple(found)


_DETAIL_PREFIXES = ("full_key:", "object_type=", "reference_type=", "msg:")


def one_line(err: BaseException) -> str:
    """The error as one line: Hydra's tab-indented option lists become ``a, b, c``, OmegaConf's
    ``full_key:`` / ``object_type=`` detail lines are dropped, a Hydra error's OmegaConf cause
    is added in parentheses."""
    text = str(err).strip()
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]  # str(KeyError) adds quotes
    if not text:
        text = type(err).__name__
    cause = err.__cause__
    framework = _framework_errors()
    if cause is not None and framework and isinstance(err, framework) and isinstance(cause, framework):
        first = next((ln.strip() for ln in str(cause).splitlines() if ln.strip()), "")
        if first and first not in text:
            text += f"\n({first})"
    parts: list[str] = []
    items: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Config search path"):  # Hydra's where-I-looked list: noise here
            break
        if not line or line.startswith(_DETAIL_PREFIXES):
            continue
        if raw.startswith("\t"):  # Hydra: "Available options in 'model':\n\tbase\n\tsmall"
            items.append(line)
            continue
        if items:
            parts[-1] += " " + ", ".join(items)
            items = []
        parts.append(line)
    if items:
        if parts:
            parts[-1] += " " + ", ".join(items)
        else:
            parts.append(", ".join(items))
    joined = parts[0] if parts else type(err).__name__
    for part in parts[1:]:
        joined += ("" if joined.endswith((".", ":", ";")) or part.startswith("(") else ";") + " " + part
    return joined


def print_error(err: BaseException | str) -> None:
    """``error: <one line>`` on stderr; with ``HYDRA_FULL_ERROR=1`` the traceback first."""
    if isinstance(err, BaseException) and wants_traceback():
        traceback.print_exception(err)
    message = err if isinstance(err, str) else one_line(err)
    message = " ".join(message.split("\n"))
    print(f"error: {message}", file=sys.stderr, flush=True)


def exit_with(err: BaseException | str) -> NoReturn:
    """`print_error` and exit with status 2."""
    print_error(err)
    raise SystemExit(EXIT_USAGE)


@contextlib.contextmanager
def user_errors(*types: type[BaseException]) -> Iterator[None]:
    """Around a job's validation phase: a `VALIDATION_ERRORS` (or ``types``, or a Hydra /
    OmegaConf error) exception ends the process with ``error: <one line>`` and status 2
    (``HYDRA_FULL_ERROR=1``: its traceback first, the same status)."""
    caught = (*user_error_types(), *types)
    try:
        yield
    except caught as err:
        exit_with(err)


def hydra_cli(main: Callable[[], object]) -> Callable[[], object]:
    """Wrap a ``@hydra.main`` function (called without arguments) so that Hydra's own errors on
    bad overrides end as ``error: <one line>`` + status 2 instead of Hydra's report (status 1).

    Hydra prints and exits inside its ``run_and_report`` unless ``HYDRA_FULL_ERROR=1``; so it
    is set while Hydra runs (the user's own setting is kept for `wants_traceback`) and the
    exceptions come back here. Errors that are not bad input propagate with their traceback."""

    @functools.wraps(main)
    def run():
        global _full_traceback
        saved = os.environ.get("HYDRA_FULL_ERROR")
        _full_traceback = saved == "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            return main()
        except (UserInputError, *_framework_errors()) as err:
            exit_with(err)
        finally:
            if saved is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = saved
            _full_traceback = None

    return run


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors as one line ``error: <message> (see --help)`` and status 2
    (argparse's own prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        exit_with(f"{message} (see {self.prog} --help)")


def check_seed(key: str, value) -> int:
    """``value`` if it is an int in ``[0, 2**63 - 1]``, else `UserInputError` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise UserInputError(f"{key}={value!r} is not allowed: a seed is an int in [0, 2**63 - 1]")
    return value

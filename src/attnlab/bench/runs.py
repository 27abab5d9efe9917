"""What the device-check modules (`breakdown`, `host_overhead`, `e2e`) share: validated sizes
and dtypes, the CUDA guard, one-line failure reasons, and tables written as they come.

Each module measures a list of rows (plain dicts) and calls `write_table` after every row,
so a run stopped at its time cap (``make gpu-check`` sends SIGINT) keeps what it measured:
``<stem>.csv`` (NaN as an empty cell) and ``<stem>.md``, each written atomically.
"""

from __future__ import annotations

import csv
import gc
import io
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
REASON_CHARS = 300


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int")
    return value


def check_head_dims(name: str, values) -> tuple[int, ...]:
    """A non-empty tuple of even head dims in [16, 256] (the flash kernels' range, RoPE pairs)."""
    values = tuple(values) if isinstance(values, list | tuple) else values
    if not isinstance(values, tuple) or not values:
        raise ValueError(f"{name}={values!r} must be a non-empty list of head dims")
    for d in values:
        if isinstance(d, bool) or not isinstance(d, int) or not 16 <= d <= 256 or d % 2:
            raise ValueError(f"{name}={values!r}: {d!r} is not an even int in [16, 256]")
    return values


def check_dtype(name: str, value) -> torch.dtype:
    if value not in DTYPES:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: {', '.join(DTYPES)}")
    return DTYPES[value]


def require_cuda(what: str) -> torch.device:
    """The CUDA device, or RuntimeError saying that ``what`` needs one."""
    if not torch.cuda.is_available():
        raise RuntimeError(f"{what} needs a CUDA device: torch.cuda.is_available() is False here "
                           "(run it on the GPU machine, e.g. through `make gpu-check`)")
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError(f"{what}: TRITON_INTERPRET=1 is set; interpreter timings mean nothing, unset it")
    return torch.device("cuda")


def reason(err: BaseException) -> str:
    """One line: the exception type and its message, at most `REASON_CHARS` characters
    (head and tail kept: Triton puts the source first and the error last)."""
    msg = " ".join(str(err).split()) or "(no message)"
    if len(msg) > REASON_CHARS:
        msg = msg[: REASON_CHARS // 2] + " ... " + msg[-REASON_CHARS // 2 :]
    return f"{type(err).__name__}: {msg}"


def free_memory(device: torch.device) -> None:
    """After a case (an OOM included): drop what it held so the next case starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def fmt(value) -> str:
    """A table cell: NaN / None as '-', floats with 4 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)).replace("|", "/") for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_table(rows: Sequence[dict], columns: Sequence[str], out_dir: Path, stem: str,
                title: str = "", notes: Sequence[str] = ()) -> tuple[Path, Path]:
    """``out_dir/<stem>.csv`` (every column) and ``out_dir/<stem>.md`` (title, the table, notes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow(["" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                         for v in (r.get(c) for c in columns)])
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    _atomic_write(csv_path, buf.getvalue())
    head = f"{title}\n\n" if title else ""
    tail = "".join(f"\n{n}\n" for n in notes)
    _atomic_write(md_path, head + markdown_table(rows, columns) + tail)
    return csv_path, md_path


def run_cli(measure: Callable[[], list[dict]], csv_path: Path) -> int:
    """A module's ``main`` around its measurement: ``measure()`` builds the config and returns
    the rows. Exit 2 with one line for a bad setting (ValueError / RuntimeError), 130 when
    interrupted (the stage's time cap: ``csv_path`` holds what was measured), else 0 when
    every row is ok and 1 when one failed."""
    try:
        rows = measure()
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; {csv_path} holds what was measured", file=sys.stderr)
        return 130
    return 0 if all(r["status"] == "ok" for r in rows) else 1

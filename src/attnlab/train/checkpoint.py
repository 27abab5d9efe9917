"""Checkpoints that a killed process never corrupts, that are checksummed, and that load
without unpickling arbitrary objects.

Two layouts, both in ``<run dir>/checkpoints/``:

- ``latest.pt`` (single process and DDP; written once, by rank 0): one file in the format of
  `attnlab.train.ckpt_io` (a ``torch.save`` dict read back with ``weights_only=True``, plus a
  SHA-256 checksum verified on load), written to a temp file, fsynced, renamed over
  ``latest.pt``, folder fsynced. A process killed at any point leaves the previous file or
  the new one, never a torn one.
- ``step_<N>.dcp/`` (FSDP2): a ``torch.distributed.checkpoint`` folder (every rank writes
  its shards) plus ``extra.pt`` (scheduler, step, per-rank RNG states, config, and the
  SHA-256 of every shard file). It is written as ``.step_<N>.dcp.tmp/``, renamed when
  complete, and only then named by the pointer file ``latest_dcp.json`` (atomic like
  ``latest.pt``); older folders are removed after that. A kill leaves the pointer on the
  previous complete folder. Loading checks the shard checksums, screens DCP's ``.metadata``
  pickle (DCP metadata classes only) and reads non-tensor items with ``weights_only=True``.

Loading a damaged file raises `CorruptCheckpointError`; a file that would need full
unpickling (an older attnlab checkpoint, or a crafted one) raises `UnsafeCheckpointError`;
both name the file. Convert a *trusted* old checkpoint once with
``python -m attnlab.train.checkpoint convert --trust PATH`` (a file or a DCP folder).

Leftover temp files and folders of a killed save are removed by `remove_stale_temps`.
`consolidate` turns a DCP folder into one file for sampling / evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from attnlab.data.cache import atomic_write, fsync_dir
from attnlab.train import ckpt_io
from attnlab.train.ckpt_io import (  # noqa: F401  (re-exported: the errors callers catch)
    CheckpointError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
)

LATEST = "latest.pt"
SHARDED_POINTER = "latest_dcp.json"
EXTRA = "extra.pt"


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write(Path(path), lambda f: f.write(text.encode()))


def atomic_save(obj: dict, path: str | os.PathLike, **header) -> Path:
    """Save the dict ``obj`` in the checksummed checkpoint format (`ckpt_io.write`), all or
    nothing. ``header``: extra entries of the file's ``_attnlab`` record."""
    return atomic_write(Path(path), lambda f: ckpt_io.write(f, obj, **header))


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    # RNG states are CPU byte tensors, even from a checkpoint loaded with map_location=cuda.
    torch.set_rng_state(states["torch"].cpu())
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    """A checkpoint file's dict, checksum verified, tensors on ``map_location``; never runs
    code from the file (`UnsafeCheckpointError`, `CorruptCheckpointError`: module docstring)."""
    return ckpt_io.read(path, map_location=map_location)[0]


# ---------------------------------------------------------------------- sharded (FSDP2)
def save_sharded(state: dict, extra: dict, ckpt_dir: str | os.PathLike, step: int, dist) -> Path:
    """Collective: every rank passes its DCP ``state`` (e.g. ``{"model": ..., "optimizer":
    ...}`` from ``get_state_dict``); rank 0's ``extra`` (small, picklable) is saved beside it.
    ``dist`` is an `attnlab.train.distributed.Dist`. Returns the complete folder."""
    import torch.distributed.checkpoint as dcp

    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"step_{step:08d}.dcp"
    tmp = ckpt_dir / f".{final.name}.tmp"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save(state, checkpoint_id=tmp, no_dist=not dist.active)
    dist.barrier()  # every rank's shards are on disk
    if dist.is_main:
        atomic_save(extra, tmp / EXTRA, files=ckpt_io.shard_checksums(tmp, skip={EXTRA}))
        if final.exists():  # left by a run killed before it moved the pointer: not referenced
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(ckpt_dir)
        atomic_write_text(json.dumps({"step": step, "dir": final.name}), ckpt_dir / SHARDED_POINTER)
        for old in ckpt_dir.glob("step_*.dcp"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def latest_sharded(ckpt_dir: str | os.PathLike) -> Path | None:
    """The folder ``latest_dcp.json`` names, or None when there is no complete one."""
    ckpt_dir = Path(ckpt_dir)
    try:
        pointer = json.loads((ckpt_dir / SHARDED_POINTER).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    folder = ckpt_dir / pointer["dir"]
    return folder if (folder / EXTRA).is_file() else None


def _open_sharded(folder: Path, dist=None) -> dict:
    """``extra`` of a DCP folder once the folder checks out: its checksummed ``extra.pt``,
    every shard file against the checksums recorded there, the ``.metadata`` pickle screened.
    Collective when ``dist`` is given (rank 0 hashes the shards, every rank gets the verdict)."""
    folder = Path(folder)
    extra, header = ckpt_io.read(folder / EXTRA)
    main = dist is None or dist.is_main
    problem = ckpt_io.verify_shards(folder, header.get("files")) if main else None
    if dist is not None:
        problem = dist.broadcast_object(problem)
    if problem:
        raise CorruptCheckpointError(f"DCP checkpoint {problem}; use another checkpoint (or retrain)")
    ckpt_io.check_dcp_metadata(folder)
    return extra


def _dcp_load(state: dict, folder: Path, planner, no_dist: bool) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        # DCP warns that it assumes one process when not distributed: so do we
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        try:
            if state:
                dcp.load(state, storage_reader=dcp.FileSystemReader(folder), planner=planner, no_dist=no_dist)
            else:  # rebuild the state from the folder (what dcp_to_torch_save does, with our planner)
                from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

                _load_state_dict(state, storage_reader=dcp.FileSystemReader(folder), planner=planner, no_dist=True)
        except Exception as err:  # DCP wraps a refused (weights_only) item in CheckpointException
            if "weights only load failed" in str(err).lower():
                raise UnsafeCheckpointError(
                    f"{folder}: refused: a saved item would unpickle objects that can run code"
                ) from None
            raise


def load_sharded(state: dict, folder: str | os.PathLike, dist) -> dict:
    """Collective: fill ``state`` in place from ``folder`` (checked first: `_open_sharded`);
    returns its ``extra``."""
    folder = Path(folder)
    extra = _open_sharded(folder, dist)
    _dcp_load(state, folder, ckpt_io.safe_planner(), no_dist=not dist.active)
    return extra


def consolidate(folder: str | os.PathLike, out: str | os.PathLike) -> Path:
    """A DCP folder -> one ``latest.pt``-style file (model weights, config, step) for
    `attnlab.sample` and single-process evaluation. Without optimizer state: resume an FSDP
    run from its folder."""
    folder, out = Path(folder), Path(out)
    extra = _open_sharded(folder)
    full: dict = {}
    _dcp_load(full, folder, ckpt_io.safe_planner(empty=True, keys=["model"]), no_dist=True)
    return atomic_save({"model": full["model"], "config": extra["config"], "step": extra["step"]}, out)


# ---------------------------------------------------------------------- run-dir helpers
def latest_in(ckpt_dir: str | os.PathLike, sharded: bool) -> Path | None:
    """The run's latest complete checkpoint of the given format, or None."""
    if sharded:
        return latest_sharded(ckpt_dir)
    path = Path(ckpt_dir) / LATEST
    return path if path.is_file() else None


def read_meta(path: str | os.PathLike) -> dict:
    """``{"step", "config"}`` of a checkpoint (file or DCP folder) without reading the weights
    (memory-mapped; everything but tensor data checked against the file's checksum)."""
    path = Path(path)
    if path.is_dir():
        state, _ = ckpt_io.read(path / EXTRA, verify="meta")
    else:
        state, _ = ckpt_io.read(path, verify="meta", mmap=True)
    return {"step": state.get("step"), "config": state.get("config") or {}}


def remove_stale_temps(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Delete the temp files / folders a killed save left behind (only the run's one writer
    may call this, before it saves). Returns what was removed."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    removed = []
    for p in ckpt_dir.glob(".*.tmp"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def open_for_resume(ckpt_dir: str | os.PathLike, resume: bool, dist) -> tuple[Path | None, dict | None]:
    """Start of a (possibly resumed) run: rank 0 clears stale temporary saves, then the
    checkpoint to resume (`Dist.checkpoint_to_resume`) and, for ``latest.pt`` (none / ddp),
    its loaded state; FSDP states are loaded later, into the sharded model (`load_sharded`)."""
    if dist.is_main:
        remove_stale_temps(ckpt_dir)
    found = dist.checkpoint_to_resume(ckpt_dir, resume)
    state = load(found, map_location=dist.device) if (found and dist.mode != "fsdp") else None
    return found, state



# ---------------------------------------------------------------------- conversion
def convert(path: str | os.PathLike, trust: bool = False, out: str | os.PathLike | None = None) -> Path:
    """Rewrite an old-format checkpoint (a ``torch.save`` dict: a file, or a DCP folder's
    ``extra.pt``) in the checksummed format. Files that need full unpickling are read only
    with ``trust=True``. In place by default, the original kept beside it as ``<name>.old``
    (never overwritten); returns the new file."""
    path = Path(path)
    if path.is_dir():
        if out is not None:
            raise ValueError("convert: --out applies to a file, not a DCP folder (converted in place)")
        ckpt_io.check_dcp_metadata(path)
        src = path / EXTRA
        state = ckpt_io.read_legacy(src, trust)
        header = {"files": ckpt_io.shard_checksums(path, skip={EXTRA, EXTRA + ".old"})}
        if ".metadata" not in header["files"]:
            raise CheckpointError(f"{path}: not a DCP checkpoint folder (no .metadata)")
    else:
        src = path
        state = ckpt_io.read_legacy(src, trust)
        header = {}
    if not isinstance(state, dict):
        raise CheckpointError(f"{src}: holds a {type(state).__name__}, not a checkpoint dict")
    state.pop(ckpt_io.HEADER, None)
    target = Path(out) if out is not None else src
    if target == src:
        backup = src.with_name(src.name + ".old")
        if backup.exists():
            raise FileExistsError(f"convert: {backup} exists; move it away first (it is not overwritten)")
        shutil.copy2(src, backup)
    return atomic_save(state, target, **header)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attnlab.train.checkpoint",
        description="Convert old attnlab checkpoints (plain torch.save pickles) to the checksummed format "
                    "that loads with weights_only=True.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="rewrite a checkpoint file or DCP folder in the current format")
    conv.add_argument("path", help="a .pt checkpoint file or a step_<N>.dcp folder")
    conv.add_argument("--trust", action="store_true",
                      help="allow full unpickling, which runs any code the file holds: only for files you trust")
    conv.add_argument("--out", default=None, help="write here instead (default: in place, original kept as .old)")
    args = parser.parse_args(argv)
    try:
        written = convert(args.path, trust=args.trust, out=args.out)
    except (OSError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

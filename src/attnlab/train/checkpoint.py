"""Checkpoints that a killed process never corrupts.

Two formats, both in ``<run dir>/checkpoints/``:

- ``latest.pt`` (single process and DDP; written once, by rank 0): one ``torch.save`` file
  written to a temp file, fsynced, renamed over ``latest.pt``, folder fsynced. A process
  killed at any point leaves the previous file or the new one, never a torn one.
- ``step_<N>.dcp/`` (FSDP2): a ``torch.distributed.checkpoint`` folder (every rank writes
  its shards) plus ``extra.pt`` (scheduler, step, per-rank RNG states, config). It is
  written as ``.step_<N>.dcp.tmp/``, renamed when complete, and only then named by the
  pointer file ``latest_dcp.json`` (atomic like ``latest.pt``); older folders are removed
  after that. A kill leaves the pointer on the previous complete folder.

Leftover temp files and folders of a killed save are removed by `remove_stale_temps`.
`consolidate` turns a DCP folder into one file for sampling / evaluation.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from attnlab.data.cache import atomic_write, fsync_dir

LATEST = "latest.pt"
SHARDED_POINTER = "latest_dcp.json"
EXTRA = "extra.pt"


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write(Path(path), lambda f: f.write(text.encode()))


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, all or nothing."""
    return atomic_write(Path(path), lambda f: torch.save(obj, f))


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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location=map_location, weights_only=False)


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
        atomic_save(extra, tmp / EXTRA)
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


def load_sharded(state: dict, folder: str | os.PathLike, dist) -> dict:
    """Collective: fill ``state`` in place from ``folder``; returns its ``extra``."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        if not dist.active:  # DCP warns that it assumes one process: so do we
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=Path(folder), no_dist=not dist.active)
    return load(Path(folder) / EXTRA)


def consolidate(folder: str | os.PathLike, out: str | os.PathLike) -> Path:
    """A DCP folder -> one ``latest.pt``-style file (model weights, config, step) for
    `attnlab.sample` and single-process evaluation. Without optimizer state: resume an FSDP
    run from its folder."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder, out = Path(folder), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".consolidate.") as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # DCP: "assuming a single process"
            dcp_to_torch_save(folder, Path(tmp) / "full.pt")
        full = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=False)
    extra = load(folder / EXTRA)
    return atomic_save({"model": full["model"], "config": extra["config"], "step": extra["step"]}, out)


# ---------------------------------------------------------------------- run-dir helpers
def latest_in(ckpt_dir: str | os.PathLike, sharded: bool) -> Path | None:
    """The run's latest complete checkpoint of the given format, or None."""
    if sharded:
        return latest_sharded(ckpt_dir)
    path = Path(ckpt_dir) / LATEST
    return path if path.is_file() else None


def read_meta(path: str | os.PathLike) -> dict:
    """``{"step", "config"}`` of a checkpoint (file or DCP folder) without loading tensors."""
    path = Path(path)
    if path.is_dir():
        state = load(path / EXTRA)
    else:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
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


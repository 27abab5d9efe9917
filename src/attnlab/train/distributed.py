"""Data-parallel training: one process per device (torchrun), DDP or FSDP2.

The global batch of step s is what a single process would train on (``Corpus.train_batch``
of the step's micro-batch indices); every rank builds it and keeps its own contiguous
slice of rows (`Dist.rows`). Each rank's loss is weighted by its share of the global
target tokens (`Dist.loss_weight`), so after DDP/FSDP average the gradients over ranks the
update is the gradient of the global-batch mean loss: the same step as one process, up to
the order of floating-point sums.

    torchrun --nproc_per_node=2 -m attnlab.train train.distributed=ddp   # or fsdp

Backend: nccl on CUDA (device ``cuda:LOCAL_RANK``), gloo on CPU. How to launch: README.md, "Training on several GPUs or nodes".
"""

from __future__ import annotations

import os
import socket
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

MODES = ("none", "ddp", "fsdp")


@dataclass
class Dist:
    """Where this process stands: mode (none | ddp | fsdp), rank, world size, device."""

    mode: str = "none"
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this object initialised the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.mode != "none"

    # ------------------------------------------------------------------ data
    def rows(self, n: int) -> slice:
        """This rank's contiguous rows of a global batch of ``n`` rows (sizes differ by at
        most one; empty when ``n < world``)."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def shard_batch(self, x: torch.Tensor, y: torch.Tensor, ignore_index: int = -100):
        """Global batch ``x, y [B, N]`` -> ``(x, y)`` of this rank's rows, ``share`` (its
        fraction of the batch's targets: weights its mean loss in the logged mean) and
        ``weight`` (`loss_weight`). One process: the batch itself, 1.0, 1.0."""
        if not self.active:
            return x, y, 1.0, 1.0
        n_global = int((y != ignore_index).sum())
        rows = self.rows(x.shape[0])
        x, y = x[rows], y[rows]
        n_local = int((y != ignore_index).sum())
        share = n_local / n_global if n_global else 0.0
        return x, y, share, self.loss_weight(n_local, n_global)

    def loss_weight(self, local_targets: int, global_targets: int) -> float:
        """Multiplier for this rank's mean loss so that the rank-averaged gradient equals the
        gradient of the global mean: ``local / global * world`` (exactly 1.0 on one process)."""
        if global_targets == 0:
            return 0.0
        if self.world == 1:
            return 1.0
        return local_targets * self.world / global_targets

    # ------------------------------------------------------------------ collectives
    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if not self.active or self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def max(self, value: float) -> float:
        if not self.active or self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def any(self, flag: bool) -> bool:
        return self.max(1.0 if flag else 0.0) > 0

    def gather_objects(self, obj) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if not self.active or self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.active or self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active and self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    # ------------------------------------------------------------------ model
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP: a wrapper (the parameters stay those of ``model``). FSDP2: ``fully_shard`` each
        transformer block, then the root (in place: ``model``'s parameters become DTensor
        shards). Build the optimizer after this."""
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # RoPE tables are the only buffers; identical on every rank, nothing to broadcast.
            return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
        if self.mode == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in getattr(model, "layers", []):
                fully_shard(block)
            fully_shard(model)
        return model

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_to_resume(self, ckpt_dir: str | os.PathLike, resume: bool) -> Path | None:
        """The latest complete checkpoint in ``ckpt_dir`` that this mode loads (fsdp: a DCP
        folder; none/ddp: ``latest.pt``), or None (not resuming, or nothing saved yet).
        Raises when ``ckpt_dir`` holds only the other format."""
        from attnlab.train import checkpoint as ckpt

        if not resume:
            return None
        sharded = self.mode == "fsdp"
        found = ckpt.latest_in(ckpt_dir, sharded)
        if found is None and ckpt.latest_in(ckpt_dir, not sharded) is not None:
            raise ValueError(
                f"resume: {ckpt_dir} holds a {'latest.pt' if sharded else 'sharded (FSDP)'} checkpoint, which "
                f"train.distributed={self.mode} cannot load; resume with "
                f"{'train.distributed=none or ddp' if sharded else 'train.distributed=fsdp'}"
            )
        return found

    def no_grad_sync(self, train_model: torch.nn.Module, last_micro: bool):
        """Context for one micro-batch: gradients are reduced only on the last one."""
        if self.mode == "ddp" and not last_micro:
            return train_model.no_sync()
        if self.mode == "fsdp":
            train_model.set_requires_gradient_sync(last_micro)
        return nullcontext()


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_from_env() -> int:
    return int(os.environ.get("RANK", "0"))


def setup(mode: str, device_name: str = "auto") -> Dist:
    """Join (or create) the process group for ``mode`` and pick this rank's device.

    torchrun (or any launcher) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
    MASTER_PORT. Without them a ``ddp``/``fsdp`` run is a group of one (handy to try FSDP on
    one GPU). ``mode="none"`` touches nothing.
    """
    if mode not in MODES:
        raise ValueError(f"train.distributed={mode!r} is unknown; allowed: {', '.join(MODES)}")
    from attnlab.train.loop import resolve_device

    if mode == "none":
        return Dist(device=resolve_device(device_name))
    world, rank = world_size_from_env(), rank_from_env()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name.startswith("cuda:"):
        raise ValueError(
            f"train.device={device_name!r}: with train.distributed={mode} each rank uses "
            "cuda:LOCAL_RANK; set train.device=cuda or auto (or pick GPUs with CUDA_VISIBLE_DEVICES)"
        )
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "MASTER_ADDR" in os.environ:
            kwargs = {"device_id": device} if device.type == "cuda" else {}
            dist.init_process_group(backend, rank=rank, world_size=world, **kwargs)
        elif world == 1:
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        else:
            raise ValueError(
                f"train.distributed={mode} with WORLD_SIZE={world} but no MASTER_ADDR: launch with torchrun "
                "(see README.md, 'Training on several GPUs or nodes')"
            )
        owns = True
    return Dist(mode=mode, rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                device=device, owns_group=owns)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""Checkpoint files are data, never code: a crafted pickle runs nothing on any path that loads
one (checkpoint load, resume, run metadata, sample, eval source=, distill teacher=, DCP
folders); a flipped bit fails the load naming the file; a trusted old file converts once;
atomic writes get the mode the umask gives."""

import os
import pickle
import random
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlab.train import checkpoint as ckpt
from attnlab.train.distributed import Dist


class Evil:
    """Unpickling this creates ``marker``: proof that loading ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def evil_checkpoint(path: Path, marker: Path) -> Path:
    """What an old attnlab checkpoint looks like, with a payload inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "config": {"model": {}, "data": {}}, "step": 3, "payload": Evil(marker)}, path)
    return path


def test_the_payload_runs_under_full_unpickling(tmp_path):
    """The test's own check: a plain unpickling of the file does create the marker."""
    marker = tmp_path / "pwned"
    torch.load(evil_checkpoint(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


def _sample(path):
    from attnlab.sample import load_model

    return load_model(path, torch.device("cpu"))


def _eval(path):
    from attnlab.eval import make_plan

    return make_plan({"source": str(path), "tasks": ["bpb"], "windows": 1, "batch_size": 1, "device": "cpu",
                      "data": {"context": 16}, "passkey": {}, "task": {}})


def _distill(path):
    from attnlab.data import DataConfig
    from attnlab.distill.config import DistillConfig
    from attnlab.distill.trainer import distill
    from attnlab.model import ModelConfig
    from attnlab.train.config import TrainConfig

    return distill(ModelConfig(d_model=16, n_layers=1, n_heads=2, context=16), DataConfig(context=16),
                   DistillConfig(), TrainConfig(steps=1, device="cpu", progress=False), path.parent / "run",
                   teacher=str(path), dist=Dist())


def _pretrained_run_dir(path):
    from attnlab.pretrained import load_pretrained

    return load_pretrained(str(path.parent.parent))  # <run>/checkpoints/latest.pt


LOADERS = {
    "checkpoint.load": lambda p: ckpt.load(p),
    "resume": lambda p: ckpt.open_for_resume(p.parent, True, Dist()),
    "read_meta": lambda p: ckpt.read_meta(p),
    "sample checkpoint=": _sample,
    "eval source=": _eval,
    "distill teacher=": _distill,
    "load_pretrained(run dir)": _pretrained_run_dir,
}


@pytest.mark.parametrize("loader", LOADERS, ids=list(LOADERS))
def test_crafted_pickle_runs_no_code_and_is_refused(tmp_path, loader):
    marker = tmp_path / "pwned"
    path = evil_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt", marker)
    with pytest.raises(ckpt.UnsafeCheckpointError) as err:
        LOADERS[loader](path)
    assert not marker.exists(), "loading ran code from the file"
    message = str(err.value)
    assert str(path) in message and "convert --trust" in message and "\n" not in message


def _dcp_folder(tmp_path) -> Path:
    """A real single-process DCP checkpoint of a tiny model (+ optimizer state)."""
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    extra = {"step": 5, "config": {"model": {}, "data": {}}, "rng": ckpt.rng_states()}
    return ckpt.save_sharded(state, extra, tmp_path / "checkpoints", 5, Dist())


def test_dcp_folder_with_crafted_metadata_runs_no_code(tmp_path):
    from attnlab.train import ckpt_io

    folder = _dcp_folder(tmp_path)
    marker = tmp_path / "pwned"
    (folder / ".metadata").write_bytes(pickle.dumps(Evil(marker)))
    # the attacker also rewrites the checksums: integrity checks are not the defence here
    extra, _ = ckpt_io.read(folder / ckpt.EXTRA)
    ckpt.atomic_save(extra, folder / ckpt.EXTRA, files=ckpt_io.shard_checksums(folder, skip={ckpt.EXTRA}))
    for load in (lambda: ckpt.consolidate(folder, tmp_path / "model.pt"),
                 lambda: ckpt.load_sharded({"model": torch.nn.Linear(4, 3).state_dict()}, folder, Dist())):
        with pytest.raises(ckpt.UnsafeCheckpointError, match=r"\.metadata: refused"):
            load()
        assert not marker.exists()


def test_dcp_folder_with_crafted_extra_runs_no_code(tmp_path):
    folder = _dcp_folder(tmp_path)
    marker = tmp_path / "pwned"
    evil_checkpoint(folder / ckpt.EXTRA, marker)
    for load in (lambda: ckpt.read_meta(folder), lambda: ckpt.consolidate(folder, tmp_path / "m.pt")):
        with pytest.raises(ckpt.UnsafeCheckpointError, match="extra.pt"):
            load()
    assert not marker.exists()


def test_dcp_round_trip_and_damaged_shard(tmp_path):
    folder = _dcp_folder(tmp_path)
    assert ckpt.read_meta(folder)["step"] == 5
    single = ckpt.load(ckpt.consolidate(folder, tmp_path / "model.pt"))
    assert set(single["model"]) == {"weight", "bias"} and single["step"] == 5
    shard = next(folder.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(ckpt.CorruptCheckpointError, match=f"{shard}: checksum mismatch"):
        ckpt.load_sharded({"model": torch.nn.Linear(4, 3).state_dict()}, folder, Dist())


def _flip_inside(path: Path, needle: bytes) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(needle) + len(needle) // 2
    data[at] ^= 0x08
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["weights", "step", "config"])
def test_bit_flip_fails_the_load_naming_the_file(tmp_path, where):
    weights = torch.arange(4096, dtype=torch.float32)
    path = ckpt.atomic_save({"model": {"w": weights}, "step": 123456789, "config": {"name": "run-abcdefgh"}},
                            tmp_path / "latest.pt")
    needle = {"weights": weights[2000:2008].numpy().tobytes(), "step": (123456789).to_bytes(4, "little"),
              "config": b"run-abcdefgh"}[where]
    _flip_inside(path, needle)
    with pytest.raises(ckpt.CorruptCheckpointError) as err:
        ckpt.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    if where != "weights":  # read_meta checks everything but the tensor bytes
        with pytest.raises(ckpt.CorruptCheckpointError, match=str(path)):
            ckpt.read_meta(path)


def _rezip(src: Path, dst: Path, patch=None, compress=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", compress) as out:
        for name in z.namelist():
            data = z.read(name)
            out.writestr(name, patch(data) if patch and name.endswith("data.pkl") else data)
    return dst


def test_sizes_claimed_by_a_crafted_file_are_not_allocated(tmp_path):
    path = ckpt.atomic_save({"w": torch.ones(10)}, tmp_path / "ok.pt")
    huge = b"J" + struct.pack("<i", 2**31 - 1)  # BININT: 2**31 - 1 elements where 10 are stored

    def bigger(pkl: bytes) -> bytes:
        return pkl.replace(b"K\n", huge)  # every BININT1 10: the storage size and the shape

    for crafted in (_rezip(path, tmp_path / "numel.pt", bigger),
                    _rezip(path, tmp_path / "deflated.pt", compress=zipfile.ZIP_DEFLATED)):
        with pytest.raises(ckpt.CorruptCheckpointError, match=str(crafted)):
            ckpt.load(crafted)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(ckpt.CheckpointError, match="not in the torch zip format"):
        ckpt.load(junk)


def test_round_trip_keeps_rng_states_tuples_and_state_dict_metadata(tmp_path):
    model = torch.nn.Linear(3, 2)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    saved = {"model": model.state_dict(), "rng": ckpt.rng_states(), "pair": (1, 2.5), "none": None,
             "steps": np.int64(7)}
    ckpt.atomic_save(saved, tmp_path / "c.pt")
    expect = (random.random(), np.random.rand(), torch.rand(1))
    state = ckpt.load(tmp_path / "c.pt")
    ckpt.set_rng_states(state["rng"])
    assert (random.random(), np.random.rand()) == expect[:2] and torch.equal(torch.rand(1), expect[2])
    assert state["pair"] == (1, 2.5) and state["none"] is None and state["steps"] == 7
    assert state["model"]._metadata == model.state_dict()._metadata
    with pytest.raises(TypeError, match=r"\['bad'\].*object"):
        ckpt.atomic_save({"bad": object()}, tmp_path / "x.pt")


def test_old_checkpoint_converts_only_when_trusted(tmp_path, capsys):
    old = tmp_path / "latest.pt"
    torch.save({"model": {"w": torch.ones(3)}, "rng": ckpt.rng_states(), "step": 4}, old)  # numpy state: pickled
    with pytest.raises(ckpt.UnsafeCheckpointError, match="convert --trust"):
        ckpt.load(old)
    assert ckpt.main(["convert", str(old)]) == 2 and "--trust" in capsys.readouterr().err
    assert ckpt.main(["convert", "--trust", str(old)]) == 0
    state = ckpt.load(old)
    assert state["step"] == 4 and torch.equal(state["model"]["w"], torch.ones(3))
    assert (tmp_path / "latest.pt.old").exists()  # the original is kept
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker)
    assert ckpt.main(["convert", str(evil)]) == 2 and not marker.exists()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        ckpt.atomic_write_text("x", tmp_path / "a.txt")
        ckpt.atomic_save({"step": 1}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode

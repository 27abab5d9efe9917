"""Faults: NaN gradients stop the run and never reach a checkpoint; SIGKILL during a save
never corrupts the latest checkpoint (both formats)."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from test_train import tiny_data, tiny_model, tiny_train

from attnlab.model import Transformer
from attnlab.train import checkpoint as ckpt
from attnlab.train.distributed import Dist
from attnlab.train.loop import train


class _PoisonGrad(torch.autograd.Function):
    """Identity forward (a finite loss); NaN gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _all_finite(state: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_nan_gradient_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_forward = Transformer.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None, **kw):
        logits, loss = real_forward(self, idx, targets, **kw)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 6:  # step 6: finite loss, NaN gradients
                loss = _PoisonGrad.apply(loss)
        return logits, loss

    monkeypatch.setattr(Transformer, "forward", poisoned)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient norm at step 6; last good checkpoint: "
                                                 r".*latest.pt \(step 4\)"):
        train(tiny_model(), tiny_data(), tiny_train(), tmp_path)
    state = ckpt.load(tmp_path / "checkpoints" / "latest.pt")
    assert state["step"] == 4 and _all_finite(state["model"])
    assert not (tmp_path / "metrics.json").exists()


def test_non_finite_parameters_are_never_saved(tmp_path, monkeypatch):
    # The optimizer step itself produces a NaN (finite loss and gradients): the save refuses.
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 8:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(FloatingPointError, match=r"non-finite parameters after step 8; not saving them; "
                                                 r"last good checkpoint: .*latest.pt \(step 4\)"):
        train(tiny_model(), tiny_data(), tiny_train(), tmp_path)
    state = ckpt.load(tmp_path / "checkpoints" / "latest.pt")
    assert state["step"] == 4 and _all_finite(state["model"])


# A process that saves checkpoint versions v, v+1, ... forever (each a few tens of MB whose
# every value is v) and appends v to progress.txt after each save returns.
SAVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from attnlab.train import checkpoint as ckpt
    from attnlab.train.distributed import Dist

    folder, fmt = Path(sys.argv[1]), sys.argv[2]
    n = 4_000_000  # float32 values per tensor: 2 tensors, 32 MB a version
    version = int(sys.argv[3])
    tensors = {"a": torch.empty(n), "b": torch.empty(n)}
    while True:
        version += 1
        tensors["a"].fill_(version), tensors["b"].fill_(-version)
        if fmt == "pt":
            ckpt.atomic_save({"version": version, **tensors}, folder / ckpt.LATEST)
        else:
            ckpt.save_sharded(tensors, {"version": version, "step": version}, folder, version, Dist())
        with open(folder / "progress.txt", "a") as f:
            f.write(f"{version}\\n")
""")


def _load_latest(folder, fmt):
    if fmt == "pt":
        state = ckpt.load(folder / ckpt.LATEST)
        return state["version"], state["a"], state["b"]
    path = ckpt.latest_sharded(folder)
    tensors = {"a": torch.zeros(4_000_000), "b": torch.zeros(4_000_000)}
    extra = ckpt.load_sharded(tensors, path, Dist())
    assert path.name == f"step_{extra['version']:08d}.dcp"
    return extra["version"], tensors["a"], tensors["b"]


def _saved_versions(folder):
    path = folder / "progress.txt"
    lines = path.read_text().split("\n") if path.exists() else []
    return [int(x) for x in lines[:-1]]  # the last piece may be torn by the kill


KILLS = 3  # kills 0 and 2 mid-write, kill 1 at a random moment


@pytest.mark.parametrize("fmt", ["pt", "dcp"])
def test_sigkill_during_save_never_corrupts_the_latest_checkpoint(tmp_path, fmt):
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    rng = random.Random(0)
    version, torn = 0, 0
    for kill in range(KILLS):
        before = len(_saved_versions(folder))
        proc = subprocess.Popen([sys.executable, str(script), str(folder), fmt, str(version)])
        try:
            deadline = time.monotonic() + 120
            while len(_saved_versions(folder)) < before + 1:  # wait for one complete save...
                assert proc.poll() is None and time.monotonic() < deadline, "saver died or hung"
                time.sleep(0.01)
            if kill % 2:  # ...then kill at a random moment of a later save,
                time.sleep(rng.uniform(0.0, 0.6))
            else:  # or right after its temp file / folder appears (mid-write)
                while not list(folder.glob(".*.tmp")):
                    assert proc.poll() is None and time.monotonic() < deadline, "saver died or hung"
                time.sleep(rng.uniform(0.0, 0.01))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        saved = _saved_versions(folder)
        got, a, b = _load_latest(folder, fmt)
        # The latest is a complete version: the last one reported, or one saved just before the kill.
        assert saved[-1] <= got <= saved[-1] + 1, (got, saved[-3:])
        assert torch.equal(a, torch.full_like(a, float(got))) and torch.equal(b, torch.full_like(b, -float(got)))
        version = got
        # The next writer removes what the killed save left behind.
        torn += bool(ckpt.remove_stale_temps(folder))
        assert not list(folder.glob(".*.tmp"))
    print(f"{fmt}: {torn} of {KILLS} kills interrupted a save; last version {version}")
    assert torn >= 1, "no kill landed inside a save: the test did not test anything"
    if fmt == "dcp":
        assert [p.name for p in folder.glob("step_*.dcp")] == [f"step_{version:08d}.dcp"]

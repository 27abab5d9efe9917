"""A training run, and a sweep, SIGKILLed mid-way and run again finish with the result of
an uninterrupted run (bitwise on CPU): batches are a function of the step, checkpoints hold
every RNG state, and `resume=auto` continues a run dir whose checkpoint has the same config."""

import json
import os
import signal
import subprocess
import time

import pytest

from attnlab.train import checkpoint as ckpt
from attnlab.train.logger import read_jsonl

RUN = ["train.steps=40", "train.ckpt_every=5", "train.eval_every=20"]
# Everything logged but wall-clock timings.
KEYS = ("kind", "step", "train_loss", "grad_norm", "lr", "tokens", "val_loss", "val_bpb", "val_tokens")
FINAL = ("status", "steps", "train_loss", "val_loss", "val_bpb", "val_ppl", "params")


def logged(run_dir):
    return [{k: r.get(k) for k in KEYS} for r in read_jsonl(run_dir / "metrics.jsonl")]


def final(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: metrics[k] for k in FINAL}


def kill_when(proc: subprocess.Popen, path, timeout=120):
    """SIGKILL `proc` as soon as `path` exists; returns its exit status."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"finished before {path} appeared: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    return proc.wait()


def start(cmd, cwd):
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, train_cli, train_env):
    """The uninterrupted run (train.seed=0) both tests compare with."""
    folder = tmp_path_factory.mktemp("straight")
    out = train_cli([*RUN, "train.seed=0", f"hydra.run.dir={folder}"], folder, env=train_env)
    assert out.returncode == 0, out.stderr[-3000:]
    return folder


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, straight, train_cli, train_cmd):
    run = tmp_path / "killed"
    status = kill_when(start(train_cmd([*RUN, f"hydra.run.dir={run}"]), tmp_path), run / "checkpoints" / "latest.pt")
    assert status == -signal.SIGKILL and not (run / "metrics.json").exists()
    killed_at = ckpt.load(run / "checkpoints" / "latest.pt")["step"]
    assert 5 <= killed_at < 40
    again = train_cli([*RUN, "resume=true", f"hydra.run.dir={run}"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert logged(run) == logged(straight)
    assert final(run) == final(straight)


def test_killed_sweep_reruns_skip_the_done_and_resume_the_cut(tmp_path, straight, train_cli, train_cmd):
    sweep = tmp_path / "sweep"  # job 0: seed 1, job 1 (killed): seed 0, the `straight` run
    args = ["hydra.mode=MULTIRUN", "train.seed=1,0", *RUN, f"hydra.sweep.dir={sweep}"]
    status = kill_when(start(train_cmd(args), tmp_path), sweep / "1" / "checkpoints" / "latest.pt")
    assert status == -signal.SIGKILL
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "complete"
    assert not (sweep / "1" / "metrics.json").exists()
    done_before = (sweep / "0" / "metrics.json").stat().st_mtime_ns

    rerun = train_cli(args, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"skip: {sweep / '0'} already holds a complete run" in rerun.stdout
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == done_before
    assert f"resume=auto: continuing {sweep / '1'} from step" in rerun.stderr
    assert logged(sweep / "1") == logged(straight)
    assert final(sweep / "1") == final(straight)

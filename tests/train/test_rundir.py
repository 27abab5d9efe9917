"""Run dirs that cannot be lost: one writer at a time (a lock naming its pid and host), and
reruns that never delete or overwrite a complete run or a run of another config
(`attnlab.train.rundir`). Tiny runs (1 layer, d 16, 4 steps of 2 x 16 bytes); no timing."""

import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from attnlab.data import DataConfig
from attnlab.model import ModelConfig
from attnlab.train import RunDirConflict, RunDirLocked
from attnlab.train.config import TrainConfig
from attnlab.train.logger import read_jsonl
from attnlab.train.loop import train
from attnlab.train.rundir import NOT_RESULT_KEYS, config_diff, config_hash, record_of

ROOT = Path(__file__).resolve().parents[2]
MODEL = ModelConfig(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, context=16)
DATA = DataConfig(context=16, batch_size=2, val_tokens=64)
FILES = ("config.json", "metrics.json", "metrics.jsonl", "checkpoints/latest.pt")


def tcfg(**kw):
    return TrainConfig(**(dict(steps=4, lr=3e-3, min_lr=3e-4, warmup_steps=1, eval_every=2, eval_batches=1,
                               log_every=1, ckpt_every=2, logger="jsonl", progress=False, device="cpu") | kw))


def snapshot(run_dir: Path) -> dict:
    return {name: (run_dir / name).read_bytes() for name in FILES}


@pytest.fixture(scope="module")
def complete(tmp_path_factory):
    """A complete run (the default `tcfg`) and its files' bytes."""
    run = tmp_path_factory.mktemp("complete")
    train(MODEL, DATA, tcfg(), run)
    return run


@contextmanager
def held_by_another_process(run: Path):
    """``run``'s lock, taken by a child process until the block ends; yields its pid."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from attnlab.train.rundir import locked\n"
                               f"with locked({str(run)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait()


def test_second_writer_is_refused_naming_the_holders_pid_and_host(tmp_path):
    run = tmp_path / "run"
    with held_by_another_process(run) as pid:
        with pytest.raises(RunDirLocked, match=rf"being written by another job \(pid {pid} on host "
                                               rf"{socket.gethostname()}\)") as refused:
            train(MODEL, DATA, tcfg(), run)
        assert "\n" not in str(refused.value)
        assert sorted(p.name for p in run.iterdir()) == [".lock"], "the refused job wrote nothing"
    train(MODEL, DATA, tcfg(steps=1, eval_every=0), run)  # the lock is free again
    assert (run / "metrics.json").exists()


def test_the_entry_point_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    from attnlab.train.__main__ import main

    quiet = ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", ["attnlab.train", "model=tiny", "data.batch_size=2", "data.val_tokens=64",
                                      "train.steps=1", "train.logger=none", "train.progress=false", *quiet,
                                      f"hydra.run.dir={tmp_path}"])
    with held_by_another_process(tmp_path) as pid, pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and f"(pid {pid} on host" in err, err
    assert not (tmp_path / "error.txt").exists() and not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("resume", ["auto", False])
def test_a_complete_run_of_another_config_is_kept_byte_for_byte(complete, resume):
    before = snapshot(complete)
    with pytest.raises(RunDirConflict, match=r"holds a complete run of another config \(train.lr: 0.003 -> 0.002\); "
                                             r"it is kept: use another run dir, or resume=force") as refused:
        train(MODEL, DATA, tcfg(lr=2e-3), complete, resume=resume)
    assert "\n" not in str(refused.value)
    assert snapshot(complete) == before


def test_other_keys_that_change_results_are_named(complete):
    with pytest.raises(RunDirConflict, match=r"model.n_layers: 1 -> 2; train.seed: 0 -> 1"):
        train(ModelConfig(d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, context=16), DATA, tcfg(seed=1), complete,
              resume="auto")


def test_a_changed_logging_key_skips_the_complete_run(complete):
    before = snapshot(complete)
    again = train(MODEL, DATA, tcfg(logger="none", log_every=3, progress=True, ckpt_every=1), complete, resume="auto")
    assert again["status"] == "complete" and snapshot(complete) == before


def test_a_changed_logging_key_continues_an_unfinished_run(tmp_path, complete, capfd):
    run = tmp_path / "run"
    assert train(MODEL, DATA, tcfg(stop_at=2), run) == {"status": "stopped", "step": 2}
    done = train(MODEL, DATA, tcfg(logger="none"), run, resume="auto")
    assert f"resume=auto: continuing {run} from step 2" in capfd.readouterr().err
    assert done["status"] == "complete"
    keys = ("kind", "step", "train_loss", "grad_norm", "val_loss")
    logged = [[{k: r.get(k) for k in keys} for r in read_jsonl(d / "metrics.jsonl")] for d in (run, complete)]
    assert logged[0] == logged[1], "continued: the records of the uninterrupted run"


def test_an_unfinished_run_of_another_config_is_kept(tmp_path):
    run = tmp_path / "run"
    train(MODEL, DATA, tcfg(stop_at=2), run)
    before = (run / "metrics.jsonl").read_bytes(), (run / "checkpoints" / "latest.pt").read_bytes()
    with pytest.raises(RunDirConflict, match=r"holds an unfinished run \(checkpoint at step 2\) of another config "
                                             r"\(train.warmup_steps: 1 -> 2\); it is kept: use another run dir, "
                                             r"resume=true to continue it with this config, or resume=force"):
        train(MODEL, DATA, tcfg(warmup_steps=2), run, resume="auto")
    with pytest.raises(RunDirConflict, match=r"resume=false: .* holds an unfinished run \(checkpoint at step 2\) "
                                             r"of this config; it is kept: resume=auto continues it"):
        train(MODEL, DATA, tcfg(), run, resume=False)
    assert ((run / "metrics.jsonl").read_bytes(), (run / "checkpoints" / "latest.pt").read_bytes()) == before


def test_force_starts_over(tmp_path, complete):
    run = tmp_path / "run"
    train(MODEL, DATA, tcfg(steps=2), run)
    (run / "error.txt").write_text("an old failure")
    done = train(MODEL, DATA, tcfg(), run, resume="force")
    assert done["status"] == "complete" and done["steps"] == 4 and not (run / "error.txt").exists()
    redone = [r.get("train_loss") for r in read_jsonl(run / "metrics.jsonl")]
    assert redone == [r.get("train_loss") for r in read_jsonl(complete / "metrics.jsonl")], "one fresh run's records"


def test_config_hash_covers_only_keys_that_change_results():
    record = record_of({"resume": "auto", "teacher": "x"}, model=MODEL, data=DATA, train=tcfg())
    base = config_hash(record)
    for key in NOT_RESULT_KEYS:
        section, _, name = key.partition(".")
        changed = {**record, section: {**record.get(section, {}), name: "other"}} if name else {**record, section: "other"}
        assert config_hash(changed) == base, key
    for section, name in (("train", "lr"), ("train", "device"), ("model", "d_model"), ("data", "seed")):
        changed = {**record, section: {**record[section], name: 7}}
        assert config_hash(changed) != base, f"{section}.{name}"
        assert config_diff(record, changed) == [f"{section}.{name}: {record[section][name]!r} -> 7".replace("'", '"')]
    assert config_hash({**record, "teacher": "y"}) != base

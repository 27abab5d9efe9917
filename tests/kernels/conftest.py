"""Shared by the kernel tests: every buffer the launchers allocate starts as NaN, so a
kernel that forgets to write a tile fails the test."""

import pytest
from attnlab.kernels.flash import common


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    monkeypatch.setattr(common, "_POISON_OUTPUTS", True)

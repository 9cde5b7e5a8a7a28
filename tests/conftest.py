"""Shared test set-up: tiktoken's offline cache, and helpers for the engine tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_CACHE = Path(__file__).resolve().parents[2] / "shared" / "tiktoken-cache"
if _CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_CACHE))

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """A response cache of the test's own, and no API key or base URL from the environment."""
    monkeypatch.setenv("DFBATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)

"""Shared test set-up: tiktoken's offline cache, and helpers for the engine tests.

Tests that count tokens exactly need tiktoken's encoding files: ``../shared/tiktoken-cache``
when it exists, else ``TIKTOKEN_CACHE_DIR``, else a download. Mark them ``needs_tiktoken``
(the doctests of ``dfbatch/engine/tokens.py`` are marked here): where the files cannot be loaded
(offline, no cache) they are skipped with a reason naming TIKTOKEN_CACHE_DIR, and the rest run.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest

_CACHE = Path(__file__).resolve().parents[2] / "shared" / "tiktoken-cache"
if _CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_CACHE))

NEEDS_TIKTOKEN = (
    "tiktoken's encoding files cannot be loaded here (offline, and no cached copy): set "
    "TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached encoding files to run this test"
)
_ENCODINGS = ("cl100k_base", "o200k_base")


@functools.cache
def tiktoken_ready() -> bool:
    """Whether tiktoken can load the encodings the tests count with (asked once)."""
    try:
        import tiktoken

        for name in _ENCODINGS:
            tiktoken.get_encoding(name)
    except Exception:  # no network and no cache: requests' errors, OSError, ValueError...
        return False
    return True


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs_tiktoken: needs tiktoken's encoding files; skipped, naming TIKTOKEN_CACHE_DIR, "
        "where they cannot be loaded",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the needs_tiktoken tests (and engine/tokens.py's doctests) when tiktoken cannot load."""
    needing = [
        item
        for item in items
        if item.get_closest_marker("needs_tiktoken") is not None
        or (
            isinstance(item, pytest.DoctestItem)
            and item.path.name == "tokens.py"
            and item.path.parent.name == "engine"
        )
    ]
    if needing and not tiktoken_ready():
        for item in needing:
            item.add_marker(pytest.mark.skip(reason=NEEDS_TIKTOKEN))


sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """A response cache of the test's own, and no API key or base URL from the environment."""
    monkeypatch.setenv("DFBATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def opts(sim, tmp_path):  # type: ignore[no-untyped-def]
    """The options a test's calls share: its module's ``sim``, a key, no bar, a cache of its own."""
    return {
        "base_url": sim.base_url,
        "api_key": "sk-test",
        "progress": False,
        "cache": tmp_path / "cache.sqlite",
    }

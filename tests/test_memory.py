"""Memory a run freed goes back to the system, so a notebook holds about what its results need."""

from __future__ import annotations

import gc
import sys

import psutil
import pytest

from dfbatch.jobs.run import release_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_is_given_back() -> None:
    process = psutil.Process()
    # 200 MB in 6 KB pieces (like a run's decoded vectors), then a small survivor on top, so
    # the heap cannot simply shrink from its end on free().
    pieces = [bytearray(6144) for _ in range(32_000)]
    for piece in pieces:
        piece[::4096] = b"\x01" * len(piece[::4096])  # touch every page
    survivor = bytearray(6144)
    del pieces
    gc.collect()
    before = process.memory_info().rss
    assert release_freed_memory()
    after = process.memory_info().rss
    assert before - after > 100 * 2**20, (before, after)
    assert survivor is not None

"""Shared test set-up: tiktoken's offline cache, and helpers for the engine tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_CACHE = Path(__file__).resolve().parents[2] / "shared" / "tiktoken-cache"
if _CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_CACHE))

sys.path.insert(0, str(Path(__file__).resolve().parent))

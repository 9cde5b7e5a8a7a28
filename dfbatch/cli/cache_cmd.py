"""``dfbatch cache info`` and ``dfbatch cache clear``: look at and trim the response cache."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..cache.store import ResponseCache, default_cache_path, parse_age


def _size(n: float) -> str:
    """
    >>> _size(1536), _size(12_345_678)
    ('1.5 KB', '11.8 MB')
    """
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TB"  # pragma: no cover


def _when(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def cache_info(path: Path | None, *, as_json: bool) -> str:
    """What the store holds, as text (or JSON); never creates the file."""
    where = path or default_cache_path()
    if not where.exists():
        info: dict[str, Any] = {"path": str(where), "bytes": 0, "entries": 0, "by_model": {}}
    else:
        with ResponseCache(where, readonly=True) as cache:
            info = cache.info()
    info["by_model"] = {
        str(k) if k is not None else "(none)": v
        for k, v in sorted(info["by_model"].items(), key=lambda kv: -kv[1])
    }
    if as_json:
        return json.dumps(info, indent=2)
    lines = [
        f"cache:   {info['path']}" + ("" if where.exists() else "  (not created yet)"),
        f"size:    {_size(info['bytes'])}",
        f"entries: {info['entries']:,}",
    ]
    for model, count in info["by_model"].items():
        lines.append(f"  {model}: {count:,}")
    if info.get("oldest") is not None:
        lines.append(f"stored:  {_when(info['oldest'])} to {_when(info['newest'])}")
    return "\n".join(lines)


def cache_clear(path: Path | None, *, model: str | None, older_than: str | None) -> str:
    """Delete entries (all, of one model, or older than an age); says how many."""
    age = parse_age(older_than) if older_than is not None else None
    where = path or default_cache_path()
    if not where.exists():
        return f"no cache at {where}: nothing to clear"
    with ResponseCache(where) as cache:
        deleted = cache.clear(model=model, older_than=age)
        left = cache.info()
    which = []
    if model is not None:
        which.append(f"of model {model!r}")
    if older_than is not None:
        which.append(f"older than {older_than}")
    scope = (" " + " and ".join(which)) if which else ""
    return (
        f"deleted {deleted:,} entries{scope} from {where}; "
        f"{left['entries']:,} left ({_size(left['bytes'])})"
    )

"""``dfbatch batches``: the Batch API jobs the record knows, and their state as last seen.

Reads the record in the response cache (:mod:`dfbatch.cache.batch_record`); it calls no
server. A job still ``uploaded`` or ``created`` is picked up by rerunning the call that made
it (the same cell, or the same ``dfbatch embed/complete --batch`` command).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..cache.batch_record import BatchRecord
from ..cache.keys import default_cache_path

_HEAD = ("job", "created", "endpoint", "model", "state", "status", "done/failed/total", "batch")


def list_batches(path: Path | None, *, as_json: bool = False, open_only: bool = False) -> str:
    """The known jobs as a table (or JSON), newest last."""
    path = path or default_cache_path()
    if not path.exists():
        return "[]" if as_json else f"no Batch API jobs: {path} does not exist"
    record = BatchRecord(path)
    try:
        jobs = record.jobs(open_only=open_only)
    finally:
        record.close()
    if as_json:
        return json.dumps(
            [{k: v for k, v in j.__dict__.items() if k not in ("server", "scope")} for j in jobs],
            indent=1,
        )
    if not jobs:
        return f"no Batch API jobs in {path}"
    rows: list[tuple[str, ...]] = [_HEAD]
    for j in jobs:
        counts: dict[str, Any] = j.counts or {}
        rows.append(
            (
                str(j.id),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created)),
                j.endpoint,
                j.model or "",
                j.state,
                j.status or "",
                f"{counts.get('completed', 0)}/{counts.get('failed', 0)}/{counts.get('total', 0)}",
                j.batch_id or "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEAD))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    waiting = sum(j.state != "done" for j in jobs)
    if waiting:
        lines.append(
            f"{waiting} job(s) not yet downloaded: rerun the call that made them to wait for "
            "them and get their answers"
        )
    return "\n".join(lines)


def do_batches(args: argparse.Namespace) -> int:
    path = Path(args.cache).expanduser() if args.cache else None
    print(list_batches(path, as_json=args.json, open_only=args.open))
    return 0

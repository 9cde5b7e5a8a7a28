"""Where ``dfbatch run --batch`` holds its memory: the command in this process, RSS sampled at
its stages (for ``bench/batch_bench.py``'s section (2) when its ratio fails; run by hand).

    python bench/_batch_cli_probe.py [--tracemalloc] [--flush-every N] -- \
        run --batch REQ.jsonl -o OUT.jsonl --url http://127.0.0.1:PORT/v1/embeddings \
        --poll-interval 0.5 --cache C.sqlite

Runs ``dfbatch.cli.main.main(ARGS)`` with thin wrappers (nothing changed in dfbatch) around the
steps of ``dfbatch/cli/run_batch.py`` and ``dfbatch/batch/backend.py``: each BatchRun's run
and ``_submit`` (records the lines and uploads them), each job's ``_download``, every
``ResponseCache.flush`` (with how many answers and bytes were buffered), and the second pass
that writes the results (``_Run.go``). At each mark it prints the RSS now and the peak RSS
since the previous mark (VmHWM, reset through /proc/self/clear_refs), and with --tracemalloc
the Python heap now and its peak since the previous mark, plus the biggest allocation sites
at the largest flush.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import tracemalloc
from typing import Any

T0 = time.perf_counter()
_rows: list[dict[str, Any]] = []
_top: dict[str, Any] = {"buffered": -1, "stats": None}


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith(("VmRSS:", "VmHWM:")):
                name, value = ln.split(":", 1)
                out[name] = int(value.split()[0])
    return out


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def mark(stage: str, **extra: Any) -> None:
    st = _status()
    row: dict[str, Any] = {
        "t": round(time.perf_counter() - T0, 2),
        "stage": stage,
        "rss_mb": st["VmRSS"] / 1e3,
        "peak_since_last_mb": st["VmHWM"] / 1e3,
        **extra,
    }
    if tracemalloc.is_tracing():
        now, peak = tracemalloc.get_traced_memory()
        row["py_heap_mb"] = now / 1e6
        row["py_heap_peak_since_last_mb"] = peak / 1e6
        tracemalloc.reset_peak()
    _rows.append(row)
    _reset_peak()
    parts = [f"{row['t']:7.2f}s {stage:<44} RSS {row['rss_mb']:7.1f} MB"]
    parts.append(f"peak since last {row['peak_since_last_mb']:7.1f} MB")
    if "py_heap_mb" in row:
        parts.append(
            f"py heap {row['py_heap_mb']:6.1f} MB (peak {row['py_heap_peak_since_last_mb']:6.1f})"
        )
    parts += [f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in extra.items()]
    print("  ".join(parts), file=sys.stderr, flush=True)


def _wrap_async(cls: Any, name: str, label: Any) -> None:
    original = getattr(cls, name)

    @functools.wraps(original)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        mark(f"{label(self, args, kwargs)}: start")
        try:
            return await original(self, *args, **kwargs)
        finally:
            mark(f"{label(self, args, kwargs)}: end")

    setattr(cls, name, wrapper)


def install(trace: bool, flush_every: int, mark_at: int) -> None:
    from dfbatch.batch.backend import BatchRun
    from dfbatch.cache.store import ResponseCache
    from dfbatch.cli import run as cli_run

    _wrap_async(BatchRun, "run", lambda s, a, k: f"BatchRun.run(wait={k.get('wait', True)})")
    _wrap_async(BatchRun, "_submit", lambda s, a, k: f"  _submit ({len(s.active)} active)")
    _wrap_async(BatchRun, "_download", lambda s, a, k: f"  _download job {a[1].id}")
    _wrap_async(cli_run._Run, "go", lambda s, a, k: "pass 2: _Run.go (writes the results)")

    original_flush = ResponseCache.flush

    def flush(self: Any) -> None:
        buffered = len(self._pending) + self._vectors.count
        if buffered >= mark_at:
            nbytes = self._pending_bytes + self._vectors.nbytes
            mark("    cache.flush", buffered=buffered, buffered_mb=round(nbytes / 1e6, 1))
            if trace and buffered > _top["buffered"]:
                _top["buffered"] = buffered
                _top["stats"] = tracemalloc.take_snapshot().statistics(
                    "traceback" if tracemalloc.get_traceback_limit() > 1 else "lineno"
                )[:12]
        original_flush(self)

    ResponseCache.flush = flush  # type: ignore[method-assign]

    if flush_every:  # the experiment: the answers of a download stored as they come
        from dfbatch.cli.run_batch import _Collect

        original_outcome = _Collect.outcome

        def outcome(self: Any, *args: Any, **kwargs: Any) -> Any:
            out = original_outcome(self, *args, **kwargs)
            if self._cache is not None and self._cache.buffered >= flush_every:
                self._cache.flush()
            return out

        _Collect.outcome = outcome  # type: ignore[method-assign]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tracemalloc", action="store_true")
    p.add_argument(
        "--flush-every",
        type=int,
        default=0,
        metavar="N",
        help="experiment: store the cache's buffered answers whenever N are buffered during a "
        "download (dfbatch stores a job's answers once its whole output is read)",
    )
    p.add_argument("--mark-flush-at", type=int, default=1000, metavar="N",
                   help="mark the flushes of at least N answers (default 1000)")  # fmt: skip
    p.add_argument("args", nargs=argparse.REMAINDER, help="dfbatch's arguments, after --")
    a = p.parse_args()
    argv = a.args[1:] if a.args[:1] == ["--"] else a.args
    from dfbatch.cli.main import main as dfbatch_main

    install(a.tracemalloc, a.flush_every, a.mark_flush_at)
    if a.tracemalloc:
        tracemalloc.start(int(os.environ.get("PROBE_FRAMES", "1")))
    mark("imports done")
    rc = dfbatch_main(argv)
    mark("end", exit=rc)
    if _top["stats"]:
        print(
            f"largest flush ({_top['buffered']:,} answers buffered): top allocation sites",
            file=sys.stderr,
        )
        for s in _top["stats"]:
            print(f"  {s.size / 1e6:8.1f} MB {s.count:>9,} blocks", file=sys.stderr)
            for frame in s.traceback.format()[::-1][:12]:
                print(f"      {frame}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())

"""Diagnostic driver: where the wall and CPU time of one ``df.llm.embed`` call go, by phase.

Wraps dfbatch's internal steps (without changing dfbatch: the wrappers are installed from
here) with timers: wall (perf_counter) and CPU of the calling thread (thread_time; the call
runs in dfbatch's worker thread, and every step below runs there). Times are inclusive:
``plan`` contains ``count_texts``, ``engine: receive`` contains ``parse_embeddings`` and
``cache: put_vector``. Prints one JSON line; ``bench/accessor_bench.py --phases`` prints it.

    python bench/_accessor_phases.py --base-url URL --rows 100000 --cache FILE|off
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import sys
import time
from collections import defaultdict
from typing import Any

import pandas as pd

import dfbatch  # noqa: F401  (registers .llm)
from dfbatch.cache import store as _cache
from dfbatch.engine import core as _engine
from dfbatch.engine import retry as _retry
from dfbatch.engine.tokens import encoding_name_for_model, load_encoding
from dfbatch.frames import columns as _frames
from dfbatch.jobs import embed as _embed
from dfbatch.jobs import run as _run

MODEL = "text-embedding-3-small"
TIMES: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])  # wall, cpu, calls


def timed(name: str, fn: Any) -> Any:
    if getattr(fn, "_timed", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        w, c = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            t = TIMES[name]
            t[0] += time.perf_counter() - w
            t[1] += time.thread_time() - c
            t[2] += 1

    wrapper._timed = True  # type: ignore[attr-defined]
    return wrapper


def timed_async(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        w = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            t = TIMES[name]
            t[0] += time.perf_counter() - w
            t[2] += 1

    return wrapper


def wrap(owner: Any, attr: str, name: str) -> None:
    """Time ``owner.attr`` if it exists (dfbatch's internals change; absent steps are skipped)."""
    fn = getattr(owner, attr, None)
    if fn is None:
        return
    if isinstance(owner, type) and isinstance(owner.__dict__.get(attr), classmethod):
        setattr(owner, attr, classmethod(timed(name, fn.__func__)))
    else:
        setattr(owner, attr, timed(name, fn))


def install() -> None:
    job = _embed.EmbedJob
    wrap(job, "plan", "plan (dedupe, skip NA)")
    wrap(job, "count_tokens", "count_tokens (texts to send)")
    wrap(_embed, "count_texts", "  count_texts (tiktoken)")
    wrap(job, "keys", "cache keys")
    wrap(job, "use_cached", "use_cached (cache hits into the block)")
    wrap(job, "receive", "engine: receive (parse + store + cache put)")
    wrap(job, "store", "  store (copy a vector into the block)")
    wrap(job, "column", "column (one view per row)")
    wrap(job, "error_column", "error_column")
    wrap(_embed, "parse_embeddings", "  classify: parse_embeddings (base64)")
    rc = _cache.ResponseCache
    wrap(rc, "__init__", "cache: open")
    wrap(rc, "get_vectors", "cache: get_vectors")
    wrap(rc, "get_vector_rows", "  cache: get_vector_rows (read the store)")
    wrap(rc, "put_vector", "  cache: put_vector (buffer)")
    wrap(rc, "put_vectors", "  cache: put_vectors (buffer)")
    wrap(rc, "maybe_flush", "cache: maybe_flush (write to SQLite)")
    wrap(rc, "flush", "cache: flush (all, incl. from maybe_flush)")
    wrap(rc, "close", "cache: close")
    wrap(_retry, "classify_response", "engine: classify_response (JSON parse, answer check)")
    if hasattr(_engine, "classify_response"):
        _engine.classify_response = _retry.classify_response
    _frames.execute = timed_async("execute (engine run, await)", _run.execute)
    _frames._finish = timed("finish (frame.assign, summary)", _frames._finish)


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--cache", default="off")
    args = p.parse_args()
    load_encoding(encoding_name_for_model(MODEL))
    df = pd.DataFrame(
        {"text": [f"row {i}: some short product review text" for i in range(args.rows)]}
    )
    install()
    cache: Any = False if args.cache == "off" else args.cache
    c0, t0 = cpu(), time.perf_counter()
    out = df.llm.embed("text", base_url=args.base_url, cache=cache, progress=False)
    t1, c1 = time.perf_counter(), cpu()
    phases = {k: {"wall_s": v[0], "cpu_s": v[1], "calls": v[2]} for k, v in TIMES.items()}
    print(
        json.dumps(
            {
                "rows": args.rows,
                "cache": args.cache,
                "wall_s": t1 - t0,
                "cpu_s": c1 - c0,
                "phases": phases,
                "figures": out.attrs.get("dfbatch", {}),
            },
            default=str,
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

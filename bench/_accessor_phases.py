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
from dfbatch import _cache, _embed, _engine, _frames, _retry, _run
from dfbatch._tokens import encoding_name_for_model, load_encoding

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


def install() -> None:
    job = _embed.EmbedJob
    job.plan = classmethod(timed("plan (dedupe, count tokens)", job.plan.__func__))  # type: ignore[method-assign]
    _embed.count_texts = timed("  plan: count_texts (tiktoken)", _embed.count_texts)
    job.keys = timed("cache keys (embedding_key x n)", job.keys)  # type: ignore[method-assign]
    job.use_cached = timed("use_cached (store hits in the block)", job.use_cached)  # type: ignore[method-assign]
    job.receive = timed("engine: receive (parse + store + cache put)", job.receive)  # type: ignore[method-assign]
    job.store = timed("  store (copy a vector into the block)", job.store)  # type: ignore[method-assign]
    job.column = timed("column (one view per row)", job.column)  # type: ignore[method-assign]
    job.error_column = timed("error_column", job.error_column)  # type: ignore[method-assign]
    _embed.parse_embeddings = timed("  receive: parse_embeddings (base64)", _embed.parse_embeddings)
    rc = _cache.ResponseCache
    rc.__init__ = timed("cache: open", rc.__init__)  # type: ignore[method-assign]
    rc.get_vectors = timed("cache: get_vectors (read the store)", rc.get_vectors)  # type: ignore[method-assign]
    rc.put_vector = timed("  cache: put_vector (buffer)", rc.put_vector)  # type: ignore[method-assign]
    rc.maybe_flush = timed("cache: maybe_flush (write to SQLite)", rc.maybe_flush)  # type: ignore[method-assign]
    rc.flush = timed("cache: flush (all, incl. from maybe_flush)", rc.flush)  # type: ignore[method-assign]
    _retry.classify_response = timed(
        "engine: classify_response (JSON parse)", _retry.classify_response
    )
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

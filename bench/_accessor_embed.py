"""Benchmark driver: one ``df.llm.embed`` call in a process of its own, prints one JSON line.

Started by ``bench/accessor_bench.py``. Start-up is not measured: the imports, loading the
tiktoken encoding the model uses (``cl100k_base``) and building the input frame. The measured
window is the call ``df.llm.embed("text", base_url=..., cache=..., progress=False)`` alone:

- client CPU: this process's user + system time (getrusage, every thread: the call runs its
  event loop in a worker thread) from just before the call to just after it;
- wall time of the call;
- memory: RSS (``/proc/self/statm``) after ``gc.collect()`` before the call and after it, the
  growth over the raw float32 size of the vectors; the peak RSS during the call, sampled by a
  thread every ``--rss-interval`` s (its own CPU is reported); RSS again after
  ``malloc_trim(0)`` (glibc heap the process freed but kept).

After the measurements (outside the window) every row's vector is checked, bit for bit,
against ``dfbatch.testing.expected_embeddings`` for its text.

    python bench/_accessor_embed.py --base-url URL --rows 100000 --cache FILE|off
        [--profile OUT.prof] [--tracemalloc N] [--no-check]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import resource
import sys
import threading
import time
from typing import Any

import numpy as np
import pandas as pd

import dfbatch  # noqa: F401  (registers .llm)
from dfbatch.engine.tokens import encoding_name_for_model, load_encoding
from dfbatch.testing import expected_embeddings

PAGE = os.sysconf("SC_PAGE_SIZE")
MODEL = "text-embedding-3-small"


def text_of(i: int) -> str:
    return f"row {i}: some short product review text"


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss() -> int:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * PAGE


def rss_parts() -> dict[str, int]:
    """RssAnon / RssFile / RssShmem and VmHWM from /proc/self/status, in bytes."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem", "VmHWM", "VmRSS"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def malloc_trim() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


class Sampler(threading.Thread):
    """Samples RSS every ``interval`` s; keeps the peak and its own CPU time."""

    def __init__(self, interval: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.interval = interval
        self.stop = threading.Event()
        self.peak = 0
        self.samples = 0
        self.cpu_s = 0.0

    def run(self) -> None:
        t0 = time.thread_time()
        while True:
            value = rss()
            self.samples += 1
            if value > self.peak:
                self.peak = value
            if self.stop.wait(self.interval):
                break
        self.peak = max(self.peak, rss())
        self.cpu_s = time.thread_time() - t0


def check(df: pd.DataFrame, out: pd.DataFrame, texts: list[str], dims: int | None) -> dict:
    """Every row's vector equals the simulator's answer for its text, bit for bit."""
    col = out["embedding"].to_numpy(dtype=object)
    errs = out["embedding_error"]
    n = len(texts)
    mismatched = missing = wrong_type = 0
    first_bad: list[int] = []
    chunk = 10_000
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        want = expected_embeddings(texts[start:stop], model=MODEL, dimensions=dims)
        for j in range(start, stop):
            v = col[j]
            if not isinstance(v, np.ndarray):
                missing += 1
                if len(first_bad) < 5:
                    first_bad.append(j)
                continue
            if v.dtype != np.float32 or v.shape != want[j - start].shape:
                wrong_type += 1
            if not np.array_equal(v, want[j - start]):
                mismatched += 1
                if len(first_bad) < 5:
                    first_bad.append(j)
    bases = {id(v.base) for v in col if isinstance(v, np.ndarray) and v.base is not None}
    return {
        "rows": n,
        "vectors_equal": n - missing - mismatched,
        "missing": missing,
        "mismatched": mismatched,
        "wrong_dtype_or_shape": wrong_type,
        "first_bad_rows": first_bad,
        "errors_not_na": int(errs.notna().sum()),
        "index_kept": bool(out.index.equals(df.index)),
        "input_untouched": list(df.columns) == ["text"],
        "distinct_base_arrays": len(bases),
        "dim": int(col[0].shape[0]) if n and isinstance(col[0], np.ndarray) else None,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--cache", default="off", help="a cache file path, or 'off' (cache=False)")
    p.add_argument("--dimensions", type=int, default=None)
    p.add_argument("--rss-interval", type=float, default=0.02)
    p.add_argument(
        "--profile",
        default=None,
        help="write cProfile stats (CPU time) here; runs await df.llm.aembed in the main "
        "thread (cProfile follows one thread), not df.llm.embed's worker thread",
    )
    p.add_argument("--tracemalloc", type=int, default=0, help="report the top N allocation diffs")
    p.add_argument("--no-check", action="store_true")
    args = p.parse_args()

    # --- start-up, not measured: imports (above), the tiktoken encoding, the input frame
    t = time.perf_counter()
    c = cpu()
    load_encoding(encoding_name_for_model(MODEL))
    encoding_s = {"wall_s": time.perf_counter() - t, "cpu_s": cpu() - c}
    t = time.perf_counter()
    texts = [text_of(i) for i in range(args.rows)]
    df = pd.DataFrame({"text": texts})
    frame_s = time.perf_counter() - t
    cache: Any = False if args.cache == "off" else args.cache
    kwargs: dict[str, Any] = {"base_url": args.base_url, "cache": cache, "progress": False}
    if args.dimensions is not None:
        kwargs["dimensions"] = args.dimensions

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(12)

    gc.collect()
    rss0 = rss()
    parts0 = rss_parts()
    snap0 = None
    if args.tracemalloc:
        snap0 = tracemalloc.take_snapshot()
    sampler = Sampler(args.rss_interval)
    sampler.start()

    c0 = cpu()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    if profiler is not None:  # cProfile sees one thread: run the async twin in this one
        import asyncio

        out = asyncio.run(df.llm.aembed("text", **kwargs))
    else:
        out = df.llm.embed("text", **kwargs)
    if profiler is not None:
        profiler.disable()
    t1 = time.perf_counter()
    c1 = cpu()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)

    sampler.stop.set()
    sampler.join()
    gc.collect()
    rss1 = rss()
    parts1 = rss_parts()
    t_trim = time.perf_counter()
    trimmed = malloc_trim()
    trim_s = time.perf_counter() - t_trim
    rss2 = rss()
    parts2 = rss_parts()
    raw = args.rows * (args.dimensions or 1536) * 4

    tm: dict[str, Any] | None = None
    if args.tracemalloc and snap0 is not None:
        snap1 = tracemalloc.take_snapshot()
        stats = snap1.compare_to(snap0, "traceback")
        total = sum(s.size_diff for s in stats)
        top = []
        for s in stats[: args.tracemalloc]:
            top.append(
                {
                    "size_diff": s.size_diff,
                    "count_diff": s.count_diff,
                    "where": [f"{f.filename}:{f.lineno}" for f in s.traceback][-6:],
                }
            )
        traced, traced_peak = tracemalloc.get_traced_memory()
        tm = {"total_diff": total, "traced_now": traced, "traced_peak": traced_peak, "top": top}
        tracemalloc.stop()

    if profiler is not None:
        profiler.dump_stats(args.profile)

    attrs = dict(out.attrs.get("dfbatch", {}))
    col = out["embedding"].to_numpy(dtype=object)
    first = col[0] if len(col) else None
    base = first.base if isinstance(first, np.ndarray) else None
    result: dict[str, Any] = {
        "rows": args.rows,
        "cache": args.cache,
        "wall_s": t1 - t0,
        "cpu_s": c1 - c0,
        "cpu_user_s": ru1.ru_utime - ru0.ru_utime,
        "cpu_sys_s": ru1.ru_stime - ru0.ru_stime,
        "sampler_cpu_s": sampler.cpu_s,
        "sampler_samples": sampler.samples,
        "startup": {"encoding": encoding_s, "frame_wall_s": frame_s},
        "raw_bytes": raw,
        "rss_before": rss0,
        "rss_after": rss1,
        "rss_after_trim": rss2,
        "malloc_trim_released": trimmed,
        "malloc_trim_s": trim_s,
        "rss_peak_sampled": sampler.peak,
        "vmhwm": parts1.get("VmHWM"),
        "rss_parts": {"before": parts0, "after": parts1, "after_trim": parts2},
        "block_nbytes": int(base.nbytes) if isinstance(base, np.ndarray) else None,
        "figures": attrs,
        "tracemalloc": tm,
    }
    if not args.no_check:
        t = time.perf_counter()
        result["check"] = check(df, out, texts, args.dimensions)
        result["check"]["seconds"] = time.perf_counter() - t
    print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

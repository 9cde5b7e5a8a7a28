"""One Batch-backend call in a process of its own, measured around the call only.

    python bench/_batch_client.py --base-url URL --kind embed|complete --rows N --cache PATH
        [--backend batch|online] [--dimensions D] [--check]

Prints one JSON line: wall and CPU (user + system, every thread) of the call, peak RSS of the
process (ru_maxrss, which includes the imports and the input frame built before the call) and
RSS before the call, the run's figures, and with --check how many rows equal the answers
dfbatch.testing computes for the online endpoints (exact float32 for embeddings).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import pandas as pd

import dfbatch  # noqa: F401  (registers .llm)


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--kind", choices=("embed", "complete"), required=True)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--backend", default="batch")
    p.add_argument("--dimensions", type=int, default=None)
    p.add_argument("--poll-interval", type=float, default=0.5)
    p.add_argument("--check", action="store_true")
    a = p.parse_args()
    texts = [f"row {i}: a short review of product {i % 997}, rated {i % 5}" for i in range(a.rows)]
    df = pd.DataFrame({"text": texts})
    opts = {"base_url": a.base_url, "cache": a.cache, "progress": False, "backend": a.backend}
    if a.backend == "batch":
        opts["poll_interval"] = a.poll_interval
    from dfbatch.engine.tokens import load_encoding

    load_encoding("cl100k_base")
    load_encoding("o200k_base")
    rss_before = rss_now_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    if a.kind == "embed":
        out = df.llm.embed("text", dimensions=a.dimensions, **opts)
    else:
        out = df.llm.complete("Classify: {text}", max_tokens=5, **opts)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    result = {
        "kind": a.kind,
        "backend": a.backend,
        "rows": a.rows,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "rss_before_call_mb": round(rss_before, 1),
        "peak_rss_mb": round(peak, 1),
        "figures": {
            k: v
            for k, v in out.attrs["dfbatch"].items()
            if k
            in (
                "batches_created",
                "batch_files_uploaded",
                "batch_lines_submitted",
                "batch_refusals",
                "requests",
                "rows_failed",
                "rows_from_cache",
            )
        },
        "batch_ids": len(out.attrs["dfbatch"].get("batch_ids", [])),
    }
    if a.check:
        from dfbatch.testing import expected_completion, expected_embeddings

        if a.kind == "embed":
            want = expected_embeddings(
                texts, model="text-embedding-3-small", dimensions=a.dimensions
            )
            got = np.stack(out.embedding.to_numpy())
            result["rows_equal_online"] = int((got == want).all(axis=1).sum())
        else:
            equal = 0
            for text, value in zip(texts, out.completion, strict=True):
                body = {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"Classify: {text}"}],
                    "max_tokens": 5,
                }
                equal += value == expected_completion(body)["choices"][0]["message"]["content"]
            result["rows_equal_online"] = int(equal)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())

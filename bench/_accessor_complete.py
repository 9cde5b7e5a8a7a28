"""Benchmark driver: one ``df.llm.complete`` call in a process of its own, prints one JSON line.

Started by ``bench/accessor_bench.py``. Imports, the tiktoken encoding and the input frame
are built before the clock starts; the measured window is the call

    df.llm.complete("Summarize: {text}", max_tokens=20, rpm=RPM, cache=False, progress=False)

After it, every row's answer is checked against the simulator's deterministic answer
(``dfbatch.testing.expected_content`` of the request body dfbatch sends for the row).

    python bench/_accessor_complete.py --base-url URL --rows 3000 --rpm 6000
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import pandas as pd

import dfbatch  # noqa: F401  (registers .llm)
from dfbatch.engine.tokens import encoding_name_for_model, load_encoding
from dfbatch.testing import expected_content

MODEL = "gpt-4o-mini"
TEMPLATE = "Summarize: {text}"


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--rpm", type=float, default=6000)
    p.add_argument("--max-tokens", type=int, default=20)
    args = p.parse_args()

    load_encoding(encoding_name_for_model(MODEL))
    texts = [f"row {i}: some short product review text" for i in range(args.rows)]
    df = pd.DataFrame({"text": texts})

    c0 = cpu()
    t0 = time.perf_counter()
    out = df.llm.complete(
        TEMPLATE,
        max_tokens=args.max_tokens,
        rpm=args.rpm,
        cache=False,
        progress=False,
        base_url=args.base_url,
    )
    t1 = time.perf_counter()
    c1 = cpu()

    wrong: list[int] = []
    for i, (text, got) in enumerate(zip(texts, out["completion"].tolist(), strict=True)):
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": TEMPLATE.format(text=text)}],
        }
        if got != expected_content(body):
            wrong.append(i)
    result: dict[str, Any] = {
        "rows": args.rows,
        "rpm": args.rpm,
        "wall_s": t1 - t0,
        "cpu_s": c1 - c0,
        "figures": dict(out.attrs.get("dfbatch", {})),
        "check": {
            "rows": args.rows,
            "answers_equal": args.rows - len(wrong),
            "first_wrong": wrong[:5],
            "first_wrong_value": out["completion"].iloc[wrong[0]] if wrong else None,
            "errors_not_na": int(out["completion_error"].notna().sum()),
            "index_kept": bool(out.index.equals(df.index)),
        },
    }
    print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

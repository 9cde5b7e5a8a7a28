"""Benchmark driver: ``df.llm.embed`` of many short rows against a TPM enforced over 1 s windows.

Started by ``bench/engine_bench.py`` (scenario f, issue 9 point 10) against a simulator run
with ``--tpm 1000000 --strict-windows``: a request of more tokens than one second's share
(16,667) is refused with a 429 every time, and a full pack of 2,048 of these rows is ~17,000.
Start-up (imports, the tiktoken encoding, the frame) is not timed; the call is. Afterwards
every row's vector is checked bit for bit against ``dfbatch.testing.expected_embeddings``.

    python bench/_drive_embed_window.py --base-url URL --rows 20000 [--tpm 1000000]

Prints one JSON line: rows, rows lost (no vector, or a wrong one), the failures by cause, the
run's figures (requests, 429s seen, retries) and the wall time of the call.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import pandas as pd

import dfbatch  # noqa: F401  (registers .llm)
from dfbatch.engine.tokens import load_encoding
from dfbatch.testing import expected_embeddings

MODEL = "text-embedding-3-small"
_WORDS = (  # noqa: SIM905  (one line of words reads better than thirty)
    "apple river stone cloud green music light table water house paper glass horse bread "
    "chair money earth plant night dream smile heart field train north south metal sugar "
    "voice point"
).split()


def text_of(i: int) -> str:
    """Unique short rows of 8 or 9 words, which the simulator and cl100k_base count alike
    (within 0.5%): a pack of 2,048 holds ~17,000 tokens."""
    a, b, c = i // 900 % 30, i // 30 % 30, i % 30
    extra = " again" if i % 3 == 0 else ""
    return f"{_WORDS[a]} {_WORDS[b]} {_WORDS[c]} is a short sentence today{extra}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--tpm", type=float, default=None, help="tell dfbatch the TPM")
    p.add_argument("--api-key", default="sk-bench")
    args = p.parse_args()
    if args.rows > 27_000:
        p.error("at most 27,000 unique rows")

    load_encoding("cl100k_base")
    frame = pd.DataFrame({"text": [text_of(i) for i in range(args.rows)]})
    t0 = time.perf_counter()
    out = frame.llm.embed(
        "text",
        model=MODEL,
        base_url=args.base_url,
        api_key=args.api_key,
        tpm=args.tpm,
        cache=False,
        progress=False,
    )
    wall = time.perf_counter() - t0

    figures = out.attrs["dfbatch"]
    have = out["embedding"].notna().to_numpy()
    want = expected_embeddings(list(frame["text"]), model=MODEL)
    wrong = sum(
        1 for i in np.flatnonzero(have) if not np.array_equal(out["embedding"].iloc[i], want[i])
    )
    result = {
        "rows": args.rows,
        "tpm_told": args.tpm,
        "rows_lost": int((~have).sum()) + wrong,
        "rows_wrong": wrong,
        "failures_by_cause": figures.get("failures_by_cause"),
        "requests": figures.get("requests"),
        "rate_limited_seen": figures.get("rate_limited"),
        "retries": figures.get("retries"),
        "tokens_estimated": figures.get("tokens_estimated"),
        "wall_s": wall,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

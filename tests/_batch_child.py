"""A process for the kill tests: embed a table through the Batch API, print a line when done.

python _batch_child.py BASE_URL CACHE_PATH ROWS MAX_LINES
"""

from __future__ import annotations

import logging
import sys

import pandas as pd

import dfbatch  # noqa: F401  (registers .llm)
from dfbatch.engine import constants as C


def main() -> None:
    base_url, cache, rows, max_lines = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    C.BATCH_MAX_LINES = max_lines
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)  # the tests read what it says
    df = pd.DataFrame({"text": [f"kill test row {i}" for i in range(rows)]})
    out = df.llm.embed(
        "text",
        base_url=base_url,
        cache=cache,
        backend="batch",
        poll_interval=0.02,
        batch_size=2,
        progress=False,
    )
    print("done", int(out.embedding.notna().sum()), flush=True)


if __name__ == "__main__":
    main()

"""One sender process for the shared-budget tests: embeds rows one a request, prints figures.

python tests/_share_sender.py BASE_URL LIMITER RPM FIRST COUNT
(LIMITER "none" paces this process alone.)
"""

from __future__ import annotations

import json
import sys

import pandas as pd

import dfbatch  # noqa: F401


def main() -> None:
    base_url, limiter, rpm, first, count = sys.argv[1:6]
    df = pd.DataFrame({"text": [f"row {i}" for i in range(int(first), int(first) + int(count))]})
    out = df.llm.embed(
        "text",
        base_url=base_url,
        api_key="sk-test",
        rpm=float(rpm),
        batch_size=1,
        cache=False,
        progress=False,
        limiter=None if limiter == "none" else limiter,
    )
    figures = out.attrs["dfbatch"]
    print(
        json.dumps(
            {
                "answered": int(out["embedding"].notna().sum()),
                "rate_limited": figures["rate_limited"],
                "requests": figures["requests"],
            }
        )
    )


if __name__ == "__main__":
    main()

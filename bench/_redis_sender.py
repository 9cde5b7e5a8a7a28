"""One sender of shared_bench.py's Redis scenario: embeds its rows one a request, prints figures.

python bench/_redis_sender.py BASE_URL LIMITER RPM TAG FIRST COUNT   (LIMITER "none": alone)
"""

from __future__ import annotations

import json
import resource
import sys

import pandas as pd

import dfbatch  # noqa: F401
from dfbatch.coord.account import account_id
from dfbatch.coord.leaser import LeasedBudget
from dfbatch.coord.redis import RedisCoordinator
from dfbatch.engine.config import ApiConfig

base_url, limiter, rpm, tag, first, count = sys.argv[1:7]
texts = [f"{tag} row {i}" for i in range(int(first), int(first) + int(count))]
df = pd.DataFrame({"text": texts})
budget = None
if limiter != "none":
    api = ApiConfig.resolve(base_url=base_url, api_key="sk-bench")
    budget = LeasedBudget(RedisCoordinator(limiter, account_id(api)))


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


c0 = cpu()
out = df.llm.embed(
    "text",
    base_url=base_url,
    api_key="sk-bench",
    rpm=float(rpm),
    batch_size=1,
    cache=False,
    progress=False,
    limiter=budget,
)
print(
    json.dumps(
        {
            "answered": int(out["embedding"].notna().sum()),
            "cpu_s": cpu() - c0,
            "asks": budget.asks if budget else 0,
            "fallbacks": budget.fallbacks if budget else 0,
        }
    )
)

"""One budget, many senders (issue 13): Dask workers and Redis-sharing processes under one limit.

A simulator process enforces 6,000 RPM over 1-second windows. Embeddings, one row a request:

    (a) Dask: a LocalCluster of 4 worker processes (1 thread each), the frame in 4 partitions,
        ``ddf.llm.embed(..., rpm=6000, batch_size=1)``: shared (the job's actor keeps the book)
        and naive (``limiter=None``: every worker told the full limit).
    (b) Redis: 3 processes (``bench/_redis_sender.py``), each a third of the rows, each told
        ``rpm=6000``: shared (``limiter="redis://..."``, a fresh redis-server) and naive.
    (c) costs: the client CPU a shared budget adds per request (the wallet on the limiter's hot
        path, measured alone; a Redis ask's CPU spread over the requests of its slice), and
        the round trips per second each run made.

Figures: share of the limit reached (requests admitted per second / 100), 429s per request,
whether every row was answered exactly once (the simulator counts each input it answered).

    .venv/bin/python bench/shared_bench.py                 # the issue's 40,000 rows (~30 min)
    .venv/bin/python bench/shared_bench.py --rows 6000     # the same, shorter (~6 min)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "tests"))
if "TIKTOKEN_CACHE_DIR" not in os.environ and (ROOT.parent / "shared/tiktoken-cache").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(ROOT.parent / "shared/tiktoken-cache")

from engine_bench import Sim  # noqa: E402

import dfbatch  # noqa: E402, F401

RPM = 6000
KEY = "sk-bench"
PY = sys.executable


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _texts(rows: int, tag: str) -> list[str]:
    return [f"{tag} row {i}" for i in range(rows)]


def _figures(stats: dict[str, Any], rows: int, answered: int, elapsed: float) -> dict[str, Any]:
    counts = stats.get("inputs", {})
    rate = stats.get("admitted_per_second") or 0.0
    return {
        "elapsed_s": round(elapsed, 1),
        "share_of_limit": round(rate / (RPM / 60), 3),
        "requests": stats["requests"],
        "rate_limited": stats["rate_limited"],
        "rate_limited_share": round(stats["rate_limited"] / max(1, stats["requests"]), 4),
        "rows_answered": answered,
        "every_row_answered_once": answered == rows
        and len(counts) == rows
        and all(c == 1 for c in counts.values()),
        "rows_answered_twice": sum(1 for c in counts.values() if c > 1),
    }


def dask_run(tmp: Path, rows: int, shared: bool, client: Any) -> dict[str, Any]:
    import dask.dataframe as dd

    from dfbatch.coord.dask_scheduler import books_state

    name = "shared" if shared else "naive"
    with Sim(tmp, f"dask-{name}", "--rpm", str(RPM), "--record-inputs") as sim:
        ddf = dd.from_pandas(pd.DataFrame({"text": _texts(rows, f"dask-{name}")}), npartitions=4)
        # shared: the default (the scheduler keeps the books); naive: each partition alone
        limiter: Any = {} if shared else {"limiter": None}
        before = client.run_on_scheduler(books_state)["asks"]
        out = ddf.llm.embed(
            "text",
            base_url=sim.base_url,
            api_key=KEY,
            rpm=RPM,
            batch_size=1,
            cache=False,
            **limiter,
        )
        t0 = time.perf_counter()
        got = out.compute()
        elapsed = time.perf_counter() - t0
        f = _figures(sim.stats(), rows, int(got["embedding"].notna().sum()), elapsed)
        if shared:
            asks = client.run_on_scheduler(books_state)["asks"] - before
            f["lease_round_trips"] = asks
            f["lease_round_trips_per_s"] = round(asks / elapsed, 1)
    return f


def redis_run(tmp: Path, rows: int, shared: bool) -> dict[str, Any]:
    from _redis import RedisServer

    name = "shared" if shared else "naive"
    server = RedisServer(tmp)
    server.start()
    try:
        with Sim(tmp, f"redis-{name}", "--rpm", str(RPM), "--record-inputs") as sim:
            per = rows // 3
            limiter = server.url if shared else "none"
            t0 = time.perf_counter()
            procs = [
                subprocess.Popen(
                    [
                        PY,
                        str(BENCH / "_redis_sender.py"),
                        sim.base_url,
                        limiter,
                        str(RPM),
                        f"redis-{name}",
                        str(i * per),
                        str(per),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for i in range(3)
            ]
            outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
            elapsed = time.perf_counter() - t0
            f = _figures(sim.stats(), per * 3, sum(o["answered"] for o in outs), elapsed)
            asks = sum(o["asks"] for o in outs)
            f["client_cpu_ms_per_request"] = round(
                1000 * sum(o["cpu_s"] for o in outs) / max(1, f["requests"]), 3
            )
            if shared:
                f["lease_asks"] = asks
                f["redis_round_trips_per_s"] = round(2 * asks / elapsed, 1)  # 2 scripts an ask
                f["requests_per_ask"] = round(f["requests"] / max(1, asks), 1)
                f["fallbacks"] = sum(o["fallbacks"] for o in outs)
    finally:
        server.stop()
    return f


def wallet_cpu() -> dict[str, float]:
    """The limiter's hot path per request, with a wallet and without (fake clock, one core)."""
    from dfbatch.engine.lease import LeaseBook, Wallet
    from dfbatch.engine.limiter import Limiter

    n = 200_000

    def run(shared: bool) -> float:
        book = LeaseBook(0.0)
        wallet = Wallet("w", rpm=6_000_000, tpm=None, now=0.0) if shared else None
        lim = Limiter(rpm=6_000_000, tpm=None, max_in_flight=100, now=0.0, share=wallet)
        now, t0 = 0.0, time.process_time()
        for _ in range(n):
            now += 1e-5
            while lim.delay(10, now) > 0:
                now += 1e-5
                if wallet is not None and wallet.wants(now):
                    wallet.on_grant(book.lease(wallet.ask(now), now), now)
            lim.on_send(10, now)
            if wallet is not None and wallet.wants(now):
                wallet.on_grant(book.lease(wallet.ask(now), now), now)
        return (time.process_time() - t0) / n * 1e6

    alone, shared = run(False), run(True)
    return {"limiter_alone_us": round(alone, 2), "limiter_with_wallet_us": round(shared, 2)}


def redis_ask_cpu(tmp: Path) -> dict[str, float]:
    """CPU and wall time of one Redis ask (two scripts), from this process."""
    from _redis import RedisServer

    from dfbatch.coord.redis import RedisCoordinator
    from dfbatch.engine.lease import Ask

    server = RedisServer(tmp)
    server.start()
    try:
        coord = RedisCoordinator(server.url, "bench")
        n = 2000

        async def go() -> tuple[float, float]:
            await coord.lease(Ask("w", rpm=6_000_000, tpm=None))
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                await coord.lease(Ask("w", rpm=6_000_000, tpm=None))
            out = (time.process_time() - c0) / n, (time.perf_counter() - t0) / n
            await coord.aclose()
            return out

        cpu, wall = asyncio.run(go())
    finally:
        server.stop()
    return {"redis_ask_cpu_us": round(cpu * 1e6, 1), "redis_ask_wall_us": round(wall * 1e6, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--only", choices=["dask", "redis", "cpu"], action="append")
    args = ap.parse_args()
    only = set(args.only or ["dask", "redis", "cpu"])
    report: dict[str, Any] = {"rows": args.rows, "limit_rpm": RPM}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "cpu" in only:
            log("client CPU: the limiter with and without a wallet")
            report["cpu"] = wallet_cpu()
            if shutil.which("redis-server"):
                report["cpu"].update(redis_ask_cpu(tmp))
        if "dask" in only:
            from distributed import Client, LocalCluster

            cluster = LocalCluster(
                n_workers=4, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = Client(cluster)
            try:
                for shared in (True, False):
                    log(f"dask, {'shared' if shared else 'naive'}: {args.rows:,} rows")
                    report[f"dask_{'shared' if shared else 'naive'}"] = dask_run(
                        tmp, args.rows, shared, client
                    )
            finally:
                client.close()
                cluster.close()
        if "redis" in only:
            if not shutil.which("redis-server"):
                report["redis"] = "skipped: redis-server is not installed"
            else:
                for shared in (True, False):
                    log(f"redis, {'shared' if shared else 'naive'}: {args.rows:,} rows")
                    report[f"redis_{'shared' if shared else 'naive'}"] = redis_run(
                        tmp, args.rows, shared
                    )
    print(json.dumps(report, indent=2))
    out = BENCH / "out"
    out.mkdir(exist_ok=True)
    (out / "shared_bench.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One budget across processes through a real redis-server (skipped where it is missing)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import redis
from _redis import RedisServer, needs_redis

import dfbatch  # noqa: F401
from dfbatch.coord.account import account_id
from dfbatch.coord.leaser import LeasedBudget
from dfbatch.coord.redis import RedisCoordinator
from dfbatch.engine.config import ApiConfig
from dfbatch.testing import Simulator

pytestmark = needs_redis

SENDER = Path(__file__).with_name("_share_sender.py")


@pytest.fixture
def redis_server(tmp_path):  # type: ignore[no-untyped-def]
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def _senders(base_url: str, limiter: str, rpm: int, rows: int, procs: int) -> list[dict]:
    running = [
        subprocess.Popen(
            [sys.executable, str(SENDER), base_url, limiter, str(rpm), str(i * rows), str(rows)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(procs)
    ]
    outs = [p.communicate(timeout=120)[0] for p in running]
    assert all(p.returncode == 0 for p in running)
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def test_two_processes_told_the_accounts_limit_share_it_through_redis(redis_server):
    """Two processes, each told 3,000 RPM, stay under it together: no 429s, every row answered;
    Redis holds the shared book under a hash, never the API key."""
    with Simulator(rpm=3000) as sim:
        figures = _senders(sim.base_url, redis_server.url, 3000, rows=150, procs=2)
        rate_limited = sim.stats.rate_limited
    assert sum(f["answered"] for f in figures) == 300
    assert rate_limited <= 3  # at most 1% of the requests
    keys = redis.Redis.from_url(redis_server.url).keys("dfbatch:lease:*")
    assert len(keys) == 1
    stored = redis.Redis.from_url(redis_server.url).get(keys[0])
    assert b"sk-test" not in keys[0] and b"sk-test" not in stored


def test_the_same_two_processes_without_sharing_are_refused(redis_server):
    """The naive setup, for contrast: each process paces at the full limit, the server refuses."""
    with Simulator(rpm=3000) as sim:
        figures = _senders(sim.base_url, "none", 3000, rows=150, procs=2)
        rate_limited = sim.stats.rate_limited
    assert sum(f["answered"] for f in figures) == 300
    assert rate_limited > 10


def test_redis_dying_mid_run_means_an_even_split_then_sharing_again(redis_server, caplog):
    """Redis is killed mid-run: the sender warns, paces at its even split, goes back to sharing
    when Redis returns, and every row is answered once."""
    api = ApiConfig.resolve(base_url="http://unused/v1", api_key="sk-test")
    budget = LeasedBudget(RedisCoordinator(redis_server.url, account_id(api)), timeout=0.5)
    df = pd.DataFrame({"text": [f"row {i}" for i in range(120)]})

    def outage() -> None:
        time.sleep(1.0)
        redis_server.stop()
        time.sleep(1.5)
        redis_server.start()

    caplog.set_level(logging.WARNING, logger="dfbatch")
    with Simulator(rpm=1800) as sim:
        killer = threading.Thread(target=outage)
        killer.start()
        with pytest.warns(RuntimeWarning, match="unreachable"):
            out = df.llm.embed(
                "text",
                base_url=sim.base_url,
                api_key="sk-test",
                rpm=1800,
                batch_size=1,
                cache=False,
                progress=False,
                limiter=budget,
            )
        killer.join()
        requests = sim.stats.requests
    assert out["embedding"].notna().all()
    assert requests == 120 + sim.stats.rate_limited
    assert budget.fallbacks == 1
    assert budget.wallet is not None and not budget.wallet.alone  # sharing again at the end
    messages = [r.getMessage() for r in caplog.records]
    assert any("unreachable" in m for m in messages)
    assert any("answers again" in m for m in messages)


def test_two_dfbatch_run_commands_share_one_budget_with_limiter(redis_server, tmp_path):
    """`dfbatch run --limiter redis://...` in two processes on one key: no 429s together."""
    files = []
    for p in range(2):
        path = tmp_path / f"requests{p}.jsonl"
        path.write_text(
            "".join(
                json.dumps({"model": "text-embedding-3-small", "input": f"p{p} line {i}"}) + "\n"
                for i in range(150)
            )
        )
        files.append(path)
    with Simulator(rpm=3000) as sim:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dfbatch",
                    "run",
                    str(path),
                    "--url",
                    sim.base_url + "/embeddings",
                    "--rpm",
                    "3000",
                    "--limiter",
                    redis_server.url,
                    "--no-cache",
                    "--api-key",
                    "sk-test",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for path in files
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors
        rate_limited = sim.stats.rate_limited
    for path in files:
        out = path.with_name(path.stem + "_results.jsonl")
        assert len(out.read_text().splitlines()) == 150
    assert rate_limited <= 3


@pytest.mark.parametrize("command", ["embed", "complete"])
def test_dfbatch_embed_and_complete_take_limiter(redis_server, tmp_path, command):
    """`dfbatch embed/complete --limiter redis://...` lease from Redis: the account's book is
    there afterwards (named by a hash, never the key), and every row is answered."""
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": [f"row {i}" for i in range(30)]}).to_csv(src, index=False)
    out = tmp_path / "out.parquet"
    what = ["--column", "text"] if command == "embed" else ["--prompt", "Say {text}"]
    with Simulator(rpm=3000) as sim:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "dfbatch",
                command,
                str(src),
                str(out),
                *what,
                "--base-url",
                sim.base_url,
                "--rpm",
                "3000",
                "--limiter",
                redis_server.url,
                "--no-cache",
                "--api-key",
                "sk-test",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    got = pd.read_parquet(out)
    assert (
        len(got) == 30
        and got[f"{'embedding' if command == 'embed' else 'completion'}_error"].isna().all()
    )
    keys = redis.Redis.from_url(redis_server.url).keys("dfbatch:lease:*")
    assert len(keys) == 1 and b"sk-test" not in keys[0]

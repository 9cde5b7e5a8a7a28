"""Benchmark driver: run dfbatch's Engine over a JSONL file of embeddings requests, print JSON.

Started by ``bench/engine_bench.py`` as its own process, so the client's CPU time is this
process's alone. Start-up (imports, loading the tiktoken encoding) happens before the clock
starts; the measured run does what the cookbook script does in its own run: read the JSONL
file line by line, parse each line, estimate its tokens, send it, read the answer, keep the
outcome. The callback keeps only the id and whether it succeeded (the cookbook writes each
answer to a file instead).

    python bench/_drive_dfbatch.py --base-url http://127.0.0.1:PORT/v1 --requests FILE \
        [--rpm N] [--tpm N] [--max-in-flight N] [--profile OUT.prof] [--busy 0.08/0.5]

``--busy BLOCK/EVERY`` makes the event loop busy: every EVERY seconds it is blocked for BLOCK
seconds (``time.sleep`` in a callback: what a long callback, a GC pause or a descheduled
process do to the loop, without using the CPU the simulator shares).

Prints one JSON line: wall and CPU seconds of the run, outcome counts, RunStats figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from dfbatch import ApiConfig, Engine, Outcome, Request
from dfbatch.engine.constants import DEFAULT_MAX_IN_FLIGHT
from dfbatch.engine.core import run_stats_summary
from dfbatch.engine.http_client import HttpTransport
from dfbatch.engine.tokens import estimate_request_tokens, load_encoding
from dfbatch.engine.transport import RawResponse, Transport


class TimedTransport:
    """The engine's own transport, noting when sends start (time.monotonic, the clock the
    simulator stamps admissions with): the client's pace, apart from the server's."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.count = 0
        self.first: float | None = None
        self.second: float | None = None
        self.last: float | None = None
        self.times: list[float] = []  # every send
        self.first_answer: float | None = None

    async def send(self, url: str, headers: Any, body: bytes, timeout: float) -> RawResponse:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        elif self.second is None:
            self.second = now
        self.last = now
        self.count += 1
        self.times.append(now)
        try:
            return await self.inner.send(url, headers, body, timeout)
        finally:
            if self.first_answer is None:
                self.first_answer = time.monotonic()

    async def aclose(self) -> None:
        await self.inner.aclose()


def _cpu() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def read_requests(
    path: str, endpoint: str, extra: dict[str, Any] | None = None
) -> Iterator[Request]:
    """One Request per JSONL line, id = line number, tokens estimated as dfbatch does."""
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            body = json.loads(line)
            if extra:
                body.update(extra)
            yield Request(i, endpoint, body, estimate_request_tokens(endpoint, body))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--requests", required=True, help="JSONL file, one request body a line")
    p.add_argument("--endpoint", default="/embeddings")
    p.add_argument("--rpm", type=float, default=None)
    p.add_argument("--tpm", type=float, default=None)
    p.add_argument("--max-in-flight", type=int, default=None)
    p.add_argument("--api-key", default="sk-bench")
    p.add_argument("--profile", default=None, help="write cProfile stats of the run here")
    p.add_argument("--body-extra", default=None, help="JSON object merged into each body")
    p.add_argument("--busy", default=None, help="BLOCK/EVERY seconds: block the loop")
    args = p.parse_args()
    busy = tuple(float(x) for x in args.busy.split("/")) if args.busy else None

    # Start-up, not measured: imports (above) and the encoding's files.
    load_encoding("cl100k_base")
    max_in_flight = args.max_in_flight or DEFAULT_MAX_IN_FLIGHT
    # The transport the engine would make itself, wrapped to time the sends. The engine closes
    # only a transport it made: go() closes this one.
    transport = TimedTransport(HttpTransport())  # the engine's default transport
    engine = Engine(
        ApiConfig.resolve(base_url=args.base_url, api_key=args.api_key),
        rpm=args.rpm,
        tpm=args.tpm,
        max_in_flight=max_in_flight,
        transport=transport,
    )

    ids: list[Any] = []
    ok = 0
    errors: Counter[str] = Counter()

    def on_outcome(outcome: Outcome) -> None:
        nonlocal ok
        ids.append(outcome.id)
        if outcome.ok:
            ok += 1
        else:
            errors[str(outcome.error)[:120]] += 1

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)  # CPU time, not wall

    u0, s0 = _cpu()
    t0 = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    extra = json.loads(args.body_extra) if args.body_extra else None
    requests = read_requests(args.requests, args.endpoint, extra)

    async def go() -> Any:
        ballast = None
        if busy is not None:
            block, every = busy

            async def blocker() -> None:
                while True:
                    await asyncio.sleep(every)
                    time.sleep(block)  # the loop is busy: nothing else runs meanwhile

            ballast = asyncio.ensure_future(blocker())
        try:
            return await engine.run(requests, on_outcome)
        finally:
            if ballast is not None:
                ballast.cancel()
            await transport.aclose()

    stats = asyncio.run(go())
    if profiler is not None:
        profiler.disable()
    t1 = time.perf_counter()
    u1, s1 = _cpu()
    if profiler is not None:
        profiler.dump_stats(args.profile)

    with open(args.requests, encoding="utf-8") as fh:
        n = sum(1 for _ in fh)
    unique = len(set(ids))
    out = {
        "client": "dfbatch",
        "n": n,
        "wall_s": t1 - t0,
        "cpu_user_s": u1 - u0,
        "cpu_sys_s": s1 - s0,
        "cpu_s": (u1 - u0) + (s1 - s0),
        "outcomes": len(ids),
        "ok": ok,
        "failed": len(ids) - ok,
        "unique_ids": unique,
        "duplicates": len(ids) - unique,
        "missing": n - len(set(ids) & set(range(n))),
        "errors": dict(errors.most_common(5)),
        "rate_limited_seen": stats.rate_limited,
        "stats": run_stats_summary(stats),
        "max_in_flight": engine.max_in_flight,
        "rpm": args.rpm,
        "tpm": args.tpm,
        "timed_out": False,
        "sends": transport.count,
        "first_send": transport.first,
        "second_send": transport.second,
        "last_send": transport.last,
        "busy": args.busy,
        "first_answer": transport.first_answer,
    }
    if transport.first_answer is not None:
        # The steady part of the run: from a second after the first answer (the window is
        # open and the burst allowed at its opening is spent) to the end.
        steady_from = transport.first_answer + 1.0
        after = [t for t in transport.times if t >= steady_from]
        out["sends_before_first_answer"] = sum(
            1 for t in transport.times if t < transport.first_answer
        )
        out["steady_from"] = steady_from
        out["sends_after_steady"] = len(after)
        out["first_send_after_steady"] = after[0] if after else None
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

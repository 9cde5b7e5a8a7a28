"""Benchmark driver: run the OpenAI cookbook's api_request_parallel_processor.py, print JSON.

``bench/engine_bench.py`` extracts the script (unchanged) from the seed page into a temp dir and
starts this driver as its own process. The driver imports the script (its own imports happen
then), loads the tiktoken encoding, then calls ``process_api_requests_from_file`` with the
arguments its command line would pass, measuring this process's CPU (user + system) and wall
time around that call only, the same way ``_drive_dfbatch.py`` measures dfbatch.

    python bench/_drive_cookbook.py --script PATH --request-url URL --requests FILE \
        --save FILE --rpm N --tpm N [--timeout S] [--logging-level 30]

With ``--timeout`` the run is cancelled after that many seconds; what it finished is counted
from its results file. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import resource
import sys
import time
from typing import Any


def _cpu() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def _load(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("api_request_parallel_processor", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--script", required=True)
    p.add_argument("--request-url", required=True)
    p.add_argument("--requests", required=True)
    p.add_argument("--save", required=True)
    p.add_argument("--rpm", type=int, required=True)
    p.add_argument("--tpm", type=int, required=True)
    p.add_argument("--encoding", default="cl100k_base")
    p.add_argument("--max-attempts", type=int, default=5)
    p.add_argument("--logging-level", type=int, default=30)
    p.add_argument("--api-key", default="sk-bench")
    p.add_argument("--timeout", type=float, default=None)
    args = p.parse_args()

    # Start-up, not measured: the script's imports and the encoding's files.
    cookbook = _load(args.script)
    cookbook.tiktoken.get_encoding(args.encoding)
    if os.path.exists(args.save):
        os.remove(args.save)

    # As the script's __main__ block calls it (float() of the int arguments included).
    coro = cookbook.process_api_requests_from_file(
        requests_filepath=args.requests,
        save_filepath=args.save,
        request_url=args.request_url,
        api_key=args.api_key,
        max_requests_per_minute=float(args.rpm),
        max_tokens_per_minute=float(args.tpm),
        token_encoding_name=args.encoding,
        max_attempts=int(args.max_attempts),
        logging_level=int(args.logging_level),
    )

    async def run() -> bool:
        try:
            await asyncio.wait_for(coro, args.timeout)
        except TimeoutError:
            return True
        return False

    u0, s0 = _cpu()
    t0 = time.perf_counter()
    timed_out = asyncio.run(run())
    t1 = time.perf_counter()
    u1, s1 = _cpu()

    # Count what it saved: [request, response] on success, [request, [errors...]] on failure.
    with open(args.requests, encoding="utf-8") as fh:
        n = sum(1 for _ in fh)
    lines = ok = 0
    inputs: list[str] = []
    if os.path.exists(args.save):
        with open(args.save, encoding="utf-8") as fh:
            for line in fh:
                lines += 1
                try:
                    request, response = json.loads(line)
                except ValueError:
                    continue
                if isinstance(response, dict) and "error" not in response:
                    ok += 1
                    inputs.append(json.dumps(request.get("input"), sort_keys=True))
    unique = len(set(inputs))
    out = {
        "client": "cookbook",
        "n": n,
        "wall_s": t1 - t0,
        "cpu_user_s": u1 - u0,
        "cpu_sys_s": s1 - s0,
        "cpu_s": (u1 - u0) + (s1 - s0),
        "outcomes": lines,
        "ok": ok,
        "failed": lines - ok,
        "unique_ids": unique,
        "duplicates": ok - unique,
        "missing": n - unique,
        "rpm": args.rpm,
        "tpm": args.tpm,
        "timed_out": timed_out,
        "timeout_s": args.timeout,
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

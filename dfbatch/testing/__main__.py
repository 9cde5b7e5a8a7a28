"""Run the simulator from the command line until SIGTERM/SIGINT.

    $ python -m dfbatch.testing --port 0 --rpm 6000 --tpm 1000000 --latency 0.2 --error-5xx 0.05
    dfbatch simulator listening on http://127.0.0.1:39127/v1

The counters are dumped as JSON on shutdown and on SIGUSR1 (to ``--stats-file`` if given,
else stdout); ``GET /sim/stats`` and ``POST /sim/reset`` work meanwhile.
``--latency`` takes seconds (``0.2``), ``uniform:LO:HI`` or ``lognormal:MEDIAN:SIGMA``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence

from ._simulator import Faults, Latency, Simulator


def parse_latency(text: str) -> Latency:
    """``"0.2"`` -> 0.2; ``"uniform:0.1:0.3"`` / ``"lognormal:0.5:0.4"`` -> a tuple.

    >>> parse_latency("uniform:0.1:0.3")
    ('uniform', 0.1, 0.3)
    """
    parts = text.split(":")
    try:
        if len(parts) == 1:
            return float(parts[0])
        if len(parts) == 3 and parts[0] in ("uniform", "lognormal"):
            return (parts[0], float(parts[1]), float(parts[2]))
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(
        f"bad latency {text!r}: use SECONDS, uniform:LO:HI or lognormal:MEDIAN:SIGMA"
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    p = argparse.ArgumentParser(
        prog="python -m dfbatch.testing", description="OpenAI API simulator on 127.0.0.1."
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: pick a free one)")
    p.add_argument(
        "--rpm", type=float, default=None, help="requests per minute (default: unlimited)"
    )
    p.add_argument("--tpm", type=float, default=None, help="tokens per minute (default: unlimited)")
    p.add_argument(
        "--strict-windows",
        action="store_true",
        help="refuse (429) every request of more tokens than one second's share of --tpm",
    )
    p.add_argument(
        "--latency",
        type=parse_latency,
        default=0.0,
        help="SECONDS, uniform:LO:HI or lognormal:MEDIAN:SIGMA",
    )
    p.add_argument("--error-5xx", type=float, default=0.0, help="probability of a 500/502/503")
    p.add_argument("--reset", type=float, default=0.0, help="probability of a connection reset")
    p.add_argument("--non-json", type=float, default=0.0, help="probability of a 200 HTML page")
    p.add_argument("--hang", type=float, default=0.0, help="probability of a hung request")
    p.add_argument("--hang-seconds", type=float, default=3600.0, help="how long a hang lasts")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault/latency draws")
    p.add_argument("--no-rate-limit-headers", action="store_true", help="send no x-ratelimit-*")
    p.add_argument("--api-key", default=None, help="require this API key")
    p.add_argument("--quota-exhausted", action="store_true", help="answer 429 insufficient_quota")
    p.add_argument("--shuffle-data", action="store_true", help="shuffle embedding data items")
    p.add_argument("--record-inputs", action="store_true", help="count each answered text")
    p.add_argument("--model", action="append", default=[], help="serve this model too (repeatable)")
    p.add_argument(
        "--usage",
        choices=("words", "tiktoken"),
        default="words",
        help="how usage is billed: word counts (default) or tiktoken, as OpenAI does",
    )
    p.add_argument(
        "--batch-seconds", type=float, default=2.0, help="how long a Batch API batch takes"
    )
    p.add_argument("--stats-file", default=None, help="write the counters here (else stdout)")
    return p


def dump_stats(sim: Simulator, path: str | None) -> None:
    """Write the counters as JSON to ``path`` (atomically) or to stdout."""
    text = json.dumps(sim.stats.as_dict(inputs=sim.record_inputs), indent=2)
    if path is None:
        print(text, flush=True)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    os.replace(tmp, path)


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM/SIGINT, then dump the counters."""
    sim = Simulator(
        rpm=args.rpm,
        tpm=args.tpm,
        strict_windows=args.strict_windows,
        latency=args.latency,
        faults=Faults(
            error_5xx=args.error_5xx, reset=args.reset, non_json=args.non_json, hang=args.hang
        ),
        hang_seconds=args.hang_seconds,
        seed=args.seed,
        api_key=args.api_key,
        quota_exhausted=args.quota_exhausted,
        rate_limit_headers=not args.no_rate_limit_headers,
        shuffle_data=args.shuffle_data,
        record_inputs=args.record_inputs,
        models=args.model,
        usage=args.usage,
        port=args.port,
        batch_seconds=args.batch_seconds,
    )
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    async with sim:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        if hasattr(signal, "SIGUSR1"):
            loop.add_signal_handler(signal.SIGUSR1, dump_stats, sim, args.stats_file)
        print(f"dfbatch simulator listening on {sim.base_url}", flush=True)
        await done.wait()
    dump_stats(sim, args.stats_file)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dfbatch.testing``."""
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(serve(args))
    except (OSError, ValueError) as exc:
        print(f"dfbatch simulator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

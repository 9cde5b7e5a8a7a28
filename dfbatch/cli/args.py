"""The parsers of ``dfbatch run`` and ``dfbatch cache``, and the options every command shares.

``dfbatch run`` takes the OpenAI cookbook script's flags verbatim (``--requests_filepath``,
``--max_requests_per_minute`` ...) beside short spellings (``IN``, ``--rpm`` ...), with the same
defaults and meaning.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

from ..engine import constants as C
from .help import RUN_EPILOG

FORMATS = ("parquet", "csv", "jsonl")


def positive(kind: type) -> Any:
    """An argparse type: a number above 0; ``nan`` and ``inf`` are refused too."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value <= 0:
            noun = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {noun} above 0, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def temperature(text: str) -> float:
    """An argparse type: a sampling temperature, a finite number from 0 to 2.

    >>> temperature("0.7")
    0.7
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 2:  # False for nan
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 2, got {text!r}")
    return value


def usd(text: str) -> float:
    """A budget in USD: a number, 0 or more (a leading "$" is fine).

    >>> usd("$2.50")
    2.5
    """
    try:
        value = float(text.strip().lstrip("$").replace(",", ""))
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number of USD, 0 or more, got {text!r}")
    return value


def price(text: str) -> dict[str, float]:
    """``IN[,OUT]``: USD per 1M input and output tokens (OUT defaults to IN).

    >>> price("0.15,0.60"), price("0")
    ({'input': 0.15, 'output': 0.6}, {'input': 0.0, 'output': 0.0})
    """
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(v >= 0 and math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(
            f"must be IN or IN,OUT in USD per 1M tokens (e.g. 0.15,0.60), got {text!r}"
        )
    return {"input": values[0], "output": values[-1]}


def log_level(text: str) -> int:
    """``20``, ``INFO`` or ``info``.

    >>> log_level("10"), log_level("warning")
    (10, 30)
    """
    if text.strip().lstrip("-").isdigit():
        return int(text)
    level = logging.getLevelName(text.strip().upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(
            f"unknown level {text!r}: use DEBUG, INFO, WARNING, ERROR or a number (10-50)"
        )
    return level


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=34, width=96)


def common_options(p: argparse.ArgumentParser, *, cookbook: bool) -> None:
    """Server, limits, retries, cache and display options (cookbook spellings for ``run``)."""
    alias = (lambda *names: names) if cookbook else (lambda *names: names[:1])
    server = p.add_argument_group("server")
    server.add_argument(
        *alias("--api-key", "--api_key"),
        metavar="KEY",
        default=None,
        help="API key (default: $OPENAI_API_KEY); never logged or written",
    )
    limits = p.add_argument_group("rate limits (set them a little under your account's)")
    default_rpm = C.CLI_RPM if cookbook else None
    default_tpm = C.CLI_TPM if cookbook else None
    learn = "learn from the server's headers"
    limits.add_argument(
        *alias("--rpm", "--max_requests_per_minute"),
        type=positive(float),
        metavar="N",
        default=default_rpm,
        help=f"requests per minute (default: {default_rpm or learn})",
    )
    limits.add_argument(
        *alias("--tpm", "--max_tokens_per_minute"),
        type=positive(float),
        metavar="N",
        default=default_tpm,
        help=f"tokens per minute (default: {default_tpm or learn})",
    )
    limits.add_argument(
        "--max-in-flight",
        type=positive(int),
        metavar="N",
        default=C.DEFAULT_MAX_IN_FLIGHT,
        help="requests open at once (default: %(default)s)",
    )
    limits.add_argument(
        "--limiter",
        metavar="URL",
        default=None,
        help="share --rpm/--tpm with every process given the same URL and key: "
        "redis://host:port/db (default: this process paces alone)",
    )
    retries = p.add_argument_group("retries")
    retries.add_argument(
        *alias("--max-attempts", "--max_attempts"),
        type=positive(int),
        metavar="N",
        default=C.DEFAULT_MAX_ATTEMPTS,
        help="attempts per request, the first included (default: %(default)s)",
    )
    retries.add_argument(
        "--timeout",
        type=positive(float),
        metavar="SECONDS",
        default=C.DEFAULT_TIMEOUT,
        help="seconds before a hung request is retried (default: %(default)s)",
    )
    cache = p.add_argument_group("response cache")
    which = cache.add_mutually_exclusive_group()
    which.add_argument(
        "--cache",
        metavar="PATH",
        default=None,
        help="cache file (default: $DFBATCH_CACHE_DIR/cache.sqlite, else the user cache dir)",
    )
    which.add_argument(
        "--no-cache",
        action="store_true",
        help="do not store or reuse answers (a rerun then sends unwritten lines again)",
    )
    cost = p.add_argument_group("cost")
    cost.add_argument(
        "--dry-run",
        action="store_true",
        help="send nothing: print what the run would send and cost, and how long it must take",
    )
    cost.add_argument(
        "--budget",
        type=usd,
        metavar="USD",
        default=None,
        help="a hard cap on what the run spends; what is left when it is reached is written as "
        "'budget reached' (rerun with a higher budget to send it)",
    )
    cost.add_argument(
        "--price",
        type=price,
        metavar="IN[,OUT]",
        default=None,
        help="USD per 1M input (and output) tokens, for a model dfbatch's price table does "
        "not list (an Azure deployment; 0 for a local server)",
    )
    display = p.add_argument_group("display")
    display.add_argument(
        *alias("--log-level", "--logging_level"),
        type=log_level,
        metavar="LEVEL",
        default=logging.INFO,
        help="DEBUG (10), INFO (20, default), WARNING (30) or ERROR (40); logs go to stderr",
    )
    bar = display.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always show the progress bar (default: when stderr is a terminal)",
    )
    bar.add_argument(
        "--no-progress", dest="progress", action="store_false", help="never show the progress bar"
    )


def run_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        formatter_class=formatter,
        epilog=RUN_EPILOG,
        help="send a JSONL file of requests (the cookbook script's job)",
        description="Send every request of a JSONL file to the API as fast as the rate limits\n"
        "allow, and write one result line per request line.",
    )
    files = p.add_argument_group("input and output")
    files.add_argument("input", nargs="?", metavar="IN", help="the requests file (JSONL)")
    files.add_argument(
        "--requests_filepath",
        "--requests-filepath",
        metavar="IN",
        help="the same as IN (the cookbook's spelling)",
    )
    files.add_argument(
        "-o",
        "--output",
        "--save_filepath",
        "--save-filepath",
        dest="output",
        metavar="OUT",
        help='results file (default: IN with ".jsonl" replaced by "_results.jsonl")',
    )
    files.add_argument(
        "--url",
        "--request_url",
        "--request-url",
        dest="url",
        metavar="URL",
        default=C.CLI_REQUEST_URL,
        help="full URL of the endpoint (default: %(default)s)",
    )
    files.add_argument(
        "--encoding",
        "--token_encoding_name",
        dest="encoding",
        metavar="NAME",
        default=None,
        help="tiktoken encoding for token estimates (default: the model's, cl100k_base for "
        "the embedding models)",
    )
    files.add_argument(
        "--unordered", action="store_true", help="write results as they end, not in input order"
    )
    files.add_argument(
        "--overwrite", action="store_true", help="start over instead of resuming an existing OUT"
    )
    files.add_argument(
        "--report",
        metavar="FILE",
        default=None,
        help="write the run report: FILE.png (a plot; needs dfbatch[plot]) or FILE.html",
    )
    batch = p.add_argument_group("Batch API (half the price, answers within 24 h)")
    batch.add_argument(
        "--batch",
        action="store_true",
        help="send the lines through the Batch API, then write the results in input order; "
        "rerun the same command to pick the batches up after an interruption",
    )
    batch.add_argument(
        "--poll-interval",
        type=positive(float),
        metavar="SECONDS",
        default=None,
        help=f"first wait between status checks (default: {C.BATCH_POLL_INTERVAL:g})",
    )
    common_options(p, cookbook=True)


def cache_parser(sub: Any) -> None:
    p = sub.add_parser(
        "cache",
        formatter_class=formatter,
        help="look at or clear the response cache",
        description="The response cache keeps every answer received, so reruns send only\n"
        "what is missing.",
        epilog="examples:\n  dfbatch cache info\n  dfbatch cache clear --older-than 30d\n"
        "  dfbatch cache clear --model gpt-4o-mini --cache ./job-cache.sqlite\n",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = actions.add_parser(
        "info",
        formatter_class=formatter,
        help="where the cache is, its size, its entries by model",
    )
    info.add_argument("--json", action="store_true", help="print JSON")
    clear = actions.add_parser(
        "clear",
        formatter_class=formatter,
        help="delete entries (all, or those selected)",
        epilog="AGE is a number and a unit: 45s, 90m, 12h, 7d, 2w (or 1d12h).",
    )
    clear.add_argument("--model", metavar="M", help="only the answers of this model")
    clear.add_argument("--older-than", metavar="AGE", help="only answers stored before AGE ago")
    for q in (info, clear):
        q.add_argument(
            "--cache",
            metavar="PATH",
            default=None,
            help="cache file (default: $DFBATCH_CACHE_DIR/cache.sqlite or the user cache dir)",
        )
        q.add_argument(
            "--log-level",
            type=log_level,
            default=logging.WARNING,
            metavar="LEVEL",
            help=argparse.SUPPRESS,
        )

"""One run of the engine for a front end: options, cache, progress bar, summary.

The accessor and the command line both come through here, so they share one vocabulary
(``model``, ``rpm``, ``tpm``, ``max_attempts``, ``cache``, ``progress``) and one behaviour.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from os import PathLike
from typing import Any

from ..coord.resolve import shared_budget
from ..engine import constants as C
from ..engine.checks import check_number, check_whole
from ..engine.config import ApiConfig
from ..engine.core import Engine, Splitter, run_stats_summary
from ..engine.errors import ConfigurationError
from ..engine.prices import Price, budget_needs_price, parse_price, price_for
from ..engine.transport import Transport
from ..engine.types import Outcome, Request
from .progress import Progress

log = logging.getLogger(__name__)

CacheOption = bool | str | PathLike[str] | Any


@dataclass(frozen=True, repr=False)
class RunOptions:
    """What every front end passes to the engine; built from keyword arguments."""

    api: ApiConfig
    rpm: float | None = None
    tpm: float | None = None
    max_attempts: int = C.DEFAULT_MAX_ATTEMPTS
    max_in_flight: int = C.DEFAULT_MAX_IN_FLIGHT
    timeout: float = C.DEFAULT_TIMEOUT
    progress: bool | None = True
    cache: CacheOption = True
    transport: Transport | None = None
    budget: float | None = None
    price: Any = None
    #: "online" (the engine) or "batch" (the Batch API: half the price, within 24 h).
    backend: str = "online"
    poll_interval: float | None = None
    wait: bool = True
    limiter: Any = None  # a shared budget: "local", "redis://...", a coordinator, or None

    @classmethod
    def build(
        cls,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_version: str | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        max_attempts: int = C.DEFAULT_MAX_ATTEMPTS,
        max_in_flight: int = C.DEFAULT_MAX_IN_FLIGHT,
        timeout: float = C.DEFAULT_TIMEOUT,
        progress: bool | None = True,
        cache: CacheOption = True,
        transport: Transport | None = None,
        budget: float | None = None,
        price: Any = None,
        backend: str = "online",
        poll_interval: float | None = None,
        wait: bool = True,
        limiter: Any = None,
    ) -> RunOptions:
        """Check every option before anything is opened or sent (ConfigurationError)."""
        rpm = check_number("rpm", rpm, optional=True)
        tpm = check_number("tpm", tpm, optional=True)
        max_attempts = check_whole("max_attempts", max_attempts)  # type: ignore[assignment]
        max_in_flight = check_whole("max_in_flight", max_in_flight)  # type: ignore[assignment]
        timeout = check_number("timeout", timeout)  # type: ignore[assignment]
        _check_cache(cache)
        api = ApiConfig.resolve(base_url=base_url, api_key=api_key, api_version=api_version)
        if price is not None:
            parse_price(price)  # a malformed price= fails here, before anything else
        budget = check_number("budget", budget, above=None, at_least=0, optional=True)
        if backend not in ("online", "batch"):
            raise ConfigurationError(f"backend must be 'online' or 'batch', got {backend!r}")
        if not wait and backend != "batch":
            raise ConfigurationError("wait=False needs backend='batch'")
        poll_interval = check_number("poll_interval", poll_interval, optional=True)
        shared_budget(limiter, api)  # a bad value fails here, before any request
        return cls(
            api,
            rpm,
            tpm,
            max_attempts,
            max_in_flight,
            timeout,
            progress,
            cache,
            transport,
            budget,
            price,
            backend,
            poll_interval,
            wait,
            limiter,
        )

    def __repr__(self) -> str:
        return f"RunOptions({self.api!r}, rpm={self.rpm}, tpm={self.tpm})"

    def engine(self) -> Engine:
        return Engine(
            self.api,
            rpm=self.rpm,
            tpm=self.tpm,
            max_in_flight=self.max_in_flight,
            max_attempts=self.max_attempts,
            timeout=self.timeout,
            transport=self.transport,
            price=self.price,
            budget=self.budget,
            shared=shared_budget(self.limiter, self.api),
        )

    def check_price(self, model: str) -> None:
        """With ``budget=``, the model's price must be known: else fail before any request."""
        if self.budget is not None:
            budget_needs_price(model, self.price)

    def price_of(self, model: Any) -> Price | None:
        """What this run pays per 1M tokens of ``model``: the table's or ``price=`` (an
        online price), at the Batch API's discount with ``backend="batch"``; None: unknown."""
        price = price_for(model, self.price)
        return price.batch() if price is not None and self.backend == "batch" else price

    def open_cache(self) -> Any:
        """The response cache to use, or ``None`` (``cache=False``)."""
        if self.cache is False or self.cache is None:
            return None
        from ..cache.store import ResponseCache, open_for_run

        if isinstance(self.cache, ResponseCache):
            return self.cache
        return open_for_run(None if self.cache is True else self.cache)


def _check_cache(cache: Any) -> None:
    """``cache`` is True, False (or None), a file path or a ResponseCache; else refused."""
    if cache is True or cache is False or cache is None:
        return
    if isinstance(cache, PathLike) or (isinstance(cache, str) and cache.strip()):
        return
    if hasattr(cache, "get_many") and hasattr(cache, "put"):  # a ResponseCache (or alike)
        return
    raise ConfigurationError(
        "cache must be True (the per-user store), False (no cache), a file path or a "
        f"ResponseCache; got {cache!r} ({type(cache).__name__}). Pass cache=False to turn "
        "it off"
    )


async def execute(
    requests: Iterable[Request],
    on_outcome: Callable[[Outcome], tuple[int, int]],
    *,
    options: RunOptions,
    total_rows: int | None,
    rows_done: int = 0,
    rows_failed: int = 0,
    rows_cached: int = 0,
    desc: str = "dfbatch",
    lines: Any = None,
    endpoint: str | None = None,
    model: str | None = None,
    cache: Any = None,
    split: Splitter | None = None,
) -> dict[str, Any]:
    """Send ``requests``; ``on_outcome`` returns (rows finished, rows failed) for each outcome.
    ``split`` cuts a request too large for the server's window (see ``Engine.run``).

    Returns the run's figures (for ``DataFrame.attrs`` and the summary, with the run's
    ``timeline`` for its report). With
    ``backend="batch"`` the requests go through the Batch API instead
    (:mod:`dfbatch.jobs.batch_run`): ``lines`` ties them to cache keys, ``endpoint`` and
    ``model`` name the batches, ``cache`` (the front end's open cache) holds their record.
    """
    if model is not None:
        options.check_price(model)
    if options.backend == "batch":
        from .batch_run import execute_batch

        return await execute_batch(
            requests,
            on_outcome,
            options=options,
            lines=lines,
            endpoint=endpoint,
            model=model,
            cache=cache,
            total_rows=total_rows,
            rows_done=rows_done,
            rows_failed=rows_failed,
            rows_cached=rows_cached,
            desc=desc,
        )
    engine = options.engine()
    progress = Progress(total_rows, enabled=options.progress, desc=desc)
    progress.advance(rows_done, failed=rows_failed, cached=rows_cached)

    def handle(outcome: Outcome) -> None:
        done, failed = on_outcome(outcome)
        progress.advance(done, failed=failed)
        progress.show(engine.stats, engine.stats.finished or _now())

    try:
        stats = await engine.run(requests, handle, split=split)
        progress.show(stats, stats.finished or 0.0, force=True)
    finally:
        progress.close()
    figures = run_stats_summary(stats)
    figures["timeline"] = stats.timeline.to_dict()
    figures["rows"] = total_rows
    figures["rows_failed"] = progress.failed
    figures["rows_from_cache"] = progress.cached
    return figures


def release_freed_memory() -> bool:
    """Give the heap a call freed back to the system; True if it could. The accessor calls it
    when its result is built, once the run's working data is gone.

    A run passes hundreds of MB through short-lived buffers (response bodies, their JSON
    strings, decoded vectors). glibc keeps freed heap for reuse, so a notebook's memory would
    stay that much above what the results hold (100,000 embeddings: +130 MB, 1.2x their size
    instead of 1.04x); ``malloc_trim`` returns it, in ~10 ms. Elsewhere (macOS, musl, Windows)
    it is a no-op.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


def _now() -> float:
    import asyncio

    return asyncio.get_running_loop().time()


def report(summary: str, *, progress: bool | None) -> None:
    """Log the summary; with a progress display also show it where the bar was."""
    log.info("%s", summary)
    if progress:
        print(summary, file=sys.stderr)

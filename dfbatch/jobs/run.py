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
from ..engine.config import ApiConfig
from ..engine.core import Engine, run_stats_summary
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
        limiter: Any = None,
    ) -> RunOptions:
        api = ApiConfig.resolve(base_url=base_url, api_key=api_key, api_version=api_version)
        shared_budget(limiter, api)  # a bad value fails here, before any request
        return cls(
            api, rpm, tpm, max_attempts, max_in_flight, timeout, progress, cache, transport, limiter
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
            shared=shared_budget(self.limiter, self.api),
        )

    def open_cache(self) -> Any:
        """The response cache to use, or ``None`` (``cache=False``)."""
        if self.cache is False or self.cache is None:
            return None
        from ..cache.store import ResponseCache

        if isinstance(self.cache, ResponseCache):
            return self.cache
        return ResponseCache(None if self.cache is True else self.cache)


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
) -> dict[str, Any]:
    """Send ``requests``; ``on_outcome`` returns (rows finished, rows failed) for each outcome.

    Returns the run's figures (for ``DataFrame.attrs`` and the summary).
    """
    engine = options.engine()
    progress = Progress(total_rows, enabled=options.progress, desc=desc)
    progress.advance(rows_done, failed=rows_failed, cached=rows_cached)

    def handle(outcome: Outcome) -> None:
        done, failed = on_outcome(outcome)
        progress.advance(done, failed=failed)
        progress.show(engine.stats, engine.stats.finished or _now())

    try:
        stats = await engine.run(requests, handle)
        progress.show(stats, stats.finished or 0.0, force=True)
    finally:
        progress.close()
    figures = run_stats_summary(stats)
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

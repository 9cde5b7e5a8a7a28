"""One run through the Batch API for a front end: the record, the progress bar, the figures.

:func:`dfbatch.jobs.run.execute` comes here when the options say ``backend="batch"``; the
front end's packing, cache lookups and ``on_outcome`` are the ones it uses online.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..batch.backend import BatchRun
from ..batch.lines import BatchLines
from ..cache.batch_record import BatchRecord
from ..engine.errors import ConfigurationError
from ..engine.types import Outcome, Request
from .progress import Progress

NO_CACHE = (
    "backend='batch' keeps its record of submitted batches (so that nothing is lost or paid "
    "twice) in the response cache; pass cache=True or a path, not cache=False"
)


async def execute_batch(
    requests: Iterable[Request],
    on_outcome: Callable[[Outcome], tuple[int, int]],
    *,
    options: Any,
    lines: BatchLines | None,
    endpoint: str | None,
    model: str | None,
    cache: Any,
    total_rows: int | None,
    rows_done: int,
    rows_failed: int,
    rows_cached: int,
    desc: str,
) -> dict[str, Any]:
    if cache is None:
        raise ConfigurationError(NO_CACHE)
    if lines is None or endpoint is None:
        raise ConfigurationError("this front end does not offer backend='batch'")
    record = BatchRecord(cache.path)
    progress = Progress(total_rows, enabled=options.progress, desc=f"{desc} (batch)")
    progress.advance(rows_done, failed=rows_failed, cached=rows_cached)

    def handle(outcome: Outcome) -> None:
        done, failed = on_outcome(outcome)
        progress.advance(done, failed=failed)

    run = BatchRun(
        options.api,
        record,
        endpoint=endpoint,
        model=model,
        lines=lines,
        on_outcome=handle,
        flush=cache.flush,
        poll_interval=options.poll_interval,
        on_status=progress.show_batches,
    )
    try:
        figures = await run.run(requests, wait=options.wait)
    finally:
        progress.close()
        record.close()
    figures["rows"] = total_rows
    figures["rows_failed"] = progress.failed
    figures["rows_from_cache"] = progress.cached
    return figures

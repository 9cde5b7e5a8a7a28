"""One run through the Batch API for a front end: the record, the progress bar, the figures.

:func:`dfbatch.jobs.run.execute` comes here when the options say ``backend="batch"``; the
front end's packing, cache lookups and ``on_outcome`` are the ones it uses online.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..batch.backend import BatchRun
from ..batch.lines import BatchLines
from ..cache.batch_record import BatchRecord
from ..engine.budget import output_bound
from ..engine.errors import ConfigurationError
from ..engine.prices import Price, format_usd, usage_cost, worst_cost
from ..engine.types import BUDGET_REACHED, ErrorInfo, Outcome, Request
from .progress import Progress

log = logging.getLogger(__name__)

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

    price = options.price_of(model)  # the Batch API's: half the online price
    ledger = Ledger(price)

    def handle(outcome: Outcome) -> None:
        ledger.add(outcome)
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
        if options.budget is None:
            figures = await run.run(requests, wait=options.wait)
        else:
            if not options.wait:
                raise ConfigurationError(
                    "budget= with backend='batch' needs wait=True: the budget is settled with "
                    "each wave's real cost before the next wave is submitted"
                )

            def refuse(request: Request, message: str) -> None:
                handle(Outcome(request, error=ErrorInfo(None, BUDGET_REACHED, message)))

            figures = await within_budget(
                run, requests, budget=float(options.budget), ledger=ledger, refuse=refuse
            )
    finally:
        progress.close()
        record.close()
    figures["cost_usd"] = ledger.spent
    if options.budget is not None:
        figures["budget_usd"] = options.budget
    figures["rows"] = total_rows
    figures["rows_failed"] = progress.failed
    figures["rows_from_cache"] = progress.cached
    return figures


class Ledger:
    """What a call's own answers cost at the Batch API's price (None: no price known).
    ``spent`` may start from what earlier parts of the same call spent (other models)."""

    def __init__(self, price: Price | None, spent: float = 0.0) -> None:
        self.price = price
        self.spent: float | None = None if price is None else spent

    def add(self, outcome: Outcome) -> None:
        if outcome.ok:
            self.add_usage(outcome.response)

    def add_usage(self, response: Any) -> None:
        """Count the ``usage`` of a checked answer."""
        if self.price is not None and self.spent is not None:
            usage = response.get("usage") if isinstance(response, dict) else None
            self.spent += usage_cost(self.price, usage)

    def worst(self, request: Request) -> float:
        """A request's worst case: its input tokens and its output bound, at the price."""
        assert self.price is not None
        bound = output_bound(request.endpoint, request.body)
        return worst_cost(self.price, max(0, request.tokens - bound), bound)


async def within_budget(
    run: BatchRun,
    requests: Iterable[Request],
    *,
    budget: float,
    ledger: Ledger,
    refuse: Callable[[Request, str], bool | None],
) -> dict[str, Any]:
    """Submit in waves whose worst cases fit in what the budget has left, each settled with
    its answers' real cost before the next: the spend never passes the budget, and the run
    stops only when the next request's worst case does not fit in what is left (so with
    requests of at most a tenth of the budget, at least 90% of it is spent). Each wave is
    pulled from ``requests`` as it is written out, never held whole; ``refuse(request,
    message)`` is told of every request left when the budget is reached (until it returns
    False: it needs to hear of no more)."""
    assert ledger.price is not None  # budget_needs_price made sure of it
    waves = _Waves(iter(requests), ledger, budget)
    figures: dict[str, Any] | None = None
    while waves.ahead is not None:
        figures = await run.run(waves.next_wave(), wait=True)
        if waves.stopped:  # the next request alone could pass the budget: nothing more is sent
            _refuse_rest(waves, ledger, budget, refuse)
            break
    return figures if figures is not None else run.counts.figures()


class _Waves:
    """The requests, cut into waves that fit in what the budget has left."""

    def __init__(self, stream: Iterator[Request], ledger: Ledger, budget: float) -> None:
        self.stream = stream
        self.ledger = ledger
        self.budget = budget
        self.ahead: Request | None = next(stream, None)
        self.stopped = False

    def next_wave(self) -> Iterator[Request]:
        """The next wave, pulled as the batch files are written; ``stopped`` once not even
        its first request fits."""
        left = self.budget - (self.ledger.spent or 0.0)
        held = 0.0
        taken = 0
        while self.ahead is not None:
            worst = self.ledger.worst(self.ahead)
            if held + worst > left * (1 + 1e-12):
                break
            held += worst
            taken += 1
            yield self.ahead
            self.ahead = next(self.stream, None)
        self.stopped = self.ahead is not None and taken == 0


def _refuse_rest(
    waves: _Waves, ledger: Ledger, budget: float, refuse: Callable[[Request, str], bool | None]
) -> None:
    spent = ledger.spent or 0.0
    log.warning(
        "budget reached: %s of the %s budget spent at the Batch API's price; nothing more is "
        "submitted. Rerun with a higher budget= to send the rows left.",
        format_usd(spent),
        format_usd(budget),
    )
    message = (
        f"budget reached: {format_usd(spent)} of the {format_usd(budget)} budget spent, this "
        "row was not sent (rerun with a higher budget= to send it)"
    )
    request = waves.ahead
    while request is not None and refuse(request, message) is not False:
        request = next(waves.stream, None)

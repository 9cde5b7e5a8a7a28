"""``dfbatch run``: a JSONL file of requests through the engine, results written as they come.

    requests file ──(lines, read lazily; cache looked up per block)──> engine (RPM, TPM, retries)
        ──> reorder buffer ──> results file (input order), response cache (every answer)

Memory stays flat whatever the file's length: a line is read only when the engine has a free
slot (``max_in_flight``), and the writer keeps at most K = CLI_REORDER_FACTOR x max_in_flight
lines ahead of the oldest unwritten one. When one early line keeps failing and retrying, the
run goes on until it is K lines ahead of it, then waits for it: a line ends after at most
``max_attempts`` attempts (each at most ``timeout`` seconds, with backoff of at most
BACKOFF_MAX seconds, or a server's Retry-After of at most RETRY_AFTER_MAX), and is then
written as an error, so the wait is bounded. ``--unordered`` writes each result as it ends.

Every answer goes to the response cache as it arrives (flushed every fraction of a second),
and each line is looked up there before it is sent: after a crash or kill -9, rerunning the
same command sends only what has no answer yet (see ``cli.resume`` for the results file).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from ..coord.resolve import shared_budget
from ..engine import constants as C
from ..engine.core import Engine, run_stats_summary
from ..engine.errors import ConfigurationError
from ..engine.tokens import estimate_request_tokens
from ..engine.types import BUDGET_REACHED, ErrorInfo, Outcome, Request
from ..jobs.progress import Progress, format_summary
from .job import RunJob
from .lines import Line, encode, error_line, parse_line, result_line
from .resume import Plan, count_requests, open_output, output_is_input, plan_resume
from .sink import Sink

if TYPE_CHECKING:
    from .run_batch import BatchPass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RunResult:
    lines: int
    failed: int
    exit_status: int
    summary: str


class _Run:
    """One run's moving parts: lines in, requests out, results and answers stored."""

    def __init__(
        self,
        job: RunJob,
        plan: Plan,
        n_lines: int,
        cache: Any,
        batch: BatchPass | None = None,
    ) -> None:
        self.job, self.plan, self.n_lines, self.cache = job, plan, n_lines, cache
        #: --batch: what the Batch API said of the lines; a line is never sent from here
        self.batch = batch
        self.failed = plan.failed
        self.cached = 0
        self.logged = 0
        self.engine = Engine(
            job.api,
            rpm=job.rpm,
            tpm=job.tpm,
            max_in_flight=job.max_in_flight,
            max_attempts=job.max_attempts,
            timeout=job.timeout,
            price=job.price,
            budget=job.budget,
            shared=shared_budget(job.limiter, job.api),
        )
        self.budget_stopped = 0
        self.progress = Progress(n_lines, enabled=job.progress, desc="dfbatch run", unit="line")
        self.progress.advance(plan.done, failed=plan.failed)
        self.done = plan.done
        self._next_status = time.monotonic() + C.CLI_STATUS_INTERVAL
        self._next: Request | None = None

    # -- reading -----------------------------------------------------------------------------

    def lines(self) -> Iterator[Line]:
        return pending_lines(self.job, self.plan, self.n_lines, self.cache)

    async def before_pull(self, lines: Iterator[Line], sink: Sink) -> None:
        """Take lines until one must be sent; write the others (unusable, cached) on the way."""
        for taken, line in enumerate(lines, 1):
            await sink.room(line.index)
            if line.body is None:
                self.finish(sink, line, error=line.error)
            elif line.cached is not None:
                self.finish(sink, line, response=line.cached, cached=True)
            elif self.batch is not None:
                self.finish(sink, line, error=self.batch.error_of(line.key or ""))
            else:
                tokens = estimate_request_tokens(self.job.url, line.body, self.job.encoding)
                self._next = Request(line.index + 1, self.job.url, line.body, tokens, line)
                return
            if taken % C.CLI_LOOKUP_BATCH == 0:
                await asyncio.sleep(0)  # let answers in flight be handled meanwhile
        self._next = None

    def requests(self) -> Iterator[Request]:
        while (request := self._next) is not None:
            self._next = None
            yield request

    # -- writing -----------------------------------------------------------------------------

    def finish(
        self,
        sink: Sink,
        line: Line,
        *,
        response: Any = None,
        error: ErrorInfo | None = None,
        cached: bool = False,
        attempts: int = 0,
    ) -> None:
        if error is not None:
            data = error_line(line, error)
            self.failed += 1
            self.budget_stopped += error.code == BUDGET_REACHED
            self._log_failure(line, error, attempts)
        else:
            text = encode(response)
            data = result_line(line, text)
            if not cached and self.cache is not None and line.key is not None:
                _store(self.cache, line, response, text)
        sink.put(line.index, data)
        self.done += 1
        self.cached += cached
        self.progress.advance(1, failed=error is not None, cached=cached)
        self.progress.show(self.engine.stats, asyncio.get_running_loop().time())
        if not self.job.progress and time.monotonic() >= self._next_status:
            self._status()

    def on_outcome(self, sink: Sink, outcome: Outcome) -> None:
        line: Line = outcome.request.meta
        self.finish(
            sink, line, response=outcome.response, error=outcome.error, attempts=outcome.attempts
        )

    def _log_failure(self, line: Line, error: ErrorInfo, attempts: int) -> None:
        self.logged += 1
        if self.logged > C.CLI_LOGGED_FAILURES:
            return
        if error.code == "invalid_request_line":
            log.warning("%s; not sent, written as an error", error.message)
        else:
            tries = f" after {attempts} attempts" if attempts > 1 else ""
            log.warning("line %d failed%s: %s", line.index + 1, tries, error)
        if self.logged == C.CLI_LOGGED_FAILURES:
            log.warning(
                "further failed lines are not logged; each one's error is in %s", self.job.output
            )

    def _status(self) -> None:
        self._next_status = time.monotonic() + C.CLI_STATUS_INTERVAL
        stats = self.engine.stats
        log.info(
            "%s of %s lines done (%.1f%%), %s failed, %s from cache; %s requests, "
            "%s retries, %s 429s",
            f"{self.done:,}",
            f"{self.n_lines:,}",
            100.0 * self.done / max(1, self.n_lines),
            f"{self.failed:,}",
            f"{self.cached:,}",
            f"{stats.requests_sent:,}",
            f"{stats.retries:,}",
            f"{stats.rate_limited:,}",
        )

    def before_send(self, in_flight: int) -> None:
        """Store the buffered answers before a send would leave more requests answered-but-
        unstored plus in flight than ``max_in_flight``: a kill -9 then costs at most that many
        requests sent again (and, while the cap is not reached, commits stay batched)."""
        cache = self.cache
        if (
            cache is not None
            and cache.buffered
            and cache.buffered + in_flight >= self.job.max_in_flight
        ):
            cache.maybe_flush(now=True)

    # -- the run -----------------------------------------------------------------------------

    async def go(self, fh: IO[bytes]) -> dict[str, Any]:
        job = self.job
        window = job.max_in_flight * C.CLI_REORDER_FACTOR if job.ordered else None
        sink = Sink(fh, self.plan.start_index, window)
        lines = self.lines()
        try:
            stats = await self.engine.run(
                self.requests(),
                lambda outcome: self.on_outcome(sink, outcome),
                before_pull=lambda: self.before_pull(lines, sink),
                before_send=self.before_send,
            )
            self.progress.show(stats, stats.finished or 0.0, force=True)
        finally:
            self.progress.close()
            fh.flush()
        figures = run_stats_summary(stats)
        figures["timeline"] = stats.timeline.to_dict()
        figures["rows_budget_reached"] = self.budget_stopped
        return figures


def pending_lines(job: RunJob, plan: Plan, n_lines: int, cache: Any) -> Iterator[Line]:
    """The lines still to do, parsed lazily, looked up in the cache a block at a time."""
    mask = plan.mask
    block: list[Line] = []
    with job.requests.open("rb") as fh:
        fh.seek(plan.start_offset)
        index = plan.start_index
        for raw in fh:
            if index >= n_lines:
                break  # the file grew since it was counted
            if mask is None or not mask[index]:
                block.append(parse_line(raw, index, job.url))
            index += 1
            if len(block) >= C.CLI_LOOKUP_BATCH:
                yield from _looked_up(cache, block)
                block = []
    yield from _looked_up(cache, block)


def _looked_up(cache: Any, block: list[Line]) -> list[Line]:
    if cache is not None and block:
        keys = [line.key for line in block if line.key is not None]
        hits = cache.get_many(keys) if keys else {}
        if hits:
            for line in block:
                if line.key is not None:
                    line.cached = hits.get(line.key)
    return block


def _store(cache: Any, line: Line, response: Any, text: str) -> None:
    """Put an answer in the cache as it arrives (encoded once when the cache takes raw JSON)."""
    model = line.body.get("model") if line.body else None
    model = model if isinstance(model, str) else None
    put_raw = getattr(cache, "put_raw", None)
    if put_raw is not None:
        put_raw(line.key, text.encode("ascii"), model=model)
    else:
        cache.put(line.key, response, model=model)
    cache.maybe_flush()


def _open_cache(job: RunJob) -> Any:
    if job.cache is False:
        return None
    from ..cache.store import open_for_run

    cache = open_for_run(
        None if job.cache is True else job.cache, flush_interval=C.CLI_CACHE_FLUSH_INTERVAL
    )
    # One pass over small JSON answers: nothing is read twice, so neither mmap (every page
    # touched stays resident, growing with the file) nor a large page cache (sized for
    # writing blocks of vectors) helps; both would count in this process's memory.
    # (Wanted: a ResponseCache option for this; until then, pragmas on its connection.)
    conn = getattr(getattr(cache, "_db", None), "conn", None)
    if conn is not None:
        conn.execute("PRAGMA mmap_size = 0")
        conn.execute(f"PRAGMA cache_size = -{C.CLI_CACHE_PAGES_KIB}")
    return cache


async def run_job(job: RunJob) -> RunResult:
    """Do the job; returns what the command line prints and exits with."""
    n_lines = count_requests(job.requests)
    if output_is_input(job.requests, job.output):
        raise ConfigurationError(
            f"the results file would be the requests file itself ({job.output}); pass -o OUT"
        )
    plan = plan_resume(job, n_lines)
    if plan.done >= n_lines:
        failed = f", {plan.failed:,} of them failed" if plan.failed else ""
        text = (
            f"nothing to do: {job.output} already has a result for each of the "
            f"{n_lines:,} lines{failed}"
        )
        if plan.failed:
            text += (
                " (rerun with --overwrite to send the failed lines again; the others "
                "come from the response cache)"
            )
        return RunResult(n_lines, plan.failed, 1 if plan.failed else 0, text)
    cache = _open_cache(job)  # first: a cache it cannot use leaves the output untouched
    try:
        batch = None
        if job.batch:
            from .run_batch import run_batches

            batch = await run_batches(job, plan, n_lines, cache, poll_interval=job.poll_interval)
        with open_output(job) as fh:
            run = _Run(job, plan, n_lines, cache, batch)
            figures = await run.go(fh)
    finally:
        if cache is not None:
            cache.close()
    cached = run.cached
    if batch is not None:  # what was sent went through the Batch API, not pass 2's engine
        figures.update(batch.figures, backend="batch", budget_usd=job.budget)
        cached = max(0, cached - batch.answered)  # pass 2 read this run's answers back
    summary = format_summary(figures, rows=n_lines, failed=run.failed, cached=cached)
    summary = summary.replace(f" {n_lines:,} rows,", f" {n_lines:,} lines,", 1)
    summary = summary.replace(
        "rerun with a higher budget= to send only them",
        "rerun with --overwrite and a higher --budget to send only them",
    )
    summary += f"\nresults: {job.output}"
    if job.report is not None:
        from ..jobs.report import RunReport

        summary += f"\nreport: {RunReport(figures).save(job.report)}"
    return RunResult(n_lines, run.failed, 1 if run.failed else 0, summary)

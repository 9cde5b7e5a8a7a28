"""``dfbatch run --batch``: the requests file through the Batch API, then written in order.

Two passes over the file, neither holding it in memory:

1. every line still to do that the cache cannot answer goes to the Batch backend (one
   :class:`~dfbatch.batch.backend.BatchRun` per model, as the API wants one model a file);
   the answers go to the response cache as batches are downloaded, and the lines' errors
   (a 400, an expired batch) are kept by key;
2. the ordinary ``dfbatch run`` pass writes the results file in input order from the cache,
   and writes the kept errors; with ``--batch`` it never sends a line online.

A kill anywhere is picked up by rerunning the same command: the record in the cache finds
the batches already submitted (see :mod:`dfbatch.cache.batch_record`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..batch.backend import BatchRun, BatchSubmitted
from ..cache.batch_record import BatchRecord
from ..engine import constants as C
from ..engine.config import ApiConfig
from ..engine.errors import ConfigurationError
from ..engine.prices import budget_needs_price, price_for
from ..engine.tokens import estimate_request_tokens
from ..engine.types import BUDGET_REACHED, ErrorInfo, Outcome, Request
from ..jobs.batch_lines import NOT_ANSWERED, KeyedLines
from ..jobs.batch_run import Ledger, within_budget
from ..jobs.progress import Progress
from .job import RunJob
from .lines import parse_line
from .resume import Plan

log = logging.getLogger(__name__)


def split_url(url: str) -> tuple[str, str]:
    """(base URL, endpoint) of a request URL such as ``https://api.openai.com/v1/embeddings``.

    >>> split_url("http://127.0.0.1:8000/v1/chat/completions")
    ('http://127.0.0.1:8000/v1', '/chat/completions')
    """
    head, sep, tail = url.partition("/v1/")
    if not sep or not tail:
        raise ConfigurationError(
            f"--batch needs a request URL of the form https://HOST/v1/ENDPOINT, got {url!r}"
        )
    return head + "/v1", "/" + tail.strip("/")


class _Collect(KeyedLines):
    """Every answer to the cache (no line is this pass's own) and its cost to the ledger;
    every error kept by key."""

    def __init__(self, cache: Any, model: str, ledger: Ledger) -> None:
        super().__init__(lambda key: None, cache=cache, model=model)
        self.ledger = ledger
        self.errors: dict[str, ErrorInfo] = {}

    def outcome(
        self, keys: list[bytes], response: Any = None, error: ErrorInfo | None = None
    ) -> Outcome | None:
        if error is not None and len(keys) == 1:
            self.errors[keys[0].hex()] = error
        elif error is None and len(keys) == 1:
            self.ledger.add_usage(response)  # checked against what its line asked
        return super().outcome(keys, response, error)


@dataclass
class BatchPass:
    """What pass 1 leaves for pass 2: the lines' errors by key, and the figures."""

    errors: dict[str, ErrorInfo] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    answered: int = 0  # lines this pass put in the cache
    #: --budget reached: the error of every line neither answered nor refused (one value,
    #: not one per line: a budget may stop a million lines)
    not_sent: ErrorInfo | None = None

    def error_of(self, key: str) -> ErrorInfo:
        """The error of a line the cache has no answer for."""
        return self.errors.get(key) or self.not_sent or NOT_ANSWERED

    def add_submitted(self, figures: dict[str, Any]) -> None:
        """Files, batches and lines that a run submitting without waiting created."""
        f = self.figures
        for name in ("batch_files_uploaded", "batches_created", "batch_lines_submitted"):
            f[name] = f.get(name, 0) + (figures.get(name) or 0)

    def add(self, figures: dict[str, Any]) -> None:
        """The figures of a run that waited for its batches (and any submitted before)."""
        f = self.figures
        self.add_submitted(figures)
        for name in ("requests", "requests_succeeded", "requests_failed", "tokens_used"):
            f[name] = f.get(name, 0) + (figures.get(name) or 0)
        f.setdefault("batch_ids", []).extend(figures.get("batch_ids") or [])
        causes = f.setdefault("failures_by_cause", {})
        for cause, n in (figures.get("failures_by_cause") or {}).items():
            causes[cause] = causes.get(cause, 0) + n
        self.answered += figures.get("requests_succeeded") or 0


async def run_batches(
    job: RunJob, plan: Plan, n_lines: int, cache: Any, *, poll_interval: float | None
) -> BatchPass:
    """Pass 1: submit, wait for and download every line still to do (with ``--budget``, in
    waves that fit in it, one model after another); the errors by key and the figures."""
    if cache is None:
        raise ConfigurationError("--batch keeps its record in the response cache: drop --no-cache")
    base, endpoint = split_url(job.url)
    key = job.api.api_key.reveal() if job.api.api_key else None
    api = ApiConfig.resolve(base_url=base, api_key=key)
    models = sorted({m for m in _models(job, plan, n_lines, cache)})
    if job.budget is not None:  # every model's price is known before anything is submitted
        prices = {m: budget_needs_price(m, job.price).batch() for m in models}
    else:
        prices = {m: p.batch() if (p := price_for(m, job.price)) else None for m in models}
    result = BatchPass()
    started = time.monotonic()
    spent: float | None = 0.0
    record = BatchRecord(cache.path)

    def batch_run(model: str, lines: _Collect, **more: Any) -> BatchRun:
        return BatchRun(
            api, record, endpoint=endpoint, model=model, lines=lines, on_outcome=_ignore, **more
        )

    def refuse(request: Request, message: str) -> bool:
        result.not_sent = ErrorInfo(None, BUDGET_REACHED, message)
        return False  # the others need not be read: error_of() answers for them

    try:
        if job.budget is None:
            # Every model's batches are submitted before any is waited for: side by side.
            for model in models:
                run = batch_run(model, _Collect(cache, model, Ledger(None)))
                with contextlib.suppress(BatchSubmitted):
                    await run.run(_requests(job, plan, n_lines, cache, model), wait=False)
                result.add_submitted(run.counts.figures())
        for model in models:
            ledger = Ledger(prices[model], spent or 0.0)
            lines = _Collect(cache, model, ledger)
            progress = Progress(None, enabled=job.progress, desc=f"dfbatch run {model} (batch)")
            run = batch_run(
                model,
                lines,
                flush=cache.flush,
                poll_interval=poll_interval,
                on_status=progress.show_batches,
            )
            # Without a budget every line went out above: nothing is left to read or submit.
            requests = (
                _requests(job, plan, n_lines, cache, model) if job.budget is not None else iter(())
            )
            try:
                if job.budget is None:
                    figures = await run.run(requests)
                else:
                    figures = await within_budget(
                        run, requests, budget=job.budget, ledger=ledger, refuse=refuse
                    )
            finally:
                progress.close()
                cache.flush()
            result.add(figures)
            result.errors.update(lines.errors)
            spent = None if spent is None or ledger.spent is None else ledger.spent
    finally:
        record.close()
    result.figures["elapsed_s"] = round(time.monotonic() - started, 3)
    result.figures["cost_usd"] = spent
    return result


def _ignore(outcome: Outcome) -> None:
    """No line is pass 1's own: pass 2 reads every answer from the cache."""


def _lines(job: RunJob, plan: Plan, n_lines: int, cache: Any) -> Iterator[Any]:
    """The usable lines still to do and not in the cache, a block at a time."""
    block: list[Any] = []

    def unanswered(block: list[Any]) -> list[Any]:
        hits = cache.get_many([line.key for line in block])
        return [line for line in block if line.key not in hits]

    with job.requests.open("rb") as fh:
        fh.seek(plan.start_offset)
        index = plan.start_index
        for raw in fh:
            if index >= n_lines:
                break
            if plan.mask is None or not plan.mask[index]:
                line = parse_line(raw, index, job.url)
                if line.body is not None and line.key is not None:
                    block.append(line)
            index += 1
            if len(block) >= C.CLI_LOOKUP_BATCH:
                yield from unanswered(block)
                block = []
    if block:
        yield from unanswered(block)


def _models(job: RunJob, plan: Plan, n_lines: int, cache: Any) -> Iterator[str]:
    for line in _lines(job, plan, n_lines, cache):
        yield str(line.body.get("model"))


def _requests(job: RunJob, plan: Plan, n_lines: int, cache: Any, model: str) -> Iterator[Request]:
    for line in _lines(job, plan, n_lines, cache):
        if str(line.body.get("model")) != model:
            continue
        tokens = estimate_request_tokens(job.url, line.body, job.encoding)
        yield Request(line.key, job.url, line.body, tokens)

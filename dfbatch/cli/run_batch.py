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
from collections.abc import Iterator
from typing import Any

from ..batch.backend import BatchRun, BatchSubmitted
from ..cache.batch_record import BatchRecord
from ..engine import constants as C
from ..engine.config import ApiConfig
from ..engine.errors import ConfigurationError
from ..engine.tokens import estimate_request_tokens
from ..engine.types import ErrorInfo, Outcome, Request
from ..jobs.batch_lines import KeyedLines
from ..jobs.progress import Progress
from .job import RunJob
from .lines import parse_line
from .resume import Plan

log = logging.getLogger(__name__)

NOT_ANSWERED = ErrorInfo(
    None,
    "batch_not_answered",
    "the Batch API gave no answer for this line; rerun the same command to submit it again",
)


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
    """Every answer to the cache (no line is this pass's own); every error kept by key."""

    def __init__(self, cache: Any, model: str) -> None:
        super().__init__(lambda key: None, cache=cache, model=model)
        self.errors: dict[str, ErrorInfo] = {}

    def outcome(
        self, keys: list[bytes], response: Any = None, error: ErrorInfo | None = None
    ) -> Outcome | None:
        if error is not None and len(keys) == 1:
            self.errors[keys[0].hex()] = error
        return super().outcome(keys, response, error)


async def run_batches(
    job: RunJob, plan: Plan, n_lines: int, cache: Any, *, poll_interval: float | None
) -> dict[str, ErrorInfo]:
    """Pass 1: submit, wait for and download every line still to do; the errors by key."""
    if cache is None:
        raise ConfigurationError("--batch keeps its record in the response cache: drop --no-cache")
    base, endpoint = split_url(job.url)
    key = job.api.api_key.reveal() if job.api.api_key else None
    api = ApiConfig.resolve(base_url=base, api_key=key)
    models = sorted({m for m in _models(job, plan, n_lines, cache)})
    errors: dict[str, ErrorInfo] = {}
    record = BatchRecord(cache.path)
    try:
        # Every model's batches are submitted before any is waited for: they run side by side.
        for model in models:
            run = BatchRun(
                api,
                record,
                endpoint=endpoint,
                model=model,
                lines=_Collect(cache, model),
                on_outcome=lambda outcome: None,
            )
            with contextlib.suppress(BatchSubmitted):
                await run.run(_requests(job, plan, n_lines, cache, model), wait=False)
        for model in models:
            lines = _Collect(cache, model)
            progress = Progress(None, enabled=job.progress, desc=f"dfbatch run {model} (batch)")
            run = BatchRun(
                api,
                record,
                endpoint=endpoint,
                model=model,
                lines=lines,
                on_outcome=lambda outcome: None,
                flush=cache.flush,
                poll_interval=poll_interval,
                on_status=progress.show_batches,
            )
            try:
                await run.run(_requests(job, plan, n_lines, cache, model))
            finally:
                progress.close()
                cache.flush()
            errors.update(lines.errors)
    finally:
        record.close()
    return errors


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

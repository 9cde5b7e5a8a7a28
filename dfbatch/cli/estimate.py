"""``--dry-run``: what ``dfbatch run`` / ``embed`` / ``complete`` would send and cost.

Nothing is sent and nothing is written. ``run`` streams its requests file once through the
same line parsing, resume plan, cache lookups and token estimates as the real run (constant
memory: only sums are kept); ``embed`` / ``complete`` estimate a chunk at a time through
``df.llm.estimate`` and add the chunks up.
"""

from __future__ import annotations

from typing import Any

from ..engine.tokens import estimate_request_tokens
from ..engine.types import Request
from ..jobs.estimate import Estimate, EstimateBuilder
from .job import RunJob
from .resume import count_requests, plan_resume
from .run import _open_cache, pending_lines


def estimate_run(job: RunJob) -> Estimate:
    """The estimate of a ``dfbatch run`` job."""
    n_lines = count_requests(job.requests)
    plan = plan_resume(job, n_lines)
    builder = EstimateBuilder(
        None,
        price=job.price,
        rpm=job.rpm,
        tpm=job.tpm,
        budget=job.budget,
        limits_source="--rpm/--tpm, the cookbook's defaults unless given",
        backend="batch" if job.batch else "online",
    )
    invalid = 0
    embeddings = job.url.rstrip("/").endswith("/embeddings")
    cache = _open_cache(job)
    try:
        for line in pending_lines(job, plan, n_lines, cache):
            if line.body is None:
                invalid += 1
            elif line.cached is not None:
                builder.cached(1, line.cached)
            else:
                tokens = estimate_request_tokens(job.url, line.body, job.encoding)
                builder.add(Request(line.index, job.url, line.body, tokens))
    finally:
        if cache is not None:
            cache.close()
    est = builder.finish(no_output=embeddings)
    if job.budget is not None:
        from ..engine.prices import budget_needs_price

        budget_needs_price(est.model, job.price)
    # Lines the results file already holds: answers (cost 0), and failures a rerun without
    # --overwrite leaves as they are.
    est.rows_cached += plan.done - plan.failed
    est.rows_not_sent += plan.failed
    est.rows_invalid = invalid
    return est


async def estimate_frames(job: Any) -> Estimate:
    """The estimate of a ``dfbatch embed`` / ``complete`` job, a chunk at a time."""
    from .frames import _check_columns
    from .frames import _open_cache as open_frames_cache
    from .tables import Source, detect_format

    source = Source(job.input, detect_format(job.input, job.fmt), job.chunk_rows)
    cache = open_frames_cache(job.cache)
    total: Estimate | None = None
    try:
        for number, chunk in enumerate(source.chunks(), 1):
            if number == 1:
                _check_columns(job, chunk.frame)
            options = dict(job.options)
            kwargs = {**job.run_options, "cache": cache}
            kwargs.pop("progress", None)
            if job.command == "embed":
                est = chunk.frame.llm.estimate.embed(options.pop("column"), **options, **kwargs)
            else:
                est = chunk.frame.llm.estimate.complete(options.pop("prompt"), **options, **kwargs)
            total = est if total is None else total.merge(est)
    finally:
        if cache is not False:
            cache.close()
    assert total is not None
    return total

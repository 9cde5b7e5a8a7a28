"""``df.llm.estimate.embed(...)`` / ``.complete(...)``: the run planned, nothing sent.

Each takes exactly the arguments of ``embed`` / ``complete`` and plans the run as the real call
does (``EmbedJob`` packing and dedupe, ``plan_chat``'s bodies, the same cache lookups and token
counts), then sums what would be sent (``jobs.estimate``), so an estimate cannot drift from the
run it describes.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from ..engine.tokens import estimate_request_tokens
from ..engine.types import Request
from ..jobs import chat as _chat
from ..jobs.embed import EmbedJob
from ..jobs.estimate import Estimate, EstimateBuilder
from ..jobs.run import RunOptions
from .columns import check_chat_options, check_embed_options, embed_requests, plan_chat

#: The key an estimate is planned with when none is given: never sent anywhere.
NO_KEY = "unused: an estimate sends nothing"


def _builder(model: str, options: RunOptions) -> EstimateBuilder:
    return EstimateBuilder(
        model,
        price=options.price,
        rpm=options.rpm,
        tpm=options.tpm,
        budget=options.budget,
        backend=options.backend,
    )


def estimate_embed(
    values: Sequence[Any],
    *,
    model: str,
    output: str,
    dimensions: int | None,
    batch_size: int | None,
    truncate: bool,
    errors: str,
    options: RunOptions,
    **_: Any,
) -> Estimate:
    dimensions, batch_size = check_embed_options(
        errors=errors, output=output, model=model, dimensions=dimensions, batch_size=batch_size
    )
    options.check_price(model)
    job = EmbedJob.plan(values, model=model, dimensions=dimensions, truncate=truncate)
    builder = _builder(model, options)
    cache = options.open_cache()
    try:
        if cache is not None:
            builder.cached(job.use_cached(cache, job.keys()))
    finally:
        if cache is not None and cache is not options.cache:
            cache.close()
    job.count_tokens()
    for request in embed_requests(job, batch_size, options):
        builder.add(request, rows=sum(len(job.rows_of[u]) for u in request.meta))
    est = builder.finish(no_output=True)
    est.rows_not_sent = job.not_sent
    est.rows_invalid = len(job.errors)
    return est


def estimate_complete(
    frame: pd.DataFrame,
    prompt: _chat.Prompt,
    *,
    model: str,
    output: str,
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
    response_format: Any,
    n: int,
    expand: bool,
    errors: str,
    extra_body: dict[str, Any] | None,
    options: RunOptions,
    positional: str | None = None,
    **_: Any,
) -> Estimate:
    checked = check_chat_options(
        errors=errors,
        output=output,
        model=model,
        n=n,
        max_tokens=max_tokens,
        temperature=temperature,
        response_format=response_format,
        expand=expand,
    )
    options.check_price(model)
    plan = plan_chat(
        frame, prompt, checked, model=model, system=system, extra_body=extra_body,
        positional=positional,
    )  # fmt: skip
    bodies = plan.bodies
    builder = _builder(model, options)
    cache = options.open_cache()
    try:
        if cache is not None:
            hits = cache.get_many(list(bodies))
            for key, response in hits.items():
                builder.cached(len(bodies[key][1]), response)
    finally:
        if cache is not None and cache is not options.cache:
            cache.close()
    for key, (body, positions) in bodies.items():
        if cache is not None and key in hits:
            continue
        tokens = estimate_request_tokens(_chat.ENDPOINT, body)
        builder.add(Request(key, _chat.ENDPOINT, body, tokens), rows=len(positions))
    est = builder.finish()
    est.rows_not_sent = sum(p is None for p in plan.prompts)
    est.rows_invalid = sum(e is not None for e in plan.errors)
    return est


def _bind(method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The arguments of ``method`` (an accessor's ``aembed``/``acomplete``) with its defaults,
    checked as the real call checks them: a wrong name is a TypeError, as it would be."""
    bound = inspect.signature(method).bind(None, *args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop("self", None)
    options = arguments.pop("options", {}) or {}
    arguments.pop("usage", None)
    if not options.get("api_key") and not os.environ.get("OPENAI_API_KEY"):
        options["api_key"] = NO_KEY  # an estimate needs no key: it sends nothing
    arguments["options"] = RunOptions.build(**options)
    return arguments


class FrameEstimator:
    """``df.llm.estimate``: ``embed`` and ``complete`` with the same arguments, nothing sent."""

    def __init__(self, accessor: Any) -> None:
        self._accessor = accessor

    def embed(self, column: Any, /, **kwargs: Any) -> Estimate:
        """What ``df.llm.embed(column, ...)`` would send and cost; sends nothing."""
        acc = self._accessor
        arguments = _bind(type(acc).aembed, column, **kwargs)
        values = acc._column(arguments.pop("column")).to_numpy(dtype=object)
        return estimate_embed(values, **arguments)

    def complete(self, prompt: _chat.Prompt, /, **kwargs: Any) -> Estimate:
        """What ``df.llm.complete(prompt, ...)`` would send and cost; sends nothing."""
        acc = self._accessor
        arguments = _bind(type(acc).acomplete, prompt, **kwargs)
        positional = arguments.pop("_positional", None)
        return estimate_complete(
            acc._obj, arguments.pop("prompt"), positional=positional, **arguments
        )


class SeriesEstimator:
    """``series.llm.estimate``: as ``df.llm.estimate`` on the Series as a one-column frame."""

    def __init__(self, accessor: Any) -> None:
        self._accessor = accessor

    def embed(self, **kwargs: Any) -> Estimate:
        frame, name = self._accessor._frame()
        return frame.llm.estimate.embed(name, **kwargs)

    def complete(self, prompt: _chat.Prompt = "{}", **kwargs: Any) -> Estimate:
        frame, name = self._accessor._frame()
        return frame.llm.estimate.complete(prompt, _positional=name, **kwargs)

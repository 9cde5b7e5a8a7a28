"""Frame in, frame out: the work behind ``df.llm.embed`` and ``df.llm.complete``.

extract (values, prompts) -> plan requests (dedupe, cache hits) -> engine -> place each answer
on its row by position -> wrap with ``assign`` (the caller's index and frame untouched).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from . import _chat
from . import _constants as C
from ._cache import request_key
from ._embed import EmbedJob, failed_on_format
from ._errors import ConfigurationError, RowsFailedError
from ._progress import format_summary
from ._run import RunOptions, execute, report
from ._tokens import estimate_request_tokens
from ._types import Outcome, Request

log = logging.getLogger(__name__)

ERRORS = ("coerce", "raise")


def _check_errors(errors: str) -> None:
    if errors not in ERRORS:
        raise ConfigurationError(f"errors must be 'coerce' or 'raise', got {errors!r}")


def _finish(
    frame: pd.DataFrame,
    columns: dict[str, Any],
    figures: dict[str, Any],
    *,
    output: str,
    errors: str,
    progress: bool | None,
    not_sent: int,
) -> pd.DataFrame:
    out = frame.assign(
        **{
            name: pd.Series(values, index=frame.index, dtype=_dtype(values))
            for name, values in columns.items()
        }
    )
    out.attrs["dfbatch"] = figures
    errors_col = out[f"{output}_error"]
    failed = int(errors_col.notna().sum())
    figures["rows_failed"] = failed
    figures["failures_by_cause"] = dict(
        Counter(_cause(m) for m in errors_col.dropna()).most_common()
    )
    figures["rows_not_sent"] = not_sent
    summary = format_summary(
        figures, rows=len(frame), failed=failed, cached=figures.get("rows_from_cache", 0)
    )
    report(summary, progress=progress)
    if failed and errors == "raise":
        raise RowsFailedError(
            f"{summary}\nThe result, answers included, is in this exception's .result; "
            f"each failed row's reason is in its {output}_error column.",
            failed=failed,
            result=out,
        )
    return out


def _cause(message: str) -> str:
    """A failure's short cause, to group by: "HTTP 400 code", "input too long", ..."""
    return message.split(": ")[0].split(" (")[0]


def _dtype(values: Any) -> Any:
    return values.dtype if isinstance(values, np.ndarray) and values.dtype != object else object


async def embed_values(
    frame: pd.DataFrame,
    values: Sequence[Any],
    *,
    model: str,
    output: str,
    dimensions: int | None,
    batch_size: int | None,
    truncate: bool,
    usage: bool,
    errors: str,
    options: RunOptions,
) -> pd.DataFrame:
    _check_errors(errors)
    if batch_size is not None and batch_size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, got {batch_size}")
    job = EmbedJob.plan(values, model=model, dimensions=dimensions, truncate=truncate)
    cache = options.open_cache()
    try:
        keys = job.keys() if cache is not None else []
        if cache is not None:
            job.use_cached(cache, keys)
        job.count_tokens(everything=usage)
        pending = sum(len(r) for u, r in enumerate(job.rows_of) if not job.have[u])  # type: ignore[index]
        as_floats: list[list[int]] = []

        def on_outcome(outcome: Outcome) -> tuple[int, int]:
            if failed_on_format(outcome):
                as_floats.append(outcome.request.meta)
                return 0, 0
            done = job.receive(outcome, cache, keys)
            if cache is not None:
                cache.maybe_flush()
            return done

        # A pack fits in what the server takes at once (the engine also splits one that
        # does not, once the server has told the limit).
        share = options.tpm / 60.0 * C.EMBED_PACK_WINDOW_SHARE if options.tpm else None
        figures = await execute(
            job.requests(batch_size=batch_size, encoding_format="base64", max_tokens=share),
            on_outcome,
            options=options,
            total_rows=job.n_rows,
            rows_done=job.n_rows - pending,
            rows_failed=len(job.errors),
            rows_cached=job.cached,
            desc=f"embed {model}",
            split=job.split,
        )
        if as_floats:  # the server does not do base64: ask again for floats
            log.info("the server refused base64 embeddings; asking for floats")
            retry = [
                job._request(i, b, sum(job.tokens[u] for u in b), None)
                for i, b in enumerate(as_floats)
            ]
            more = await execute(
                retry,
                lambda o: job.receive(o, cache, keys),
                options=options,
                total_rows=None,
                desc=f"embed {model} (floats)",
                split=job.split,
            )
            figures = _merge(figures, more)
    finally:
        if cache is not None:
            cache.flush()
    figures["rows_from_cache"] = job.cached
    columns: dict[str, Any] = {output: job.column(), f"{output}_error": job.error_column()}
    if usage:
        columns[f"{output}_tokens"] = job.row_tokens()
    return _finish(
        frame,
        columns,
        figures,
        output=output,
        errors=errors,
        progress=options.progress,
        not_sent=job.not_sent,
    )


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key in (
        "requests",
        "requests_succeeded",
        "requests_failed",
        "retries",
        "rate_limited",
        "tokens_estimated",
        "tokens_used",
        "elapsed_s",
    ):
        out[key] = (a.get(key) or 0) + (b.get(key) or 0)
    return out


class Row(dict):  # type: ignore[type-arg]
    """A row for prompt functions: ``row["text"]`` and ``row.text`` both work."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _prompts(frame: pd.DataFrame, prompt: _chat.Prompt, positional: str | None) -> list[Any]:
    """One prompt value per row; None for a row with an NA field (it is not sent)."""
    n = len(frame)
    if callable(prompt):
        names = [str(c) for c in frame.columns]
        cols = [frame.iloc[:, j].to_numpy(dtype=object) for j in range(frame.shape[1])]
        return [prompt(Row(zip(names, (c[i] for c in cols), strict=True))) for i in range(n)]
    if not isinstance(prompt, str):
        raise ConfigurationError(
            f"prompt must be a template string or a function of the row, got "
            f"{type(prompt).__name__}"
        )
    fields = _chat.template_fields(prompt)
    if positional is not None:  # a Series: "{}" is its value
        fields = [f for f in fields if f not in ("", "0")]
    _chat.check_fields(fields, list(frame.columns))
    by_name = {str(c): frame[c] for c in frame.columns}
    columns = {f: by_name[f].to_numpy(dtype=object) for f in fields}
    na = {f: pd.isna(by_name[f]).to_numpy() for f in fields}
    pos_values = frame[positional].to_numpy(dtype=object) if positional else None
    pos_na = pd.isna(frame[positional]).to_numpy() if positional else None
    out: list[Any] = []
    for i in range(n):
        if any(na[f][i] for f in fields) or (pos_na is not None and pos_na[i]):
            out.append(None)
            continue
        kwargs = {f: columns[f][i] for f in fields}
        args = (pos_values[i],) if pos_values is not None else ()
        out.append(prompt.format(*args, **kwargs))
    return out


async def complete_frame(
    frame: pd.DataFrame,
    prompt: _chat.Prompt,
    *,
    model: str,
    system: str | None,
    output: str,
    max_tokens: int | None,
    temperature: float | None,
    response_format: Any,
    n: int,
    expand: bool,
    usage: bool,
    errors: str,
    extra_body: dict[str, Any] | None,
    options: RunOptions,
    positional: str | None = None,
) -> pd.DataFrame:
    _check_errors(errors)
    if n < 1:
        raise ConfigurationError(f"n must be at least 1, got {n}")
    spec, model_cls = _chat.response_format_spec(response_format)
    wants_json = spec is not None and spec.get("type") in ("json_object", "json_schema")
    if expand and not wants_json:
        raise ConfigurationError("expand=True needs a response_format that gives JSON objects")
    prompts = _prompts(frame, prompt, positional)
    rows = len(frame)
    values = np.full(rows, None, dtype=object)
    errs = np.full(rows, None, dtype=object)
    prompt_tokens = np.full(rows, None, dtype=object)
    completion_tokens = np.full(rows, None, dtype=object)
    bodies: dict[str, tuple[dict[str, Any], list[int]]] = {}
    for i, p in enumerate(prompts):
        if p is None:
            continue
        try:
            messages = _chat.to_messages(p, system)
        except TypeError as exc:
            errs[i] = f"invalid prompt: {exc}"
            continue
        body = _chat.build_body(
            messages,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            response_format=spec,
            n=n,
            extra=extra_body,
        )
        key = request_key(_chat.ENDPOINT, body)
        if key in bodies:
            bodies[key][1].append(i)
        else:
            bodies[key] = (body, [i])

    def place(response: Any, positions: list[int]) -> int:
        try:
            value, info = _chat.parse_response(
                response, n=n, wants_json=wants_json, model_cls=model_cls
            )
        except (ValueError, KeyError, TypeError) as exc:
            for i in positions:
                errs[i] = str(exc)
            return len(positions)
        for i in positions:
            values[i] = value
            prompt_tokens[i] = info["prompt_tokens"]
            completion_tokens[i] = info["completion_tokens"]
        return 0

    cache = options.open_cache()
    cached_rows = 0
    try:
        if cache is not None:
            hits = cache.get_many(list(bodies))
            for key, response in hits.items():
                positions = bodies.pop(key)[1]
                place(response, positions)
                cached_rows += len(positions)
        requests = (
            Request(
                key,
                _chat.ENDPOINT,
                body,
                estimate_request_tokens(_chat.ENDPOINT, body),
                meta=positions,
            )
            for key, (body, positions) in bodies.items()
        )

        def on_outcome(outcome: Outcome) -> tuple[int, int]:
            positions: list[int] = outcome.request.meta
            if outcome.error is not None:
                for i in positions:
                    errs[i] = str(outcome.error)
                return len(positions), len(positions)
            failed = place(outcome.response, positions)
            if cache is not None:
                cache.put(outcome.request.id, outcome.response, model=model)
                cache.maybe_flush()
            return len(positions), failed

        pending = sum(len(p) for _, p in bodies.values())
        figures = await execute(
            requests,
            on_outcome,
            options=options,
            total_rows=rows,
            rows_done=rows - pending,
            rows_failed=sum(e is not None for e in errs),
            rows_cached=cached_rows,
            desc=f"complete {model}",
        )
    finally:
        if cache is not None:
            cache.flush()
    figures["rows_from_cache"] = cached_rows
    columns: dict[str, Any] = {}
    if expand:
        records = [v if isinstance(v, dict) else {} for v in values]
        fields = pd.DataFrame.from_records(records, index=frame.index)
        for name in fields.columns:
            columns[str(name)] = fields[name].to_numpy(dtype=object)
    else:
        columns[output] = values
    columns[f"{output}_error"] = errs
    if usage:
        columns[f"{output}_prompt_tokens"] = pd.array(prompt_tokens, dtype="Int64")
        columns[f"{output}_completion_tokens"] = pd.array(completion_tokens, dtype="Int64")
    return _finish(
        frame,
        columns,
        figures,
        output=output,
        errors=errors,
        progress=options.progress,
        not_sent=sum(p is None for p in prompts),
    )

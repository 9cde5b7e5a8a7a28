"""Frame in, frame out: the work behind ``df.llm.embed`` and ``df.llm.complete``.

extract (values, prompts) -> plan requests (dedupe, cache hits) -> engine -> place each answer
on its row by position -> wrap with ``assign`` (the caller's index and frame untouched).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..cache.store import request_key
from ..engine import constants as C
from ..engine.checks import check_number, check_whole
from ..engine.errors import ConfigurationError, RowsFailedError
from ..engine.prices import PER_TOKENS, usage_cost
from ..engine.tokens import estimate_request_tokens
from ..engine.types import Outcome, Request
from ..jobs import chat as _chat
from ..jobs.batch_lines import NOT_ANSWERED, EmbedLines, KeyedLines
from ..jobs.embed import ENDPOINT as ENDPOINT_EMBED
from ..jobs.embed import EmbedJob, failed_on_format, unicode_problem
from ..jobs.progress import format_summary
from ..jobs.run import RunOptions, execute, report

log = logging.getLogger(__name__)

ERRORS = ("coerce", "raise")
#: How a row the budget stopped starts its ``{output}_error`` (see the engine's budget).
BUDGET_REACHED = "budget reached"


def _check_errors(errors: str) -> None:
    if errors not in ERRORS:
        raise ConfigurationError(f"errors must be 'coerce' or 'raise', got {errors!r}")


def _check_names(*, output: Any, model: Any) -> None:
    """``output`` names the new columns and ``model`` goes in every request: both text."""
    if not isinstance(output, str) or not output:
        raise ConfigurationError(
            f"output must be a non-empty column name (text), got {output!r}; it names the "
            "answer column and its '_error' column, e.g. output='summary'"
        )
    if not isinstance(model, str) or not model.strip():
        raise ConfigurationError(
            f"model must be a model name (text), got {model!r}, e.g. model='gpt-4o-mini'"
        )


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
    figures["rows_budget_reached"] = sum(
        isinstance(m, str) and m.startswith(BUDGET_REACHED) for m in errors_col.dropna()
    )
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
    dimensions, batch_size = check_embed_options(
        errors=errors, output=output, model=model, dimensions=dimensions, batch_size=batch_size
    )
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

        figures = await execute(
            embed_requests(job, batch_size, options),
            on_outcome,
            options=options,
            total_rows=job.n_rows,
            rows_done=job.n_rows - pending,
            rows_failed=len(job.errors),
            rows_cached=job.cached,
            desc=f"embed {model}",
            lines=EmbedLines(job, keys, "base64", cache=cache),
            endpoint=ENDPOINT_EMBED,
            model=model,
            cache=cache,
            split=job.split,
        )
        if as_floats:  # the server does not do base64: ask again for floats
            log.info("the server refused base64 embeddings; asking for floats")
            retry = [
                job._request(i, b, sum(job.tokens[u] for u in b), None)
                for i, b in enumerate(as_floats)
            ]
            if options.budget is not None:  # one budget for the call: what is left of it
                left = options.budget - (figures.get("cost_usd") or 0.0)
                options = dataclasses.replace(options, budget=max(0.0, left))
            more = await execute(
                retry,
                lambda o: job.receive(o, cache, keys),
                options=options,
                total_rows=None,
                desc=f"embed {model} (floats)",
                split=job.split,
            )
            figures = _merge(figures, more)
        if options.backend == "batch":  # a row no batch spoke of is an error, not a blank
            job.fail_unanswered(str(NOT_ANSWERED))
    finally:
        if cache is not None:
            cache.flush()
    figures["rows_from_cache"] = job.cached
    columns: dict[str, Any] = {output: job.column(), f"{output}_error": job.error_column()}
    if usage:
        columns[f"{output}_tokens"] = job.row_tokens()
        price = options.price_of(model)
        columns[f"{output}_cost_usd"] = (
            job.row_tokens() * (price.input / PER_TOKENS)
            if price is not None
            else pd.array([None] * job.n_rows, dtype="Float64")
        )
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
    if a.get("cost_usd") is not None and b.get("cost_usd") is not None:
        out["cost_usd"] = a["cost_usd"] + b["cost_usd"]
    else:
        out["cost_usd"] = None
    return out


def _text_problem(value: Any) -> str | None:
    """Why a prompt's messages cannot be sent (a text that is not valid Unicode), or None."""
    if isinstance(value, str):
        return unicode_problem(value)
    if isinstance(value, Mapping):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list | tuple):
        for item in value:
            if (problem := _text_problem(item)) is not None:
                return problem
    return None


class Row(dict):  # type: ignore[type-arg]
    """A row for prompt functions: ``row["text"]`` and ``row.text`` both work."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _prompts(frame: pd.DataFrame, prompt: _chat.Prompt, positional: Any) -> list[Any]:
    """One prompt value per row; None for a row with an NA field (it is not sent), a
    :class:`_BadPrompt` for a row whose value does not take its field's format spec."""
    n = len(frame)
    if callable(prompt):
        names = [str(c) for c in frame.columns]
        cols = [frame.iloc[:, j].to_numpy(dtype=object) for j in range(frame.shape[1])]
        return [_call(prompt, Row(zip(names, (c[i] for c in cols), strict=True))) for i in range(n)]
    if not isinstance(prompt, str):
        raise ConfigurationError(
            f"prompt must be a template string or a function of the row, got "
            f"{type(prompt).__name__}"
        )
    pieces = _chat.parse_template(prompt)
    fields = _chat.template_fields(prompt)
    where = _chat.resolve_fields(fields, list(frame.columns), positional=positional)
    columns = {f: frame.iloc[:, j].to_numpy(dtype=object) for f, j in where.items()}
    na = {f: pd.isna(frame.iloc[:, j]).to_numpy() for f, j in where.items()}
    out: list[Any] = []
    for i in range(n):
        if any(na[f][i] for f in fields):
            out.append(None)
            continue
        try:
            out.append(_chat.render(pieces, {f: columns[f][i] for f in fields}))
        except _chat.FieldFormatError as exc:
            out.append(_BadPrompt(f"invalid prompt: {exc}"))
    return out


class _BadPrompt(str):
    """A row's error in place of its prompt: it is not sent."""


def _call(prompt: Any, row: Row) -> Any:
    """The prompt function's value for one row; what it raises is that row's error (a row
    the function cannot handle must not cost the others their answers)."""
    try:
        return prompt(row)
    except Exception as exc:
        log.debug("the prompt function raised on a row", exc_info=True)
        return _BadPrompt(f"invalid prompt: the prompt function raised {type(exc).__name__}: {exc}")


def check_embed_options(
    *, errors: str, output: Any, model: Any, dimensions: Any, batch_size: Any
) -> tuple[int | None, int | None]:
    """The options of an embed call, checked before anything is planned or sent (the run and
    its estimate alike); returns ``dimensions`` and ``batch_size`` as whole numbers."""
    _check_errors(errors)
    _check_names(output=output, model=model)
    return (
        check_whole("dimensions", dimensions, optional=True),
        check_whole("batch_size", batch_size, optional=True),
    )


def embed_requests(job: EmbedJob, batch_size: int | None, options: RunOptions) -> Any:
    """The requests an embed call sends, and its estimate counts: a pack fits in what the
    server takes at once when the TPM is known (the engine also splits one that does not,
    once the server has told the limit)."""
    share = options.tpm / 60.0 * C.EMBED_PACK_WINDOW_SHARE if options.tpm else None
    return job.requests(batch_size=batch_size, encoding_format="base64", max_tokens=share)


@dataclass(frozen=True)
class ChatOptions:
    """A complete call's request options, checked."""

    n: int
    max_tokens: int | None
    temperature: float | None
    spec: dict[str, Any] | None  # the response_format sent
    model_cls: Any  # a pydantic model to parse answers into, or None
    wants_json: bool


def check_chat_options(
    *,
    errors: str,
    output: Any,
    model: Any,
    n: Any,
    max_tokens: Any,
    temperature: Any,
    response_format: Any,
    expand: bool,
) -> ChatOptions:
    """The options of a complete call, checked before anything is planned or sent (the run
    and its estimate alike): finite numbers in range, a response format that fits ``expand``."""
    _check_errors(errors)
    _check_names(output=output, model=model)
    n = check_whole("n", n)
    max_tokens = check_whole("max_tokens", max_tokens, optional=True)
    temperature = check_number(
        "temperature", temperature, above=None, at_least=0, at_most=2, optional=True
    )
    spec, model_cls = _chat.response_format_spec(response_format)
    wants_json = spec is not None and spec.get("type") in ("json_object", "json_schema")
    if expand and not wants_json:
        raise ConfigurationError("expand=True needs a response_format that gives JSON objects")
    return ChatOptions(n, max_tokens, temperature, spec, model_cls, wants_json)  # type: ignore[arg-type]


@dataclass
class ChatPlan:
    """The requests a ``complete`` call makes: one body per distinct prompt, with its rows."""

    prompts: list[Any]  # one per row; None: an NA field, not sent
    bodies: dict[str, tuple[dict[str, Any], list[int]]]  # cache key -> (body, row positions)
    errors: np.ndarray  # per row: why it cannot be sent, or None


def plan_chat(
    frame: pd.DataFrame,
    prompt: _chat.Prompt,
    checked: ChatOptions,
    *,
    model: str,
    system: str | None,
    extra_body: dict[str, Any] | None,
    positional: str | None,
) -> ChatPlan:
    """Rows -> request bodies, identical ones once: what ``complete`` sends and
    ``estimate.complete`` counts, so the two cannot drift apart."""
    prompts = _prompts(frame, prompt, positional)
    errs = np.full(len(frame), None, dtype=object)
    bodies: dict[str, tuple[dict[str, Any], list[int]]] = {}
    for i, p in enumerate(prompts):
        if p is None:
            continue
        if isinstance(p, _BadPrompt):
            errs[i] = str(p)
            continue
        try:
            messages = _chat.to_messages(p, system)
        except TypeError as exc:
            errs[i] = f"invalid prompt: {exc}"
            continue
        problem = _text_problem(messages)
        if problem is not None:  # it would fail its request anyway: say why, before sending
            errs[i] = f"invalid prompt: {problem}"
            continue
        body = _chat.build_body(
            messages,
            model=model,
            max_tokens=checked.max_tokens,
            temperature=checked.temperature,
            response_format=checked.spec,
            n=checked.n,
            extra=extra_body,
        )
        key = request_key(_chat.ENDPOINT, body)
        if key in bodies:
            bodies[key][1].append(i)
        else:
            bodies[key] = (body, [i])
    return ChatPlan(prompts, bodies, errs)


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
    positional: Any = None,
) -> pd.DataFrame:
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
    n, wants_json, model_cls = checked.n, checked.wants_json, checked.model_cls
    rows = len(frame)
    values = np.full(rows, None, dtype=object)
    prompt_tokens = np.full(rows, None, dtype=object)
    completion_tokens = np.full(rows, None, dtype=object)
    costs = np.full(rows, None, dtype=object)
    price = options.price_of(model)
    plan = plan_chat(
        frame, prompt, checked, model=model, system=system, extra_body=extra_body,
        positional=positional,
    )  # fmt: skip
    prompts, bodies, errs = plan.prompts, plan.bodies, plan.errors

    def place(response: Any, positions: list[int], sent: dict[str, Any]) -> int:
        try:
            value, info = _chat.parse_response(
                response, n=n, wants_json=wants_json, model_cls=model_cls, sent=sent
            )
        except (ValueError, KeyError, TypeError) as exc:
            for i in positions:
                errs[i] = str(exc)
            return len(positions)
        cost = usage_cost(price, response.get("usage")) if price is not None else None
        for i in positions:
            values[i] = value
            prompt_tokens[i] = info["prompt_tokens"]
            completion_tokens[i] = info["completion_tokens"]
            costs[i] = cost
        return 0

    cache = options.open_cache()
    cached_rows = 0
    try:
        if cache is not None:
            hits = cache.get_many(list(bodies))
            for key, response in hits.items():
                body, positions = bodies[key]
                try:
                    _chat.check_chat(body, response)
                except ValueError:  # cached before answers were checked: asked again
                    continue
                del bodies[key]
                place(response, positions, body)
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

        def find_request(key: str) -> Request | None:  # a batch's line, back on its rows
            found = bodies.get(key)
            if found is None:
                return None
            body, positions = found
            return Request(key, _chat.ENDPOINT, body, 0, meta=positions)

        def on_outcome(outcome: Outcome) -> tuple[int, int]:
            positions: list[int] = outcome.request.meta
            if outcome.error is not None:
                for i in positions:
                    errs[i] = str(outcome.error)
                return len(positions), len(positions)
            failed = place(outcome.response, positions, outcome.request.body)
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
            lines=KeyedLines(find_request, cache=cache, model=model),
            endpoint=_chat.ENDPOINT,
            model=model,
            cache=cache,
        )
        if options.backend == "batch":  # a row no batch spoke of is an error, not a blank
            for _, positions in bodies.values():
                for i in positions:
                    if values[i] is None and errs[i] is None:
                        errs[i] = str(NOT_ANSWERED)
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
        columns[f"{output}_cost_usd"] = pd.array(costs, dtype="Float64")
    return _finish(
        frame,
        columns,
        figures,
        output=output,
        errors=errors,
        progress=options.progress,
        not_sent=sum(p is None for p in prompts),
    )

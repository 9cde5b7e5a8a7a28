"""``dfbatch embed`` and ``dfbatch complete``: a table file in, a parquet file with answers out.

Each chunk of rows goes through ``frame.llm.aembed(...)`` / ``frame.llm.acomplete(...)`` with
the command's options, so the new columns are the ones the accessor gives (embeddings as
``list<float32>``; a JSON answer as its JSON text, or one typed column per schema property
with ``--expand``), and is appended to ``OUT.partial``, renamed to OUT once every chunk is in.

Resume: every answer goes to the response cache as it arrives, so rerunning a killed command
sends no request for a row answered before; the file is rebuilt from the cache. OUT records
which input and options made it: a rerun on a finished OUT says so and sends nothing; an OUT
made from another input or other options is refused unless --overwrite.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..engine.errors import ConfigurationError
from ..frames import accessor as _accessor  # noqa: F401  (registers df.llm, used on every chunk)
from ..jobs.chat import check_template
from .tables import Source, detect_format, text_lists, texts, typed, vectors, with_columns

log = logging.getLogger(__name__)

_META_KEY = b"dfbatch.job"


@dataclass(repr=False)
class FrameJob:
    """One ``embed`` or ``complete`` command (the key lives in ``run_options``, never shown)."""

    command: str  # "embed" or "complete"
    input: Path
    output: Path
    fmt: str | None
    chunk_rows: int
    overwrite: bool
    options: dict[str, Any]  # the accessor's own options (model, prompt, dimensions ...)
    run_options: dict[str, Any] = field(default_factory=dict)  # base_url, api_key, rpm ...
    cache: Any = True  # a path, True or False
    #: --expand: the schema's properties and their Arrow types (None: JSON text)
    expand_fields: dict[str, Any] | None = None

    @property
    def output_name(self) -> str:
        return "embedding" if self.command == "embed" else "completion"


@dataclass
class FrameResult:
    rows: int
    failed: int
    exit_status: int
    summary: str


def _fingerprint(job: FrameJob) -> str:
    st = job.input.stat()
    what = {
        "command": job.command,
        "input": str(job.input.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "options": job.options,
    }
    text = json.dumps(what, sort_keys=True, default=str)
    return json.dumps({"job": hashlib.sha256(text.encode()).hexdigest(), **what}, default=str)


def _finished(job: FrameJob, fingerprint: str) -> FrameResult | None:
    """The result of an earlier identical run, or None; refuses an OUT made otherwise."""
    if job.overwrite or not job.output.exists():
        return None
    try:
        meta = pq.read_schema(job.output).metadata or {}
    except (OSError, pa.ArrowException):
        meta = {}
    stored = meta.get(_META_KEY)
    if stored is None or json.loads(stored).get("job") != json.loads(fingerprint)["job"]:
        raise ConfigurationError(
            f"{job.output} exists and was not made from {job.input} with these options; "
            "pass --overwrite to replace it (answers received before come from the response "
            "cache), or choose another OUT"
        )
    error_column = f"{job.output_name}_error"
    table = pq.read_table(job.output, columns=[error_column])
    rows = table.num_rows
    failed = rows - table.column(0).null_count
    text = f"nothing to do: {job.output} already holds this job's {rows:,} rows"
    if failed:
        text += (
            f", {failed:,} of them failed (rerun with --overwrite to send those again; "
            "the others come from the response cache)"
        )
    return FrameResult(rows, failed, 1 if failed else 0, text)


def _check_writable(path: Path) -> None:
    try:
        with path.open("wb"):
            pass
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write {path}: {exc.strerror or exc}; check that the folder exists and "
            "is writable, or choose another OUT"
        ) from None


async def _answer(
    job: FrameJob, frame: pd.DataFrame, cache: Any, spent: float = 0.0, stopped: bool = False
) -> pd.DataFrame:
    options = dict(job.options)
    kwargs = {**job.run_options, "cache": cache}
    if kwargs.get("budget") is not None:
        # One budget for the whole file: each chunk may spend what the chunks before left,
        # and once the budget stopped a chunk, nothing more is sent.
        kwargs["budget"] = 0.0 if stopped else max(0.0, kwargs["budget"] - spent)
    if job.command == "embed":
        column = options.pop("column")
        return await frame.llm.aembed(column, **options, **kwargs)
    prompt = options.pop("prompt")
    return await frame.llm.acomplete(prompt, **options, **kwargs)


def _check_columns(job: FrameJob, frame: pd.DataFrame) -> None:
    columns = [str(c) for c in frame.columns]
    shown = ", ".join(repr(c) for c in columns[:20]) + (", ..." if len(columns) > 20 else "")
    if job.command == "embed":
        column = job.options["column"]
        if column not in frame.columns:
            raise ConfigurationError(
                f"{job.input} has no column {column!r} (its columns: {shown}); "
                "pass --column with one of them"
            )
    else:
        check_template(job.options["prompt"], list(frame.columns))


def _new_columns(job: FrameJob, out: pd.DataFrame) -> dict[str, pa.Array]:
    name = job.output_name
    errors = out[f"{name}_error"].to_numpy(dtype=object)
    if job.command == "embed":
        return {name: vectors(out[name].to_numpy(dtype=object)), f"{name}_error": texts(errors)}
    fields = job.expand_fields
    new: dict[str, pa.Array] = {}
    if fields is not None:
        errors = errors.copy()
        for field_name, kind in fields.items():
            present = field_name in out.columns
            values = out[field_name].to_numpy(dtype=object) if present else [None] * len(out)
            array, bad = typed(values, kind)
            for i in bad:
                errors[i] = errors[i] or f"field {field_name!r}: the answer's value is not {kind}"
            new[field_name] = array
    elif job.options.get("n", 1) > 1:
        new[name] = text_lists(out[name].to_numpy(dtype=object))
    else:
        new[name] = texts(out[name].to_numpy(dtype=object))
    new[f"{name}_error"] = texts(errors)
    return new


def _add(total: dict[str, Any], figures: dict[str, Any]) -> None:
    for key in (
        "requests",
        "retries",
        "rate_limited",
        "tokens_used",
        "elapsed_s",
        "rows_budget_reached",
    ):
        total[key] = total.get(key, 0) + (figures.get(key) or 0)
    if "cost_usd" in figures:
        known = total.get("cost_usd", 0.0) is not None and figures["cost_usd"] is not None
        total["cost_usd"] = total.get("cost_usd", 0.0) + figures["cost_usd"] if known else None
    if figures.get("budget_usd") is not None:
        total.setdefault("budget_usd", figures["budget_usd"])
    for cause, count in (figures.get("failures_by_cause") or {}).items():
        causes = total.setdefault("failures_by_cause", {})
        causes[cause] = causes.get(cause, 0) + count


async def run_frames(job: FrameJob) -> FrameResult:
    """Do the job, chunk by chunk; returns what the command line prints and exits with."""
    fmt = detect_format(job.input, job.fmt)
    source = Source(job.input, fmt, job.chunk_rows)
    fingerprint = _fingerprint(job)
    done = _finished(job, fingerprint)
    if done is not None:
        return done
    partial = job.output.with_name(job.output.name + ".partial")
    if partial.exists():
        log.info("resuming after an interrupted run: rows answered before come from the cache")
    writer: pq.ParquetWriter | None = None
    cache: Any = False
    rows = failed = cached = 0
    figures: dict[str, Any] = {}
    ok = False
    try:
        _check_writable(partial)
        cache = _open_cache(job.cache)
        chunks = (source.total + job.chunk_rows - 1) // job.chunk_rows if source.total else None
        if job.run_options.get("backend") == "batch" and job.run_options.get("budget") is None:
            await _submit_batches(job, source, cache)  # with --budget: chunk by chunk, in waves
        for number, chunk in enumerate(source.chunks(), 1):
            if number == 1:
                _check_columns(job, chunk.frame)
            if chunks is None or chunks > 1:
                of = f" of {chunks:,}" if chunks else ""
                log.info(
                    "chunk %d%s: rows %s to %s",
                    number,
                    of,
                    f"{chunk.start:,}",
                    f"{chunk.start + len(chunk.frame) - 1:,}",
                )
            out = await _answer(
                job,
                chunk.frame,
                cache,
                spent=figures.get("cost_usd") or 0.0,
                stopped=bool(figures.get("rows_budget_reached")),
            )
            table = with_columns(chunk.table, _new_columns(job, out))
            if writer is None:
                schema = table.schema.with_metadata(
                    {**(table.schema.metadata or {}), _META_KEY: fingerprint.encode()}
                )
                writer = pq.ParquetWriter(partial, schema)
            writer.write_table(table.replace_schema_metadata(writer.schema.metadata))
            stats = out.attrs.get("dfbatch", {})
            rows += len(out)
            failed += len(out) - table.column(f"{job.output_name}_error").null_count
            cached += stats.get("rows_from_cache", 0)
            _add(figures, stats)
        ok = True
    finally:
        if writer is not None:
            writer.close()
        if cache is not False:
            cache.close()
        if not ok:
            with contextlib.suppress(OSError):
                partial.unlink()
    os.replace(partial, job.output)
    from ..jobs.progress import format_summary

    summary = format_summary(figures, rows=rows, failed=failed, cached=cached)
    summary = summary.replace("dfbatch:", f"dfbatch {job.command}:", 1)
    summary = summary.replace(
        "rerun with a higher budget= to send only them",
        "rerun with --overwrite and a higher --budget to send only them",
    )
    return FrameResult(rows, failed, 1 if failed else 0, summary + f"\nwrote {job.output}")


async def _submit_batches(job: FrameJob, source: Source, cache: Any) -> None:
    """--batch: submit every chunk's batches first (``wait=False``), so that they run side by
    side. The pass that writes the output then waits for them: its first chunk picks up every
    open batch of the job, and the answers of later chunks land in the cache on the way."""
    submit = replace(job, run_options={**job.run_options, "wait": False})
    for number, chunk in enumerate(source.chunks(), 1):
        if number == 1:
            _check_columns(job, chunk.frame)
        await _answer(submit, chunk.frame, cache)


def _open_cache(cache: Any) -> Any:
    if cache is False:
        return False
    from ..cache.store import open_for_run

    return open_for_run(None if cache is True else cache)

"""``ddf.llm`` and ``dseries.llm``: a lazy frame whose partitions go through the pandas accessor.

Each partition is embedded or completed on its worker by ``DataFrame.llm`` (same options, same
columns, same cache), and the result keeps the partitions, divisions and index. ``meta`` is
what the pandas accessor gives for the empty frame (the same column rules), plus a pydantic
model's fields when ``expand=True``; other shapes take ``meta=`` from the caller.

``rpm``/``tpm`` are the account's limits for the whole job: unless ``limiter=`` says otherwise,
the partitions lease their capacity from one coordinator (the scheduler of the default
client's ``distributed`` cluster; else a lock shared by the threads of this process), so N
workers together stay under them. ``limiter=None`` makes each partition pace alone.
"""

from __future__ import annotations

from typing import Any

import dask.dataframe as dd
import pandas as pd
from dask.dataframe.extensions import register_dataframe_accessor, register_series_accessor

from ..coord.account import account_id
from ..engine.config import ApiConfig
from ..engine.errors import ConfigurationError
from ..frames.accessor import SERIES_COLUMN

#: ``limiter=`` left out: share within the job (the scheduler on a cluster, else a process lock).
AUTO = "auto"
_META_URL = "http://127.0.0.1:9/v1"  # the empty frame sends nothing: never contacted


def _job_limiter(options: dict[str, Any]) -> Any:
    """The coordinator the partitions of one job share."""
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):  # no cluster: the threaded (or sync) scheduler
        return "local"
    from ..coord.dask_scheduler import SchedulerCoordinator

    api = ApiConfig.resolve(
        base_url=options.get("base_url"),
        api_key=options.get("api_key"),
        api_version=options.get("api_version"),
    )
    workers = len(client.scheduler_info().get("workers", {})) or 1
    return SchedulerCoordinator(account_id(api), senders=workers)


def _meta(frame: pd.DataFrame, method: str, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
    empty = frame.iloc[:0]
    quiet = {
        **options,
        "cache": False,
        "progress": False,
        "limiter": None,
        "transport": None,
        "base_url": _META_URL,
        "api_key": "meta",
        "api_version": None,
    }
    out = getattr(empty.llm, method)(*args, **quiet)
    if method == "complete" and options.get("expand"):
        fields = getattr(options.get("response_format"), "model_fields", None)
        if not fields:
            raise ConfigurationError(
                "expand=True on a Dask frame needs a pydantic response_format (its fields are "
                "the columns), or meta= naming the columns"
            )
        error = f"{options.get('output', 'completion')}_error"
        at = list(out.columns).index(error)
        for offset, name in enumerate(fields):
            out.insert(at + offset, name, pd.Series([], dtype=object))
    out.attrs.clear()
    return out


def _run_partition(
    part: pd.DataFrame,
    method: str,
    args: tuple[Any, ...],
    options: dict[str, Any],
    meta: pd.DataFrame,
) -> pd.DataFrame:
    bind = getattr(options.get("limiter"), "bind", None)
    if bind is not None:
        bind()
    out = getattr(part.llm, method)(*args, **options)
    out = out[list(meta.columns)]
    changed = {c: t for c, t in meta.dtypes.items() if out[c].dtype != t}
    if changed:
        out = out.astype(changed)
    return out


def _map(
    ddf: dd.DataFrame, method: str, args: tuple[Any, ...], options: dict[str, Any]
) -> dd.DataFrame:
    meta = options.pop("meta", None)
    options.setdefault("progress", False)  # a bar per partition on every worker helps nobody
    if options.get("limiter", AUTO) == AUTO:
        paced = options.get("rpm") or options.get("tpm")
        options["limiter"] = _job_limiter(options) if paced else None
    if meta is None:
        meta = _meta(ddf._meta, method, args, options)
    return ddf.map_partitions(_run_partition, method, args, options, meta, meta=meta)


@register_dataframe_accessor("llm")
class DaskLlmFrameAccessor:
    """``ddf.llm.embed(column, ...)`` and ``ddf.llm.complete(prompt, ...)``: lazy, same options
    as ``DataFrame.llm``, plus ``meta=`` (for ``expand=True`` without a pydantic model)."""

    def __init__(self, dask_obj: dd.DataFrame) -> None:
        if not isinstance(dask_obj, dd.DataFrame):
            raise AttributeError("the .llm accessor works on a Dask DataFrame or Series")
        self._obj = dask_obj

    def embed(self, column: Any, **options: Any) -> dd.DataFrame:
        """A lazy copy of the frame with the ``output`` column of float32 vectors."""
        if column not in self._obj.columns:
            shown = ", ".join(repr(c) for c in list(self._obj.columns)[:20])
            raise ConfigurationError(f"no column {column!r} in the DataFrame (columns: {shown})")
        return _map(self._obj, "embed", (column,), options)

    def complete(self, prompt: Any, **options: Any) -> dd.DataFrame:
        """A lazy copy of the frame with the model's answer to ``prompt`` for each row."""
        return _map(self._obj, "complete", (prompt,), options)


@register_series_accessor("llm")
class DaskLlmSeriesAccessor:
    """``dseries.llm.embed()`` and ``dseries.llm.complete("... {} ...")``: Dask DataFrames with
    the Series as a column and the answers beside it, as ``Series.llm`` gives."""

    def __init__(self, dask_obj: dd.Series) -> None:
        if not isinstance(dask_obj, dd.Series):
            raise AttributeError("the .llm accessor works on a Dask DataFrame or Series")
        self._obj = dask_obj

    def _frame(self) -> tuple[dd.DataFrame, str]:
        name = self._obj.name if self._obj.name is not None else SERIES_COLUMN
        return self._obj.to_frame(name=name), name

    def embed(self, **options: Any) -> dd.DataFrame:
        frame, name = self._frame()
        return _map(frame, "embed", (name,), options)

    def complete(self, prompt: Any = "{}", **options: Any) -> dd.DataFrame:
        frame, name = self._frame()
        return _map(frame, "complete", (prompt,), {**options, "_positional": name})


__all__ = ["DaskLlmFrameAccessor", "DaskLlmSeriesAccessor"]

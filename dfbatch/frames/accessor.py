"""``df.llm`` and ``series.llm``: thin rooms over the engine.

Like pandas' own ``.str``: the accessor validates its object in ``__init__``, keeps no state
beyond it (pandas 3 builds a new accessor on every attribute access), never mutates the
caller's frame, and returns a new object with the caller's index.
"""

from __future__ import annotations

import inspect
from typing import Any, Unpack

import pandas as pd

from ..jobs.batch_job import submit_or_run
from ..jobs.chat import Prompt
from ..jobs.options import RunKwargs
from ..jobs.run import RunOptions, release_freed_memory
from ..jobs.sync import blocking_twin
from .columns import complete_frame, embed_values
from .estimate import FrameEstimator, SeriesEstimator

DEFAULT_EMBED_MODEL = "text-embedding-3-small"
DEFAULT_CHAT_MODEL = "gpt-4o-mini"
# The column name a Series' values take when it has none.
SERIES_COLUMN = "text"


@pd.api.extensions.register_dataframe_accessor("llm")
class LlmFrameAccessor:
    """Enrich a DataFrame through the OpenAI API (or a compatible server).

    >>> import dfbatch                                                   # doctest: +SKIP
    >>> out = df.llm.embed("text")                                       # doctest: +SKIP
    >>> out = df.llm.complete("Summarize: {text}", max_tokens=50)         # doctest: +SKIP
    """

    def __init__(self, pandas_obj: pd.DataFrame) -> None:
        if not isinstance(pandas_obj, pd.DataFrame):
            raise AttributeError("the .llm accessor works on a DataFrame or a Series")
        self._obj = pandas_obj

    def _column(self, column: Any) -> pd.Series:
        try:
            series = self._obj[column]
        except KeyError:
            raise _missing_column(column, self._obj.columns) from None
        if isinstance(series, pd.DataFrame):
            raise _bad_column(f"column label {column!r} is not unique in this DataFrame")
        return series

    async def aembed(
        self,
        column: Any,
        *,
        model: str = DEFAULT_EMBED_MODEL,
        output: str = "embedding",
        dimensions: int | None = None,
        batch_size: int | None = None,
        truncate: bool = False,
        usage: bool = False,
        errors: str = "coerce",
        **options: Unpack[RunKwargs],
    ) -> pd.DataFrame:
        """A copy of the frame with an ``output`` column of float32 vectors for ``column``.

        Rows are packed many to a request (at most 2,048 inputs and 300,000 tokens; set
        ``batch_size=1`` for one row a request). NA cells give NA without a request; empty or
        non-string cells, and texts over 8,191 tokens (unless ``truncate=True``), fail alone.
        Each failure's reason is in ``{output}_error``; ``errors="raise"`` raises after the run.
        ``embed`` runs from synchronous code (a script, a notebook cell); ``await aembed(...)``
        inside an event loop. ``backend="batch"`` goes through the Batch API (half the price,
        within 24 h, the same frame); with ``wait=False`` it returns a ``BatchJob`` handle.

        >>> df.llm.embed("text", dimensions=256).embedding.iloc[0].shape  # doctest: +SKIP
        (256,)
        """
        values = self._column(column).to_numpy(dtype=object)

        async def call(run_options: RunOptions) -> pd.DataFrame:
            return await embed_values(
                self._obj,
                values,
                model=model,
                output=output,
                dimensions=dimensions,
                batch_size=batch_size,
                truncate=truncate,
                usage=usage,
                errors=errors,
                options=run_options,
            )

        out = await submit_or_run(call, RunOptions.build(**options))
        release_freed_memory()
        return out

    embed = blocking_twin(aembed)

    async def acomplete(
        self,
        prompt: Prompt,
        *,
        model: str = DEFAULT_CHAT_MODEL,
        system: str | None = None,
        output: str = "completion",
        max_tokens: int | None = None,
        temperature: float | None = None,
        response_format: Any = None,
        n: int = 1,
        expand: bool = False,
        usage: bool = False,
        errors: str = "coerce",
        extra_body: dict[str, Any] | None = None,
        _positional: Any = None,
        **options: Unpack[RunKwargs],
    ) -> pd.DataFrame:
        """A copy of the frame with the model's answer to ``prompt`` for each row.

        ``prompt`` is a template whose fields are column names, each with an optional format
        spec (``"Summarize: {text}"``, ``"{price:.2f}"``; a field that is not exactly a
        column's name fails before any request, a value its spec refuses fails its row) or
        a function of the row returning a string or a messages list. ``response_format``
        (``"json_object"``, a JSON schema, or a pydantic model class) gives parsed values,
        and ``expand=True`` a column per field. ``n > 1`` gives lists. Rows with an NA field
        are not sent. ``complete`` runs from synchronous code; ``await acomplete(...)``
        inside an event loop. ``backend="batch"`` goes through the Batch API (half the price,
        within 24 h, the same frame); with ``wait=False`` it returns a ``BatchJob`` handle.

        >>> df.llm.complete("Translate to French: {text}", max_tokens=60)  # doctest: +SKIP
        """

        async def call(run_options: RunOptions) -> pd.DataFrame:
            return await complete_frame(
                self._obj,
                prompt,
                model=model,
                system=system,
                output=output,
                max_tokens=max_tokens,
                temperature=temperature,
                response_format=response_format,
                n=n,
                expand=expand,
                usage=usage,
                errors=errors,
                extra_body=extra_body,
                options=run_options,
                positional=_positional,
            )

        out = await submit_or_run(call, RunOptions.build(**options))
        release_freed_memory()
        return out

    complete = blocking_twin(acomplete)

    @property
    def estimate(self) -> FrameEstimator:
        """What a call would send and cost, with nothing sent: ``df.llm.estimate.embed(...)``
        and ``df.llm.estimate.complete(...)`` take exactly the arguments of ``embed`` and
        ``complete`` and return an ``Estimate`` (rows, cached rows, requests, tokens, cost low
        and high, the shortest time the limits allow)."""
        return FrameEstimator(self)


def _signature_without(method: Any, drop: str, **defaults: Any) -> inspect.Signature:
    sig = inspect.signature(method)
    params = [
        p.replace(default=defaults[p.name]) if p.name in defaults else p
        for p in sig.parameters.values()
        if p.name != drop
    ]
    return sig.replace(parameters=params)


@pd.api.extensions.register_series_accessor("llm")
class LlmSeriesAccessor:
    """``series.llm.embed()`` and ``series.llm.complete("... {} ...")``.

    Both return a DataFrame: the Series as a column (named after it, or ``"text"``), then the
    answers and their ``_error`` column, exactly as ``df.llm`` would give.
    """

    def __init__(self, pandas_obj: pd.Series) -> None:
        if not isinstance(pandas_obj, pd.Series):
            raise AttributeError("the .llm accessor works on a DataFrame or a Series")
        self._obj = pandas_obj

    def _frame(self) -> tuple[pd.DataFrame, str]:
        name = self._obj.name if self._obj.name is not None else SERIES_COLUMN
        return self._obj.to_frame(name=name), name

    async def aembed(self, **kwargs: Any) -> pd.DataFrame:
        """Embed the Series' texts; options as for ``DataFrame.llm.embed``."""
        frame, name = self._frame()
        return await frame.llm.aembed(name, **kwargs)

    async def acomplete(self, prompt: Prompt = "{}", **kwargs: Any) -> pd.DataFrame:
        """Complete each value; ``{}`` in the template stands for the value."""
        frame, name = self._frame()
        return await frame.llm.acomplete(prompt, _positional=name, **kwargs)

    # help() and inspect show the DataFrame method's options, less the column.
    aembed.__signature__ = _signature_without(LlmFrameAccessor.aembed, "column")  # type: ignore[attr-defined]
    acomplete.__signature__ = _signature_without(  # type: ignore[attr-defined]
        LlmFrameAccessor.acomplete, "_positional", prompt="{}"
    )
    embed = blocking_twin(aembed)
    complete = blocking_twin(acomplete)

    @property
    def estimate(self) -> SeriesEstimator:
        """``series.llm.estimate.embed(...)`` / ``.complete(...)``: as ``df.llm.estimate``."""
        return SeriesEstimator(self)


# help() and inspect show the options of the call an estimate describes.
FrameEstimator.embed.__signature__ = inspect.signature(LlmFrameAccessor.aembed)  # type: ignore[attr-defined]
FrameEstimator.complete.__signature__ = _signature_without(  # type: ignore[attr-defined]
    LlmFrameAccessor.acomplete, "_positional"
)


def _missing_column(column: Any, columns: pd.Index) -> Exception:
    from ..engine.errors import ConfigurationError

    shown = ", ".join(repr(c) for c in list(columns)[:20])
    return ConfigurationError(f"no column {column!r} in the DataFrame (columns: {shown})")


def _bad_column(message: str) -> Exception:
    from ..engine.errors import ConfigurationError

    return ConfigurationError(message)


__all__ = ["LlmFrameAccessor", "LlmSeriesAccessor"]

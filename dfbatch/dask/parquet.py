"""Typing the columns ``ddf.llm`` adds, so that ``to_parquet`` can write them.

A Dask frame's object columns carry no type dask can write (dask infers a parquet schema from
stand-in rows, and an object column's stand-in is a bare ``object()``), so the vector and error
columns are made Arrow-typed first, partition by partition:

    >>> arrow_typed(out, embedding="embedding").to_parquet("out/")        # doctest: +SKIP

``read_parquet`` gives the vectors back as float32 arrays.
"""

from __future__ import annotations

from typing import Any


def arrow_typed(ddf: Any, *, embedding: str | None = None, completion: str | None = None) -> Any:
    """``ddf`` with an ``embed`` output as ``list<float32>`` and a text ``complete`` output as
    ``string`` (their ``_error`` columns as ``string``), lazily."""
    import pandas as pd
    import pyarrow as pa

    types: dict[str, Any] = {}
    if embedding:
        types[embedding] = pd.ArrowDtype(pa.list_(pa.float32()))
        types[f"{embedding}_error"] = pd.ArrowDtype(pa.string())
    if completion:
        types[completion] = pd.ArrowDtype(pa.string())
        types[f"{completion}_error"] = pd.ArrowDtype(pa.string())
    return ddf.astype(types)

"""Tables in chunks for ``dfbatch embed`` / ``complete``: parquet, CSV or JSONL in, parquet out.

A file larger than memory is read ``chunk_rows`` rows at a time (parquet record batches,
``pandas.read_csv(chunksize=...)``, ``pandas.read_json(lines=True, chunksize=...)``) and each
chunk is written as soon as it is done. Parquet input keeps its columns' exact Arrow types;
CSV and JSONL columns take the types pandas infers from the first chunk (a later chunk whose
values do not fit them is a clear error: raise --chunk-size, or convert the file to parquet).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..engine.errors import ConfigurationError
from .resume import count_lines

FORMATS = ("parquet", "csv", "jsonl")
_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".zip")


def detect_format(path: Path, forced: str | None) -> str:
    """The input's format: ``forced``, else from its extension (compression suffix ignored).

    >>> detect_format(Path("rows.csv.gz"), None)
    'csv'
    """
    if forced:
        return forced
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in _COMPRESSION:
        suffixes.pop()
    fmt = _EXTENSIONS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise ConfigurationError(
            f"cannot tell the format of {path} from its name; pass --format parquet, csv or jsonl"
        )
    return fmt


@dataclass
class Chunk:
    frame: pd.DataFrame  # what the accessor sees
    table: pa.Table  # the same rows as Arrow, written back unchanged
    start: int  # position of its first row in the file


class Source:
    """The input file, read a chunk at a time."""

    def __init__(self, path: Path, fmt: str, chunk_rows: int) -> None:
        self.path, self.fmt, self.chunk_rows = path, fmt, chunk_rows
        if not path.exists():
            raise ConfigurationError(f"no such input file: {path}")
        if path.is_dir():
            raise ConfigurationError(f"{path} is a folder; pass a parquet, CSV or JSONL file")
        if path.stat().st_size == 0:
            raise ConfigurationError(f"the input file {path} is empty: there are no rows")
        self.total: int | None = None
        self._schema: pa.Schema | None = None
        try:
            if fmt == "parquet":
                self._parquet = pq.ParquetFile(path)
                self.total = self._parquet.metadata.num_rows
            else:
                lines = count_lines(path) if path.suffix.lower() not in _COMPRESSION else None
                self.total = None if lines is None else lines - (fmt == "csv")
        except (OSError, pa.ArrowException) as exc:
            raise ConfigurationError(f"cannot read {path} as {fmt}: {exc}") from None

    def chunks(self) -> Iterator[Chunk]:
        start = 0
        for frame, table in self._frames():
            if self._schema is None:
                self._schema = table.schema
            elif table.schema != self._schema:
                table = self._conform(table, start)
            yield Chunk(frame, table, start)
            start += len(frame)
        if start == 0:
            raise ConfigurationError(f"the input file {self.path} has no rows")

    def _frames(self) -> Iterator[tuple[pd.DataFrame, pa.Table]]:
        try:
            if self.fmt == "parquet":
                for batch in self._parquet.iter_batches(batch_size=self.chunk_rows):
                    table = pa.Table.from_batches([batch])
                    yield table.to_pandas(), table
                return
            if self.fmt == "csv":
                reader = pd.read_csv(self.path, chunksize=self.chunk_rows)
            else:
                reader = pd.read_json(self.path, lines=True, chunksize=self.chunk_rows)
            with reader:
                for frame in reader:
                    frame = frame.reset_index(drop=True)
                    yield frame, pa.Table.from_pandas(frame, preserve_index=False)
        except pd.errors.EmptyDataError:
            raise ConfigurationError(
                f"the input file {self.path} is empty: there are no rows"
            ) from None
        except (ValueError, OSError, pa.ArrowException, pd.errors.ParserError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigurationError(f"cannot read {self.path} as {self.fmt}: {text}") from None

    def _conform(self, table: pa.Table, start: int) -> pa.Table:
        schema = self._schema
        assert schema is not None
        columns = []
        for field in schema:
            column = table.column(field.name) if field.name in table.column_names else None
            if column is None:
                column = pa.nulls(len(table), field.type)
            elif column.type != field.type:
                try:
                    column = column.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise ConfigurationError(
                        f"column {field.name!r} holds {column.type} values from row {start:,} "
                        f"but {field.type} before; pass a larger --chunk-size, or convert "
                        f"{self.path.name} to parquet"
                    ) from None
            columns.append(column)
        return pa.Table.from_arrays(columns, schema=schema)


# -- answers to Arrow ------------------------------------------------------------------------


def vectors(values: np.ndarray) -> pa.Array:
    """Float32 vectors (or None) as ``list<float32>``, without a Python float per value."""
    present = [v for v in values if v is not None]
    lengths = np.fromiter((0 if v is None else len(v) for v in values), np.int64, len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(present).astype(np.float32, copy=False) if present else np.empty(0)
    mask = pa.array(np.fromiter((v is None for v in values), bool, len(values)))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.float32()), mask=mask)


def texts(values: Any) -> pa.Array:
    """Strings; anything else (a parsed JSON answer) as its JSON text."""
    return pa.array(
        [
            v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            for v in values
        ],
        type=pa.string(),
    )


def text_lists(values: Any) -> pa.Array:
    """``n > 1`` answers: a list of strings per row."""
    return pa.array(
        [
            None if v is None else [x if isinstance(x, str) else json.dumps(x) for x in v]
            for v in values
        ],
        type=pa.list_(pa.string()),
    )


_JSON_TYPES = {
    "string": pa.string(),
    "integer": pa.int64(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
}


def field_types(schema: dict[str, Any]) -> dict[str, pa.DataType | None]:
    """--expand columns from a JSON schema's properties: Arrow scalars, or None for JSON text."""
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        raise ConfigurationError(
            '--expand needs a JSON schema of an object with "properties": one column each'
        )
    out: dict[str, pa.DataType | None] = {}
    for name, spec in props.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            kind = kinds[0] if len(kinds) == 1 else None
        out[str(name)] = _JSON_TYPES.get(kind) if isinstance(kind, str) else None
    return out


def typed(values: Any, kind: pa.DataType | None) -> tuple[pa.Array, list[int]]:
    """One --expand column, and the rows whose value did not fit ``kind`` (set to null)."""
    if kind is None:
        return texts(values), []
    items = [None if _na(v) else v for v in values]
    try:
        return pa.array(items, type=kind), []
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    bad: list[int] = []
    for i, v in enumerate(items):
        try:
            pa.array([v], type=kind)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            bad.append(i)
            items[i] = None
    return pa.array(items, type=kind), bad


def _na(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def with_columns(table: pa.Table, new: dict[str, pa.Array]) -> pa.Table:
    """``table`` with ``new`` appended (an input column of the same name is replaced)."""
    keep = [name for name in table.column_names if name not in new]
    out = table.select(keep)
    for name, array in new.items():
        out = out.append_column(name, array)
    return out

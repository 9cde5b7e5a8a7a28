"""Where a ``dfbatch run`` starts: afresh, or after the results an earlier run saved.

In input order (the default) the results file is always a prefix of the final result: line
``i`` of the output answers line ``i`` of the input. So resuming is: cut a partial last line
(a kill in the middle of a write), count the ``k`` complete lines, check that they answer the
input's first ``k`` lines (the first three and the k-th are compared), and append from input
line ``k + 1``. Answers that had arrived but were not written yet (held back by an earlier
line) are in the response cache, so they are not sent again.

With ``--unordered`` the output is in completion order: every complete output line is matched
to an input line by a hash of its request and metadata, counting repeats (two identical input
lines need two results), and only the unmatched input lines are sent.

An output that does not fit the input (other requests, more lines) is refused, never mixed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from ..engine.errors import ConfigurationError
from .job import RunJob
from .lines import Line, line_identity, parse_line, read_head, result_identity

log = logging.getLogger("dfbatch.cli.run")

_BLOCK = 1 << 20
#: Output lines compared with the input on an ordered resume, besides the last one.
_CHECKED_HEAD = 3


@dataclass(slots=True)
class Plan:
    """What is already done: the input lines to skip and what the results say of them."""

    done: int = 0  # input lines that already have a result
    failed: int = 0  # ... of which failed
    start_index: int = 0  # ordered: the first input line to read
    start_offset: int = 0  # ... and its byte offset
    mask: np.ndarray | None = None  # unordered: True for each input line already done


def count_lines(path: Path) -> int:
    """Lines in a file, a last line without newline included (a binary scan, ~1 GB/s)."""
    n = 0
    last = b"\n"
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def _complete_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number from 0, bytes) of each complete line; truncates a partial last line."""
    end = 0
    with path.open("rb") as fh:
        for i, raw in enumerate(fh):
            if not raw.endswith(b"\n"):
                break
            end += len(raw)
            yield i, raw
    if path.stat().st_size > end:
        with path.open("r+b") as fh:
            fh.truncate(end)


def _refuse(out: Path, why: str, hint: str) -> ConfigurationError:
    return ConfigurationError(
        f"{out} already holds results that do not fit this requests file ({why}); {hint}"
    )


_HINT = (
    "pass --overwrite to start over (answers already received come from the response "
    "cache), or -o another path"
)


def _text(raw: bytes, out: Path, i: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(out, f"its line {i + 1} is not UTF-8 text", _HINT) from None


def plan_ordered(inp: Path, out: Path, url: str, n_lines: int) -> Plan:
    """Resume in input order from the complete lines already in ``out``."""
    plan = Plan()
    checks: dict[int, object] = {}
    last_text = ""
    for i, raw in _complete_lines(out):
        text = _text(raw, out, i)
        try:
            head = read_head(text)
        except ValueError:
            raise _refuse(
                out, f"its line {i + 1} is not a [request, response] array", _HINT
            ) from None
        plan.done += 1
        plan.failed += head.failed
        if i < _CHECKED_HEAD:
            checks[i] = text
        last_text = text
    if plan.done == 0:
        return plan
    if plan.done > n_lines:
        raise _refuse(out, f"{plan.done:,} results for {n_lines:,} lines", _HINT)
    checks[plan.done - 1] = last_text
    with inp.open("rb") as fh:
        offset = 0
        for i in range(plan.done):
            raw = fh.readline()
            offset += len(raw)
            if i in checks:
                _check_same(parse_line(raw, i, url), str(checks[i]), out, i)
    plan.start_index, plan.start_offset = plan.done, offset
    return plan


def _check_same(line: Line, text: str, out: Path, i: int) -> None:
    import json

    parts = json.loads(text)
    meta = parts[2] if len(parts) == 3 else None
    if parts[0] != line.request or (len(parts) == 3) != line.has_meta or meta != line.meta:
        hint = (
            "if it was written with --unordered, rerun with --unordered; if the requests "
            "changed, " + _HINT
        )
        raise _refuse(out, f"its line {i + 1} answers another request than line {i + 1}", hint)


def plan_unordered(inp: Path, out: Path, url: str, n_lines: int) -> Plan:
    """Resume in completion order: match the results to input lines by request hash."""
    plan = Plan()
    seen: list[int] = []
    for i, raw in _complete_lines(out):
        try:
            ident, failed = result_identity(_text(raw, out, i))
        except ValueError:
            raise _refuse(
                out, f"its line {i + 1} is not a [request, response] array", _HINT
            ) from None
        seen.append(ident)
        plan.failed += failed
    if not seen:
        return plan
    done_hashes = np.asarray(seen, dtype=np.int64)
    del seen
    hashes = np.empty(n_lines, dtype=np.int64)
    with inp.open("rb") as fh:
        for i, raw in enumerate(fh):
            if i >= n_lines:
                break
            hashes[i] = line_identity(parse_line(raw, i, url))
    values, wanted = np.unique(done_hashes, return_counts=True)
    order = np.argsort(hashes, kind="stable")  # equal lines keep their file order
    ranked = hashes[order]
    first = np.searchsorted(ranked, ranked, side="left")
    rank = np.arange(n_lines) - first  # 0 for an input line's first occurrence, 1 next ...
    pos = np.searchsorted(values, ranked)
    pos_ok = np.minimum(pos, len(values) - 1)
    present = values[pos_ok] == ranked
    done_sorted = present & (rank < wanted[pos_ok])
    mask = np.zeros(n_lines, dtype=bool)
    mask[order] = done_sorted
    available = np.unique(hashes, return_counts=True)
    have = dict(zip(available[0].tolist(), available[1].tolist(), strict=True))
    extra = sum(
        max(0, c - have.get(v, 0)) for v, c in zip(values.tolist(), wanted.tolist(), strict=True)
    )
    if extra:
        raise _refuse(out, f"{extra:,} of its results answer requests that are not in it", _HINT)
    plan.mask = mask
    plan.done = int(mask.sum())
    return plan


def output_is_input(inp: Path, out: Path) -> bool:
    """Whether the two paths name the same file (the output would overwrite the input)."""
    try:
        return os.path.samefile(inp, out)
    except OSError:
        return inp.resolve() == out.resolve()


def open_output(job: RunJob) -> IO[bytes]:
    where = job.output
    try:
        return where.open("wb" if job.overwrite or not where.exists() else "ab")
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write results to {where}: {exc.strerror or exc}; check that the folder "
            "exists and is writable, or pass -o another path"
        ) from None


def plan_resume(job: RunJob, n_lines: int) -> Plan:
    if job.overwrite or not job.output.exists() or job.output.stat().st_size == 0:
        return Plan()
    make = plan_ordered if job.ordered else plan_unordered
    plan = make(job.requests, job.output, job.url, n_lines)
    if 0 < plan.done < n_lines:
        log.info(
            "resuming: %s already has results for %s of %s lines; sending the rest",
            job.output,
            f"{plan.done:,}",
            f"{n_lines:,}",
        )
    return plan


def count_requests(path: Path) -> int:
    """Lines in the requests file; a clear message when it cannot be read or is empty."""
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "is a folder, not a file")
        n = count_lines(path)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the requests file {path}: {exc.strerror or exc}"
        ) from None
    if n == 0:
        raise ConfigurationError(
            f"the requests file {path} is empty: write one JSON request per line"
        )
    return n

"""Embeddings: rows -> packed requests -> float32 vectors back on their rows.

Many rows share one request (at most ``EMBED_MAX_INPUTS`` inputs and
``EMBED_MAX_REQUEST_TOKENS`` tokens), identical texts are sent once, and answers are joined
back by the response's ``index``, never by position. Vectors are asked for as base64 and decoded
straight into one contiguous float32 block; each row's value is a view of its line of that
block, so 100,000 x 1,536 vectors cost their raw size and nothing per float.
"""

from __future__ import annotations

import mmap
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..cache.store import embedding_digests
from ..engine import constants as C
from ..engine.answers import check_embeddings
from ..engine.tokens import count_texts, encoding_name_for_model, load_encoding
from ..engine.types import ErrorInfo, Outcome, Request

ENDPOINT = "/embeddings"


def skip_reason(value: Any) -> str | None:
    """Why a cell is not sent: ``""`` for NA (an NA answer, no error), a message for bad input."""
    if value is None or (not isinstance(value, str) and _is_na(value)):
        return ""
    if not isinstance(value, str):
        return f"invalid input: not a string ({type(value).__name__})"
    if not value:
        return "invalid input: empty text"
    problem = unicode_problem(value)
    return None if problem is None else f"invalid input: {problem}"


def unicode_problem(text: str) -> str | None:
    """Why ``text`` cannot be sent (it is not valid Unicode: a lone surrogate), or None.

    A request body is UTF-8: one such text would fail every input packed with it.

    >>> print(unicode_problem("abc"), unicode_problem("abc\\ud800"), sep="; ")
    None; the text is not valid Unicode (lone surrogate \\ud800 at character 3)
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.start + 1].encode("unicode_escape").decode("ascii")
        return f"the text is not valid Unicode (lone surrogate {bad} at character {exc.start})"
    return None


def _is_na(value: Any) -> bool:
    # pandas' NA kinds can only exist once pandas is loaded; this room never loads it.
    pd = sys.modules.get("pandas")
    try:
        return bool(pd.isna(value)) if pd is not None else value != value
    except (TypeError, ValueError):
        return False


def truncate_text(text: str, encoding_name: str, limit: int) -> str:
    """The first ``limit`` tokens of ``text`` (by characters when no encoding can be loaded)."""
    encoding = load_encoding(encoding_name)
    if encoding is None:
        return text[: limit * C.CHARS_PER_TOKEN_FALLBACK // 2]
    return encoding.decode(encoding.encode_ordinary(text)[:limit])


@dataclass
class EmbedJob:
    """The state of one ``embed`` call: unique texts, their rows, and the vectors so far."""

    model: str
    dimensions: int | None
    n_rows: int
    texts: list[str] = field(default_factory=list)  # unique texts to embed
    rows_of: list[list[int]] = field(default_factory=list)  # positions per unique text
    tokens: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)  # position -> message
    block: np.ndarray | None = None  # unique text -> vector, float32
    have: np.ndarray | None = None  # unique text -> answered?
    cached: int = 0  # rows answered from the cache
    not_sent: int = 0  # NA cells: an NA answer, no request, no error
    truncate: bool = False  # cut texts over the token limit instead of failing them
    truncated: set[int] = field(default_factory=set)  # texts that were cut: never cached

    @classmethod
    def plan(
        cls,
        values: Sequence[Any],
        *,
        model: str,
        dimensions: int | None,
        truncate: bool,
    ) -> EmbedJob:
        job = cls(model=model, dimensions=dimensions, n_rows=len(values))
        index_of: dict[str, int] = {}
        for pos, value in enumerate(values):
            reason = skip_reason(value)
            if reason is not None:
                if reason:
                    job.errors[pos] = reason
                else:
                    job.not_sent += 1
                continue
            u = index_of.get(value)
            if u is None:
                u = index_of[value] = len(job.texts)
                job.texts.append(value)
                job.rows_of.append([])
            job.rows_of[u].append(pos)
        job.tokens = [0] * len(job.texts)
        job.truncate = truncate
        job.have = np.zeros(len(job.texts), dtype=bool)
        return job

    def count_tokens(self, *, everything: bool = False) -> None:
        """Count the tokens of the texts still to send (all texts with ``everything``): only
        those need packing, pacing and the 8,191-token check, and counting is most of the CPU
        of a rerun served from the cache. Too-long texts fail, or are cut with ``truncate``."""
        todo = [
            u
            for u in range(len(self.texts))
            if self.rows_of[u] and (everything or not self.have[u])  # type: ignore[index]
        ]
        encoding = encoding_name_for_model(self.model)
        counts = count_texts([self.texts[u] for u in todo], encoding)
        limit = C.EMBED_MAX_INPUT_TOKENS
        for u, n in zip(todo, counts, strict=True):
            self.tokens[u] = n
            if n <= limit or self.have[u]:  # type: ignore[index]
                continue
            if self.truncate:
                self.texts[u] = truncate_text(self.texts[u], encoding, limit)
                self.tokens[u] = limit
                self.truncated.add(u)
            else:
                message = (
                    f"input too long: {n:,} tokens, over the model's {limit:,}-token limit "
                    "(shorten the text or pass truncate=True)"
                )
                for pos in self.rows_of[u]:
                    self.errors[pos] = message
                self.rows_of[u] = []

    def keys(self) -> list[bytes]:
        """The cache key of each unique text, as the raw digest of its ``embedding_key``."""
        return embedding_digests(self.model, self.dimensions, self.texts)

    def store(self, us: list[int], matrix: np.ndarray) -> str | None:
        """Put ``matrix[i]`` on text ``us[i]``, one copy for the lot; or say why it cannot."""
        if self.block is None:
            self.block = _new_block(len(self.texts), matrix.shape[1])
        block = self.block
        if matrix.shape[1] != block.shape[1]:
            return f"vectors of {matrix.shape[1]} dimensions where others had {block.shape[1]}"
        block[_lines(us)] = matrix
        self.have[us] = True  # type: ignore[index]
        return None

    def use_cached(self, cache: Any, keys: Sequence[Any]) -> int:
        """Fill answers found in the cache; returns the rows they cover. The cache copies its
        hits straight into one matrix, which becomes the block (one copy per vector)."""
        found, matrix = cache.get_vector_rows(keys, allocate=_new_block)
        if matrix is None:
            return 0
        sizes = np.fromiter(map(len, self.rows_of), np.int64, len(self.rows_of))
        found &= sizes > 0  # texts with no row left (too long) stay unanswered
        if self.block is None:
            self.block = matrix
        else:
            self.block[found] = matrix[found]
        self.have |= found  # type: ignore[operator]
        rows = int(sizes[found].sum())
        self.cached += rows
        return rows

    def requests(
        self,
        *,
        batch_size: int | None,
        encoding_format: str | None,
        max_tokens: float | None = None,
    ) -> Iterator[Request]:
        """Pack the texts still missing into requests, by count and by tokens: at most
        EMBED_MAX_REQUEST_TOKENS, and ``max_tokens`` when given (what the server takes at once:
        ``EMBED_PACK_WINDOW_SHARE`` of one second's share of its TPM)."""
        size = min(batch_size or C.EMBED_MAX_INPUTS, C.EMBED_MAX_INPUTS)
        limit: float = C.EMBED_MAX_REQUEST_TOKENS
        if max_tokens is not None:
            limit = min(limit, max_tokens)
        batch: list[int] = []
        tokens = 0
        rid = 0
        for u in range(len(self.texts)):
            if self.have[u] or not self.rows_of[u]:  # type: ignore[index]
                continue
            n = self.tokens[u]
            if batch and (len(batch) >= size or tokens + n > limit):
                yield self._request(rid, batch, tokens, encoding_format)
                rid += 1
                batch, tokens = [], 0
            batch.append(u)
            tokens += n
        if batch:
            yield self._request(rid, batch, tokens, encoding_format)

    def split(self, request: Request, max_tokens: float | None) -> list[Request] | None:
        """``request``'s inputs as smaller requests, in order: each of at most ``max_tokens``
        (or halves, when None or when that would not cut it); None for a single input. The
        engine calls it for a pack the server cannot take at once."""
        batch: list[int] = request.meta
        if len(batch) < 2:
            return None
        groups: list[list[int]] = []
        if max_tokens is not None:
            tokens = 0.0
            for u in batch:
                n = self.tokens[u]
                if not groups or tokens + n > max_tokens:
                    groups.append([])
                    tokens = 0.0
                groups[-1].append(u)
                tokens += n
        if len(groups) < 2:
            half = len(batch) // 2
            groups = [batch[:half], batch[half:]]
        fmt = request.body.get("encoding_format")
        return [
            self._request((request.id, i), g, sum(self.tokens[u] for u in g), fmt)
            for i, g in enumerate(groups)
        ]

    def _request(
        self, rid: Any, batch: list[int], tokens: int, encoding_format: str | None
    ) -> Request:
        body: dict[str, Any] = {"model": self.model, "input": [self.texts[u] for u in batch]}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        if encoding_format:
            body["encoding_format"] = encoding_format
        return Request(rid, ENDPOINT, body, tokens, meta=batch)

    def receive(self, outcome: Outcome, cache: Any, keys: Sequence[Any]) -> tuple[int, int]:
        """Put one request's vectors on their rows; returns (rows finished, rows failed)."""
        batch: list[int] = outcome.request.meta
        rows = sum(len(self.rows_of[u]) for u in batch)
        if outcome.error is not None:
            self._fail(batch, str(outcome.error))
            return rows, rows
        try:  # the engine checked the answer (outcome.value); an outcome made elsewhere is
            # checked here, so nothing unchecked is placed or cached
            positions, matrix = (
                outcome.value
                if outcome.value is not None
                else check_embeddings(outcome.request.body, outcome.response)
            )
        except ValueError as exc:
            self._fail(batch, f"invalid response: {exc}")
            return rows, rows
        failed = 0
        if len(positions) < len(batch):
            answered = set(positions)
            missing = [u for i, u in enumerate(batch) if i not in answered]
            self._fail(missing, "invalid response: no embedding for this input")
            failed += sum(len(self.rows_of[u]) for u in missing)
        if not positions:
            return rows, failed
        us = [batch[i] for i in positions]
        problem = self.store(us, matrix)
        if problem is not None:
            self._fail(us, f"invalid response: {problem}")
            return rows, rows
        # A cut text's vector is not its full text's answer: it is never cached.
        good = [u for u in us if u not in self.truncated] if self.truncated else us
        if cache is not None and good:
            # One block per response, as it came: one row in the cache, not one per vector.
            cache.put_vectors([keys[u] for u in good], self._rows(good), model=self.model)
        return rows, failed

    def _rows(self, us: list[int]) -> np.ndarray:
        """The block's lines ``us``: a view when they are consecutive (a response to a fresh
        run), else a copy. Those lines are never written again, so the cache may keep it."""
        block = self.block
        assert block is not None
        return block[_lines(us)]

    def _fail(self, batch: list[int], message: str) -> None:
        for u in batch:
            for pos in self.rows_of[u]:
                self.errors[pos] = message

    def fail_unanswered(self, message: str) -> int:
        """``message`` as the error of every row with neither a vector nor an error (a row
        whose batch ended without a word for it); how many rows that was."""
        n = 0
        for u, rows in enumerate(self.rows_of):
            if rows and not self.have[u]:  # type: ignore[index]
                for pos in rows:
                    if pos not in self.errors:
                        self.errors[pos] = message
                        n += 1
        return n

    def column(self) -> np.ndarray:
        """One object per row: a float32 vector (a view of the block) or None."""
        out = np.full(self.n_rows, None, dtype=object)
        if self.block is None:
            return out
        block = self.block
        have = self.have
        for u, rows in enumerate(self.rows_of):
            if have[u]:  # type: ignore[index]
                for pos in rows:
                    if pos not in self.errors:
                        out[pos] = block[u]
        return out

    def error_column(self) -> np.ndarray:
        out = np.full(self.n_rows, None, dtype=object)
        for pos, message in self.errors.items():
            out[pos] = message
        return out

    def row_tokens(self) -> np.ndarray:
        """Estimated input tokens per row (what the row cost), for ``usage=True``."""
        out = np.zeros(self.n_rows, dtype=np.int64)
        for u, rows in enumerate(self.rows_of):
            for pos in rows:
                out[pos] = self.tokens[u]
        return out


def _lines(us: list[int]) -> slice | list[int]:
    """How to index the block's lines ``us``: a slice when they are consecutive (a fresh run,
    responses in order: one plain copy, or a view), else the list itself."""
    first = us[0]
    if us == list(range(first, first + len(us))):
        return slice(first, first + len(us))
    return us


def _new_block(rows: int, dims: int) -> np.ndarray:
    """A zeroed float32 matrix. On Linux its pages are mapped up front (MAP_POPULATE): one
    kernel call instead of a page fault per 4 KB, which costs seconds on a 600 MB block."""
    size = rows * dims * 4
    flags = getattr(mmap, "MAP_POPULATE", 0)
    if size >= 1 << 24 and flags and hasattr(mmap, "MAP_ANONYMOUS"):
        buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flags)
        return np.frombuffer(buffer, dtype=np.float32).reshape(rows, dims)
    return np.zeros((rows, dims), dtype=np.float32)


def failed_on_format(outcome: Outcome) -> bool:
    """A server that rejects ``encoding_format="base64"``: retry those inputs as floats."""
    error: ErrorInfo | None = outcome.error
    return (
        error is not None
        and error.status in (400, 422)
        and ("encoding_format" in error.message or "base64" in error.message)
    )

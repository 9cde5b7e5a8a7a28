"""One line of a requests file in, one line of results out (``dfbatch run``).

    parse_line(raw, number, url)  -> Line      json.loads, never eval; unusable lines carry
                                               their error and are never sent
    result_line(line, text)       -> bytes     [request, response] (+ metadata)
    error_line(line, error)       -> bytes     [request, [error]] (+ metadata)
    read_head(text)               -> Head      a result line's request and whether it failed,
                                               without parsing its (large) response
    identity(request, has_meta, meta) -> int   64-bit hash of what a line asked (resume)

The request written back is the body as sent: a ``metadata`` key is removed from the body
and appended as the third element, like the cookbook script does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any
from urllib.parse import urlsplit

from ..cache.store import request_key
from ..engine.types import ErrorInfo

#: The error code of a line that was not sent because it cannot be a request.
INVALID_LINE = "invalid_request_line"
# Endpoints whose body must name a model (an Azure deployment URL names it instead).
_NEEDS_MODEL = ("/chat/completions", "/completions", "/embeddings", "/responses")
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\r\n]*")


@dataclass(slots=True)
class Line:
    """A line of the requests file: what to send, or why it cannot be sent."""

    index: int  # 0-based position in the file; messages say ``line index + 1``
    request: Any  # the first element of its result: the body sent, the raw text, or None
    body: dict[str, Any] | None = None  # None: unusable, see ``error``
    has_meta: bool = False
    meta: Any = None
    error: ErrorInfo | None = None
    key: str | None = None  # response cache key of ``body``
    cached: Any = None  # the answer found in the cache, if any


def needs_model(url: str) -> bool:
    """Whether requests to ``url`` must name a model in their body.

    >>> needs_model("https://api.openai.com/v1/embeddings")
    True
    >>> needs_model("https://x.openai.azure.com/openai/deployments/emb/embeddings?api-version=1")
    False
    """
    path = urlsplit(url).path.rstrip("/") if "://" in url else url.rstrip("/")
    return "/deployments/" not in path and path.endswith(_NEEDS_MODEL)


def _invalid(index: int, request: Any, message: str) -> Line:
    error = ErrorInfo(None, INVALID_LINE, f"line {index + 1}: {message}")
    return Line(index, request, error=error)


def parse_line(raw: bytes, index: int, url: str, *, model_required: bool = True) -> Line:
    """Read one line (``index`` is 0-based) as a request body for ``url``.

    >>> line = parse_line(b'{"model": "m", "input": "x", "metadata": {"row": 1}}', 0, "embeddings")
    >>> line.body, line.meta
    ({'model': 'm', 'input': 'x'}, {'row': 1})
    >>> parse_line(b"{'model': 'm'}", 16, "/embeddings").error.message
    'line 17: not JSON (Expecting property name enclosed in double quotes at char 1)'
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _invalid(index, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
    text = text.strip()
    if not text:
        return _invalid(index, None, "blank line (a request must be a JSON object)")
    try:
        value = json.loads(text)
    except ValueError as exc:
        reason = f"{exc.msg} at char {exc.pos}" if isinstance(exc, json.JSONDecodeError) else exc
        return _invalid(index, text, f"not JSON ({reason})")
    if not isinstance(value, dict):
        kind = type(value).__name__.replace("NoneType", "null")
        return _invalid(index, value, f"not a JSON object (got {kind}); write one object a line")
    has_meta = "metadata" in value
    meta = value.pop("metadata", None)
    line = Line(index, value, value, has_meta, meta)
    model = value.get("model")
    if model_required and needs_model(url) and not (isinstance(model, str) and model):
        what = 'no "model"' if model is None else '"model" is not a non-empty string'
        path = urlsplit(url).path if "://" in url else url
        line.body = None
        line.error = ErrorInfo(
            None, INVALID_LINE, f"line {index + 1}: {what} (the {path} endpoint needs one)"
        )
        return line
    line.key = request_key(url, value)
    return line


def _dump(parts: list[Any]) -> bytes:
    # ensure_ascii (json's default, as the cookbook): lone surrogates cannot break the file.
    return (json.dumps(parts) + "\n").encode("ascii")


def encode(response: Any) -> str:
    """A response as JSON text, once: the same text goes to the results file and the cache."""
    return json.dumps(response)


def result_line(line: Line, response_json: str) -> bytes:
    """``[request, response]``, plus the metadata when the line had a ``metadata`` key.

    ``response_json`` is :func:`encode`'s text; the line is byte for byte what
    ``json.dumps([request, response(, metadata)])`` writes.

    >>> line = parse_line(b'{"model": "m", "input": "x", "metadata": 7}', 0, "/embeddings")
    >>> result_line(line, encode({"data": []}))
    b'[{"model": "m", "input": "x"}, {"data": []}, 7]\\n'
    """
    meta = ", " + json.dumps(line.meta) if line.has_meta else ""
    return f"[{json.dumps(line.request)}, {response_json}{meta}]\n".encode("ascii")


def error_line(line: Line, error: ErrorInfo) -> bytes:
    """``[request, [error]]`` (+ metadata): the cookbook's failure shape, a structured error."""
    parts = [line.request, [error.to_dict()]]
    if line.has_meta:
        parts.append(line.meta)
    return _dump(parts)


@dataclass(slots=True, frozen=True)
class Head:
    """What a result line asked and whether it failed."""

    request: Any
    failed: bool


def read_head(text: str) -> Head:
    """Parse a result line's request only; its answer is an error list when it failed.

    >>> read_head('[{"input": "x"}, {"data": []}]')
    Head(request={'input': 'x'}, failed=False)
    >>> read_head('[null, [{"status": null}], {"row": 3}]').failed
    True
    """
    start = _SPACE.match(text, 0).end()  # type: ignore[union-attr]
    if text[start : start + 1] != "[":
        raise ValueError("not a JSON array")
    pos = _SPACE.match(text, start + 1).end()  # type: ignore[union-attr]
    request, end = _DECODER.raw_decode(text, pos)
    pos = _SPACE.match(text, end).end()  # type: ignore[union-attr]
    if text[pos : pos + 1] != ",":
        raise ValueError("no response after the request")
    pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
    return Head(request, text[pos : pos + 1] == "[")


def identity(request: Any, has_meta: bool, meta: Any) -> int:
    """A 64-bit hash of a line's request and metadata: equal lines, equal hashes."""
    text = json.dumps([request, has_meta, meta], sort_keys=True, separators=(",", ":"))
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def line_identity(line: Line) -> int:
    return identity(line.request, line.has_meta, line.meta)


def result_identity(text: str) -> tuple[int, bool]:
    """(identity, failed) of a complete result line (parsed in full, for its metadata)."""
    parts = json.loads(text)
    if not isinstance(parts, list) or len(parts) not in (2, 3):
        raise ValueError("not a [request, response(, metadata)] array")
    has_meta = len(parts) == 3
    return identity(parts[0], has_meta, parts[2] if has_meta else None), isinstance(parts[1], list)

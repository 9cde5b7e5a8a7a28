"""Lines of the Batch API's files: what a job tells the backend, and reading output lines.

A job hands the backend its requests, as it would to the online engine, and a
:class:`BatchLines` that says which cache keys each request answers (a chat request: its
request key; an embeddings request: one key per input), how to take inputs out of a request
(those another batch already carries) and how to turn a downloaded answer for some keys back
into an :class:`Outcome` on its rows. Keys, not request ids, cross a restart: a rerun packs
its requests anew, and finds what earlier batches carry by key.

Output lines are hostile: :func:`read_line` checks each one and returns what it says for its
``custom_id``, or why it cannot be used. A line that cannot be tied to its request leaves that
request without an answer, and the backend makes it that request's error.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec

from ..engine import constants as C
from ..engine.retry import Check, InvalidAnswer
from ..engine.types import ErrorInfo, Outcome, Request


class LineError(ErrorInfo):
    """A line's error that no HTTP status explains (expired, cancelled, unreadable): shown as
    ``batch <code>: <message>``."""

    __slots__ = ()

    def __str__(self) -> str:
        return f"batch {self.code}: {self.message}"


class BatchLines(Protocol):
    """What the Batch backend needs to know about a job's requests. ``scope`` names the kind
    of keys (``"requests"``, ``"inputs"``): a job picks up earlier batches of its scope only."""

    scope: str

    def keys(self, request: Request) -> list[bytes]:
        """The 32-byte cache keys ``request`` answers, in the order of its inputs."""
        ...

    def without(self, request: Request, drop: set[int]) -> Request | None:
        """``request`` less its inputs at positions ``drop`` (None when none is left)."""
        ...

    def outcome(
        self, keys: list[bytes], response: Any = None, error: ErrorInfo | None = None
    ) -> Outcome | None:
        """The outcome, for this job's rows, of a line that answered ``keys``; None when none
        of them is this job's (or still unanswered)."""
        ...


@dataclass(frozen=True, slots=True)
class LineResult:
    """One output or error line, checked: its custom_id and a response body or an error."""

    custom_id: str | None
    response: Any = None
    error: ErrorInfo | None = None


def read_line(raw: bytes) -> LineResult:
    """What one line of an output or error file says.

    >>> read_line(b'{"custom_id":"a","response":{"status_code":200,"body":{"x":1}}}').response
    {'x': 1}
    >>> read_line(b'{"custom_id":"a","response":null,"error":{"code":"batch_expired",'
    ...     b'"message":"late"}}').error.code
    'batch_expired'
    >>> read_line(b'{"custom_id": "a", "resp').error.code
    'invalid_line'
    """
    try:
        line = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return LineResult(None, error=_invalid("the line is not JSON"))
    if not isinstance(line, dict):
        return LineResult(None, error=_invalid("the line is not a JSON object"))
    cid = line.get("custom_id")
    if not isinstance(cid, str):
        return LineResult(None, error=_invalid("the line has no custom_id"))
    response = line.get("response")
    error = line.get("error")
    if isinstance(response, dict):
        status = response.get("status_code")
        body = response.get("body")
        rid = response.get("request_id")
        rid = rid if isinstance(rid, str) and len(rid) < 200 else None
        if status == 200 and isinstance(body, dict):
            return LineResult(cid, response=body)
        if isinstance(status, int) and status != 200:
            return LineResult(cid, error=_api_error(status, body, rid))
        return LineResult(cid, error=_invalid("the line's response has no usable body"))
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message")
        return LineResult(
            cid,
            error=LineError(
                None,
                code[:100] if isinstance(code, str) else "batch_error",
                _text(message) or "the batch did not run this request",
            ),
        )
    return LineResult(cid, error=_invalid("the line has neither a response nor an error"))


def _api_error(status: int, body: Any, request_id: str | None) -> ErrorInfo:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = err.get("code")
        kind = err.get("type")
        return ErrorInfo(
            status,
            code if isinstance(code, str) else None,
            _text(err.get("message")) or f"HTTP {status}",
            type=kind if isinstance(kind, str) else None,
            request_id=request_id,
        )
    return ErrorInfo(status, None, f"HTTP {status}", request_id=request_id)


def _text(value: Any, limit: int = 1_000) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _invalid(message: str) -> ErrorInfo:
    return LineError(None, "invalid_line", f"the output line is unusable: {message}")


def missing(status: str) -> ErrorInfo:
    """The error of a request the batch's files say nothing readable about."""
    if status in ("expired", "cancelled"):
        return LineError(
            None,
            f"batch_{status}",
            f"the batch was {status} before this request ran; "
            "rerun the same call to submit it again",
        )
    return LineError(
        None, "invalid_line", "no readable line for this request in the batch's output"
    )


# -- reading an output file and checking its answers ------------------------------------------


def file_lines(path: Path) -> Iterator[bytes | None]:
    """The file's lines, each at most ``BATCH_MAX_LINE_BYTES`` (None for a longer one)."""
    limit = C.BATCH_MAX_LINE_BYTES
    with open(path, "rb") as f:
        while True:
            raw = f.readline(limit + 1)
            if not raw:
                return
            if len(raw) > limit and not raw.endswith(b"\n"):
                while True:  # skip the rest of the over-long line
                    rest = f.readline(limit)
                    if not rest or rest.endswith(b"\n"):
                        break
                yield None
                continue
            if raw.strip():
                yield raw


def shape_only(endpoint: str, response: Any) -> dict[str, Any]:
    """What any request to ``endpoint`` asked, for checking an answer's shape alone: a chat
    answer may hold as many choices as its request's ``n``, whatever that was."""
    if not isinstance(response, dict):
        return {}
    if endpoint.rstrip("/").endswith("chat/completions"):
        choices = response.get("choices")
        return {"n": len(choices)} if isinstance(choices, list) and choices else {}
    if endpoint.rstrip("/").endswith("embeddings"):  # as many inputs as the answer holds
        data = response.get("data")
        return {"input": [""] * len(data)} if isinstance(data, list) else {}
    return {}


def checked(check: Check, response: Any) -> tuple[Any, ErrorInfo | None]:
    """What ``check`` makes of the answer (an embeddings answer's decoded vectors), or the
    line's error when it refuses it."""
    try:
        return check(response), None
    except InvalidAnswer as exc:
        return None, ErrorInfo(200, exc.code, str(exc))
    except Exception as exc:  # a shape no check foresaw is still only this row's error
        return None, ErrorInfo(
            200, "invalid_response", f"the answer could not be checked ({exc!r})"
        )

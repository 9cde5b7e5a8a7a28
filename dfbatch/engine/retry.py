"""Retry policy: what an answer means, and how long to wait before trying again.

Pure functions over a status, headers and bytes (or a network error's kind), returning a
:class:`Verdict`. The rules, after OpenAI's guide and the official SDK:

========================================  ============================================
answer                                    verdict
========================================  ============================================
2xx with a JSON body the answer check     SUCCESS
accepts (see ``dfbatch.engine.answers``)
2xx whose body is not JSON (a proxy page) RETRY
or nests deeper than RESPONSE_MAX_DEPTH
2xx the answer check refuses              FAIL_ROW, or RETRY when asking again can help
3xx (a redirect: never followed)          FAIL_ROW: the key must not go elsewhere
408, 409, 5xx, timeouts, connection drops RETRY
an answer over a size cap (``too_large``) FAIL_ROW: the same request gets it again
429 ``rate_limit_exceeded``               RETRY after retry-after, and slow the run
429 "Request too large"                   FAIL_ROW: that request can never pass
429 ``insufficient_quota``, spend limits  ABORT: no request can succeed
401                                       ABORT: the key is wrong
404 ``model_not_found``, 404 not JSON     ABORT: wrong model, or wrong base URL
400, 403, 404, 422, other 4xx             FAIL_ROW
========================================  ============================================

``x-should-retry: true|false`` overrides RETRY / FAIL_ROW, as in the SDK (never ABORT).

A 4xx other than 408, 409 and a rate-limit 429 means the server refused the request as it
came in, without processing it (``Verdict.refused``): 400 invalid or over the context, 413 too
large, 422 unprocessable, 403/404, and the 429 "Request too large" (more than the whole TPM).
Its tokens were never charged, so the limiter gets them back. 408 and 409 may come after the
work began, 5xx, timeouts and dropped connections may have done it, and a rate-limit 429 counts
against the limits by OpenAI's guide ("failed requests count"): those stay charged.

A TPM 429's message carries ``Limit X, Used Y, Requested Z``: X is learned like an
``x-ratelimit-limit-tokens`` header, and a request over one second's share of it (Z > X / 60,
or "Request too large") is ``oversized``: a server enforcing TPM over 1 s windows never takes
it whole, so a front end that can split it (packed embeddings) splits it.

Backoff is full jitter: ``wait = u * min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1))`` with
``u`` uniform in [0, 1), unless the server said how long (retry-after-ms, then retry-after,
honoured up to ``RETRY_AFTER_MAX``).
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import msgspec

from . import constants as C
from .errors import AuthenticationError, ModelNotFoundError, QuotaExceededError, RunAbortedError
from .types import ErrorInfo

QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "billing_hard_limit_reached",
        "billing_not_active",
        "access_terminated",
    }
)
_TRY_AGAIN_IN = re.compile(
    r"(?:try again in|retry after)\s+(\d+(?:\.\d+)?)\s*(ms|s|seconds?)\b", re.I
)
_FIGURES = re.compile(r"Limit (\d{1,15}),(?: Used (\d{1,15}),)? Requested (\d{1,15})\b")


class InvalidAnswer(ValueError):
    """A 2xx answer that is not what was asked (raised by an answer check).

    ``retry`` when asking again can help (a glitch such as NaN in vectors); ``code`` is the
    row error's code (``"refusal"`` when the model declined).
    """

    def __init__(self, message: str, *, retry: bool = False, code: str = "invalid_response"):
        super().__init__(message)
        self.retry = retry
        self.code = code


#: What an answer check gets (the parsed JSON of a 2xx body) and returns: what it made of the
#: body (or None); it raises :class:`InvalidAnswer` when the body is not a valid answer.
Check = Callable[[Any], Any]


class Action(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"
    FAIL_ROW = "fail_row"
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one answer."""

    action: Action
    body: Any = None  # the parsed JSON on success
    error: ErrorInfo | None = None
    retry_after: float | None = None  # seconds the server asked for
    rate_limited: bool = False  # a 429 that should slow the whole run
    abort: type[RunAbortedError] | None = None
    refused: bool = False  # refused unprocessed: its tokens were never charged
    tokens_limit: int | None = None  # a TPM 429's "Limit X"
    oversized: bool = False  # larger than the server takes at once: split it if possible
    value: Any = None  # what the answer check made of the body (e.g. the decoded vectors)


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The server's requested wait in seconds: retry-after-ms, else retry-after (seconds or date).

    ``now`` is the wall-clock time (``time.time()``) used to read an HTTP-date; a value outside
    (0, RETRY_AFTER_MAX] is ignored, like the SDK does.
    """
    wait: float | None = None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            wait = float(ms) / 1000.0
        except ValueError:
            wait = None
    if wait is None and (value := headers.get("retry-after")) is not None:
        try:
            wait = float(value)
        except ValueError:
            try:
                when = parsedate_to_datetime(value).timestamp()
            except (TypeError, ValueError, IndexError, OverflowError):
                when = None
            if when is not None and now is not None:
                wait = when - now
    if wait is None or not 0 < wait <= C.RETRY_AFTER_MAX:
        return None
    return wait


def backoff(attempt: int, u: float) -> float:
    """Full-jitter exponential backoff before attempt ``attempt + 1``; ``u`` in [0, 1).

    >>> backoff(1, 0.5), backoff(3, 0.5), backoff(20, 0.999) <= 20.0
    (0.25, 1.0, True)
    """
    return u * min(C.BACKOFF_MAX, C.BACKOFF_BASE * 2 ** max(0, attempt - 1))


def _error_info(status: int, body: Any, headers: Mapping[str, str], fallback: str) -> ErrorInfo:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or fallback)
        code, etype = err.get("code"), err.get("type")
    else:
        message = str(err) if isinstance(err, str) else fallback
        code = etype = None
    return ErrorInfo(
        status=status,
        code=None if code is None else str(code),
        type=None if etype is None else str(etype),
        message=message,
        request_id=headers.get("x-request-id"),
    )


def _is_quota(info: ErrorInfo) -> bool:
    for value in (info.code, info.type):
        if value and (value in QUOTA_CODES or value.endswith("spend_limit_exceeded")):
            return True
    return False


def json_too_deep(value: Any, limit: int) -> bool:
    """Whether decoded JSON nests lists and objects more than ``limit`` levels deep.

    Walks one level at a time, containers only; a list of numbers (a float vector) is passed
    over by one ``sum`` in C, so a 60 MB float answer costs ~25 ms, not a Python step a float.

    >>> json_too_deep({"a": [[1, 2.5]]}, 3), json_too_deep({"a": [[1, 2.5]]}, 2)
    (False, True)
    """
    level = [value] if type(value) is list or type(value) is dict else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        inner: list[Any] = []
        for container in level:
            if type(container) is dict:
                items: Any = container.values()
            else:
                items = container
                try:
                    sum(items)  # numbers only (or empty): nothing nested here
                    continue
                except (TypeError, OverflowError):
                    pass
            inner.extend(v for v in items if type(v) is list or type(v) is dict)
        level = inner
    return False


def _decode(body: bytes) -> tuple[Any, str | None]:
    """A body's JSON, or None and why it is not usable JSON (never raises)."""
    if not body:
        return None, "an empty body"
    try:  # msgspec: 4x faster than json; 2x orjson on base64 embeddings; exact big integers
        parsed = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        if isinstance(exc, msgspec.ValidationError):  # a number beyond any int or float
            return None, f"JSON that cannot be read ({exc})"
        return None, "a body that is not JSON"
    except RecursionError:  # msgspec stops near 1,000 levels
        return None, f"JSON nested deeper than {C.RESPONSE_MAX_DEPTH} levels"
    if json_too_deep(parsed, C.RESPONSE_MAX_DEPTH):
        return None, f"JSON nested deeper than {C.RESPONSE_MAX_DEPTH} levels"
    return parsed, None


def check_usage(body: Any) -> None:
    """Raise :class:`InvalidAnswer` unless the answer's ``usage`` is absent, null, or an object
    whose token counts are integers in [0, USAGE_MAX_TOKENS] (or absent, or null).

    >>> check_usage({"usage": {"total_tokens": "lots"}})
    Traceback (most recent call last):
    dfbatch.engine.retry.InvalidAnswer: usage.total_tokens is not a token count: 'lots'
    """
    usage = body.get("usage") if type(body) is dict else None
    if usage is None:
        return
    if type(usage) is not dict:
        raise InvalidAnswer(f"usage is not an object: {quote(usage)}")
    for key in _USAGE_KEYS:
        n = usage.get(key)
        if n is not None and not (type(n) is int and 0 <= n <= C.USAGE_MAX_TOKENS):
            raise InvalidAnswer(f"usage.{key} is not a token count: {quote(n)}")


def usage_total(body: Any) -> int:
    """The answer's ``usage.total_tokens`` when it is a valid count, else 0 (never raises)."""
    usage = body.get("usage") if type(body) is dict else None
    n = usage.get("total_tokens") if type(usage) is dict else None
    return n if type(n) is int and 0 <= n <= C.USAGE_MAX_TOKENS else 0


def quote(value: Any, limit: int = C.ERROR_QUOTE_CHARS) -> str:
    """A server's value for an error message: its repr, at most ``limit`` characters.

    >>> quote("x" * 500, 10), quote([1, 2]), quote(None)
    ("'xxxxxxxx…", 'an array', 'None')
    """
    if isinstance(value, list | dict):
        return "an array" if isinstance(value, list) else "an object"
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_USAGE_KEYS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "input_tokens",
    "output_tokens",
)


def classify_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
    check: Check | None = None,
) -> Verdict:
    """Read one HTTP answer. ``now`` is the wall-clock time for HTTP-date retry-after values
    (``time.time()`` when not given, read only for errors); ``check`` reads a 2xx answer's
    JSON and raises :class:`InvalidAnswer` when it is not what was asked."""
    parsed, problem = _decode(body)
    is_json = problem is None

    if 200 <= status < 300:
        request_id = headers.get("x-request-id")
        if not is_json:
            snippet = body[:80].decode("utf-8", "replace") if body else ""
            info = ErrorInfo(
                status,
                "invalid_response",
                f"the server answered {status} with {problem}: {snippet!r}",
                request_id=request_id,
            )
            return Verdict(Action.RETRY, error=info)
        try:
            value = check(parsed) if check is not None else None
        except InvalidAnswer as exc:
            info = ErrorInfo(status, exc.code, str(exc), request_id=request_id)
            return Verdict(Action.RETRY if exc.retry else Action.FAIL_ROW, error=info)
        except Exception as exc:  # last resort: the checks validate explicitly, and a shape
            # they missed must still be this request's error, not the end of the run
            reason = str(exc)[: C.ERROR_QUOTE_CHARS]
            message = f"the answer could not be checked ({type(exc).__name__}: {reason})"
            info = ErrorInfo(status, "invalid_response", message, request_id=request_id)
            return Verdict(Action.FAIL_ROW, error=info)
        return Verdict(Action.SUCCESS, body=parsed, value=value)

    if 300 <= status < 400:
        return Verdict(Action.FAIL_ROW, error=_redirect_info(status, headers))

    reason = _STATUS_TEXT.get(status, "error")
    info = _error_info(status, parsed, headers, f"HTTP {status} {reason}")
    retry_after = retry_after_seconds(headers, time.time() if now is None else now)

    if status == 401:
        return Verdict(Action.ABORT, error=info, abort=AuthenticationError)
    if _is_quota(info):
        return Verdict(Action.ABORT, error=info, abort=QuotaExceededError)
    if status == 404 and (info.code == "model_not_found" or not is_json):
        return Verdict(Action.ABORT, error=info, abort=ModelNotFoundError)

    if status == 429:
        limit, requested = _token_figures(info)
        if "request too large" in info.message.lower():
            return Verdict(
                Action.FAIL_ROW, error=info, refused=True, tokens_limit=limit, oversized=True
            )
        if retry_after is None and (m := _TRY_AGAIN_IN.search(info.message)):
            seconds = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
            retry_after = seconds if 0 < seconds <= C.RETRY_AFTER_MAX else None
        oversized = limit is not None and requested is not None and requested * 60 > limit
        return Verdict(
            Action.RETRY,
            error=info,
            retry_after=retry_after,
            rate_limited=True,
            tokens_limit=limit,
            oversized=oversized,
        )

    action = Action.RETRY if status in (408, 409) or status >= 500 else Action.FAIL_ROW
    should = headers.get("x-should-retry")
    if should == "true":
        action = Action.RETRY
    elif should == "false":
        action = Action.FAIL_ROW
    return Verdict(
        action,
        error=info,
        retry_after=retry_after if action is Action.RETRY else None,
        refused=400 <= status < 500 and status not in (408, 409),
    )


def _token_figures(info: ErrorInfo) -> tuple[int | None, int | None]:
    """(Limit, Requested) of a TPM 429's message, each in [1, HEADER_MAX_COUNT] or None.

    >>> _token_figures(ErrorInfo(429, None, "Rate limit reached for m on tokens per min "
    ...     "(TPM): Limit 30000, Used 28039, Requested 3906. Please try again in 3.89s."))
    (30000, 3906)
    """
    message = info.message
    if info.type != "tokens" and "tokens per min" not in message and "TPM" not in message:
        return None, None
    m = _FIGURES.search(message)
    if m is None:
        return None, None
    limit, requested = int(m.group(1)), int(m.group(3))
    return (
        limit if 1 <= limit <= C.HEADER_MAX_COUNT else None,
        requested if 1 <= requested <= C.HEADER_MAX_COUNT else None,
    )


def classify_exception(kind: str, message: str) -> Verdict:
    """A request that got no usable HTTP answer: a timeout or a dropped connection, retried;
    or an answer over a size cap (``too_large``), which fails that row alone: the same request
    would get the same answer, and each attempt would read up to the cap again."""
    action = Action.FAIL_ROW if kind == "too_large" else Action.RETRY
    return Verdict(action, error=ErrorInfo(None, kind, message))


def _redirect_info(status: int, headers: Mapping[str, str]) -> ErrorInfo:
    location = headers.get("location")
    where = f" to {location[:200]!r}" if location else ""
    return ErrorInfo(
        status,
        "redirect",
        f"the server redirects{where}, and dfbatch never follows a redirect (the API key "
        "would go along to that address): set base_url to the address that answers",
        request_id=headers.get("x-request-id"),
    )


_STATUS_TEXT = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

"""The retry classifier: one table of answers and what each one means."""

from __future__ import annotations

import json

import pytest

from dfbatch.engine.errors import AuthenticationError, ModelNotFoundError, QuotaExceededError
from dfbatch.engine.retry import Action, backoff, classify_exception, classify_response
from dfbatch.engine.retry import retry_after_seconds as ra


def err(message: str, code: str | None = None, type_: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}
    ).encode()


RATE = err(
    "Rate limit reached for gpt-4.1 on tokens per min (TPM): Limit 30000, Used 28039, "
    "Requested 3906. Please try again in 3.89s.",
    "rate_limit_exceeded",
    "tokens",
)
TOO_LARGE = err(
    "Request too large for gpt-4.1 on tokens per min (TPM): Limit 30000, Requested 30601.",
    "rate_limit_exceeded",
    "tokens",
)
QUOTA = err(
    "You exceeded your current quota, please check your plan and billing details.",
    "insufficient_quota",
    "insufficient_quota",
)


@pytest.mark.parametrize(
    ("status", "body", "action"),
    [
        (200, b'{"data": []}', Action.SUCCESS),
        (200, b"<html>502 Bad Gateway</html>", Action.RETRY),
        (200, b"", Action.RETRY),
        (400, err("bad", "context_length_exceeded"), Action.FAIL_ROW),
        (401, err("Incorrect API key provided", "invalid_api_key"), Action.ABORT),
        (403, err("forbidden"), Action.FAIL_ROW),
        (404, err("The model `x` does not exist", "model_not_found"), Action.ABORT),
        (404, err("No such file", None), Action.FAIL_ROW),
        (404, b"<html>Not Found</html>", Action.ABORT),
        (408, b"", Action.RETRY),
        (409, err("conflict"), Action.RETRY),
        (422, err("unprocessable"), Action.FAIL_ROW),
        (429, RATE, Action.RETRY),
        (429, TOO_LARGE, Action.FAIL_ROW),
        (429, QUOTA, Action.ABORT),
        (429, err("Spend limit", "monthly_spend_limit_exceeded"), Action.ABORT),
        (429, err("Please retry after 60 seconds.", "429"), Action.RETRY),  # Azure
        (500, err("The server had an error", None, "server_error"), Action.RETRY),
        (502, b"<html>bad gateway</html>", Action.RETRY),
        (503, err("The engine is currently overloaded"), Action.RETRY),
    ],
)
def test_classification_table(status: int, body: bytes, action: Action) -> None:
    """Each kind of answer gets the documented verdict."""
    assert classify_response(status, {}, body).action is action


def test_abort_kinds() -> None:
    """401, quota and missing model map to their own exception classes."""
    assert classify_response(401, {}, err("x", "invalid_api_key")).abort is AuthenticationError
    assert classify_response(429, {}, QUOTA).abort is QuotaExceededError
    assert classify_response(404, {}, err("m", "model_not_found")).abort is ModelNotFoundError


def test_rate_limit_reads_retry_after_headers_first() -> None:
    """retry-after-ms beats retry-after, which beats the message's 'try again in'."""
    v = classify_response(429, {"retry-after-ms": "644", "retry-after": "20"}, RATE)
    assert v.rate_limited and v.retry_after == pytest.approx(0.644)
    assert classify_response(429, {"retry-after": "20"}, RATE).retry_after == 20
    assert classify_response(429, {}, RATE).retry_after == pytest.approx(3.89)


def test_azure_429_message_wait() -> None:
    """Azure's 'Please retry after 60 seconds.' (code "429") is read as a 60 s wait."""
    v = classify_response(429, {}, err("Please retry after 60 seconds.", "429"))
    assert v.rate_limited and v.retry_after == 60


def test_error_info_carries_request_id() -> None:
    """The error keeps status, code, type, message and x-request-id for the error column."""
    v = classify_response(400, {"x-request-id": "req_1"}, err("too long", "ctx", "invalid"))
    assert (v.error.status, v.error.code, v.error.type, v.error.request_id) == (
        400,
        "ctx",
        "invalid",
        "req_1",
    )
    assert "too long" in str(v.error) and "req_1" in str(v.error)


def test_should_retry_header_overrides() -> None:
    """x-should-retry: false stops a 500's retries; true retries a 400."""
    assert classify_response(500, {"x-should-retry": "false"}, b"").action is Action.FAIL_ROW
    assert classify_response(400, {"x-should-retry": "true"}, b"").action is Action.RETRY


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after-ms": "644"}, 0.644),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "0"}, None),
        ({"retry-after": "9999"}, None),
        ({"retry-after": "Fri, 27 Nov 2026 05:00:10 GMT"}, 10.0),
        ({"retry-after": "soon"}, None),
    ],
)
def test_retry_after_forms(headers: dict[str, str], wait: float | None) -> None:
    """Milliseconds, seconds and HTTP dates are read; out-of-range waits are ignored."""
    now = 1795755600.0  # Fri, 27 Nov 2026 05:00:00 GMT
    got = ra(headers, now)
    assert got == (pytest.approx(wait) if wait is not None else None)


def test_backoff_is_full_jitter_and_capped() -> None:
    """Backoff grows as 0.5 * 2**(n-1), is capped at 20 s, and scales with the jitter draw."""
    assert backoff(1, 1.0) == 0.5
    assert backoff(4, 1.0) == 4.0
    assert backoff(30, 1.0) == 20.0
    assert backoff(4, 0.0) == 0.0


def test_network_errors_retry() -> None:
    """Timeouts and dropped connections are retried, with no status."""
    v = classify_exception("timeout", "no answer within 60 s")
    assert v.action is Action.RETRY and v.error.status is None and v.error.code == "timeout"

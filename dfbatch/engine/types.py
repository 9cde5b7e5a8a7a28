"""Plain values that travel along the data path: requests in, outcomes out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The ``code`` of a request the budget stopped (never sent, never cached).
BUDGET_REACHED = "budget_reached"


@dataclass(slots=True)
class Request:
    """One HTTP request for the engine.

    ``endpoint`` is relative to the base URL (``"/embeddings"``); ``tokens`` is the estimated
    cost charged against TPM; ``meta`` is the caller's own (row positions, a line number) and
    is never sent.
    """

    id: Any
    endpoint: str
    body: dict[str, Any]
    tokens: int = 0
    meta: Any = None


@dataclass(slots=True, frozen=True)
class ErrorInfo:
    """Why a request failed, as the server (or the network) said it."""

    status: int | None
    code: str | None
    message: str
    type: str | None = None
    request_id: str | None = None

    def __str__(self) -> str:
        if self.code == BUDGET_REACHED:  # not the server's: the row was never sent
            return self.message
        head = f"HTTP {self.status}" if self.status is not None else "network"
        code = f" {self.code}" if self.code else ""
        rid = f" (request id {self.request_id})" if self.request_id else ""
        return f"{head}{code}: {self.message}{rid}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "code": self.code,
            "type": self.type,
            "message": self.message,
            "request_id": self.request_id,
        }


@dataclass(slots=True)
class Outcome:
    """The end of one request: its response JSON or its error, and how many attempts it took.

    ``value`` is what the engine's answer check made of the response (an embeddings answer's
    decoded vectors), so a front end does not read it twice."""

    request: Request
    response: Any = None
    error: ErrorInfo | None = None
    attempts: int = 0
    value: Any = None

    @property
    def id(self) -> Any:
        return self.request.id

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class RunStats:
    """Counters of one run, updated live; front ends read them for progress and the summary."""

    started: float = 0.0
    finished: float | None = None
    requests_sent: int = 0
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    rate_limited: int = 0
    tokens_estimated: int = 0
    tokens_used: int = 0
    failures_by_cause: dict[str, int] = field(default_factory=dict)
    #: USD of the answers so far, from their ``usage`` (None: a model's price is unknown).
    cost_usd: float | None = 0.0
    budget_usd: float | None = None
    #: Requests not sent because the budget was reached (their rows: "budget reached").
    budget_refused: int = 0
    #: The run's figures over time (a ``Timeline``), for the run report.
    timeline: Any = None

    def elapsed(self, now: float) -> float:
        end = self.finished if self.finished is not None else now
        return max(0.0, end - self.started)

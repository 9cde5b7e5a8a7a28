"""The simulator's counters (``sim.stats``), cheap to update and JSON-able.

>>> s = SimStats()
>>> s.requests += 1
>>> s.as_dict()["requests"]
1
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SimStats"]


@dataclass
class SimStats:
    """What the simulator saw since start (or the last ``reset_stats()``).

    Attributes:
        requests: API requests received (``/sim/*`` not counted).
        by_endpoint: requests per endpoint: ``"embeddings"``, ``"chat/completions"``,
            ``"completions"``, ``"models"``, ``"other"``.
        by_status: responses per HTTP status (connection resets are not responses).
        rate_limited: 429s for RPM/TPM (including "Request too large").
        quota_rejected: 429 insufficient_quota answers.
        faults: faults injected, by kind: ``error_5xx``, ``reset``, ``non_json``, ``hang``.
        admitted: requests the rate limiter admitted (they consumed capacity).
        tokens_admitted: estimated tokens charged for them.
        accepted: 2xx answers with a real (JSON) answer.
        embedding_inputs: embedding inputs answered in accepted responses.
        connections: TCP connections opened by clients.
        in_flight / max_concurrent: requests being handled now / at most at once.
        first_admitted / last_admitted: clock (``time.monotonic``) of the first and last
            admission, or None.
        inputs: how often each embedding input / last user text / prompt was answered
            (only with ``record_inputs=True``).
    """

    requests: int = 0
    by_endpoint: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    rate_limited: int = 0
    quota_rejected: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    admitted: int = 0
    tokens_admitted: int = 0
    accepted: int = 0
    embedding_inputs: int = 0
    connections: int = 0
    in_flight: int = 0
    max_concurrent: int = 0
    first_admitted: float | None = None
    last_admitted: float | None = None
    inputs: Counter[str] = field(default_factory=Counter)

    @property
    def admitted_per_second(self) -> float | None:
        """Admitted requests per second between the first and the last admission."""
        if self.first_admitted is None or self.last_admitted is None:
            return None
        span = self.last_admitted - self.first_admitted
        return (self.admitted - 1) / span if span > 0 and self.admitted > 1 else None

    def as_dict(self, *, inputs: bool = True) -> dict[str, Any]:
        """A JSON-able copy (status codes become string keys); ``inputs=False`` leaves out
        the per-text counter, which can be large."""
        out: dict[str, Any] = {
            "requests": self.requests,
            "by_endpoint": dict(self.by_endpoint),
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "rate_limited": self.rate_limited,
            "quota_rejected": self.quota_rejected,
            "faults": dict(self.faults),
            "admitted": self.admitted,
            "tokens_admitted": self.tokens_admitted,
            "accepted": self.accepted,
            "embedding_inputs": self.embedding_inputs,
            "connections": self.connections,
            "in_flight": self.in_flight,
            "max_concurrent": self.max_concurrent,
            "first_admitted": self.first_admitted,
            "last_admitted": self.last_admitted,
            "admitted_per_second": self.admitted_per_second,
        }
        if inputs:
            out["inputs"] = dict(self.inputs)
        return out

"""The budget: a hard cap in USD on what one run spends, counting requests in flight.

Pure bookkeeping over plain numbers, no clock and no I/O::

    cap = BudgetCap(5.00)
    hold = cap.reserve(worst)    # before a send: its worst case, or None when it may not go
    cap.settle(hold, actual)     # when it answers: the real cost replaces the reservation

``spent + reserved`` never passes the cap, so neither does ``spent`` as long as each answer
costs at most its worst case (input tokens + n x max_tokens; see ``output_bound``). A request
that does not fit while others are in flight waits for them (``must_wait``): they usually cost
far less than their worst case, and stopping early would leave the budget unspent. Once nothing
is in flight and the next request still does not fit, the cap is ``reached`` for good and
nothing more is sent: the spend then is more than ``cap - worst``, so a run whose requests are
each at most 10% of the budget stops having spent at least 90% of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .constants import COMPLETIONS_DEFAULT_MAX_TOKENS, DEFAULT_COMPLETION_TOKENS
from .tokens import _endpoint_kind, _first_int, _int_or_none

#: Relative slack against float rounding when comparing a sum of costs with the cap.
_EPSILON = 1e-12


class BudgetCap:
    """Reserve a request's worst case before it goes, settle with its real cost after.

    >>> cap = BudgetCap(1.0)
    >>> a = cap.reserve(0.6); b = cap.reserve(0.6)
    >>> a, b, cap.must_wait(0.6)
    (0.6, None, True)
    >>> cap.settle(a, 0.1); cap.reserve(0.6), round(cap.spent, 2)
    (0.6, 0.1)
    """

    def __init__(self, limit_usd: float) -> None:
        self.limit = float(limit_usd)
        self.spent = 0.0  # settled: real costs of answers
        self.reserved = 0.0  # worst cases of requests in flight
        self.in_flight = 0
        self.reached = False  # set once: nothing more is sent
        self.refused = 0  # requests refused once the cap was reached

    def __repr__(self) -> str:
        return (
            f"<BudgetCap ${self.spent:.4f} spent + ${self.reserved:.4f} reserved of "
            f"${self.limit:.4f}{' (reached)' if self.reached else ''}>"
        )

    @property
    def remaining(self) -> float:
        return self.limit - self.spent - self.reserved

    def fits(self, worst: float) -> bool:
        return self.spent + self.reserved + worst <= self.limit * (1 + _EPSILON)

    def reserve(self, worst: float) -> float | None:
        """Hold ``worst`` USD for a request about to go; None when it must not go (yet)."""
        if self.reached or not self.fits(worst):
            return None
        self.reserved += worst
        self.in_flight += 1
        return worst

    def must_wait(self, worst: float) -> bool:
        """True when ``worst`` does not fit now but may once requests in flight settle.

        When it does not fit and nothing is in flight, the cap is reached for good."""
        if self.reached or self.fits(worst):
            return False
        if self.in_flight:
            return True
        self.reached = True
        return False

    def settle(self, hold: float, actual: float) -> None:
        """A reserved request is over: ``actual`` USD replaces its ``hold``."""
        self.in_flight -= 1
        # Nothing in flight: nothing reserved (no float residue from adding and subtracting).
        self.reserved = max(0.0, self.reserved - hold) if self.in_flight else 0.0
        self.spent += max(0.0, actual)

    def refuse(self) -> None:
        self.reached = True
        self.refused += 1


def output_bound(endpoint: str, body: Any) -> int:
    """The most output tokens a request may be billed: n x ``max_completion_tokens`` or
    ``max_tokens`` (DEFAULT_COMPLETION_TOKENS when a chat request sets neither; the legacy
    completions API's own default of 16); 0 for embeddings. Same rules as the TPM estimate.

    >>> output_bound("/chat/completions", {"max_tokens": 50, "n": 3})
    150
    >>> output_bound("/embeddings", {"input": ["a"]})
    0
    """
    if not isinstance(body, Mapping):
        return 0
    kind = _endpoint_kind(endpoint) if isinstance(endpoint, str) else None
    n = _int_or_none(body.get("n")) or 1
    if kind == "embeddings":
        return 0
    if kind == "chat":
        return n * _first_int(
            body, ("max_completion_tokens", "max_tokens"), DEFAULT_COMPLETION_TOKENS
        )
    if kind == "completions":
        prompt = body.get("prompt")
        prompts = len(prompt) if isinstance(prompt, list) and prompt and not _ids(prompt) else 1
        choices = max(n, _first_int(body, ("best_of",), 1))
        return prompts * choices * _first_int(body, ("max_tokens",), COMPLETIONS_DEFAULT_MAX_TOKENS)
    return n * _first_int(body, ("max_output_tokens", "max_completion_tokens", "max_tokens"), 0)


def _ids(value: list[Any]) -> bool:
    return all(type(t) is int for t in value)

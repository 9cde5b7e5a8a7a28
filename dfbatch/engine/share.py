"""What the limiter sees of a budget shared with other senders (``lease.Wallet`` is one).

Its own module so that the limiter can name it without importing the lease machinery.
"""

from __future__ import annotations

from typing import Protocol


class Share(Protocol):
    """What the engine's limiter sees of a shared budget (a ``Wallet``'s methods)."""

    def delay(self, tokens: float, now: float) -> float: ...
    def spend(self, tokens: float, now: float) -> None: ...
    def on_rate_limited(self, retry_after: float | None, now: float) -> None: ...
    def on_headers(
        self,
        limit_requests: int | None,
        remaining_requests: int | None,
        limit_tokens: int | None,
        remaining_tokens: int | None,
    ) -> None: ...

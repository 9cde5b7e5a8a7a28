"""Per-second token buckets for RPM/TPM, OpenAI's rate-limit headers and Go durations.

A per-minute limit is enforced as OpenAI and Azure do, over one-second windows: a bucket
holds one second's share (``limit / 60``), starts full and refills continuously at
``limit / 60`` per second. The classes are pure and take an injectable clock::

    >>> now = [0.0]
    >>> bucket = TokenBucket(120, clock=lambda: now[0])   # 2 per second
    >>> bucket.take(1), bucket.take(1), bucket.take(1)
    (0.0, 0.0, 0.5)
    >>> now[0] = 0.5
    >>> bucket.take(1)
    0.0
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Admission", "RateLimiter", "TokenBucket", "go_duration"]

Clock = Callable[[], float]
_EPS = 1e-9


def go_duration(seconds: float) -> str:
    """``seconds`` as a Go ``time.Duration`` string, rounded up to the millisecond.

    This is how OpenAI writes ``x-ratelimit-reset-*``:

    >>> [go_duration(s) for s in (0, 0.02, 1, 2.188, 90.5, 360, 3600)]
    ['0s', '20ms', '1s', '2.188s', '1m30.5s', '6m0s', '1h0m0s']
    """
    ms = math.ceil(seconds * 1000 - 1e-6) if seconds > 0 else 0
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    sec_text = f"{secs}.{millis:03d}".rstrip("0").rstrip(".") if millis else str(secs)
    if hours:
        return f"{hours}h{minutes}m{sec_text}s"
    if minutes:
        return f"{minutes}m{sec_text}s"
    return f"{sec_text}s"


class TokenBucket:
    """One limit per minute, enforced as a bucket of one second's share.

    ``take(amount)`` admits when the bucket holds ``min(amount, capacity)``: a request larger
    than one second's share is admitted when the bucket is full and leaves it in debt (a
    negative level), so it can pass at all. It returns 0.0 when admitted (and charges), else
    the seconds until it would be admitted (and charges nothing).
    """

    __slots__ = ("_clock", "capacity", "level", "limit", "rate", "updated")

    def __init__(self, per_minute: float, *, clock: Clock = time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError(f"a limit per minute must be positive, got {per_minute}")
        self.limit = per_minute
        self.capacity = per_minute / 60.0
        self.rate = per_minute / 60.0
        self._clock = clock
        self.level = self.capacity
        self.updated = clock()

    def refill(self, now: float | None = None) -> float:
        """Bring the level up to ``now`` and return it."""
        now = self._clock() if now is None else now
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now
        return self.level

    def wait_time(self, amount: float, now: float | None = None) -> float:
        """Seconds until ``take(amount)`` would succeed (0.0 if it would now)."""
        need = min(amount, self.capacity)
        level = self.refill(now)
        return 0.0 if level + _EPS >= need else (need - level) / self.rate

    def take(self, amount: float, now: float | None = None) -> float:
        """Charge ``amount`` if admitted (returns 0.0); else return the wait in seconds."""
        wait = self.wait_time(amount, now)
        if wait == 0.0:
            self.level -= amount
        return wait

    def remaining(self, now: float | None = None) -> int:
        """Whole units left in the bucket now (never negative)."""
        return max(0, math.floor(self.refill(now) + _EPS))

    def reset_time(self, now: float | None = None) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.refill(now)) / self.rate)

    def fill(self) -> None:
        """Make the bucket full (as at start)."""
        self.level = self.capacity
        self.updated = self._clock()


@dataclass(slots=True, frozen=True)
class Admission:
    """The limiter's verdict. ``kind`` is None when admitted, else "requests", "tokens"
    or "too_large" (a request over the whole TPM: never admitted); ``wait`` is in seconds."""

    admitted: bool
    kind: str | None = None
    wait: float = 0.0
    limit: int = 0
    used: int = 0
    requested: int = 0


class RateLimiter:
    """RPM and TPM buckets together; either limit may be None (unlimited).

    ``strict=True`` refuses a request of more tokens than one second's share (TPM / 60) with
    a rate-limit 429 every time, as a server enforcing TPM over 1 s windows strictly does,
    instead of admitting it into a full bucket (in debt).

    >>> t = [0.0]
    >>> lim = RateLimiter(rpm=60, tpm=600, clock=lambda: t[0])
    >>> lim.admit(5).admitted, lim.admit(5)
    (True, Admission(admitted=False, kind='requests', wait=1.0, limit=60, used=60, requested=1))
    >>> lim.admit(601).kind
    'too_large'
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        clock: Clock = time.monotonic,
        strict: bool = False,
    ) -> None:
        self.clock = clock
        self.strict = strict
        self.requests = TokenBucket(rpm, clock=clock) if rpm else None
        self.tokens = TokenBucket(tpm, clock=clock) if tpm else None

    @property
    def active(self) -> bool:
        """True when at least one limit is set."""
        return self.requests is not None or self.tokens is not None

    def admit(self, tokens: int, now: float | None = None) -> Admission:
        """Admit one request of ``tokens`` estimated tokens, charging both buckets, or refuse."""
        now = self.clock() if now is None else now
        rb, tb = self.requests, self.tokens
        if tb is not None and tokens > tb.limit:
            return Admission(False, "too_large", 0.0, int(tb.limit), 0, tokens)
        if self.strict and tb is not None and tokens > tb.capacity:
            used = round(tb.limit - max(tb.refill(now), 0.0) * 60.0)
            wait = max(tb.reset_time(now), 0.001)
            return Admission(
                False, "tokens", wait, int(tb.limit), min(max(used, 0), int(tb.limit)), tokens
            )
        r_wait = rb.wait_time(1, now) if rb is not None else 0.0
        t_wait = tb.wait_time(tokens, now) if tb is not None else 0.0
        if r_wait > 0.0 or t_wait > 0.0:
            bucket, kind, amount = (
                (rb, "requests", 1) if r_wait >= t_wait else (tb, "tokens", tokens)
            )
            assert bucket is not None
            used = round(bucket.limit - max(bucket.level, 0.0) * 60.0)
            return Admission(
                False,
                kind,
                max(r_wait, t_wait),
                int(bucket.limit),
                min(max(used, 0), int(bucket.limit)),
                amount,
            )
        if rb is not None:
            rb.level -= 1
        if tb is not None:
            tb.level -= tokens
        return Admission(True)

    def headers(self, now: float | None = None) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for the limits that are set.

        ``remaining-*`` is the whole bucket level now (one second's share at most);
        ``reset-*`` the time until the bucket is full, as a Go duration.
        """
        now = self.clock() if now is None else now
        out: dict[str, str] = {}
        for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is not None:
                out[f"x-ratelimit-limit-{name}"] = str(int(bucket.limit))
                out[f"x-ratelimit-remaining-{name}"] = str(bucket.remaining(now))
                out[f"x-ratelimit-reset-{name}"] = go_duration(bucket.reset_time(now))
        return out

    def fill(self) -> None:
        """Refill both buckets."""
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.fill()

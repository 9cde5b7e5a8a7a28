"""Pacing: how long the next request must wait so the run stays under RPM, TPM and the server.

A pure module: every method takes ``now`` (seconds on any monotonic clock) and returns plain
values, so the tests move time by assignment and never sleep. The engine's gate turns the
answers into ``asyncio.sleep`` calls.

The model. A server that allows ``L`` per minute over 1-second windows behaves like a bucket
holding one second's share ``S = L/60`` that refills at ``L/60`` per second. The client keeps
the same bucket in GCRA form: ``tat`` is the time at which its own spending is paid off. Its
debt ``d = tat - now`` (seconds) means the server's bucket holds ``S - rate*d``. A request of
cost ``c`` may go when the server can take it, ``d <= (S - min(c, S)) / rate``, and never
sooner than the burst allowance ``BURST_SECONDS`` permits, so a minute's capacity is never spent
in its first second. A request larger than ``S`` waits for a full bucket, then goes: it never
starves, and its cost delays the requests after it.

On top of the configured pace the limiter follows the server:

- ``x-ratelimit-limit-*`` lowers the pace to the announced limit (or sets it when none was given);
- ``x-ratelimit-remaining-*`` pushes ``tat`` out when the server holds less than the client
  thinks (other processes share the key, or the client's estimates run low);
- a 429 starts a shared cool-down (``retry-after``) and cuts the pace to ``BACKOFF_RATE_FACTOR``
  of itself; the pace climbs back by ``RATE_RECOVERY_PER_SECOND`` of the target per second;
- a request the server refused unprocessed gives its tokens back (:meth:`Limiter.give_back`).

Nothing a server says is trusted blindly: counts outside [0, ``HEADER_MAX_COUNT``], durations
that are negative or not finite and garbage are ignored or clamped when read, ``tat`` never
runs more than ``LIMIT_WINDOW_MAX`` ahead of the clock, and no wait exceeds
``LIMITER_MAX_WAIT`` (a window plus the longest retry-after honoured).

A late event loop does not lose pace: ``tat`` may fall ``PACE_CATCH_UP`` behind the clock, so
the requests that were due while the loop was busy go at once when it comes back.

With no limits configured and no headers the limiter paces nothing; the concurrency window
then does the careful start: one request until the first answer, then +1 per success (TCP's
slow start) up to the in-flight cap while answers come back as fast as the first ones (once
they slow down, the server is queueing), halved on a 429. With limits, the window opens fully
at the first answer; before it, it doubles each time the wait has doubled (``PROBE_GRACE``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import constants as C

if TYPE_CHECKING:
    from .share import Share

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration as OpenAI sends it; ``None`` when unreadable, negative
    or not finite.

    >>> parse_duration("6m0s"), parse_duration("20ms"), parse_duration("2.188s")
    (360.0, 0.02, 2.188)
    >>> parse_duration("-5"), parse_duration("inf"), parse_duration("nan")
    (None, None, None)
    """
    if not text:
        return None
    text = text.strip()
    seconds = _finite(text)  # a bare number is seconds
    if seconds is None:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            return None
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    return seconds if 0.0 <= seconds < math.inf else None


def _finite(text: str) -> float | None:
    """``text`` as a finite float, else None (``inf``, ``nan``, ``1e400``, ``abc``)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _limit_header(headers: Mapping[str, str], name: str) -> int | None:
    """A per-minute limit: a finite number in [1, HEADER_MAX_COUNT], else None (ignored)."""
    value = headers.get(name)
    number = None if value is None else _finite(value)
    if number is None or not 1.0 <= number <= C.HEADER_MAX_COUNT:
        return None
    return int(number)


def _remaining_header(headers: Mapping[str, str], name: str) -> int | None:
    """A count left: finite, clamped to [0, HEADER_MAX_COUNT] (a negative count is none left)."""
    value = headers.get(name)
    number = None if value is None else _finite(value)
    if number is None:
        return None
    return int(min(max(number, 0.0), C.HEADER_MAX_COUNT))


@dataclass(frozen=True, slots=True)
class Budget:
    """One dimension of a server's rate-limit headers."""

    limit: int | None  # per minute
    remaining: int | None
    reset: float | None  # seconds until full again


_ANY_RATE_HEADER = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
)


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """The ``x-ratelimit-*`` headers of one response."""

    requests: Budget
    tokens: Budget

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> RateHeaders | None:
        """Read the headers; ``None`` when the server sent none (vLLM, Ollama, ...)."""
        if not any(name in headers for name in _ANY_RATE_HEADER):
            return None  # the common case for servers without limits: no parsing at all

        def budget(kind: str) -> Budget:
            limit = _limit_header(headers, f"x-ratelimit-limit-{kind}")
            remaining = _remaining_header(headers, f"x-ratelimit-remaining-{kind}")
            if remaining is not None and limit is not None:
                remaining = min(remaining, limit)  # never more left than the limit
            return Budget(
                limit, remaining, parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            )

        found = cls(budget("requests"), budget("tokens"))
        if found.requests == Budget(None, None, None) and found.tokens == Budget(None, None, None):
            return None
        return found


class Pace:
    """One GCRA bucket (requests or tokens). ``rate`` is per second; ``None`` paces nothing."""

    __slots__ = ("configured", "factor", "learned", "sent", "tat")

    def __init__(self, per_minute: float | None, now: float) -> None:
        self.configured = per_minute / 60.0 if per_minute else None
        self.learned: float | None = None  # from x-ratelimit-limit-*
        self.factor = 1.0  # cut by 429s, recovers over time
        self.tat = now
        self.sent = 0.0  # units sent so far, to reconcile with x-ratelimit-remaining

    @property
    def target(self) -> float | None:
        """The pace before 429 cuts: the lower of the configured and the announced limit."""
        configured, learned = self.configured, self.learned  # on the hot path: no list
        if configured and learned:
            return min(configured, learned)
        return configured or learned

    @property
    def rate(self) -> float | None:
        target = self.target
        return None if target is None else target * self.factor

    def allowed_debt(self, cost: float, rate: float) -> float:
        """How far ahead of the clock ``tat`` may be for a request of ``cost`` to go now."""
        share = self.target or rate  # the server's bucket: one second's share at the true limit
        return min(C.BURST_SECONDS, (share - min(cost, share)) / rate)

    def delay(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` units may be sent."""
        rate = self.rate
        if rate is None:
            return 0.0
        return max(0.0, self.tat - now - self.allowed_debt(cost, rate))

    def spend(self, cost: float, now: float) -> float:
        """Charge ``cost`` units sent at ``now``; returns the seconds of pace they took."""
        self.sent += cost
        rate = self.rate
        if rate is None:
            return 0.0
        seconds = cost / rate
        # tat may lag the clock by PACE_CATCH_UP: what a late loop missed is sent now, not
        # lost; but never so far that this request and the burst allowance would overdraw
        # the server's bucket (one second's share): ``slack`` is what the bucket leaves.
        share = self.target or rate
        slack = (share - min(cost, share)) / rate - C.BURST_SECONDS
        floor = now - min(C.PACE_CATCH_UP, slack) if slack > 0.0 else now
        start = self.tat if self.tat > floor else floor
        self.tat = min(start + seconds, now + C.LIMIT_WINDOW_MAX)
        return seconds

    def give_back(self, cost: float, seconds: float, now: float) -> None:
        """Undo a charge the server never made (``seconds`` as :meth:`spend` returned)."""
        self.sent -= cost
        if self.tat > now:
            self.tat = max(now, self.tat - seconds)

    def restart(self, at: float) -> None:
        """No catching up across a cool-down: the pace starts again from ``at``."""
        if self.rate is not None and self.tat < at:
            self.tat = at

    def follow(self, budget: Budget, sent_then: float, sent_at: float, now: float) -> None:
        """Adopt the server's limit and never run ahead of what it says remains."""
        if budget.limit:
            self.learn(budget.limit)
        rate = self.rate
        if rate is None or budget.remaining is None or not budget.limit:
            return
        refill = budget.limit / 60.0
        # What the server holds now: what it said, less what we sent since, plus its refill.
        # (It may hold more than a second's share: refill until the reset it announced.)
        reset = min(budget.reset or 0.0, C.LIMIT_WINDOW_MAX)  # a minute refills it all
        full = max(refill, budget.remaining + reset * refill)
        level = min(full, budget.remaining - (self.sent - sent_then) + (now - sent_at) * refill)
        # Let the client send about ``level`` units now, or, below one, wait for the refill.
        lag = (1.0 - level) / (refill if level < 1.0 else rate)
        needed_tat = now + self.allowed_debt(1.0, rate) + min(lag, C.LIMIT_WINDOW_MAX)
        if needed_tat > self.tat:
            self.tat = needed_tat

    def learn(self, per_minute: float) -> None:
        """Pace under a limit the server announced (per minute), with a margin for skew."""
        self.learned = per_minute / 60.0 * C.HEADER_LIMIT_SHARE

    def cut(self) -> None:
        # Under a limit the server announced, a 429 means a momentary burst (or another
        # client on the key, which x-ratelimit-remaining already accounts for): cut a little.
        # Without one, the pace may be far too high: cut hard.
        factor = C.BACKOFF_RATE_FACTOR_ANNOUNCED if self.learned else C.BACKOFF_RATE_FACTOR
        self.factor = max(0.05, self.factor * factor)

    def recover(self, elapsed: float) -> None:
        self.factor = min(1.0, self.factor + C.RATE_RECOVERY_PER_SECOND * elapsed)


@dataclass(frozen=True, slots=True)
class Ticket:
    """What the limiter remembers of one send, to read its answer's headers against."""

    sent_at: float
    requests_sent: float  # units sent so far, this request's included
    tokens_sent: float
    tokens: float = 0.0  # this request's estimate ...
    token_seconds: float = 0.0  # ... and the seconds of token pace it took


class Limiter:
    """RPM, TPM, the server's headers, 429 cool-downs and the concurrency window, in one place.

    >>> lim = Limiter(rpm=600, tpm=None, max_in_flight=10, now=0.0)
    >>> lim.delay(tokens=1, now=0.0)
    0.0
    >>> lim.on_response(lim.on_send(tokens=1, now=0.0), None, now=0.01)
    >>> round(lim.delay(tokens=1, now=0.01), 3)  # 10 requests/s: the next one 100 ms later
    0.04
    """

    def __init__(
        self,
        *,
        rpm: float | None,
        tpm: float | None,
        max_in_flight: int,
        now: float,
        share: Share | None = None,
    ) -> None:
        self.share = share  # a budget shared with other senders (engine/lease.py), or None
        self.requests = Pace(rpm, now)
        self.tokens = Pace(tpm, now)
        self.max_in_flight = max_in_flight
        self.cool_down_until = now
        self._last_cut = -math.inf
        self._last_recover = now
        self._answered = 0
        self._min_rtt = math.inf
        self._window = 1.0  # one request until the server has answered once ...
        # ... or, when limits were given, doubling each time the wait doubles (PROBE_GRACE,
        # then twice that...): a refused key is answered at once, and a slow first answer
        # opens the window gradually, so the number of requests sent blind stays small.
        self._probe_period = C.PROBE_GRACE
        self._probe_until = now + C.PROBE_GRACE if self._paced() else math.inf

    def __repr__(self) -> str:
        def fmt(rate: float | None) -> str:
            return "unpaced" if rate is None else f"{rate * 60:.0f}/min"

        return (
            f"<Limiter requests={fmt(self.requests.rate)} tokens={fmt(self.tokens.rate)} "
            f"window={self.window}/{self.max_in_flight} cool_down_until={self.cool_down_until:.3f}>"
        )

    @property
    def window(self) -> int:
        """How many requests may be in flight now."""
        return max(1, min(self.max_in_flight, int(self._window)))

    def probe_over(self, now: float) -> float | None:
        """Seconds until the window next grows while no answer has come; None: it will not.

        Before the first answer (with limits given) the window doubles at PROBE_GRACE, then
        after twice as long again, and so on: 2 at 0.5 s, 4 at 1.5 s, 8 at 3.5 s.
        """
        if self._answered or self._probe_until == math.inf:
            return None
        while now >= self._probe_until:
            self._window = min(self.max_in_flight, self._window * 2)
            self._probe_period *= 2
            self._probe_until += self._probe_period
            if self._window >= self.max_in_flight:
                self._probe_until = math.inf
                return None
        return self._probe_until - now

    def delay(self, tokens: float, now: float) -> float:
        """Seconds until a request estimated at ``tokens`` may be sent (0.0: send now)."""
        share = self.share
        if now >= self.cool_down_until and not self._paced() and share is None:
            return 0.0  # nothing to pace (a server without limits): the common fast path
        self._recover(now)
        wait = max(
            self.cool_down_until - now,
            self.requests.delay(1, now),
            self.tokens.delay(tokens, now),
            share.delay(tokens, now) if share is not None else 0.0,
        )
        # Below a microsecond is rounding, and sleeping it could spin on a clock that cannot tick.
        if wait <= 1e-6:
            return 0.0
        return wait if wait < C.LIMITER_MAX_WAIT else C.LIMITER_MAX_WAIT

    def on_send(self, tokens: float, now: float) -> Ticket:
        self.requests.spend(1, now)
        seconds = self.tokens.spend(tokens, now)
        if self.share is not None:
            self.share.spend(tokens, now)
        return Ticket(now, self.requests.sent, self.tokens.sent, tokens, seconds)

    def give_back(self, ticket: Ticket, now: float) -> None:
        """The server refused that request without processing it: its tokens were never
        charged, so they go back to the pace (the request still counts against RPM)."""
        self.tokens.give_back(ticket.tokens, ticket.token_seconds, now)

    def window_tokens(self) -> float | None:
        """Tokens the server takes in its one-second window (TPM / 60, configured or
        announced); a request over it never fits whole. None: unknown."""
        return self.tokens.target

    def request_token_cap(self) -> float | None:
        """Most tokens a pack should carry: ``EMBED_PACK_WINDOW_SHARE`` of the window, so it
        goes without waiting for an exactly full bucket. None: unknown."""
        target = self.tokens.target
        return None if target is None else max(1.0, target * C.EMBED_PACK_WINDOW_SHARE)

    def learn_token_limit(self, per_minute: int) -> None:
        """A TPM limit read from a 429's message ("Limit X, ..."), as x-ratelimit-limit-tokens."""
        self.tokens.learn(per_minute)

    def on_response(self, ticket: Ticket, headers: RateHeaders | None, now: float) -> None:
        """An answer that was not a 429 (success or any other error)."""
        self._answered += 1
        if headers is not None:
            self.requests.follow(headers.requests, ticket.requests_sent, ticket.sent_at, now)
            self.tokens.follow(headers.tokens, ticket.tokens_sent, ticket.sent_at, now)
            self._tell_share(headers)
        rtt = now - ticket.sent_at
        self._min_rtt = min(self._min_rtt, rtt)
        if self._answered == 1 and self._paced():
            self._window = self.max_in_flight  # limits known: the pace does the rest
        elif self._window < self.max_in_flight and rtt <= 2 * self._min_rtt + C.QUEUEING_SLACK:
            # Slow start (doubling every round trip) while answers come as fast as the first
            # ones; once they slow down, requests are queueing at the server: more in flight
            # would only cost connections and CPU, not speed.
            self._window += 1

    def on_rate_limited(
        self, ticket: Ticket, headers: RateHeaders | None, retry_after: float | None, now: float
    ) -> None:
        """A 429: cool down everyone, and cut the pace once per cool-down."""
        self._answered += 1
        wait = C.DEFAULT_COOL_DOWN
        if retry_after is not None and 0.0 < retry_after <= C.RETRY_AFTER_MAX:  # NaN: no
            wait = retry_after
        self.cool_down_until = max(self.cool_down_until, now + wait)
        self.requests.restart(self.cool_down_until)
        self.tokens.restart(self.cool_down_until)
        if headers is not None:
            self.requests.follow(headers.requests, ticket.requests_sent, ticket.sent_at, now)
            self.tokens.follow(headers.tokens, ticket.tokens_sent, ticket.sent_at, now)
            self._tell_share(headers)
        if self.share is not None:  # every sender of the budget slows, not this one alone
            self.share.on_rate_limited(wait if retry_after is not None else None, now)
        if self._answered == 1 and self._paced():
            self._window = self.max_in_flight  # an answer: the key works, the pace rules
        # Answers to requests sent before the last cut say nothing new about the new pace.
        if ticket.sent_at < self._last_cut:
            return
        self._last_cut = now
        self.requests.cut()
        self.tokens.cut()
        if not self._paced():
            self._window = max(1.0, self._window / 2)

    def _tell_share(self, headers: RateHeaders) -> None:
        if self.share is not None:
            r, t = headers.requests, headers.tokens
            self.share.on_headers(r.limit, r.remaining, t.limit, t.remaining)

    def _paced(self) -> bool:
        return self.requests.rate is not None or self.tokens.rate is not None

    def _recover(self, now: float) -> None:
        if now < self.cool_down_until:
            self._last_recover = now  # no climbing back while cooling down
            return
        elapsed = now - self._last_recover
        if elapsed > 0:
            self.requests.recover(elapsed)
            self.tokens.recover(elapsed)
            self._last_recover = now

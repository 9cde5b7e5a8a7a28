"""One rate budget shared by many senders: leases of capacity, handed out a slice at a time.

A pure module, like the limiter: every method takes ``now`` and returns plain values.

Two halves. The **book** (:class:`LeaseBook`) lives with a coordinator (a lock in this process,
a Redis key, a Dask actor) and holds the account's budget as the limiter holds one sender's:
two GCRA buckets (:class:`~dfbatch.engine.limiter.Pace`) at the account's RPM and TPM. A sender
asks (:class:`Ask`) and is granted (:class:`Grant`) a *slice*: ``LEASE_SLICE_SECONDS`` of the
account's rate, to be spent from ``starts_in`` for ``lasts`` seconds. Granting charges the
book's buckets, so slices go out at the account's pace whatever the number of senders, and N
senders together stay under the limit. What a sender did not spend comes back with its next ask.

The **wallet** (:class:`Wallet`) lives in each sender's engine, beside its limiter: a request
may go when a slice it holds has started and covers it; the wallet says when to ask for the
next slice (before the current one runs out, so the round trip is hidden). Signals travel with
the asks: a 429 one sender saw cools down and cuts the book's pace, so every sender slows; a
server's ``x-ratelimit-remaining`` pushes the book's buckets out the same way.

When the coordinator cannot be reached, the wallet spends alone at an even split of the
account's rate (the limit divided by the senders the book last counted), and goes back to
leasing as soon as an ask succeeds again.

Times in a grant are relative (seconds from the coordinator's ``now``): senders and
coordinators need not share a clock.

>>> book = LeaseBook(now=0.0)
>>> ask = Ask(sender="a", rpm=600, tpm=None)
>>> g = book.lease(ask, now=0.0)              # 10 requests/s: a slice of 1 request
>>> g.requests, g.starts_in, g.senders
(1.0, 0.0, 1)
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from . import constants as C
from .limiter import Pace
from .share import Share

#: The limiter rounds waits below a microsecond to zero: a slice starting that soon has started.
_EPS = 1e-6
#: Granted when the book has no rate at all (nothing configured or announced): no pacing.
UNPACED = 1e12


@dataclass(frozen=True, slots=True)
class Ask:
    """A sender's request for its next slice, with what it has to report since its last one."""

    sender: str
    rpm: float | None
    tpm: float | None
    tokens_per_request: float = 1.0  # the sender's running estimate, to size the token slice
    min_tokens: float = 0.0  # the request waiting now: a slice always covers it
    returned_requests: float = 0.0  # left over from slices that expired unspent
    returned_tokens: float = 0.0
    rate_limited: bool = False  # a 429 was seen since the last ask ...
    retry_after: float | None = None  # ... with this retry-after
    limit_requests: int | None = None  # the latest x-ratelimit-* the sender saw
    remaining_requests: int | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    closing: bool = False  # the sender is done: take back what it returns, forget it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ask:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Grant:
    """A slice: ``requests`` and ``tokens`` to spend from ``starts_in`` seconds for ``lasts``."""

    requests: float
    tokens: float
    starts_in: float
    lasts: float
    cool_down_for: float = 0.0  # the account cools down after a 429: nobody sends before
    senders: int = 1  # senders the book counts as active (for the even split when it is lost)
    retry_in: float = 0.0  # nothing granted: ask again after this many seconds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grant:
        return cls(**data)


def _pace_state(p: Pace) -> list[Any]:
    return [p.configured, p.factor, p.learned, p.sent, p.tat]


def _pace_from(state: list[Any]) -> Pace:
    p = Pace(None, 0.0)
    p.configured, p.factor, p.learned, p.sent, p.tat = state
    return p


class LeaseBook:
    """The coordinator's side: the account's buckets, the senders, the 429 cool-down."""

    def __init__(self, now: float) -> None:
        self.requests = Pace(None, now)
        self.tokens = Pace(None, now)
        self.cool_down_until = now
        self.last_cut = -math.inf
        self.last_recover = now
        self.senders: dict[str, float] = {}  # sender -> last ask

    def __repr__(self) -> str:
        def fmt(rate: float | None) -> str:
            return "unpaced" if rate is None else f"{rate * 60:.0f}/min"

        return (
            f"<LeaseBook requests={fmt(self.requests.rate)} tokens={fmt(self.tokens.rate)} "
            f"senders={len(self.senders)}>"
        )

    # -- state as plain values, for a coordinator that keeps it outside the process (Redis)
    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": _pace_state(self.requests),
            "tokens": _pace_state(self.tokens),
            "cool_down_until": self.cool_down_until,
            "last_cut": None if self.last_cut == -math.inf else self.last_cut,
            "last_recover": self.last_recover,
            "senders": self.senders,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, now: float) -> LeaseBook:
        book = cls(now)
        if data:
            book.requests = _pace_from(data["requests"])
            book.tokens = _pace_from(data["tokens"])
            book.cool_down_until = data["cool_down_until"]
            last_cut = data["last_cut"]
            book.last_cut = -math.inf if last_cut is None else last_cut
            book.last_recover = data["last_recover"]
            book.senders = dict(data["senders"])
        return book

    def lease(self, ask: Ask, now: float) -> Grant:
        """Take the ask's returns and reports, and grant its next slice (or say when to ask)."""
        self._configure(ask.rpm, ask.tpm)
        self._refund(ask, now)
        self._report(ask, now)
        self._recover(now)
        self.senders = {s: t for s, t in self.senders.items() if now - t < C.LEASE_ACTIVE_SECONDS}
        if ask.closing:
            self.senders.pop(ask.sender, None)
            return Grant(0.0, 0.0, 0.0, 0.0, senders=max(1, len(self.senders)))
        self.senders[ask.sender] = now
        senders = len(self.senders)
        cool = max(0.0, self.cool_down_until - now)
        r_rate, t_rate = self.requests.rate, self.tokens.rate
        if r_rate is None and t_rate is None:
            return Grant(UNPACED, UNPACED, cool, C.LEASE_TTL, cool, senders)
        per_request = max(ask.tokens_per_request, 1.0)
        n = max(1.0, float(math.floor(r_rate * C.LEASE_SLICE_SECONDS))) if r_rate else None
        if t_rate is not None:
            token_slice = max(ask.min_tokens, t_rate * C.LEASE_SLICE_SECONDS)
            fits = max(1.0, float(math.floor(token_slice / per_request)))
            n = fits if n is None else min(n, fits)
        assert n is not None
        tokens = max(ask.min_tokens, n * per_request) if t_rate is not None else UNPACED
        wait = max(
            cool,
            self.requests.delay(n, now),
            self.tokens.delay(tokens, now) if t_rate is not None else 0.0,
        )
        if wait > C.LEASE_MAX_AHEAD:
            return Grant(0.0, 0.0, 0.0, 0.0, cool, senders, retry_in=wait - C.LEASE_MAX_AHEAD)
        start = now + wait
        self.requests.spend(n, start)
        if t_rate is not None:
            self.tokens.spend(tokens, start)
        return Grant(n, tokens, wait, C.LEASE_TTL, cool, senders)

    def _configure(self, rpm: float | None, tpm: float | None) -> None:
        # Several senders may be told different limits: the book keeps the lowest.
        for pace, limit in ((self.requests, rpm), (self.tokens, tpm)):
            if limit:
                rate = limit / 60.0
                pace.configured = rate if pace.configured is None else min(pace.configured, rate)

    def _refund(self, ask: Ask, now: float) -> None:
        # Capacity granted and never spent goes back, but the buckets never move into the
        # past: what was not spent then is gone, as it is at the server.
        returns = ((self.requests, ask.returned_requests), (self.tokens, ask.returned_tokens))
        for pace, back in returns:
            rate = pace.rate
            if back > 0 and rate:
                pace.tat = max(now, pace.tat - back / rate)

    def _report(self, ask: Ask, now: float) -> None:
        if ask.rate_limited:
            wait = ask.retry_after if ask.retry_after is not None else C.DEFAULT_COOL_DOWN
            self.cool_down_until = max(self.cool_down_until, now + wait)
            # One cut per cool-down, however many senders report the same burst of 429s.
            if now >= self.last_cut + wait:
                self.last_cut = now
                self.requests.cut()
                self.tokens.cut()
        for pace, limit, remaining in (
            (self.requests, ask.limit_requests, ask.remaining_requests),
            (self.tokens, ask.limit_tokens, ask.remaining_tokens),
        ):
            if limit:
                pace.learned = limit / 60.0 * C.HEADER_LIMIT_SHARE
            rate = pace.rate
            if limit and remaining is not None and rate:
                # The server holds ``remaining``: the book may not grant more before the
                # refill has brought it back to one second's share.
                refill = limit / 60.0
                needed = now + (refill - remaining) / refill - C.BURST_SECONDS
                if needed > pace.tat:
                    pace.tat = needed

    def _recover(self, now: float) -> None:
        if now < self.cool_down_until:
            self.last_recover = now
            return
        elapsed = now - self.last_recover
        if elapsed > 0:
            self.requests.recover(elapsed)
            self.tokens.recover(elapsed)
            self.last_recover = now


@dataclass(slots=True)
class _Slice:
    start: float
    until: float
    requests: float
    tokens: float


@dataclass(slots=True)
class _Reports:
    rate_limited: bool = False
    retry_after: float | None = None
    limit_requests: int | None = None
    remaining_requests: int | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None


class Wallet:
    """A sender's side: the slices it holds, when to ask for more, the even split when alone.

    >>> w = Wallet("a", rpm=600, tpm=None, now=0.0)
    >>> w.delay(tokens=10, now=0.0)       # nothing held yet: wait for the first slice
    0.005
    >>> w.on_grant(Grant(1.0, UNPACED, 0.0, 0.5), now=0.0)
    >>> w.delay(tokens=10, now=0.0)
    0.0
    """

    def __init__(self, sender: str, *, rpm: float | None, tpm: float | None, now: float) -> None:
        self.sender = sender
        self.rpm, self.tpm = rpm, tpm
        self.slices: list[_Slice] = []
        self.asking = False  # an ask is on its way: do not send another
        self.alone = False  # the coordinator is lost: spend an even split
        self.senders = 1  # as the book last counted them
        self.cool_down_until = now
        self.retry_at = now  # nothing granted: do not ask before
        self.slice_requests = 1.0  # size of the last slice granted
        self.returned_requests = 0.0
        self.returned_tokens = 0.0
        self.tokens_per_request = 1.0
        self._seen = 0
        self._waiting_tokens = 0.0  # tokens of the request waiting at the gate, 0: none
        self._asked_at = -math.inf  # when the limiter last consulted the wallet
        self._reports = _Reports()
        self._split_requests = Pace(None, now)
        self._split_tokens = Pace(None, now)

    def __repr__(self) -> str:
        held = sum(s.requests for s in self.slices)
        mode = "alone" if self.alone else "shared"
        return f"<Wallet {self.sender} {mode} slices={len(self.slices)} requests={held:g}>"

    # -- the limiter's side
    def delay(self, tokens: float, now: float) -> float:
        """Seconds until a request of ``tokens`` may go by this wallet (0.0: now)."""
        self._asked_at = now
        self._expire(now)
        if now < self.cool_down_until:
            self._waiting_tokens = tokens
            return self.cool_down_until - now
        next_start = math.inf
        for s in self.slices:
            if s.requests >= 1 and s.tokens >= tokens:
                if s.start <= now + _EPS:
                    self._waiting_tokens = 0.0
                    return 0.0
                next_start = min(next_start, s.start)
        if self.alone:
            wait = max(self._split_requests.delay(1, now), self._split_tokens.delay(tokens, now))
            self._waiting_tokens = 0.0 if wait <= 0 else tokens
            return wait
        self._waiting_tokens = tokens
        if next_start < math.inf:
            return next_start - now
        return max(C.LEASE_POLL, self.retry_at - now)

    def spend(self, tokens: float, now: float) -> None:
        s = self._usable(tokens, now)
        if s is not None:
            s.requests -= 1
            s.tokens -= tokens
        else:  # alone: the even split pays (the limiter asked ``delay`` first)
            self._split_requests.spend(1, now)
            self._split_tokens.spend(tokens, now)
        self._seen += 1
        # A running mean over the last requests sizes the token slices.
        weight = 1.0 / min(self._seen, C.LEASE_TOKENS_MEAN_REQUESTS)
        self.tokens_per_request += (tokens - self.tokens_per_request) * weight

    def on_rate_limited(self, retry_after: float | None, now: float) -> None:
        self._reports.rate_limited = True
        if retry_after is not None:
            prev = self._reports.retry_after
            self._reports.retry_after = retry_after if prev is None else max(prev, retry_after)

    def on_headers(
        self,
        limit_requests: int | None,
        remaining_requests: int | None,
        limit_tokens: int | None,
        remaining_tokens: int | None,
    ) -> None:
        r = self._reports
        r.limit_requests, r.remaining_requests = limit_requests, remaining_requests
        r.limit_tokens, r.remaining_tokens = limit_tokens, remaining_tokens

    # -- the lease loop's side
    def wants(self, now: float) -> bool:
        """Whether to ask the coordinator now."""
        if self.asking or now < self.retry_at:
            return False
        if self._reports.rate_limited:
            return True
        if self.alone:  # try the coordinator again, while the run still sends
            return now - self._asked_at < C.LEASE_RETRY_ALONE
        self._expire(now)
        if not self._waiting_tokens and not self.slices:
            return False  # no demand: an idle sender holds nothing and asks nothing
        future = [s for s in self.slices if s.start > now + _EPS]
        if future:
            return False  # the next slice is already held
        held = sum(s.requests for s in self.slices)
        if held <= self.slice_requests * C.LEASE_REFILL_AT:
            return True
        return self._waiting_tokens > 0 and self._usable(self._waiting_tokens, now) is None

    def ask(self, now: float, *, closing: bool = False) -> Ask:
        """The ask to send (what was returned and reported goes with it, once)."""
        self._expire(now)
        if closing:
            for s in self.slices:
                self.returned_requests += max(0.0, s.requests)
                self.returned_tokens += max(0.0, s.tokens)
            self.slices.clear()
        r = self._reports
        ask = Ask(
            sender=self.sender,
            rpm=self.rpm,
            tpm=self.tpm,
            tokens_per_request=self.tokens_per_request,
            min_tokens=self._waiting_tokens,
            returned_requests=self.returned_requests,
            returned_tokens=self.returned_tokens,
            rate_limited=r.rate_limited,
            retry_after=r.retry_after,
            limit_requests=r.limit_requests,
            remaining_requests=r.remaining_requests,
            limit_tokens=r.limit_tokens,
            remaining_tokens=r.remaining_tokens,
            closing=closing,
        )
        self.returned_requests = self.returned_tokens = 0.0
        self._reports = _Reports()
        self.asking = True
        return ask

    def on_grant(self, grant: Grant, now: float) -> None:
        """The coordinator answered (and is reachable again, if it was lost)."""
        self.asking = False
        self.alone = False
        self.senders = max(1, grant.senders)
        self.cool_down_until = max(self.cool_down_until, now + grant.cool_down_for)
        self.retry_at = now + grant.retry_in
        if grant.requests > 0:
            start = now + grant.starts_in
            self.slices.append(_Slice(start, start + grant.lasts, grant.requests, grant.tokens))
            self.slice_requests = grant.requests

    def on_lost(self, ask: Ask, now: float) -> None:
        """The ask failed: spend an even split until the coordinator answers again.

        What the failed ask carried is kept for the next one (nothing reported is lost).
        """
        self.asking = False
        self.returned_requests += ask.returned_requests
        self.returned_tokens += ask.returned_tokens
        if ask.rate_limited:
            self.on_rate_limited(ask.retry_after, now)
        if not self.alone:
            self.alone = True
            share = 1.0 / self.senders
            self._split_requests = Pace(self.rpm * share if self.rpm else None, now)
            self._split_tokens = Pace(self.tpm * share if self.tpm else None, now)
        self.retry_at = now + C.LEASE_RETRY_ALONE

    # -- inside
    def _usable(self, tokens: float, now: float) -> _Slice | None:
        for s in self.slices:
            if s.start <= now + _EPS and s.requests >= 1 and s.tokens >= tokens:
                return s
        return None

    def _expire(self, now: float) -> None:
        if self.slices and self.slices[0].until <= now:
            kept = []
            for s in self.slices:
                if s.until <= now:
                    self.returned_requests += max(0.0, s.requests)
                    self.returned_tokens += max(0.0, s.tokens)
                else:
                    kept.append(s)
            self.slices = kept


class SharedBudget(Protocol):
    """A way to join a shared budget for one run: the engine opens it and closes it.

    ``open`` returns the :class:`Share` the limiter consults and an awaitable that closes it
    (returning what was not spent). Implementations live outside the engine
    (``dfbatch.coord``): the engine knows only this.
    """

    async def open(
        self, *, rpm: float | None, tpm: float | None, clock: Callable[[], float]
    ) -> tuple[Share, Callable[[], Awaitable[None]]]: ...

"""The shared budget's pure core: a book that grants slices, wallets that spend them.

Fake clock throughout: time moves by assignment, nothing sleeps. The server is the simulator's
own per-second bucket (``dfbatch.testing.RateLimiter``), driven by the same clock.
"""

from __future__ import annotations

import math

import pytest

from dfbatch.engine import constants as C
from dfbatch.engine.lease import UNPACED, Ask, Grant, LeaseBook, Wallet
from dfbatch.engine.limiter import Limiter
from dfbatch.testing import RateLimiter


def _run(
    senders: int,
    rpm: float,
    seconds: float,
    *,
    shared: bool = True,
    rtt: float = 0.002,
    tpm: float | None = None,
    tokens: float = 1.0,
    step: float = 0.001,
    on_tick=None,
):
    """Each sender always has a request waiting; returns (sent, refused by the server)."""
    clock = [0.0]
    server = RateLimiter(rpm=rpm, tpm=tpm, clock=lambda: clock[0])
    book = LeaseBook(now=0.0)
    wallets = [Wallet(f"s{i}", rpm=rpm, tpm=tpm, now=0.0) for i in range(senders)]
    limiters = [
        Limiter(rpm=rpm, tpm=tpm, max_in_flight=100, now=0.0, share=wallets[i] if shared else None)
        for i in range(senders)
    ]
    for lim in limiters:
        lim._window = 100  # past the first request's probe: the pace alone decides
        lim._probe_until = math.inf
    answers: list[tuple[float, int, Ask]] = []  # grants on their way back
    sent = refused = 0
    steps = int(seconds / step)
    for k in range(steps):
        now = clock[0] = k * step
        if on_tick is not None:
            on_tick(now, book, wallets)
        for due, i, ask in [a for a in answers if a[0] <= now]:
            answers.remove((due, i, ask))
            wallets[i].on_grant(book.lease(ask, now - rtt / 2), now)
        for i, lim in enumerate(limiters):
            w = wallets[i]
            while lim.delay(tokens, now) <= 0.0:
                lim.on_send(tokens, now)
                sent += 1
                if not server.admit(int(tokens), now).admitted:
                    refused += 1
            if shared and w.wants(now):
                answers.append((now + rtt, i, w.ask(now)))
    return sent, refused


def test_four_senders_sharing_one_budget_stay_under_the_limit_and_use_it():
    """4 senders told the account's 6,000 RPM send at ~100/s together, and none is refused."""
    sent, refused = _run(4, rpm=6000, seconds=10)
    assert refused == 0
    assert sent >= 0.9 * 100 * 10
    assert sent <= 100 * 10 + 100  # at most one second's share above the rate


def test_without_sharing_four_senders_send_four_times_too_much():
    """The naive setup: each sender paces at the full limit, and the server refuses the excess."""
    sent, refused = _run(4, rpm=6000, seconds=5, shared=False)
    assert sent > 3.5 * 100 * 5
    assert refused > 2 * 100 * 5


def test_tokens_are_shared_too():
    """TPM binds: 3 senders of 500-token requests under 60,000 TPM send ~1,000 tokens/s."""
    sent, refused = _run(3, rpm=60_000, tpm=60_000, tokens=500, seconds=10)
    assert refused == 0
    assert 0.9 * 2 * 10 <= sent <= 2 * 10 + 2


def test_a_slice_is_a_tenth_of_a_second_and_the_next_one_queues_behind_it():
    """Granting charges the account's bucket: slices go out at the account's pace."""
    book = LeaseBook(now=0.0)
    ask = Ask("a", rpm=6000, tpm=None)
    first = book.lease(ask, now=0.0)
    assert (first.requests, first.starts_in, first.lasts) == (10.0, 0.0, C.LEASE_TTL)
    grants = [book.lease(Ask(f"s{i}", rpm=6000, tpm=None), now=0.0) for i in range(30)]
    starts = [g.starts_in for g in grants if g.requests]
    assert starts == sorted(starts)
    assert max(starts) <= C.LEASE_MAX_AHEAD
    assert starts[-1] == pytest.approx(0.1 * len(starts) - C.BURST_SECONDS, abs=0.11)
    refused = [g for g in grants if not g.requests]
    assert refused and all(g.retry_in > 0 for g in refused)
    assert grants[-1].senders == 31


def test_the_lowest_limit_told_wins():
    """Senders told different limits: the book paces at the lowest."""
    book = LeaseBook(now=0.0)
    book.lease(Ask("a", rpm=6000, tpm=None), now=0.0)
    book.lease(Ask("b", rpm=600, tpm=None), now=0.0)
    assert book.requests.rate == pytest.approx(10.0)


def test_what_a_sender_did_not_spend_goes_back_to_the_others():
    """A closing sender returns its slice; the next ask is granted without waiting for it."""
    book = LeaseBook(now=0.0)
    book.lease(Ask("a", rpm=600, tpm=None), now=0.0)  # 1 request of 10/s
    behind = book.lease(Ask("b", rpm=600, tpm=None), now=0.0)
    assert behind.starts_in > 0
    book2 = LeaseBook(now=0.0)
    book2.lease(Ask("a", rpm=600, tpm=None), now=0.0)
    book2.lease(Ask("a", rpm=600, tpm=None, returned_requests=1.0, closing=True), now=0.0)
    now_again = book2.lease(Ask("b", rpm=600, tpm=None), now=0.0)
    assert now_again.starts_in == 0.0 and now_again.senders == 1


def test_a_wallet_returns_expired_slices_with_its_next_ask():
    """A slice not spent within its ttl expires, and its balance rides on the next ask."""
    w = Wallet("a", rpm=6000, tpm=None, now=0.0)
    w.delay(1, 0.0)
    w.on_grant(Grant(10.0, UNPACED, 0.0, C.LEASE_TTL), now=0.0)
    w.spend(1, 0.0)
    assert w.delay(1, C.LEASE_TTL) > 0  # expired: nothing to spend
    ask = w.ask(C.LEASE_TTL)
    assert ask.returned_requests == 9.0
    assert w.ask(C.LEASE_TTL + 1).returned_requests == 0.0  # returned once only


def test_a_429_seen_by_one_sender_slows_every_sender():
    """One sender reports a 429: the book cools down for its retry-after and cuts the pace;
    another sender's next grant carries the cool-down and its wallet holds its requests."""
    book = LeaseBook(now=0.0)
    a = Wallet("a", rpm=6000, tpm=None, now=0.0)
    b = Wallet("b", rpm=6000, tpm=None, now=0.0)
    for w in (a, b):
        w.delay(1, 0.0)
        w.on_grant(book.lease(w.ask(0.0), 0.0), 0.0)
    rate = book.requests.rate
    lim = Limiter(rpm=6000, tpm=None, max_in_flight=10, now=0.0, share=a)
    ticket = lim.on_send(1, 0.01)
    lim.on_rate_limited(ticket, None, retry_after=2.0, now=0.02)
    assert a.wants(0.02)
    book.lease(a.ask(0.02), 0.02)
    assert book.requests.rate == pytest.approx(rate * C.BACKOFF_RATE_FACTOR)
    b.delay(1, 0.03)
    b.on_grant(book.lease(b.ask(0.03), 0.03), 0.03)
    assert b.delay(1, 0.03) == pytest.approx(1.99)
    assert b.delay(1, 2.03) == 0.0 or b.delay(1, 2.03) <= C.LEASE_POLL


def test_many_429s_of_one_burst_cut_the_pace_once():
    """Every sender may report the same burst: one cut per cool-down."""
    book = LeaseBook(now=0.0)
    book.lease(Ask("a", rpm=6000, tpm=None), 0.0)
    rate = book.requests.rate
    for i in range(5):
        book.lease(Ask(f"s{i}", rpm=6000, tpm=None, rate_limited=True, retry_after=1.0), 0.1)
    assert book.requests.rate == pytest.approx(rate * C.BACKOFF_RATE_FACTOR)


def test_the_servers_remaining_holds_back_every_sender():
    """x-ratelimit-remaining 0 reported by one sender: the book grants nothing for a while."""
    book = LeaseBook(now=0.0)
    book.lease(Ask("a", rpm=6000, tpm=None), 0.0)
    book.lease(Ask("a", rpm=6000, tpm=None, limit_requests=6000, remaining_requests=0), 0.05)
    g = book.lease(Ask("b", rpm=6000, tpm=None), 0.05)
    assert g.starts_in >= 0.9


def test_a_lost_coordinator_means_an_even_split_then_sharing_again():
    """When an ask fails the wallet paces at limit / senders; an answer brings sharing back,
    and what the failed ask carried (returns, a 429) is sent again."""
    w = Wallet("a", rpm=6000, tpm=None, now=0.0)
    w.delay(1, 0.0)
    w.on_grant(Grant(10.0, UNPACED, 0.0, C.LEASE_TTL, senders=4), now=0.0)
    w.on_rate_limited(None, 0.0)
    lost = w.ask(1.0)  # the slice expired unspent: 10 go back with it
    w.on_lost(lost, now=1.0)
    assert w.alone and not w.wants(1.0) and w.wants(1.0 + C.LEASE_RETRY_ALONE)
    # Alone: 6,000 / 4 = 25 requests/s.
    sent, now = 0, 1.0
    while now < 3.0:
        if w.delay(1, now) <= 0:
            w.spend(1, now)
            sent += 1
        else:
            now += 0.001
    assert sent == pytest.approx(25 * 2, abs=3)
    again = w.ask(3.0)
    assert again.returned_requests == 10.0 and again.rate_limited
    w.on_grant(Grant(10.0, UNPACED, 0.0, C.LEASE_TTL, senders=4), now=3.0)
    assert not w.alone and w.delay(1, 3.0) == 0.0


def test_a_request_larger_than_a_slice_is_granted_a_slice_that_covers_it():
    """The waiting request's tokens ride on the ask: it never starves."""
    book = LeaseBook(now=0.0)
    w = Wallet("a", rpm=None, tpm=60_000, now=0.0)  # 100 tokens a slice
    assert w.delay(5_000, 0.0) > 0
    g = book.lease(w.ask(0.0), 0.0)
    w.on_grant(g, 0.0)
    assert g.tokens >= 5_000
    assert w.delay(5_000, g.starts_in) == 0.0


def test_an_idle_sender_asks_nothing():
    """No request waiting and nothing held: no round trips."""
    w = Wallet("a", rpm=6000, tpm=None, now=0.0)
    assert not w.wants(0.0) and not w.wants(10.0)


def test_grants_are_in_the_coordinators_time_and_senders_keep_their_own_clocks():
    """A grant's times are relative: a sender whose clock reads 1,000 s spends it from then."""
    book = LeaseBook(now=5.0)
    w = Wallet("a", rpm=6000, tpm=None, now=1000.0)
    w.delay(1, 1000.0)
    w.on_grant(book.lease(w.ask(1000.0), now=5.0), now=1000.0)
    assert w.delay(1, 1000.0) == 0.0


def test_a_book_kept_as_plain_values_grants_the_same():
    """to_dict/from_dict (how Redis keeps it) lose nothing."""
    a, now = LeaseBook(now=0.0), 0.0
    for i in range(5):
        a.lease(Ask(f"s{i}", rpm=6000, tpm=90_000, tokens_per_request=50), now)
    a.lease(Ask("s0", rpm=6000, tpm=90_000, rate_limited=True), 0.2)
    b = LeaseBook.from_dict(a.to_dict(), now=0.3)
    ask = Ask("s1", rpm=6000, tpm=90_000, tokens_per_request=50)
    assert a.lease(ask, 0.3) == b.lease(ask, 0.3)
    assert Ask.from_dict(ask.to_dict()) == ask

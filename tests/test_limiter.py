"""The limiter is pure: these tests move a number for time and never sleep."""

from __future__ import annotations

import pytest

from dfbatch.engine import constants as C
from dfbatch.engine.limiter import Budget, Limiter, RateHeaders, parse_duration


def drive(lim: Limiter, n: int, *, tokens: int = 1, now: float = 0.0) -> list[float]:
    """Send n requests as soon as the limiter allows; return their send times."""
    times = []
    for _ in range(n):
        now += lim.delay(tokens, now)
        ticket = lim.on_send(tokens, now)
        lim.on_response(ticket, None, now)
        times.append(now)
    return times


def max_in_window(times: list[float], window: float) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("20ms", 0.02),
        ("2.188s", 2.188),
        ("6m0s", 360.0),
        ("1h0m0s", 3600.0),
        ("0.5", 0.5),
        ("", None),
        (None, None),
        ("soon", None),
        ("5x", None),
    ],
)
def test_parse_duration(text: str | None, seconds: float | None) -> None:
    """Go-style durations as OpenAI sends them are read; anything else gives None."""
    assert parse_duration(text) == seconds


def test_rate_headers_absent_is_none() -> None:
    """A server that sends no x-ratelimit headers yields None, not an empty budget."""
    assert RateHeaders.parse({"content-type": "application/json"}) is None


def test_rate_headers_parsed() -> None:
    """All six headers are read, with reset as seconds."""
    h = RateHeaders.parse(
        {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "59",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-tokens": "149984",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    assert h == RateHeaders(Budget(60, 59, 1.0), Budget(150000, 149984, 360.0))


def test_first_request_goes_alone_until_answered() -> None:
    """Before the first answer only one request may be in flight (a bad key costs one request)."""
    lim = Limiter(rpm=None, tpm=None, max_in_flight=1000, now=0.0)
    assert lim.window == 1
    ticket = lim.on_send(1, 0.0)
    lim.on_response(ticket, None, 0.1)
    assert lim.window == 2  # unpaced: slow start, +1 per answer


def test_window_opens_fully_once_paced() -> None:
    """With a known RPM the pace does the limiting, so the window opens after the first answer."""
    lim = Limiter(rpm=6000, tpm=None, max_in_flight=1000, now=0.0)
    lim.on_response(lim.on_send(1, 0.0), None, 0.1)
    assert lim.window == 1000


def test_paces_evenly_never_a_minutes_burst() -> None:
    """6,000 RPM: 100 per second, no 1-second window holds more than 100 + the small burst."""
    lim = Limiter(rpm=6000, tpm=None, max_in_flight=1000, now=0.0)
    times = drive(lim, 3000)
    assert times[-1] == pytest.approx(30.0, abs=0.2)
    assert max_in_window(times, 1.0) <= 100 + 6000 / 60 * C.BURST_SECONDS + 1
    assert max_in_window(times, 0.1) <= 16  # smooth: ~10 per 100 ms


def test_tpm_paces_by_tokens() -> None:
    """60,000 TPM with 100-token requests: 10 requests a second."""
    lim = Limiter(rpm=None, tpm=60_000, max_in_flight=1000, now=0.0)
    times = drive(lim, 101, tokens=100)
    assert times[-1] == pytest.approx(10.0, abs=0.1)


def test_request_larger_than_a_seconds_share_waits_then_goes() -> None:
    """A 5,000-token request under 60,000 TPM (1,000/s) waits for a full bucket, never starves."""
    lim = Limiter(rpm=None, tpm=60_000, max_in_flight=1000, now=0.0)
    times = drive(lim, 3, tokens=400)  # 1.2 s of share spent
    big_wait = lim.delay(5000, times[-1])
    assert 0 < big_wait < 2.0
    t = times[-1] + big_wait
    lim.on_send(5000, t)
    # The next small request pays for the big one: about 5 s later.
    assert lim.delay(10, t) == pytest.approx(5.0 - C.BURST_SECONDS, abs=0.02)


def test_learns_limit_from_headers_when_none_given() -> None:
    """With no rpm given, x-ratelimit-limit-requests sets the pace."""
    lim = Limiter(rpm=None, tpm=None, max_in_flight=1000, now=0.0)
    h = RateHeaders(Budget(600, 9, 0.1), Budget(None, None, None))
    lim.on_response(lim.on_send(1, 0.0), h, 0.0)
    assert lim.requests.rate == pytest.approx(10 * C.HEADER_LIMIT_SHARE)
    assert lim.window == 1000


def test_header_limit_lowers_a_too_high_setting() -> None:
    """Told 12,000 RPM, a server announcing 6,000 wins."""
    lim = Limiter(rpm=12_000, tpm=None, max_in_flight=1000, now=0.0)
    h = RateHeaders(Budget(6000, 99, 0.01), Budget(None, None, None))
    lim.on_response(lim.on_send(1, 0.0), h, 0.0)
    assert lim.requests.rate == pytest.approx(100 * C.HEADER_LIMIT_SHARE)


def test_never_runs_ahead_of_remaining() -> None:
    """Server says 0 remain after our 1st of 51 sends: wait until it has refilled all 51."""
    lim = Limiter(rpm=6000, tpm=None, max_in_flight=1000, now=0.0)
    tickets = [lim.on_send(1, 0.0) for _ in range(51)]
    h = RateHeaders(Budget(6000, 0, 1.0), Budget(None, None, None))
    lim.on_response(tickets[0], h, 0.0)
    assert lim.delay(1, 0.0) == pytest.approx(0.51, abs=0.001)


def test_remaining_lets_a_matching_burst_go() -> None:
    """Server says 3 remain: three requests may go now, the fourth waits."""
    lim = Limiter(rpm=60_000, tpm=None, max_in_flight=1000, now=0.0)
    h = RateHeaders(Budget(6000, 3, 1.0), Budget(None, None, None))
    lim.on_response(lim.on_send(1, 0.0), h, 0.0)
    sent = 0
    while lim.delay(1, 0.0) == 0.0:
        lim.on_send(1, 0.0)
        sent += 1
    assert sent == 3


def test_429_cools_down_everyone_and_cuts_pace() -> None:
    """A 429 with retry-after 2 s holds every request for 2 s and lowers the pace."""
    lim = Limiter(rpm=6000, tpm=None, max_in_flight=1000, now=0.0)
    before = lim.requests.rate
    t = lim.on_send(1, 0.0)
    lim.on_rate_limited(t, None, 2.0, 0.5)
    assert lim.delay(1, 0.5) == pytest.approx(2.0)
    assert lim.requests.rate == pytest.approx(before * C.BACKOFF_RATE_FACTOR)


def test_one_cut_per_burst_of_429s() -> None:
    """429s for requests sent before the last cut do not cut again."""
    lim = Limiter(rpm=6000, tpm=None, max_in_flight=1000, now=0.0)
    tickets = [lim.on_send(1, 0.0) for _ in range(5)]
    for t in tickets:
        lim.on_rate_limited(t, None, 0.1, 0.2)
    assert lim.requests.factor == pytest.approx(C.BACKOFF_RATE_FACTOR)


def test_pace_climbs_back_after_429() -> None:
    """Without further 429s the pace returns to its target."""
    lim = Limiter(rpm=6000, tpm=None, max_in_flight=1000, now=0.0)
    lim.on_rate_limited(lim.on_send(1, 0.0), None, 1.0, 0.0)
    lim.delay(1, 1.0)  # cool-down over
    lim.delay(1, 1.0 + 1.0 / C.RATE_RECOVERY_PER_SECOND)
    assert lim.requests.factor == 1.0


def test_unpaced_429_halves_the_window() -> None:
    """With no limits known, a 429 halves the concurrency window (AIMD)."""
    lim = Limiter(rpm=None, tpm=None, max_in_flight=1000, now=0.0)
    for i in range(63):
        lim.on_response(lim.on_send(1, i), None, i)
    assert lim.window == 64
    lim.on_rate_limited(lim.on_send(1, 100.0), None, 0.5, 100.0)
    assert lim.window == 32


def test_repr_shows_state() -> None:
    """The repr names the pace and the window."""
    lim = Limiter(rpm=6000, tpm=None, max_in_flight=10, now=0.0)
    assert "6000/min" in repr(lim) and "window=1/10" in repr(lim)


def test_with_limits_given_a_slow_first_answer_opens_the_window_gradually() -> None:
    """rpm given: the first request goes alone for PROBE_GRACE, then the window doubles each
    time the wait has doubled (2 at 0.5 s, 4 at 1.5 s, 8 at 3.5 s), and opens at the answer."""
    lim = Limiter(rpm=6000, tpm=None, max_in_flight=1000, now=0.0)
    lim.on_send(1, 0.0)
    assert lim.window == 1
    assert lim.probe_over(0.1) == pytest.approx(C.PROBE_GRACE - 0.1)
    g = C.PROBE_GRACE
    assert lim.probe_over(g) == pytest.approx(2 * g) and lim.window == 2
    assert lim.probe_over(3 * g) == pytest.approx(4 * g) and lim.window == 4
    assert lim.probe_over(7 * g) == pytest.approx(8 * g) and lim.window == 8
    lim.on_response(lim.on_send(1, 7 * g), None, 7 * g + 0.1)
    assert lim.probe_over(8 * g) is None and lim.window == 1000


def test_without_limits_the_probe_waits_for_the_answer() -> None:
    """Nothing given: no grace; the window stays at one until the server answers."""
    lim = Limiter(rpm=None, tpm=None, max_in_flight=1000, now=0.0)
    assert lim.probe_over(100.0) is None and lim.window == 1


def test_slow_start_stops_growing_when_the_server_queues() -> None:
    """Unpaced: the window grows while answers are fast, and stops once round trips double."""
    lim = Limiter(rpm=None, tpm=None, max_in_flight=1000, now=0.0)
    for i in range(9):  # 10 ms round trips
        lim.on_response(lim.on_send(1, i), None, i + 0.01)
    assert lim.window == 10
    for i in range(20):  # now 100 ms: requests wait at the server
        lim.on_response(lim.on_send(1, 100 + i), None, 100 + i + 0.1)
    assert lim.window == 10


def test_429_under_an_announced_limit_cuts_gently() -> None:
    """A 429 while pacing under the server's own announced limit cuts the pace to 90%, not 70%."""
    lim = Limiter(rpm=None, tpm=None, max_in_flight=1000, now=0.0)
    h = RateHeaders(Budget(6000, 50, 0.5), Budget(None, None, None))
    lim.on_response(lim.on_send(1, 0.0), h, 0.0)
    lim.on_rate_limited(lim.on_send(1, 1.0), h, 0.01, 1.0)
    assert lim.requests.factor == pytest.approx(C.BACKOFF_RATE_FACTOR_ANNOUNCED)

"""The engine against a mock transport, in virtual time: instant and deterministic."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Iterator

import pytest
from _vtime import run_virtual

from dfbatch import ApiConfig, AuthenticationError, Engine, Outcome, QuotaExceededError, Request
from dfbatch.engine import constants as C
from dfbatch.engine.transport import MockTransport, RawResponse, TransportError

API = ApiConfig.resolve(base_url="http://test/v1", api_key="sk-test-secret")


def ok(body: bytes) -> RawResponse:
    req = json.loads(body)
    return RawResponse(
        200, {}, json.dumps({"echo": req["i"], "usage": {"total_tokens": 3}}).encode()
    )


def requests(n: int, tokens: int = 1) -> list[Request]:
    # An endpoint whose answers are checked for their usage only: these tests are about the
    # engine; what a valid chat or embeddings answer is, tests/test_bad_answers.py says.
    return [Request(i, "/echo", {"i": i}, tokens) for i in range(n)]


def run(engine: Engine, reqs) -> list:  # type: ignore[no-untyped-def]
    outcomes: list = []
    run_virtual(engine.run(reqs, outcomes.append))
    return outcomes


class BucketServer:
    """A server enforcing ``rpm`` over 1-second windows (a bucket of one second's share)."""

    def __init__(self, rpm: int, *, headers: bool = True, latency: float = 0.05) -> None:
        self.rate = rpm / 60.0
        self.level = self.rate
        self.last = 0.0
        self.rpm, self.headers, self.latency = rpm, headers, latency
        self.accepted: list[float] = []
        self.rejected = 0

    async def __call__(self, url: str, headers, body: bytes) -> RawResponse:  # type: ignore[no-untyped-def]
        now = asyncio.get_running_loop().time()
        self.level = min(self.rate, self.level + (now - self.last) * self.rate)
        self.last = now
        h: dict[str, str] = {}
        if self.level >= 1:
            self.level -= 1
            self.accepted.append(now)
            status, payload = 200, None
        else:
            self.rejected += 1
            wait_ms = int((1 - self.level) / self.rate * 1000) + 1
            h = {"retry-after-ms": str(wait_ms)}
            status = 429
            payload = {
                "error": {
                    "message": "Rate limit reached",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                }
            }
        if self.headers:
            h |= {
                "x-ratelimit-limit-requests": str(self.rpm),
                "x-ratelimit-remaining-requests": str(int(self.level)),
                "x-ratelimit-reset-requests": f"{(self.rate - self.level) / self.rate:.3f}s",
            }
        await asyncio.sleep(self.latency)
        if status == 200:
            return RawResponse(200, h, ok(body).body)
        return RawResponse(status, h, json.dumps(payload).encode())


def test_every_request_answered_once_in_any_order() -> None:
    """1,000 requests give 1,000 outcomes, one per id, each carrying its own answer."""

    async def handler(url, headers, body):  # type: ignore[no-untyped-def]
        await asyncio.sleep(random.Random(json.loads(body)["i"]).random())
        return ok(body)

    out = run(Engine(API, transport=MockTransport(handler)), requests(1000))
    assert sorted(o.id for o in out) == list(range(1000))
    assert all(o.ok and o.response["echo"] == o.id for o in out)


def test_fault_mix_every_request_ends_answered_none_twice() -> None:
    """5% 5xx, 1% resets, 1% non-JSON 200s, 0.5% hangs: all 2,000 rows end answered, once."""
    rng = random.Random(7)
    seen: Counter[int] = Counter()

    async def handler(url, headers, body):  # type: ignore[no-untyped-def]
        x = rng.random()
        if x < 0.05:
            return RawResponse(503, {}, b'{"error": {"message": "overloaded"}}')
        if x < 0.06:
            raise TransportError("connection", "connection reset by peer")
        if x < 0.07:
            return RawResponse(200, {}, b"<html>proxy</html>")
        if x < 0.075:
            await asyncio.sleep(3600)
        seen[json.loads(body)["i"]] += 1
        return ok(body)

    engine = Engine(API, transport=MockTransport(handler), timeout=30, rng=random.Random(1))
    out = run(engine, requests(2000))
    assert Counter(o.id for o in out) == Counter(range(2000))
    assert all(o.ok for o in out)
    assert engine.stats.retries > 100 and engine.stats.failed == 0


@pytest.mark.parametrize(
    ("status", "payload", "exc"),
    [
        (
            401,
            {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}},
            AuthenticationError,
        ),
        (
            429,
            {
                "error": {
                    "message": "You exceeded your current quota",
                    "type": "insufficient_quota",
                    "code": "insufficient_quota",
                }
            },
            QuotaExceededError,
        ),
    ],
)
def test_run_level_errors_stop_within_five_requests(status, payload, exc) -> None:  # type: ignore[no-untyped-def]
    """A refused key or an empty quota stops the run after at most 5 requests, naming the cause."""
    transport = MockTransport(lambda *a: _const(status, payload))
    with pytest.raises(exc) as info:
        run(Engine(API, transport=transport, rpm=100_000), requests(10_000))
    assert transport.calls <= 5
    assert payload["error"]["message"] in str(info.value) and "Fix:" in str(info.value)
    assert "sk-test-secret" not in str(info.value)


async def _const(status: int, payload: dict) -> RawResponse:
    return RawResponse(status, {}, json.dumps(payload).encode())


def test_bad_request_fails_alone() -> None:
    """A 400 fails its own row at once (no retry); every other row succeeds."""

    async def handler(url, headers, body):  # type: ignore[no-untyped-def]
        if json.loads(body)["i"] == 3:
            return RawResponse(
                400,
                {"x-request-id": "req_9"},
                b'{"error": {"message": "too long", "code": "context_length"}}',
            )
        return ok(body)

    out = {o.id: o for o in run(Engine(API, transport=MockTransport(handler)), requests(10))}
    assert out[3].error.status == 400 and out[3].attempts == 1
    assert out[3].error.request_id == "req_9"
    assert all(out[i].ok for i in range(10) if i != 3)


def test_gives_up_after_max_attempts() -> None:
    """A request that keeps failing with 500 ends as an error after max_attempts tries."""
    transport = MockTransport(lambda *a: _const(500, {"error": {"message": "boom"}}))
    out = run(Engine(API, transport=transport, max_attempts=3), requests(1))
    assert out[0].error.status == 500 and out[0].attempts == 3 and transport.calls == 3


def test_retry_after_is_honoured() -> None:
    """A 429 with retry-after-ms 1500 is not retried sooner than 1.5 s later."""
    sent: list[float] = []

    async def handler(url, headers, body):  # type: ignore[no-untyped-def]
        sent.append(asyncio.get_running_loop().time())
        if len(sent) == 1:
            return RawResponse(
                429,
                {"retry-after-ms": "1500"},
                b'{"error": {"message": "slow down", "code": "rate_limit_exceeded"}}',
            )
        return ok(body)

    run(Engine(API, transport=MockTransport(handler)), requests(1))
    assert sent[1] - sent[0] >= 1.5


def test_hung_request_times_out_and_retries() -> None:
    """A request that hangs is abandoned after `timeout` and answered on a retry."""
    calls = []

    async def handler(url, headers, body):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(10_000)
        return ok(body)

    out = run(Engine(API, transport=MockTransport(handler), timeout=5), requests(1))
    assert out[0].ok and out[0].attempts == 2


def test_pulls_lazily_with_bounded_memory() -> None:
    """A generator is pulled only as slots free; never more than max_in_flight on the wire."""
    pulled = 0
    done = 0
    peak = 0

    def gen() -> Iterator[Request]:
        nonlocal pulled, peak
        for r in requests(5000):
            pulled += 1
            peak = max(peak, pulled - done)
            yield r

    def on_outcome(o) -> None:  # type: ignore[no-untyped-def]
        nonlocal done
        done += 1

    open_now = most_open = 0

    async def handler(url, headers, body):  # type: ignore[no-untyped-def]
        nonlocal open_now, most_open
        open_now += 1
        most_open = max(most_open, open_now)
        await asyncio.sleep(0.5)
        open_now -= 1
        return ok(body)

    engine = Engine(API, transport=MockTransport(handler), max_in_flight=50)
    run_virtual(engine.run(gen(), on_outcome))
    assert done == 5000 and most_open == 50
    assert peak <= 50 + 50 * C.QUEUED_SHARE + 1


@pytest.mark.parametrize(
    ("told", "headers"), [(6000, True), (12_000, True), (None, True), (12_000, False)]
)
def test_settles_under_the_true_limit(told: int | None, headers: bool) -> None:
    """Against 6,000 RPM over 1 s windows: near the limit, few or no 429s, whatever it was told."""
    server = BucketServer(6000, headers=headers)
    engine = Engine(API, transport=MockTransport(server), rpm=told)
    out = run(engine, requests(3000))
    assert len(out) == 3000 and all(o.ok for o in out)
    span = server.accepted[-1] - server.accepted[0]
    share = (len(server.accepted) - 1) / span / 100.0
    if told == 6000:
        assert server.rejected == 0 and share >= 0.97
    elif headers:
        assert server.rejected <= 30 and share >= 0.90
    else:
        assert server.rejected <= 150 and share >= 0.70


def test_tokens_and_counters() -> None:
    """Stats count requests, estimated and used tokens, and retries."""
    engine = Engine(API, transport=MockTransport(lambda u, h, b: _ok_async(b)))
    run(engine, requests(10, tokens=7))
    s = engine.stats
    assert (s.requests_sent, s.succeeded, s.tokens_estimated, s.tokens_used) == (10, 10, 70, 30)


async def _ok_async(body: bytes) -> RawResponse:
    return ok(body)


def test_callback_error_stops_the_run() -> None:
    """An exception in the outcome callback stops the run and propagates."""

    def boom(o) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")

    engine = Engine(API, transport=MockTransport(lambda u, h, b: _ok_async(b)))
    with pytest.raises(RuntimeError, match="disk full"):
        run_virtual(engine.run(requests(100), boom))


def test_repr_hides_the_key() -> None:
    """Neither the engine's nor the config's repr shows the API key."""
    assert "sk-test-secret" not in repr(Engine(API)) + repr(API)


def test_unserializable_body_fails_its_row_only() -> None:
    """A body that is not JSON (a set inside) fails that row; the others are sent."""
    reqs = requests(3)
    reqs[1].body["bad"] = {1, 2}
    out = {
        o.id: o
        for o in run(Engine(API, transport=MockTransport(lambda u, h, b: _ok_async(b))), reqs)
    }
    assert out[1].error.code == "invalid_request" and out[0].ok and out[2].ok


def test_high_rate_with_slow_answers_keeps_the_pace() -> None:
    """30,000 RPM with 2 s answers: once the first answer has come (the window opens then),
    1,000 in flight hold the pace (>= 98%), no 429s."""
    server = BucketServer(30_000, latency=2.0)
    out = run(Engine(API, transport=MockTransport(server), rpm=30_000), requests(10_000))
    assert len(out) == 10_000 and server.rejected == 0
    after = [t for t in server.accepted if t >= 2.0]  # the first answer came at 2 s
    assert (len(after) - 1) / (after[-1] - after[0]) / 500.0 >= 0.98


def test_before_send_sees_each_send_and_nothing_runs_between_answer_and_outcome() -> None:
    """``before_send(in_flight)`` comes once per request sent, below the cap; an answer's
    ``on_outcome`` runs before any other send, so a front end that saves in batches can keep
    answered-but-unsaved plus in flight within max_in_flight (the CLI's kill -9 bound)."""
    cap = 4
    unsaved = 0
    worst = 0
    sends: list[int] = []

    async def slow(body: bytes) -> RawResponse:
        await asyncio.sleep(0.1)
        return ok(body)

    def before_send(in_flight: int) -> None:
        nonlocal unsaved, worst
        sends.append(in_flight)
        if unsaved + in_flight >= cap:
            unsaved = 0  # "save" the batch
        worst = max(worst, unsaved + in_flight + 1)

    def on_outcome(outcome: Outcome) -> None:
        nonlocal unsaved
        unsaved += 1

    engine = Engine(API, max_in_flight=cap, transport=MockTransport(lambda u, h, b: slow(b)))
    stats = run_virtual(engine.run(requests(50), on_outcome, before_send=before_send))
    assert len(sends) == stats.requests_sent == 50
    assert max(sends) < cap and worst <= cap

"""Hostile figures and oversized requests against the limiter and the engine (issue 9).

Each test sends the bad thing, then checks its own result and that nothing else was lost.
Everything runs in virtual time (``_vtime``): a wait of minutes or years costs no real time,
so a run that would stall still ends, and its virtual duration is the figure checked. The
simulator, where one is used, serves from the same virtual-time loop.
"""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pandas as pd
import pytest
from _vtime import run_virtual

import dfbatch  # noqa: F401  (registers .llm)
from dfbatch import ApiConfig, AuthenticationError, Engine, Request
from dfbatch.engine import constants as C
from dfbatch.engine.limiter import Budget, Limiter, RateHeaders, parse_duration
from dfbatch.engine.retry import classify_response, retry_after_seconds
from dfbatch.engine.tokens import context_tokens, estimate_request_tokens
from dfbatch.engine.transport import MockTransport, RawResponse
from dfbatch.testing import Simulator, expected_embeddings

API = ApiConfig.resolve(base_url="http://test/v1", api_key="sk-test")
EMBED_MODEL = "text-embedding-3-small"

HOSTILE = ["-1000000000", "inf", "-inf", "nan", "1e400", "-5", "abc", "9999999999999999999999", ""]
SERVER_FIGURES = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "retry-after",
    "retry-after-ms",
]
SANE = {
    "x-ratelimit-limit-requests": "6000",
    "x-ratelimit-remaining-requests": "90",
    "x-ratelimit-reset-requests": "100ms",
    "x-ratelimit-limit-tokens": "1000000",
    "x-ratelimit-remaining-tokens": "16000",
    "x-ratelimit-reset-tokens": "100ms",
}
RATE_LIMITED = json.dumps(
    {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
).encode()


def reqs(n: int, tokens: int = 10) -> list[Request]:
    return [Request(i, "/echo", {"i": i}, tokens) for i in range(n)]  # no answer check


def answer(body: bytes, headers: dict[str, str] | None = None) -> RawResponse:
    i = json.loads(body)["i"]
    return RawResponse(200, headers or {}, json.dumps({"echo": i}).encode())


def now() -> float:
    return asyncio.get_running_loop().time()


# ----------------------------------------------------------------- 5: figures read from a server


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("name", SERVER_FIGURES)
def test_a_hostile_server_figure_steers_nothing_and_loses_nothing(name: str, value: str) -> None:
    """Each figure a server sends, set to garbage on every answer (a 429 first, then 200s):
    the run neither stalls nor ends early; all 200 rows are answered once, about on pace."""
    seen: list[int] = []

    async def handler(url, headers, body):  # type: ignore[no-untyped-def]
        h = {**SANE, name: value}
        seen.append(json.loads(body)["i"])
        await asyncio.sleep(0.05)
        if len(seen) == 1:
            return RawResponse(429, h, RATE_LIMITED)
        return answer(body, h)

    engine = Engine(API, transport=MockTransport(handler), rpm=6000, tpm=1_000_000)
    out: list = []
    stats = run_virtual(engine.run(reqs(200), out.append))
    assert sorted(o.id for o in out) == list(range(200)) and all(o.ok for o in out)
    # 200 requests at 100 a second: 2 s, plus a cool-down; before the bounds: 31 years
    assert stats.elapsed(stats.finished) < 10.0


@pytest.mark.parametrize(
    ("value", "limit", "remaining"),
    [
        ("-1000000000", None, 0),
        ("-5", None, 0),
        ("inf", None, None),
        ("-inf", None, None),
        ("nan", None, None),
        ("1e400", None, None),
        ("abc", None, None),
        ("", None, None),
        ("9999999999999999999999", None, C.HEADER_MAX_COUNT),
        ("0", None, 0),
        ("6000", 6000, 6000),
        ("59.9", 59, 59),
    ],
)
def test_counts_are_bounded_when_read(value: str, limit: int | None, remaining: int) -> None:
    """A limit outside [1, 10^12] or not a finite number is ignored; a remaining count is
    clamped to [0, 10^12]; garbage is ignored."""
    h = RateHeaders.parse(
        {"x-ratelimit-limit-requests": value, "x-ratelimit-remaining-requests": value}
    )
    got = h.requests if h is not None else Budget(None, None, None)
    assert (got.limit, got.remaining) == (limit, remaining)


def test_remaining_is_never_more_than_the_limit() -> None:
    """remaining 10^12 under a limit of 6,000 is read as 6,000."""
    h = RateHeaders.parse(
        {"x-ratelimit-limit-requests": "6000", "x-ratelimit-remaining-requests": "1e12"}
    )
    assert h is not None and h.requests == Budget(6000, 6000, None)


@pytest.mark.parametrize("value", [*HOSTILE, "-1s", "1e400s", "99999999999999999999h"])
def test_hostile_durations_are_none_or_finite(value: str) -> None:
    """A reset that is negative, not finite or garbage reads as None; a huge one stays finite
    (the limiter never lets it hold the pace past a minute)."""
    seconds = parse_duration(value)
    assert seconds is None or (0.0 <= seconds < math.inf)


@pytest.mark.parametrize("value", [*HOSTILE, "0", "Fri, 31 Dec 99999 23:59:59 GMT"])
def test_hostile_retry_after_is_ignored(value: str) -> None:
    """retry-after / retry-after-ms outside (0, 120 s] or unreadable are ignored (as the SDK)."""
    assert retry_after_seconds({"retry-after": value}, now=0.0) is None
    assert retry_after_seconds({"retry-after-ms": value}, now=0.0) is None
    assert retry_after_seconds({"retry-after": "121"}) is None
    assert retry_after_seconds({"retry-after-ms": "120001"}) is None
    assert retry_after_seconds({"retry-after": "120"}) == 120.0


def test_absurd_figures_in_a_429_message_are_ignored() -> None:
    """'Limit 99999999999999999999' in a 429's message teaches nothing."""
    body = json.dumps(
        {
            "error": {
                "message": "Rate limit reached for m on tokens per min (TPM): Limit "
                "99999999999999999999, Used 1, Requested 5. Please try again in 1s.",
                "type": "tokens",
                "code": "rate_limit_exceeded",
            }
        }
    ).encode()
    verdict = classify_response(429, {}, body)
    assert verdict.rate_limited and verdict.tokens_limit is None and not verdict.oversized


@pytest.mark.parametrize("value", HOSTILE)
def test_no_wait_exceeds_a_window_plus_the_retry_after_cap(value: str) -> None:
    """Whatever every header says, and however large the request, the limiter never asks for
    a wait longer than LIMITER_MAX_WAIT (a minute plus the retry-after cap)."""
    headers = {name: value for name in SERVER_FIGURES}
    headers["x-ratelimit-limit-tokens"] = "60"  # a real but tiny limit: 1 token a second
    rate = RateHeaders.parse(headers)
    lim = Limiter(rpm=60, tpm=60, max_in_flight=100, now=0.0)
    t = 0.0
    for cost in (1, 10**6, 10**12, 10**30):
        ticket = lim.on_send(cost, t)
        lim.on_response(ticket, rate, t)
        lim.on_rate_limited(ticket, rate, float(value) if _is_float(value) else None, t)
        for ask in (1, cost):
            assert 0.0 <= lim.delay(ask, t) <= C.LIMITER_MAX_WAIT
        assert lim.tokens.tat - t <= C.LIMIT_WINDOW_MAX + 1e-9
        t += 1.0


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------- 6: oversized requests


def test_a_refused_2mb_prompt_gives_its_tokens_back_and_the_rows_after_it_go_at_once() -> None:
    """A 2 MB prompt (refused at once, 400 context_length_exceeded) before three small rows,
    at 100,000 TPM: the three are answered within a second, not after minutes."""
    frame = pd.DataFrame({"text": ["word " * 400_000, "hello", "bonjour", "hallo"]})

    async def main() -> tuple[pd.DataFrame, float]:
        async with Simulator(tpm=100_000, clock=now) as sim:
            t0 = now()
            out = await frame.llm.acomplete(
                "{text}", max_tokens=10, tpm=100_000, base_url=sim.base_url, cache=False,
                progress=False,
            )  # fmt: skip
            return out, now() - t0

    out, elapsed = run_virtual(main())
    assert "context_length_exceeded" in out["completion_error"].iloc[0]
    assert (
        out["completion"].iloc[1:].notna().all() and out["completion_error"].iloc[1:].isna().all()
    )
    assert elapsed < 1.0  # before: 2 MB ~ 400,000 tokens held the pace for 4 minutes


def test_a_refused_request_gives_its_tokens_back_to_the_pace() -> None:
    """After a refused 50,000-token request, the next one waits what it would have without it."""
    lim = Limiter(rpm=None, tpm=60_000, max_in_flight=100, now=0.0)
    before = lim.delay(100, 0.0)
    ticket = lim.on_send(50_000, 0.0)
    assert lim.delay(100, 0.01) > 40.0
    lim.on_response(ticket, None, 0.01)
    lim.give_back(ticket, 0.01)
    assert lim.delay(100, 0.01) == before == 0.0


@pytest.mark.parametrize(
    ("status", "message", "refused"),
    [
        (400, "This model's maximum context length is 8192 tokens.", True),
        (403, "forbidden", True),
        (404, "Invalid URL", True),
        (413, "Request Entity Too Large", True),
        (422, "unprocessable", True),
        (429, "Request too large for m on tokens per min (TPM): Limit 30, Requested 31.", True),
        (429, "Rate limit reached", False),  # counts against the limits: stays charged
        (408, "timeout", False),  # may have been processed
        (409, "conflict", False),
        (500, "server error", False),
        (503, "overloaded", False),
    ],
)  # fmt: skip
def test_which_answers_mean_not_processed(status: int, message: str, refused: bool) -> None:
    """4xx except 408, 409 and a rate-limit 429 (and "Request too large") were refused as
    they came: their tokens go back; 408/409/5xx may have been processed, a 429 counts."""
    body = json.dumps({"error": {"message": message, "type": "tokens"}}).encode()
    assert classify_response(status, {}, body).refused is refused


def _chat(model: str, words: int, **extra: int) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "word " * words}], **extra}


@pytest.mark.parametrize(
    ("body", "cap"),
    [
        (_chat("gpt-4o-mini", 300_000), 128_000),
        (_chat("gpt-4", 20_000, max_tokens=100), 8_192),
        (_chat("gpt-4o-mini", 300_000, n=3, max_tokens=50_000), 384_000),
        (_chat("my-azure-deployment", 300_000), C.DEFAULT_CONTEXT_TOKENS),
        (_chat("gpt-4o-mini", 1, max_tokens=10**12), 128_000),
    ],
)
def test_a_chat_estimate_never_exceeds_n_context_windows(body: dict, cap: int) -> None:
    """A chat request is never charged more than n x its model's context window."""
    assert estimate_request_tokens("/chat/completions", body) == cap


def test_an_embeddings_estimate_is_capped_per_input_and_per_request() -> None:
    """An input over 8,191 tokens counts 8,191 (it is refused unprocessed); a request at most
    300,000; short inputs count exactly."""
    long_text = "word " * 20_000
    body = {"model": EMBED_MODEL, "input": [long_text, "hello world"]}
    assert estimate_request_tokens("/embeddings", body) == C.EMBED_MAX_INPUT_TOKENS + 2
    body = {"model": EMBED_MODEL, "input": [long_text] * 100}
    assert estimate_request_tokens("/embeddings", body) == C.EMBED_MAX_REQUEST_TOKENS
    assert estimate_request_tokens("/embeddings", {"model": EMBED_MODEL, "input": long_text}) == (
        C.EMBED_MAX_INPUT_TOKENS
    )


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-4o-mini", 128_000),
        ("gpt-4.1-mini", 1_047_576),
        ("gpt-4", 8_192),
        ("gpt-4-turbo-2024-04-09", 128_000),
        ("gpt-3.5-turbo", 16_385),
        ("o1-mini", 128_000),
        ("o3", 200_000),
        ("gpt-5-nano", 400_000),
        ("ft:gpt-4o-mini-2024-07-18:org::x", 128_000),
        ("openai/gpt-4.1", 1_047_576),
        ("text-embedding-3-small", C.EMBED_MAX_INPUT_TOKENS),
        ("llama-3-70b", C.DEFAULT_CONTEXT_TOKENS),
    ],
)
def test_context_windows(model: str, window: int) -> None:
    """The longest matching prefix wins; unknown models get the default."""
    assert context_tokens(model) == window


# ----------------------------------------------------------------- 10: packs and 429s


def _texts(n: int) -> list[str]:
    # 8 or 9 tokens each as the simulator counts: a full pack of 2,048 is ~17,000 tokens
    return [
        f"row {i}: a short sentence to embed" + (" now" if i % 3 == 0 else "") for i in range(n)
    ]


def _embed_against(sim_kwargs: dict, texts: list[str], **embed_kwargs):  # type: ignore[no-untyped-def]
    frame = pd.DataFrame({"text": texts})

    async def main():  # type: ignore[no-untyped-def]
        async with Simulator(clock=now, **sim_kwargs) as sim:
            t0 = now()
            out = await frame.llm.aembed(
                "text", base_url=sim.base_url, cache=False, progress=False, **embed_kwargs
            )
            return out, now() - t0, sim.stats

    return run_virtual(main())


@pytest.mark.parametrize("tpm", [None, 1_000_000])
def test_20000_short_rows_fit_a_strict_one_second_tpm_window_and_none_is_lost(tpm) -> None:  # type: ignore[no-untyped-def]
    """A server enforcing 1,000,000 TPM over 1 s windows refuses every request over 16,667
    tokens (a pack of 2,048 short texts is ~17,000): packs are cut to fit (told the TPM:
    from the start; not told: after the first 429 says the limit), every row is answered
    with its own vector, and the run takes about the ideal time."""
    texts = _texts(20_000)
    out, elapsed, stats = _embed_against({"tpm": 1_000_000, "strict_windows": True}, texts, tpm=tpm)
    assert out["embedding_error"].isna().all()
    assert np.array_equal(np.stack(out["embedding"]), expected_embeddings(texts, model=EMBED_MODEL))
    assert stats.rate_limited == (0 if tpm else 1)
    assert stats.embedding_inputs == 20_000  # each text answered once
    ideal = stats.tokens_admitted / (1_000_000 / 60)
    # the client counts 10 tokens where the simulator counts 8.3: it paces 20% under the limit
    assert elapsed < 1.3 * ideal + 2.0


def test_a_pack_the_server_calls_too_large_is_split_not_failed() -> None:
    """At 30,000 TPM a pack of 2,048 20-token texts (41,000 tokens) gets "Request too large":
    it is split until the parts fit, and every row is answered."""
    texts = [f"text {i} " + "alpha beta gamma delta " * 4 + "end" for i in range(2_048)]
    out, _, stats = _embed_against({"tpm": 30_000}, texts)
    assert out["embedding_error"].isna().all()
    assert np.array_equal(np.stack(out["embedding"]), expected_embeddings(texts, model=EMBED_MODEL))
    assert stats.embedding_inputs == 2_048


def test_an_input_that_can_never_fit_fails_alone_after_the_others() -> None:
    """A single 1,500-token input on a strict 60,000 TPM server (1,000 a second) can never be
    taken: its 429s cost no attempt while the others are answered, then it fails as a 429
    after max_attempts; the 500 other rows are all answered."""
    texts = ["word " * 1_500, *_texts(500)]
    out, elapsed, _ = _embed_against({"tpm": 60_000, "strict_windows": True}, texts)
    errors = out["embedding_error"]
    assert "429" in errors.iloc[0] and errors.iloc[1:].isna().all()
    assert out["embedding"].iloc[1:].notna().all()
    assert elapsed < 600


def test_429_waits_do_not_use_up_attempts_while_others_succeed() -> None:
    """A row refused with 429 twelve times (max_attempts 5) is answered in the end, because
    the server answered other rows between its tries; no other row is lost. Once nothing
    else is answered, its 429s count again: the same row then fails after 5."""
    tries: dict[int, int] = {}

    async def handler(url, headers, body):  # type: ignore[no-untyped-def]
        i = json.loads(body)["i"]
        tries[i] = tries.get(i, 0) + 1
        await asyncio.sleep(0.2)
        if i == 0 and tries[0] <= refusals:
            return RawResponse(429, {"retry-after-ms": "300"}, RATE_LIMITED)
        return answer(body)

    refusals = 12
    engine = Engine(API, transport=MockTransport(handler), rpm=6000, max_in_flight=4)
    out: list = []
    run_virtual(engine.run(reqs(200), out.append))
    by_id = {o.id: o for o in out}
    assert sorted(by_id) == list(range(200)) and all(o.ok for o in out)
    assert by_id[0].attempts == refusals + 1 and engine.stats.rate_limited == refusals

    tries.clear()
    refusals = 1_000  # and the other rows are answered long before
    engine = Engine(API, transport=MockTransport(handler), rpm=6000, max_in_flight=4)
    out = []
    run_virtual(engine.run(reqs(20), out.append))
    by_id = {o.id: o for o in out}
    assert by_id[0].error.status == 429 and all(by_id[i].ok for i in range(1, 20))
    assert by_id[0].attempts < 20


def test_a_server_that_only_answers_429_ends_in_bounded_time() -> None:
    """Nothing but 429s: no request is ever answered, so every 429 counts; each of the 50
    rows fails after max_attempts sends, and the run ends."""
    transport = MockTransport(lambda *a: _rate_limited())
    engine = Engine(API, transport=transport, rpm=6000, max_attempts=5)
    out: list = []
    stats = run_virtual(engine.run(reqs(50), out.append))
    assert len(out) == 50 and all(o.error.status == 429 and o.attempts == 5 for o in out)
    assert transport.calls == 250
    assert stats.elapsed(stats.finished) < 5 * (C.BACKOFF_MAX + C.LIMITER_MAX_WAIT)


async def _rate_limited() -> RawResponse:
    await asyncio.sleep(0.05)
    return RawResponse(429, {"retry-after-ms": "500"}, RATE_LIMITED)


# ----------------------------------------------------------------- 11: a slow first answer


@pytest.mark.parametrize(
    ("limits", "most"),
    [
        ({"rpm": 100_000}, 1 + 5 / C.PROBE_GRACE),
        ({"tpm": 10_000_000}, 1 + 5 / C.PROBE_GRACE),
        ({}, 1),
    ],
)
def test_a_refused_key_answered_after_5_s_costs_few_requests(limits: dict, most: float) -> None:
    """Every answer takes 5 s and is a 401: the run stops at the first answer, having sent
    at most 1 + 5 s / PROBE_GRACE requests (8: 1, +1 at 0.5 s, +2 at 1.5 s, +4 at 3.5 s) with
    limits given, and exactly 1 without; before, the window opened to 1,200 at 0.5 s."""

    async def refused(url, headers, body):  # type: ignore[no-untyped-def]
        await asyncio.sleep(5.0)
        return RawResponse(401, {}, b'{"error": {"message": "Incorrect API key provided"}}')

    transport = MockTransport(refused)
    with pytest.raises(AuthenticationError):
        run_virtual(Engine(API, transport=transport, **limits).run(reqs(10_000), lambda o: None))
    assert transport.calls <= most
    assert transport.calls == (8 if limits else 1)


def test_a_machine_that_hangs_before_the_first_answer_keeps_the_bound() -> None:
    """The event loop is blocked for 3 s while the first request waits (a loaded machine):
    afterwards the window is where the clock says (4), not wide open."""

    async def refused(url, headers, body):  # type: ignore[no-untyped-def]
        await asyncio.sleep(4.0)
        return RawResponse(401, {}, b'{"error": {"message": "Incorrect API key provided"}}')

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, lambda: setattr(loop._jumping, "now", loop.time() + 3.0))  # type: ignore[attr-defined]
        await Engine(API, transport=transport, rpm=100_000).run(reqs(10_000), lambda o: None)

    transport = MockTransport(refused)
    with pytest.raises(AuthenticationError):
        run_virtual(main())
    assert transport.calls <= 1 + 4 / C.PROBE_GRACE


# ----------------------------------------------------------------- 12: the pace on a busy loop


def test_the_pace_holds_on_a_busy_event_loop() -> None:
    """30,000 RPM, 2 s answers, 10,000 requests (a 20 s run) on an event loop that is blocked
    80 ms every 0.5 s (a long callback, a GC pause, a descheduled process): once the window
    has opened, the server admits >= 98% of the limit (it was 94% when the time the loop lost
    was lost to the pace), with no 429 and every request answered once."""
    admitted: list[float] = []
    bucket = {"level": 500.0, "at": 0.0, "refused": 0}  # 30,000 RPM over 1 s windows

    async def server(url, headers, body):  # type: ignore[no-untyped-def]
        t = now()
        bucket["level"] = min(500.0, bucket["level"] + (t - bucket["at"]) * 500.0)
        bucket["at"] = t
        if bucket["level"] < 1.0:
            bucket["refused"] += 1
            return RawResponse(429, {"retry-after-ms": "10"}, RATE_LIMITED)
        bucket["level"] -= 1.0
        admitted.append(t)
        await asyncio.sleep(2.0)
        return answer(body)

    async def main() -> list:
        loop = asyncio.get_running_loop()

        async def busy() -> None:
            while True:
                await asyncio.sleep(0.5)
                loop._jumping.now += 0.08  # type: ignore[attr-defined]  # blocked 80 ms

        ballast = asyncio.ensure_future(busy())
        out: list = []
        engine = Engine(API, transport=MockTransport(server), rpm=30_000)
        await engine.run(reqs(10_000, tokens=1), out.append)
        ballast.cancel()
        return out

    out = run_virtual(main())
    assert sorted(o.id for o in out) == list(range(10_000)) and all(o.ok for o in out)
    # From a second after the first answer (2 s): the window is open, the catch-up spent.
    steady = [t for t in admitted if t >= 3.0]
    share = (len(steady) - 1) / (steady[-1] - steady[0]) / 500.0
    assert share >= 0.98
    assert bucket["refused"] == 0  # the catch-up bursts fit the server's bucket


def test_a_refused_key_met_by_one_part_of_a_split_request_stops_the_run_at_once() -> None:
    """A pack split after "Request too large": when one part meets a 401, the run stops then,
    not after the other parts' slow answers."""
    too_large = json.dumps(
        {
            "error": {
                "message": "Request too large for m on tokens per min (TPM): Limit 1000000, "
                "Requested 2000000.",
                "type": "tokens",
                "code": "rate_limit_exceeded",
            }
        }
    ).encode()

    async def handler(url, headers, body):  # type: ignore[no-untyped-def]
        items = json.loads(body)["input"]
        if len(items) > 2:
            return RawResponse(429, {}, too_large)
        if "x7" in items:
            await asyncio.sleep(0.1)
            return RawResponse(401, {}, b'{"error": {"message": "Incorrect API key"}}')
        await asyncio.sleep(100.0)
        return RawResponse(200, {}, b'{"data": []}')

    def split(request: Request, max_tokens: float | None) -> list[Request] | None:
        items = request.body["input"]
        if len(items) < 2:
            return None
        half = len(items) // 2
        return [
            Request((request.id, k), "/embeddings", {"input": part}, 10 * len(part))
            for k, part in enumerate((items[:half], items[half:]))
        ]

    pack = Request(0, "/embeddings", {"input": [f"x{i}" for i in range(8)]}, 80)

    async def main() -> float:
        engine = Engine(API, transport=MockTransport(handler))
        with pytest.raises(AuthenticationError):
            await engine.run([pack], lambda o: None, split=split)
        return now()

    assert run_virtual(main()) < 1.0

"""Tests of dfbatch.testing: the OpenAI API simulator and its deterministic answers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from dfbatch.testing import (
    Faults,
    RateLimiter,
    Simulator,
    TokenBucket,
    count_tokens,
    expected_completion,
    expected_content,
    expected_embedding,
    expected_embeddings,
    go_duration,
)

EMB = "text-embedding-3-small"
CHAT = "gpt-4o-mini"


class Reply:
    """Status, headers and body of one HTTP exchange."""

    def __init__(self, status: int, headers: Any, raw: bytes) -> None:
        self.status, self.headers, self.raw = status, headers, raw

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


def call(
    url: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    timeout: float = 5.0,
) -> Reply:
    """POST ``body`` as JSON (GET when None) and return the reply, errors included."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Reply(err.code, err.headers, err.read())


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    """One plain simulator shared by the tests that change no setting."""
    with Simulator() as s:
        yield s


def chat_body(text: Any, **extra: Any) -> dict[str, Any]:
    return {"model": CHAT, "messages": [{"role": "user", "content": text}], **extra}


# ---------------------------------------------------------------- deterministic answers
def test_count_tokens_counts_words_and_marks() -> None:
    """count_tokens counts words and punctuation marks, at least one."""
    assert [count_tokens(t) for t in ("", "abc", "a, b.", "word " * 39)] == [1, 1, 4, 39]


def test_expected_embeddings_batch_equals_single_and_unit_norm() -> None:
    """A batch row equals the single-text vector bit for bit; vectors are unit norm and distinct."""
    texts = [f"row {i}" for i in range(300)]
    batch = expected_embeddings(texts)
    assert batch.dtype == np.float32 and batch.shape == (300, 1536)
    for i in (0, 17, 299):
        assert np.array_equal(batch[i], expected_embedding(texts[i]))
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert len({row.tobytes() for row in batch}) == 300
    assert not np.array_equal(expected_embedding("a"), expected_embedding("a", model="x-embed"))
    assert expected_embedding("a", model="text-embedding-3-large").shape == (3072,)


# ---------------------------------------------------------------- embeddings endpoint
def test_embeddings_float_equal_expected_exactly(sim: Simulator) -> None:
    """With encoding_format float the JSON floats round-trip to the exact expected float32."""
    r = call(sim.base_url + "/embeddings", {"model": EMB, "input": ["hello", "world!"]})
    assert r.status == 200
    body = r.json
    assert body["object"] == "list" and body["model"] == EMB
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    for item, text in zip(body["data"], ["hello", "world!"], strict=True):
        assert item["object"] == "embedding"
        got = np.array(item["embedding"], dtype=np.float32)
        assert np.array_equal(got, expected_embedding(text))


def test_embeddings_float_round_trip_for_many_vectors(sim: Simulator) -> None:
    """Every float of 500 vectors (9 significant digits) parses back to the exact float32."""
    texts = [f"sentence {i}" for i in range(500)]
    data = call(sim.base_url + "/embeddings", {"model": EMB, "input": texts}).json["data"]
    got = np.array([d["embedding"] for d in data], dtype=np.float32)
    assert np.array_equal(got, expected_embeddings(texts))


def test_embeddings_base64_equal_expected_exactly(sim: Simulator) -> None:
    """With encoding_format base64 the little-endian float32 bytes equal expected_embedding."""
    body = {"model": EMB, "input": "hello", "encoding_format": "base64"}
    item = call(sim.base_url + "/embeddings", body).json["data"][0]
    got = np.frombuffer(base64.b64decode(item["embedding"]), "<f4")
    assert np.array_equal(got, expected_embedding("hello"))


def test_embeddings_dimensions(sim: Simulator) -> None:
    """dimensions sets the length; 3-large defaults to 3072; ada-002 refuses dimensions."""
    url = sim.base_url + "/embeddings"
    emb = call(url, {"model": EMB, "input": "x", "dimensions": 256}).json["data"][0]["embedding"]
    assert np.array_equal(np.array(emb, np.float32), expected_embedding("x", dimensions=256))
    large = call(url, {"model": "text-embedding-3-large", "input": "x"}).json
    assert len(large["data"][0]["embedding"]) == 3072
    assert (
        call(url, {"model": "text-embedding-ada-002", "input": "x", "dimensions": 8}).status == 400
    )
    assert call(url, {"model": EMB, "input": "x", "dimensions": 5000}).status == 400


def test_embeddings_shuffled_data_joined_by_index() -> None:
    """shuffle_data=True returns data out of order; joining by index gives the right vectors."""
    texts = [f"text {i}" for i in range(20)]
    with Simulator(shuffle_data=True) as s:
        data = call(s.base_url + "/embeddings", {"model": EMB, "input": texts}).json["data"]
    order = [d["index"] for d in data]
    assert sorted(order) == list(range(20)) and order != sorted(order)
    for d in data:
        got = np.array(d["embedding"], np.float32)
        assert np.array_equal(got, expected_embedding(texts[d["index"]]))


def test_embeddings_token_arrays_are_texts_of_joined_ints(sim: Simulator) -> None:
    """A token-id list is embedded as the text of its ints joined by spaces."""
    data = call(sim.base_url + "/embeddings", {"model": EMB, "input": [[1, 2], [3]]}).json["data"]
    assert np.array_equal(np.array(data[0]["embedding"], np.float32), expected_embedding("1 2"))
    assert np.array_equal(np.array(data[1]["embedding"], np.float32), expected_embedding("3"))


def test_embeddings_invalid_inputs_are_400(sim: Simulator) -> None:
    """Empty input, an input over 8,191 tokens, too many inputs or tokens each get a 400."""
    url = sim.base_url + "/embeddings"
    empty = call(url, {"model": EMB, "input": ["ok", ""]})
    assert empty.status == 400
    assert empty.json["error"]["type"] == "invalid_request_error"
    long = call(url, {"model": EMB, "input": "x " * 8192})
    assert long.status == 400 and long.json["error"]["code"] is None
    msg = long.json["error"]["message"]
    assert msg.startswith("This model's maximum context length is 8192 tokens, however you ")
    assert "8192 tokens" in msg.split("requested")[1]
    assert call(url, {"model": EMB, "input": ["a"] * 2049}).status == 400
    total = call(url, {"model": EMB, "input": ["x " * 8000] * 38})
    assert total.status == 400 and total.json["error"]["code"] == "max_tokens_per_request"
    assert call(url, {"model": EMB}).status == 400


# ---------------------------------------------------------------- chat and completions
def test_chat_echoes_last_user_text(sim: Simulator) -> None:
    """Plain chat answers "echo: " + the last user text (parts joined), with OpenAI's shape."""
    body = {
        "model": CHAT,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": None},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ],
    }
    r = call(sim.base_url + "/chat/completions", body).json
    assert r["id"].startswith("chatcmpl-") and r["object"] == "chat.completion"
    assert r["model"] == CHAT and isinstance(r["created"], int)
    choice = r["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "echo: a\nb", "refusal": None}
    assert choice["finish_reason"] == "stop" and choice["index"] == 0
    assert r["usage"] == expected_completion(body)["usage"]
    assert (
        r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"]
    )


def test_chat_json_formats_and_invalid_json_marker(sim: Simulator) -> None:
    """json_object and json_schema give valid JSON filled from the text; the marker breaks it."""
    url = sim.base_url + "/chat/completions"
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "size": {"type": "integer"},
            "score": {"type": "number"},
            "ok": {"type": "boolean"},
            "kind": {"type": "string", "enum": ["small", "big"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "inner": {"type": "object", "properties": {"n": {"type": "integer"}}},
        },
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}}
    body = chat_body("hello", response_format=fmt)
    content = call(url, body).json["choices"][0]["message"]["content"]
    assert json.loads(content) == {
        "name": "hello", "size": 5, "score": 5.5, "ok": False, "kind": "small",
        "tags": ["hello"], "inner": {"n": 5},
    }  # fmt: skip
    assert content == expected_content(body)
    obj = call(url, chat_body("hi", response_format={"type": "json_object"})).json
    assert json.loads(obj["choices"][0]["message"]["content"]) == {"echo": "hi"}
    bad = call(url, chat_body("x [[invalid-json]]", response_format=fmt)).json
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad["choices"][0]["message"]["content"])
    plain = call(url, chat_body("x [[invalid-json]]")).json["choices"][0]["message"]["content"]
    assert plain == "echo: x [[invalid-json]]"


def test_chat_n_choices_differ_by_suffix(sim: Simulator) -> None:
    """n=3 returns choices 0..2; choice i>0 answers for the text plus " [i]"."""
    body = chat_body("q", n=3)
    choices = call(sim.base_url + "/chat/completions", body).json["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert [c["message"]["content"] for c in choices] == ["echo: q", "echo: q [1]", "echo: q [2]"]
    assert [expected_content(body, i) for i in range(3)] == [
        c["message"]["content"] for c in choices
    ]


def test_legacy_completions(sim: Simulator) -> None:
    """Legacy completions answer choices[i].text, n per prompt in prompt order."""
    body = {"model": "gpt-3.5-turbo", "prompt": ["a", "b"], "n": 2}
    r = call(sim.base_url + "/completions", body).json
    assert r["object"] == "text_completion" and r["id"].startswith("cmpl-")
    assert [c["text"] for c in r["choices"]] == ["echo: a", "echo: a [1]", "echo: b", "echo: b [1]"]


def test_chat_context_length_exceeded(sim: Simulator) -> None:
    """A chat prompt over the model's context gets 400 context_length_exceeded."""
    r = call(sim.base_url + "/chat/completions", chat_body("x " * 16_400, model="gpt-3.5-turbo"))
    assert r.status == 400 and r.json["error"]["code"] == "context_length_exceeded"


# ---------------------------------------------------------------- models, auth, quota
def test_models_list_and_unknown_model(sim: Simulator) -> None:
    """GET /v1/models lists the known models; an unknown model is 404, a missing one 400."""
    ids = {m["id"] for m in call(sim.base_url + "/models").json["data"]}
    assert {EMB, "gpt-4o", "gpt-5-mini", "o4-mini"} <= ids
    r = call(sim.base_url + "/chat/completions", chat_body("x", model="gpt-9"))
    assert r.status == 404
    assert r.json["error"] == {
        "message": "The model `gpt-9` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
    assert call(sim.base_url + "/embeddings", {"input": "x"}).status == 400


def test_extra_models_are_served() -> None:
    """models= adds names; a name containing "embed" is an embedding model."""
    with Simulator(models=["my-embedder", "my-llm"]) as s:
        assert (
            call(s.base_url + "/embeddings", {"model": "my-embedder", "input": "x"}).status == 200
        )
        assert call(s.base_url + "/chat/completions", chat_body("x", model="my-llm")).status == 200


def test_auth_401_and_accepted_headers() -> None:
    """With api_key set a wrong key gets 401 invalid_api_key (key not echoed); both headers work."""
    key = "sk-secret-1234"
    with Simulator(api_key=key) as s:
        url = s.base_url + "/embeddings"
        body = {"model": EMB, "input": "x"}
        bad = call(url, body, headers={"Authorization": "Bearer sk-wrong-9876"})
        assert bad.status == 401
        err = bad.json["error"]
        assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
        assert err["message"].startswith("Incorrect API key provided.")
        assert "9876" not in bad.raw.decode() and "1234" not in bad.raw.decode()
        assert call(url, body).status == 401
        assert call(url, body, headers={"Authorization": f"Bearer {key}"}).status == 200
        assert call(url, body, headers={"api-key": key}).status == 200


def test_quota_exhausted_429() -> None:
    """quota_exhausted=True answers every request 429 insufficient_quota without retry-after."""
    with Simulator(quota_exhausted=True) as s:
        r = call(s.base_url + "/chat/completions", chat_body("x"))
        assert s.stats.quota_rejected == 1
    assert r.status == 429 and "retry-after" not in r.headers
    assert r.json["error"] == {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }


# ---------------------------------------------------------------- token buckets
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_admits_one_seconds_share_at_once() -> None:
    """A fresh bucket admits limit/60 at once, then refuses with the wait until one refills."""
    clock = FakeClock()
    bucket = TokenBucket(6000, clock=clock)
    assert all(bucket.take(1) == 0.0 for _ in range(100))
    assert bucket.take(1) == pytest.approx(0.01)
    assert bucket.remaining() == 0


def test_bucket_refills_linearly_and_caps_at_capacity() -> None:
    """The level grows by limit/60 per second up to one second's share; refusals charge nothing."""
    clock = FakeClock()
    bucket = TokenBucket(600, clock=clock)  # 10 per second
    assert bucket.take(10) == 0.0
    clock.now += 0.35
    assert bucket.remaining() == 3
    assert bucket.take(5) == pytest.approx(0.15)
    assert bucket.remaining() == 3  # the refused request consumed nothing
    clock.now += 60
    assert bucket.refill() == pytest.approx(10) and bucket.reset_time() == 0.0


def test_bucket_larger_than_capacity_passes_when_full_and_leaves_debt() -> None:
    """A request above one second's share is admitted on a full bucket and leaves it in debt."""
    clock = FakeClock()
    bucket = TokenBucket(600, clock=clock)
    assert bucket.take(25) == 0.0
    assert bucket.level == pytest.approx(-15)
    assert bucket.wait_time(1) == pytest.approx(1.6)
    assert bucket.reset_time() == pytest.approx(2.5)


def test_rate_limiter_headers_and_kinds() -> None:
    """Headers give limit, whole remaining after charging, reset as Go duration; kinds are named."""
    clock = FakeClock()
    lim = RateLimiter(rpm=6000, tpm=60_000, clock=clock)  # 100 req/s, 1,000 tokens/s
    assert lim.admit(400).admitted
    assert lim.headers() == {
        "x-ratelimit-limit-requests": "6000",
        "x-ratelimit-remaining-requests": "99",
        "x-ratelimit-reset-requests": "10ms",
        "x-ratelimit-limit-tokens": "60000",
        "x-ratelimit-remaining-tokens": "600",
        "x-ratelimit-reset-tokens": "400ms",
    }
    refused = lim.admit(700)
    assert (refused.admitted, refused.kind, refused.limit, refused.used) == (
        False,
        "tokens",
        60000,
        24000,
    )
    assert refused.wait == pytest.approx(0.1)
    assert lim.admit(60_001).kind == "too_large"
    assert lim.headers()["x-ratelimit-remaining-requests"] == "99"  # refusals are free


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (-1, "0s"), (0.0004, "1ms"), (0.02, "20ms"), (0.999, "999ms"), (1, "1s"),
     (2.188, "2.188s"), (2.1, "2.1s"), (59.9991, "1m0s"), (90.5, "1m30.5s"), (360, "6m0s"),
     (3600, "1h0m0s"), (3723.25, "1h2m3.25s")],
)  # fmt: skip
def test_go_duration_format(seconds: float, text: str) -> None:
    """go_duration writes Go's time.Duration format, rounded up to the millisecond."""
    assert go_duration(seconds) == text


def test_rpm_429_has_retry_headers_and_openai_body() -> None:
    """Over RPM the server answers 429 rate_limit_exceeded with retry-after-ms and retry-after."""
    with Simulator(rpm=60) as s:  # one request per second
        url = s.base_url + "/chat/completions"
        ok = call(url, chat_body("x"))
        limited = call(url, chat_body("x"))
        assert s.stats.rate_limited == 1 and s.stats.admitted == 1
    assert ok.status == 200
    assert ok.headers["x-ratelimit-limit-requests"] == "60"
    assert ok.headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.status == 429
    assert 500 <= int(limited.headers["retry-after-ms"]) <= 1000
    assert limited.headers["retry-after"] == "1"
    err = limited.json["error"]
    assert (err["type"], err["param"], err["code"]) == ("requests", None, "rate_limit_exceeded")
    assert err["message"].startswith(
        "Rate limit reached for gpt-4o-mini in organization org-sim on requests per min (RPM): "
        "Limit 60, Used 60, Requested 1. Please try again in "
    )


def test_tpm_429_and_request_too_large() -> None:
    """Over TPM the 429 names tokens (TPM); a request over the whole TPM is "Request too large"."""
    with Simulator(tpm=6000) as s:  # 100 tokens per second
        url = s.base_url + "/chat/completions"
        assert call(url, chat_body("x", max_tokens=80)).status == 200
        limited = call(url, chat_body("x", max_tokens=80))
        too_large = call(url, chat_body("x", max_tokens=7000))
    assert limited.status == 429 and "(TPM)" in limited.json["error"]["message"]
    assert limited.json["error"]["type"] == "tokens"
    assert too_large.status == 429 and "retry-after" not in too_large.headers
    assert too_large.json["error"]["code"] == "rate_limit_exceeded"
    assert too_large.json["error"]["message"].startswith(
        "Request too large for gpt-4o-mini in organization org-sim on tokens per min (TPM): "
        "Limit 6000, Requested 7001."
    )


def test_no_rate_limit_headers_when_disabled() -> None:
    """rate_limit_headers=False sends no x-ratelimit-* header, on success or on 429."""
    with Simulator(rpm=60, rate_limit_headers=False) as s:
        replies = [call(s.base_url + "/chat/completions", chat_body("x")) for _ in range(2)]
    assert [r.status for r in replies] == [200, 429]
    for r in replies:
        assert not [h for h in r.headers if h.lower().startswith("x-ratelimit")]
        assert r.headers["x-request-id"].startswith("req_")


# ---------------------------------------------------------------- faults and latency
def test_fault_5xx() -> None:
    """error_5xx=1.0 answers 500 server_error or 502/503 "engine is currently overloaded"."""
    with Simulator(faults=Faults(error_5xx=1.0)) as s:
        replies = [call(s.base_url + "/embeddings", {"model": EMB, "input": "x"}) for _ in range(6)]
        assert s.stats.faults["error_5xx"] == 6 and s.stats.accepted == 0
    for r in replies:
        assert r.status in (500, 502, 503) and r.json["error"]["type"] == "server_error"
        if r.status != 500:
            assert (
                r.json["error"]["message"]
                == "The engine is currently overloaded, please try again later"
            )


def test_fault_reset_drops_connection() -> None:
    """reset=1.0 drops the connection without any response."""
    with Simulator(faults=Faults(reset=1.0)) as s:
        with pytest.raises((ConnectionError, urllib.error.URLError)):
            call(s.base_url + "/embeddings", {"model": EMB, "input": "x"})
        assert s.stats.faults["reset"] == 1 and not s.stats.by_status


def test_fault_non_json_is_html_200() -> None:
    """non_json=1.0 answers a 200 whose body is an HTML page."""
    with Simulator(faults=Faults(non_json=1.0)) as s:
        r = call(s.base_url + "/chat/completions", chat_body("x"))
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
    assert r.raw.startswith(b"<html>")


def test_fault_hang_makes_client_time_out() -> None:
    """hang=1.0 holds the request for hang_seconds; the client times out; stop() is prompt."""
    start = time.monotonic()
    with Simulator(faults=Faults(hang=1.0), hang_seconds=30) as s:
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            call(s.base_url + "/embeddings", {"model": EMB, "input": "x"}, timeout=0.1)
        assert s.stats.faults["hang"] == 1
    assert time.monotonic() - start < 5


def test_faults_are_seeded_and_decided_after_admission() -> None:
    """The same seed draws the same faults; a faulted request still consumed rate capacity."""
    draws = []
    for _ in range(2):
        s = Simulator(faults=Faults(error_5xx=0.3, reset=0.2, non_json=0.1), seed=7)
        draws.append([s.draw_fault() for _ in range(50)])
    assert draws[0] == draws[1] and len(set(draws[0])) == 4
    with Simulator(rpm=60, faults=Faults(error_5xx=1.0)) as s:
        first = call(s.base_url + "/embeddings", {"model": EMB, "input": "x"})
        second = call(s.base_url + "/embeddings", {"model": EMB, "input": "x"})
    assert (first.status // 100, second.status) == (5, 429)


def test_latency_is_applied() -> None:
    """latency=0.1 delays each answer by about 0.1 s; a ("uniform", lo, hi) spec draws in range."""
    with Simulator(latency=0.1) as s:
        start = time.monotonic()
        assert call(s.base_url + "/chat/completions", chat_body("x")).status == 200
        assert time.monotonic() - start >= 0.1
    s = Simulator(latency=("uniform", 0.2, 0.3))
    assert all(0.2 <= s.draw_latency() <= 0.3 for _ in range(100))
    with pytest.raises(ValueError):
        Simulator(latency=("gamma", 1.0, 2.0))


# ---------------------------------------------------------------- counters and running modes
def test_counters_count() -> None:
    """Stats count requests by endpoint/status, inputs, connections, concurrency; reset zeroes."""

    async def burst(base: str) -> None:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> None:
                body = {"model": EMB, "input": [f"t{i}", "same"]}
                async with session.post(base + "/embeddings", json=body) as resp:
                    assert resp.status == 200
                    await resp.read()

            await asyncio.gather(*(one(i) for i in range(5)))
            await one(5)  # reuses a kept-alive connection

    with Simulator(latency=0.15, record_inputs=True) as s:
        asyncio.run(burst(s.base_url))
        call(s.base_url + "/chat/completions", chat_body("hi"))
        call(s.base_url + "/chat/completions", chat_body("x", model="nope"))
        st = s.stats
        assert st.requests == 8 and st.accepted == 7 and st.admitted == 7
        assert st.by_endpoint == {"embeddings": 6, "chat/completions": 2}
        assert st.by_status == {200: 7, 404: 1}
        assert st.embedding_inputs == 12
        assert st.inputs["same"] == 6 and st.inputs["hi"] == 1
        assert st.connections == 7 and st.max_concurrent == 5 and st.in_flight == 0
        assert st.first_admitted is not None and st.last_admitted is not None
        assert st.last_admitted >= st.first_admitted
        json.dumps(st.as_dict())
        s.reset_stats()
        assert s.stats.requests == 0 and not s.stats.inputs


def test_sim_http_endpoints_and_request_ids(sim: Simulator) -> None:
    """GET /sim/stats gives the counters, POST /sim/reset zeroes them; every reply has a req id."""
    call(sim.base_url + "/models")
    missing = call(sim.url + "/v1/nothing", {"x": 1})
    assert (
        missing.status == 404
        and missing.json["error"]["message"] == "Invalid URL (POST /v1/nothing)"
    )
    assert missing.headers["x-request-id"].startswith("req_")
    stats = call(sim.url + "/sim/stats").json
    assert stats["requests"] >= 2 and "200" in stats["by_status"]
    assert call(sim.url + "/sim/reset", {}).json == {"ok": True}
    assert call(sim.url + "/sim/stats").json["requests"] == 0


def test_azure_paths() -> None:
    """Azure deployment paths need api-version, take the api-key header and answer as OpenAI."""
    with Simulator(api_key="k", rpm=60) as s:
        base = s.azure_endpoint + "/openai/deployments/gpt-4o/chat/completions"
        hdr = {"api-key": "k"}
        ok = call(
            base + "?api-version=2024-10-21", {"messages": chat_body("az")["messages"]}, headers=hdr
        )
        assert ok.status == 200 and ok.json["model"] == "gpt-4o"
        assert ok.json["choices"][0]["message"]["content"] == "echo: az"
        limited = call(base + "?api-version=2024-10-21", chat_body("az"), headers=hdr)
        assert limited.status == 429 and limited.json["error"]["code"] == "429"
        assert "Please retry after 1 second" in limited.json["error"]["message"]
        assert call(base, chat_body("az"), headers=hdr).status == 404
        emb_url = s.azure_endpoint + "/openai/deployments/nope/embeddings?api-version=1"
        unknown = call(emb_url, {"input": "x"}, headers=hdr)
        assert unknown.status == 404 and unknown.json["error"]["code"] == "DeploymentNotFound"


def test_async_context_manager_runs_in_callers_loop() -> None:
    """`async with Simulator()` serves from the running loop."""

    async def main() -> dict[str, Any]:
        async with Simulator() as s, aiohttp.ClientSession() as session:
            body = {"model": EMB, "input": "a", "encoding_format": "base64"}
            async with session.post(s.base_url + "/embeddings", json=body) as resp:
                return await resp.json()

    got = asyncio.run(main())["data"][0]["embedding"]
    assert np.array_equal(np.frombuffer(base64.b64decode(got), "<f4"), expected_embedding("a"))


def test_cli_prints_port_serves_and_dumps_stats(tmp_path: Path) -> None:
    """python -m dfbatch.testing prints its URL, serves, and writes its stats on SIGTERM."""
    stats_file = tmp_path / "stats.json"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "dfbatch.testing", "--port", "0", "--rpm", "600"]
    cmd += ["--stats-file", str(stats_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("dfbatch simulator listening on http://127.0.0.1:")
        base = line.rsplit(" ", 1)[1]
        r = call(base + "/embeddings", {"model": EMB, "input": "x"})
        assert r.headers["x-ratelimit-limit-requests"] == "600"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    stats = json.loads(stats_file.read_text())
    assert stats["accepted"] == 1 and stats["by_status"] == {"200": 1}


def test_tiktoken_usage_bills_as_openai_and_cuts_at_max_tokens() -> None:
    """usage="tiktoken": chat prompts cost 3 per message + their fields + 3 (o200k for
    gpt-4o-mini), embeddings their cl100k tokens; an answer longer than max_tokens is cut
    there with finish_reason "length"."""
    import tiktoken

    o200k, cl100k = tiktoken.get_encoding("o200k_base"), tiktoken.get_encoding("cl100k_base")
    with Simulator(usage="tiktoken") as s:
        body = {
            "model": CHAT,
            "messages": [
                {"role": "system", "content": "Be brief.", "name": "rules"},
                {"role": "user", "content": "hello world " * 20},
            ],
            "max_tokens": 5,
        }
        answer = call(s.base_url + "/chat/completions", body).json
        texts = ["system", "Be brief.", "rules", "user", "hello world " * 20]
        expected = 3 + 3 * 2 + sum(len(o200k.encode(t)) for t in texts) + 1
        assert answer["usage"]["prompt_tokens"] == expected
        assert answer["usage"]["completion_tokens"] == 5
        assert answer["choices"][0]["finish_reason"] == "length"
        content = answer["choices"][0]["message"]["content"]
        assert len(o200k.encode(content)) == 5
        emb = call(s.base_url + "/embeddings", {"model": EMB, "input": ["a cat", "ünïcode 🎉"]})
        tokens = len(cl100k.encode("a cat")) + len(cl100k.encode("ünïcode 🎉"))
        assert emb.json["usage"]["prompt_tokens"] == tokens

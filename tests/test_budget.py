"""The budget: a hard cap never passed, and a run that does not stop early (virtual time)."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from _vtime import run_virtual

from dfbatch import ApiConfig, ConfigurationError, Engine, Request
from dfbatch.engine.budget import BudgetCap, output_bound
from dfbatch.engine.prices import Price, price_for, usage_cost, worst_cost
from dfbatch.engine.transport import MockTransport, RawResponse

API = ApiConfig.resolve(base_url="http://test/v1", api_key="sk-test")


def test_cap_reserves_waits_settles_and_refuses() -> None:
    """A reservation that does not fit waits while others are in flight, and is refused
    for good once nothing is in flight."""
    cap = BudgetCap(1.0)
    a = cap.reserve(0.5)
    b = cap.reserve(0.4)
    assert a == 0.5 and b == 0.4 and cap.reserve(0.2) is None
    assert cap.must_wait(0.2)  # others in flight: they may cost less than their worst
    cap.settle(a, 0.05)
    assert cap.reserve(0.2) == 0.2
    cap.settle(b, 0.4)
    cap.settle(0.2, 0.2)
    assert cap.spent == pytest.approx(0.65) and cap.reserved == 0 and cap.in_flight == 0
    assert not cap.must_wait(0.5) and cap.reached  # nothing in flight: reached for good
    assert cap.reserve(0.01) is None  # nothing more goes, however small


def test_output_bound_follows_the_tpm_rules() -> None:
    """n x max_completion_tokens / max_tokens; 1,024 per choice when a chat sets neither."""
    assert output_bound("/chat/completions", {"max_completion_tokens": 7, "n": 2}) == 14
    assert output_bound("/chat/completions", {}) == 1024
    assert output_bound("/completions", {"prompt": ["a", "b"]}) == 32
    assert output_bound("/embeddings", {"input": "x"}) == 0


PRICE = Price(input=2.0, output=8.0)  # USD per 1M tokens


def _server(rng: random.Random, faults: float, calls: list[int]):  # type: ignore[no-untyped-def]
    """Answers with usage: the prompt's tokens and a random share of the output bound."""

    async def handler(url: str, headers, body: bytes) -> RawResponse:  # type: ignore[no-untyped-def]
        req = json.loads(body)
        calls.append(req["i"])
        await asyncio.sleep(rng.uniform(0.05, 2.0))
        roll = rng.random()
        if roll < faults:
            return RawResponse(500, {}, b'{"error": {"message": "boom"}}')
        if roll < 2 * faults:
            return RawResponse(
                429,
                {"retry-after-ms": "300"},
                b'{"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}',
            )
        out = rng.randint(0, req["max_tokens"] * req.get("n", 1))
        usage = {"prompt_tokens": req["p"], "completion_tokens": out}
        choices = [
            {"index": k, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}
            for k in range(req.get("n", 1))
        ]
        answer = {"choices": choices, "usage": usage}
        return RawResponse(200, {}, json.dumps(answer).encode())

    return handler


@pytest.mark.parametrize("seed", range(60))
def test_spend_never_passes_the_budget_and_the_stop_is_not_early(seed: int) -> None:
    """Randomized runs (rows, max_tokens, n, in-flight limits, 5xx and 429 faults): the spend
    never passes the budget; when requests are refused, the next one's worst case did not fit
    in what was left, so with requests of at most 10% of the budget, 90% of it was spent."""
    rng = random.Random(seed)
    rows = rng.randint(1, 400)
    max_tokens = rng.choice([1, 16, 100, 1000, 4000])
    n = rng.choice([1, 1, 2, 3])
    reqs = []
    for i in range(rows):
        p = rng.randint(1, 3000)
        body = {"model": "m", "max_tokens": max_tokens, "n": n, "i": i, "p": p}
        reqs.append(Request(i, "/chat/completions", body, p + n * max_tokens))
    worsts = [worst_cost(PRICE, r.body["p"], n * max_tokens) for r in reqs]
    budget = rng.uniform(0.2, 1.5) * sum(worsts) * rng.choice([0.05, 0.3, 1.0])
    calls: list[int] = []
    engine = Engine(
        API,
        transport=MockTransport(_server(rng, rng.choice([0.0, 0.05, 0.2]), calls)),
        max_in_flight=rng.choice([1, 4, 50, 1200]),
        max_attempts=rng.choice([1, 3, 5]),
        rng=random.Random(seed),
        price={"input": PRICE.input, "output": PRICE.output},
        budget=budget,
    )
    outcomes: list = []
    stats = run_virtual(engine.run(reqs, outcomes.append))

    spent = sum(usage_cost(PRICE, o.response["usage"]) for o in outcomes if o.ok)
    assert spent <= budget * (1 + 1e-9)
    assert stats.cost_usd == pytest.approx(spent)
    refused = [o for o in outcomes if o.error is not None and o.error.code == "budget_reached"]
    assert len(outcomes) == rows and stats.budget_refused == len(refused)
    assert not {o.id for o in refused} & set(calls)  # a refused request is never sent
    if refused:
        first = min(refused, key=lambda o: o.id)
        # It stopped only when nothing was in flight and the next worst case did not fit ...
        assert spent + min(worsts[o.id] for o in refused) > budget or spent > budget - max(
            worsts[o.id] for o in refused
        )
        assert "budget reached" in first.error.message
        # ... so when every request is at most 10% of the budget, 90% of it was spent.
        if max(worsts) <= 0.1 * budget:
            assert spent >= 0.9 * budget


def test_unknown_model_with_a_budget_is_an_error_before_any_request() -> None:
    """budget= with a model the price table does not list and no price=: ConfigurationError
    naming the fix, and nothing sent."""
    calls: list[int] = []
    engine = Engine(API, transport=MockTransport(_server(random.Random(0), 0, calls)), budget=1.0)
    reqs = [Request(0, "/chat/completions", {"model": "my-llama", "i": 0, "p": 1}, 10)]
    with pytest.raises(ConfigurationError, match=r"price=") as info:
        run_virtual(engine.run(reqs, lambda o: None))
    assert "my-llama" in str(info.value) and calls == []


def test_cost_is_unknown_without_a_price_and_counted_with_one() -> None:
    """A model with no price reports cost None (never a guess); price= gives the figure."""
    reqs = [
        Request(i, "/chat/completions", {"model": "my-llama", "max_tokens": 5, "i": i, "p": 10}, 15)
        for i in range(3)
    ]
    assert price_for("my-llama") is None
    unknown = Engine(API, transport=MockTransport(_server(random.Random(1), 0, [])))
    assert run_virtual(unknown.run(reqs, lambda o: None)).cost_usd is None
    free = Engine(API, transport=MockTransport(_server(random.Random(1), 0, [])), price=0)
    assert run_virtual(free.run(reqs, lambda o: None)).cost_usd == 0.0
    priced = Engine(
        API,
        transport=MockTransport(_server(random.Random(1), 0, [])),
        price={"input": 1e6, "output": 0},
    )
    assert run_virtual(priced.run(reqs, lambda o: None)).cost_usd == pytest.approx(30.0)

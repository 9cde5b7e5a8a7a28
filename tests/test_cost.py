"""Estimate, cost and budget end to end, against a simulator that bills usage with tiktoken."""

from __future__ import annotations

import pandas as pd
import pytest

import dfbatch  # noqa: F401  (registers .llm)
from dfbatch import ConfigurationError
from dfbatch.engine.prices import PRICE_TABLE, tokens_cost
from dfbatch.jobs.estimate import Estimate
from dfbatch.testing import Simulator


@pytest.fixture(scope="module")
def sim():  # type: ignore[no-untyped-def]
    with Simulator(usage="tiktoken") as s:
        yield s


TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé, emoji 🎉 and <|endoftext|> are plain text here.",
    "def f(x):\n    return x ** 2  # code counts differently",
    "短い日本語の文。",
]


def texts(n: int) -> list[str]:
    return [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(n)]


def test_embed_estimate_equals_what_the_server_bills(opts, sim) -> None:  # type: ignore[no-untyped-def]
    """Input tokens and requests of the estimate equal the server's usage and request count;
    NA rows and duplicates are counted as the run counts them; the cost is exact."""
    values = [*texts(300), None, *texts(50)]  # 50 duplicates and one NA
    df = pd.DataFrame({"text": values})
    before = sim.stats.admitted
    est = df.llm.estimate.embed("text", batch_size=64, **opts)
    assert sim.stats.admitted == before  # nothing sent
    out = df.llm.embed("text", batch_size=64, **opts)
    figures = out.attrs["dfbatch"]
    assert est.rows == 350 and est.rows_not_sent == 1 and est.rows_cached == 0
    assert est.requests == figures["requests"] == 5
    assert est.input_tokens == figures["tokens_used"]  # the server's prompt_tokens, summed
    assert est.max_output_tokens == 0 and est.expected_output_tokens == 0
    price = PRICE_TABLE["text-embedding-3-small"]
    assert (
        est.cost_usd_low
        == est.cost_usd_high
        == pytest.approx(tokens_cost(price, figures["tokens_used"]))
    )
    assert figures["cost_usd"] == pytest.approx(est.cost_usd_high)
    with_usage = df.llm.embed("text", batch_size=64, usage=True, **opts)
    assert with_usage["embedding_cost_usd"].iloc[300] == 0  # the NA row: not sent
    assert float(with_usage["embedding_cost_usd"].sum()) == pytest.approx(
        tokens_cost(price, int(with_usage["embedding_tokens"].sum()))
    )
    # Now everything is in the cache: cost 0, nothing to send.
    again = df.llm.estimate.embed("text", batch_size=64, **opts)
    assert again.rows == 0 and again.rows_cached == 350 and again.requests == 0
    assert again.cost_usd_high == 0


def test_embed_estimate_packs_as_the_run_does_when_tpm_is_given(opts, sim) -> None:  # type: ignore[no-untyped-def]
    """With ``tpm`` given, the run packs no more than half a second's share of it per request;
    the estimate plans the same packs, so its request count is the run's."""
    df = pd.DataFrame({"text": texts(3000)})
    est = df.llm.estimate.embed("text", tpm=600_000, **opts)  # packs of at most 5,000 tokens
    out = df.llm.embed("text", tpm=600_000, **opts)
    assert est.requests == out.attrs["dfbatch"]["requests"] > 2  # not ceil(3000 / 2048)
    assert est.input_tokens == out.attrs["dfbatch"]["tokens_used"]


def test_estimate_checks_the_options_as_the_call_does(opts) -> None:  # type: ignore[no-untyped-def]
    """The estimate refuses what the call refuses, before planning anything."""
    df = pd.DataFrame({"text": texts(3)})
    with pytest.raises(ConfigurationError, match="temperature"):
        df.llm.estimate.complete("Say {text}", temperature=float("nan"), **opts)
    with pytest.raises(ConfigurationError, match="dimensions"):
        df.llm.estimate.embed("text", dimensions=float("inf"), **opts)
    with pytest.raises(ConfigurationError, match="output"):
        df.llm.estimate.embed("text", output=None, **opts)


@pytest.mark.parametrize(
    ("prompt", "kwargs"),
    [
        ("Summarize: {text}", {}),
        ("Summarize: {text}", {"system": "You are terse. Answer in French.", "n": 3}),
        (
            lambda row: [
                {"role": "system", "content": "Be brief.", "name": "rules"},
                {"role": "user", "content": [{"type": "text", "text": row.text}]},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": "And again: " + row.text},
            ],
            {"max_tokens": 7},
        ),
    ],
)
def test_chat_estimate_equals_the_servers_prompt_tokens(opts, prompt, kwargs) -> None:  # type: ignore[no-untyped-def]
    """Templates, a system prompt, message lists (names, content parts) and n > 1: the
    estimated input tokens equal the prompt_tokens the server bills, row for row summed."""
    df = pd.DataFrame({"text": texts(40)})
    kwargs = {"max_tokens": 20, **kwargs}
    est = df.llm.estimate.complete(prompt, **kwargs, **opts)
    out = df.llm.complete(prompt, usage=True, **kwargs, **opts)
    n = kwargs.get("n", 1)
    assert est.requests == out.attrs["dfbatch"]["requests"] == 40
    assert est.input_tokens == int(out["completion_prompt_tokens"].sum())
    assert est.max_output_tokens == 40 * n * kwargs["max_tokens"]
    assert int(out["completion_completion_tokens"].sum()) <= est.max_output_tokens
    price = PRICE_TABLE["gpt-4o-mini"]
    spent = out.attrs["dfbatch"]["cost_usd"]
    assert est.cost_usd_low * (1 - 1e-9) <= spent <= est.cost_usd_high * (1 + 1e-9)
    assert spent == pytest.approx(float(out["completion_cost_usd"].sum()))
    assert spent == pytest.approx(
        tokens_cost(
            price,
            int(out["completion_prompt_tokens"].sum()),
            int(out["completion_completion_tokens"].sum()),
        )
    )


def test_cached_answers_give_an_expected_output_and_cost_nothing(opts) -> None:  # type: ignore[no-untyped-def]
    """Rows answered in the cache count as cached (cost 0); their answers are the basis for
    the expected output of the rows still to send."""
    df = pd.DataFrame({"text": texts(30)})
    df.iloc[:10].llm.complete("Say: {text}", max_tokens=50, **opts)
    est = df.llm.estimate.complete("Say: {text}", max_tokens=50, **opts)
    assert est.rows_cached == 10 and est.rows == 20 and est.requests == 20
    assert est.expected_output_tokens is not None
    assert 0 < est.expected_output_tokens <= est.max_output_tokens == 20 * 50
    assert est.cost_usd_low < est.cost_usd_high


def test_price_override_changes_every_figure(opts) -> None:  # type: ignore[no-untyped-def]
    """price= replaces the table for the estimate, the run's cost and the cost column."""
    df = pd.DataFrame({"text": texts(12)})
    price = {"input": 1000.0, "output": 3000.0}
    est = df.llm.estimate.complete("Echo {text}", max_tokens=5, price=price, **opts)
    assert est.cost_usd_high == pytest.approx(
        (est.input_tokens * 1000 + est.max_output_tokens * 3000) / 1e6
    )
    out = df.llm.complete("Echo {text}", max_tokens=5, price=price, usage=True, **opts)
    expected = (
        out["completion_prompt_tokens"].sum() * 1000
        + out["completion_completion_tokens"].sum() * 3000
    ) / 1e6
    assert out.attrs["dfbatch"]["cost_usd"] == pytest.approx(expected)
    free = df.llm.estimate.embed("text", price=0, **opts)
    assert free.cost_usd_high == 0


def test_unknown_model_cost_is_unknown_and_a_budget_with_it_is_an_error(opts, sim) -> None:  # type: ignore[no-untyped-def]
    """No price for a model: the estimate says unknown (None), never a guess; budget= with it
    raises ConfigurationError naming price= before any request."""
    df = pd.DataFrame({"text": texts(5)})
    est = df.llm.estimate.complete("{text}", model="my-local-llama", **opts)
    assert est.cost_usd_low is None and est.cost_usd_high is None
    assert "unknown" in str(est)
    before = sim.stats.admitted
    for call in (df.llm.complete, df.llm.estimate.complete):
        with pytest.raises(ConfigurationError, match="price="):
            call("{text}", model="my-local-llama", budget=1.0, **opts)
    assert sim.stats.admitted == before


def test_budget_stops_the_run_and_a_rerun_sends_only_the_rows_left(opts) -> None:  # type: ignore[no-untyped-def]
    """A budget for about half the rows: the spend stays under it, the rows left say
    "budget reached" (not cached), and a rerun with a higher budget sends only those."""
    df = pd.DataFrame({"text": texts(200)})
    kwargs = {"max_tokens": 30, "price": {"input": 100.0, "output": 400.0}}
    est = df.llm.estimate.complete("Reply to: {text}", **kwargs, **opts)
    budget = est.cost_usd_high / 2
    out = df.llm.complete("Reply to: {text}", budget=budget, max_in_flight=8, **kwargs, **opts)
    figures = out.attrs["dfbatch"]
    stopped = out["completion_error"].fillna("").str.startswith("budget reached")
    assert 0 < stopped.sum() < 200 and figures["rows_budget_reached"] == stopped.sum()
    assert figures["budget_usd"] == budget and 0.9 * budget <= figures["cost_usd"] <= budget
    assert out.loc[stopped, "completion"].isna().all()
    assert out.loc[~stopped, "completion_error"].isna().all()

    rerun = df.llm.complete("Reply to: {text}", budget=budget * 4, **kwargs, **opts)
    assert rerun["completion_error"].isna().all()
    assert rerun.attrs["dfbatch"]["requests"] == stopped.sum()
    assert rerun.attrs["dfbatch"]["rows_from_cache"] == 200 - stopped.sum()


def test_estimate_shows_as_text_and_html(opts) -> None:  # type: ignore[no-untyped-def]
    """str() and the notebook's HTML show the same figures."""
    est = pd.Series(texts(3)).llm.estimate.embed(rpm=600, tpm=100_000, **opts)
    assert isinstance(est, Estimate) and est.rows == 3
    text, page = str(est), est._repr_html_()
    for label in ("rows to send", "input tokens", "cost, high", "shortest time"):
        assert label in text and label in page
    assert est.min_seconds == pytest.approx(max(1 / 600 * 60, est.input_tokens / 100_000 * 60))
    assert "<table>" in page


def test_the_progress_bar_shows_the_money_spent() -> None:
    """Beside the bar: the spend so far, and the budget when there is one."""
    import io

    from dfbatch.engine.types import RunStats
    from dfbatch.jobs.progress import Progress

    out = io.StringIO()
    bar = Progress(10, enabled=True, file=out)
    bar.show(RunStats(started=0.0, cost_usd=0.0123, budget_usd=0.5), 1.0, force=True)
    bar.advance(1)
    bar.close()
    assert "spent=$0.0123 of $0.5" in out.getvalue()


def test_estimate_takes_exactly_the_calls_arguments(opts) -> None:  # type: ignore[no-untyped-def]
    """The estimate's methods show the call's options, refuse a name the call would refuse,
    and work on a Series with "{}" as its value."""
    import inspect

    df = pd.DataFrame({"text": texts(3)})
    assert {"dimensions", "batch_size", "truncate"} <= set(
        inspect.signature(df.llm.estimate.embed).parameters
    )
    assert "max_tokens" in inspect.signature(df.llm.estimate.complete).parameters
    with pytest.raises(TypeError):
        df.llm.estimate.complete("{text}", max_token=5, **opts)
    with pytest.raises(ConfigurationError, match=r"does not have"):
        df.llm.estimate.complete("{nope}", **opts)
    est = df["text"].llm.estimate.complete("Say {}", max_tokens=5, n=2, **opts)
    assert est.requests == 3 and est.max_output_tokens == 3 * 2 * 5

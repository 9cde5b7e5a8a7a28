"""The Batch API's price in the estimate, the run's cost and the budget (issue 12, "Cost")."""

from __future__ import annotations

import pandas as pd
import pytest

import dfbatch  # noqa: F401  (registers .llm)
from dfbatch import ConfigurationError
from dfbatch.engine.prices import PRICE_TABLE
from dfbatch.testing import Simulator

POLL = 0.02
MODEL = "gpt-4o-mini"


@pytest.fixture
def sim():  # type: ignore[no-untyped-def]
    with Simulator(batch_seconds=0.2, usage="tiktoken") as s:
        yield s


@pytest.fixture
def opts(opts):  # type: ignore[no-untyped-def]
    return {**opts, "model": MODEL}


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"review number {i} of the lamp" for i in range(n)]})


def test_the_estimate_shows_the_batch_and_the_online_price_side_by_side(opts) -> None:  # type: ignore[no-untyped-def]
    """estimate.complete(..., backend="batch") costs at half the online price, shows both,
    and gives no shortest time (the Batch API answers within its window)."""
    df = frame(50)
    online = df.llm.estimate.complete("Say: {text}", max_tokens=20, **opts)
    batch = df.llm.estimate.complete("Say: {text}", max_tokens=20, backend="batch", **opts)
    assert batch.input_tokens == online.input_tokens > 0
    assert batch.cost_usd_high == pytest.approx(online.cost_usd_high / 2)
    assert batch.cost_usd_low == pytest.approx(online.cost_usd_low / 2)
    assert batch.online_cost_usd_high == pytest.approx(online.cost_usd_high)
    assert batch.min_seconds is None and online.min_seconds is not None
    text = str(batch)
    assert "Batch API |" in text and "online" in text and "within 24 h" in text
    assert "Batch API" in batch._repr_html_()


def test_a_batch_run_costs_half_the_online_run(opts) -> None:  # type: ignore[no-untyped-def]
    """The same rows through both backends: the Batch run's cost_usd and per-row cost column
    are half the online ones (the simulator bills both the same tokens)."""
    df = frame(30)
    online = df.llm.complete("Say: {text}", max_tokens=20, usage=True, **{**opts, "cache": False})
    batch = df.llm.complete(
        "Say: {text}", max_tokens=20, usage=True, backend="batch", poll_interval=POLL, **opts
    )
    assert online.attrs["dfbatch"]["cost_usd"] > 0
    assert batch.attrs["dfbatch"]["cost_usd"] == pytest.approx(
        online.attrs["dfbatch"]["cost_usd"] / 2
    )
    pd.testing.assert_series_equal(
        batch["completion_cost_usd"], online["completion_cost_usd"] / 2, check_exact=False
    )


def test_a_batch_budget_is_never_passed_and_the_rerun_sends_only_the_rows_left(  # type: ignore[no-untyped-def]
    sim, opts
) -> None:
    """budget= with backend="batch": waves whose worst cases fit what is left, settled with
    their real cost; the spend stays under the budget, reaches 90% of it (each request's
    worst case is well under a tenth of it), the rows left say "budget reached", and a rerun
    with a higher budget submits only them."""
    df = frame(200)
    price = PRICE_TABLE[MODEL].batch()
    worst = (40 * price.input + 50 * price.output) / 1e6  # a row: ~15 input tokens, 50 out
    budget = 40 * worst  # room for ~40 rows at their worst case; answers cost far less
    kwargs = {"max_tokens": 50, "backend": "batch", "poll_interval": POLL, "usage": True}
    out = df.llm.complete("Say: {text}", budget=budget, **kwargs, **opts)
    figures = out.attrs["dfbatch"]
    stopped = out["completion_error"].fillna("").str.startswith("budget reached")
    assert 0 < stopped.sum() < len(df)
    assert figures["cost_usd"] <= budget
    assert figures["cost_usd"] >= 0.9 * budget
    assert out.loc[~stopped, "completion"].notna().all()
    assert figures["budget_usd"] == budget and figures["rows_budget_reached"] == stopped.sum()
    assert out["completion_cost_usd"].sum() == pytest.approx(figures["cost_usd"])
    submitted = dict(sim.batches.stats.submitted)
    again = df.llm.complete("Say: {text}", budget=1.0, **kwargs, **opts)
    assert again["completion_error"].isna().all()
    resubmitted = {t: n for t, n in sim.batches.stats.submitted.items() if n > submitted.get(t, 0)}
    assert len(resubmitted) == stopped.sum()  # only the rows the budget stopped
    assert all(n == 1 for n in sim.batches.stats.submitted.values())


def test_a_batch_budget_with_wait_false_is_refused(opts) -> None:  # type: ignore[no-untyped-def]
    """A budget is settled wave by wave, which needs waiting: wait=False with budget= is a
    configuration error before anything is submitted."""
    with pytest.raises(ConfigurationError, match="wait=True"):
        frame(5).llm.complete(
            "Say: {text}", budget=1.0, backend="batch", wait=False, poll_interval=POLL, **opts
        )

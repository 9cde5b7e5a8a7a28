"""Two senders in one process share a budget through a coordinator that fails for a while."""

from __future__ import annotations

import threading
import time
import uuid

import pandas as pd
import pytest

import dfbatch  # noqa: F401
from dfbatch.coord.leaser import LeasedBudget
from dfbatch.coord.local import LocalCoordinator, forget
from dfbatch.engine.lease import Ask, Grant
from dfbatch.testing import Simulator


class Flaky(LocalCoordinator):
    """The in-process book, unreachable while ``down`` is set."""

    down = threading.Event()

    async def lease(self, ask: Ask) -> Grant:
        if self.down.is_set():
            raise ConnectionError("coordinator down")
        return self.lease_now(ask)


def test_senders_fall_back_to_an_even_split_and_share_again_when_it_returns():
    """The coordinator is down for 1.5 s mid-run: both senders warn, pace at half the limit
    each (so together still under it), share again when it returns; every row answered once."""
    account = uuid.uuid4().hex
    budgets = [LeasedBudget(Flaky(account), timeout=0.5) for _ in range(2)]
    frames = [pd.DataFrame({"text": [f"s{s} row {i}" for i in range(120)]}) for s in range(2)]
    outs: list[pd.DataFrame] = [pd.DataFrame(), pd.DataFrame()]
    Flaky.down.clear()
    with Simulator(rpm=3000, record_inputs=True) as sim:

        def send(i: int) -> None:
            outs[i] = frames[i].llm.embed(
                "text",
                base_url=sim.base_url,
                api_key="sk-test",
                rpm=3000,
                batch_size=1,
                cache=False,
                progress=False,
                limiter=budgets[i],
            )

        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        with pytest.warns(RuntimeWarning, match="paces alone at 1/2"):
            for t in threads:
                t.start()
            time.sleep(1.0)
            Flaky.down.set()
            time.sleep(1.5)
            Flaky.down.clear()
            for t in threads:
                t.join(60)
        counts = dict(sim.stats.inputs)
        refused = sim.stats.rate_limited
    forget(account)
    assert all(out["embedding"].notna().all() for out in outs)
    assert len(counts) == 240 and set(counts.values()) == {1}
    assert refused <= 3
    assert [b.fallbacks for b in budgets] == [1, 1]
    assert all(b.wallet is not None and not b.wallet.alone for b in budgets)


class Recording(LocalCoordinator):
    """The in-process book; keeps the grants it gave this sender, with the time of each."""

    def __init__(self, account: str) -> None:
        super().__init__(account)
        self.grants: list[tuple[float, Grant]] = []

    async def lease(self, ask: Ask) -> Grant:
        grant = self.lease_now(ask)
        self.grants.append((time.monotonic(), grant))
        return grant


def test_a_429_one_sender_meets_slows_the_other_end_to_end():
    """Two senders share one budget; only A's server refuses (it allows 300 RPM and
    announces nothing; both were told 1,200). A's 429s reach the shared book, which cuts the
    pace for everyone: B, whose own server never refuses, is granted smaller slices after
    A's first 429 than before it."""
    account = uuid.uuid4().hex
    a, b = Recording(account), Recording(account)
    budgets = [LeasedBudget(a), LeasedBudget(b)]
    frames = [pd.DataFrame({"text": [f"s{s} row {i}" for i in range(60)]}) for s in range(2)]
    outs: list[pd.DataFrame] = [pd.DataFrame(), pd.DataFrame()]
    with Simulator(rpm=300, rate_limit_headers=False) as strict, Simulator() as open_server:
        servers = [strict, open_server]

        def send(i: int) -> None:
            outs[i] = frames[i].llm.embed(
                "text",
                base_url=servers[i].base_url,
                api_key="sk-test",
                rpm=1200,
                batch_size=1,
                cache=False,
                progress=False,
                limiter=budgets[i],
            )

        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        refused_a, refused_b = strict.stats.rate_limited, open_server.stats.rate_limited
    forget(account)
    assert all(out["embedding"].notna().all() for out in outs)
    assert refused_a >= 1 and refused_b == 0
    cooled = [at for at, g in a.grants if g.cool_down_for > 0]
    assert cooled, "A's 429s never reached the shared book"
    first_429 = min(cooled)
    before = [g.requests for at, g in b.grants if at < first_429 and g.requests > 0]
    after = [g.requests for at, g in b.grants if at > first_429 and g.requests > 0]
    assert before and after
    assert min(after) < max(before)  # A's 429 cut B's pace too

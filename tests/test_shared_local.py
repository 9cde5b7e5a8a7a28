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

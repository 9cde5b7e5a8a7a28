"""A notebook killed mid-run loses nothing it paid for: the rerun sends only what is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd

from dfbatch.testing import Simulator

ROWS = 400
CHILD = textwrap.dedent(
    """
    import sys
    import pandas as pd
    import dfbatch
    url, cache, out = sys.argv[1:4]
    rows = int(sys.argv[4])
    df = pd.DataFrame({"text": [f"row {i}" for i in range(rows)]}, index=range(rows, 0, -1))
    res = df.llm.complete("Say {text}", base_url=url, cache=cache, progress=False,
                          max_in_flight=20, rpm=6000)
    res.to_pickle(out)
    """
)


def run_child(url: str, cache: str, out: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", CHILD, url, cache, out, str(ROWS)], env=env)


def test_sigkill_half_way_then_rerun_sends_only_what_is_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Killed with SIGKILL at about half way, the rerun re-sends at most the in-flight requests
    and its result equals an uninterrupted run's, row for row."""
    cache = str(tmp_path / "cache.sqlite")
    with Simulator(latency=0.05, record_inputs=True) as sim:
        child = run_child(sim.base_url, cache, str(tmp_path / "never.pkl"))
        deadline = time.monotonic() + 60
        while sim.stats.accepted < ROWS // 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        answered_before_kill = sim.stats.accepted
        sent_before_rerun = sim.stats.requests
        assert ROWS // 4 < answered_before_kill < ROWS  # really killed half way
        rerun = run_child(sim.base_url, cache, str(tmp_path / "rerun.pkl"))
        assert rerun.wait(timeout=120) == 0
        sent_by_rerun = sim.stats.requests - sent_before_rerun
        # Everything stored before the kill is served from the cache: the rerun sends the rest
        # plus, at most, what was in flight (20) or in the last 0.2 s flush interval.
        lost = 20 + 6000 / 60 * 0.2
        assert sent_by_rerun <= ROWS - answered_before_kill + lost
        asked_twice = [text for text, n in sim.stats.inputs.items() if n > 1]
        assert len(asked_twice) <= lost
        assert set(sim.stats.inputs) == {f"Say row {i}" for i in range(ROWS)}
    with Simulator() as fresh:
        whole = run_child(fresh.base_url, str(tmp_path / "other.sqlite"), str(tmp_path / "w.pkl"))
        assert whole.wait(timeout=120) == 0
    resumed = pd.read_pickle(tmp_path / "rerun.pkl")
    uninterrupted = pd.read_pickle(tmp_path / "w.pkl")
    resumed.attrs = uninterrupted.attrs = {}
    pd.testing.assert_frame_equal(resumed, uninterrupted)

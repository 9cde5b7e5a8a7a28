"""ddf.llm on Dask frames: the threaded scheduler, and a LocalCluster of 4 worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

dd = pytest.importorskip("dask.dataframe", reason="dask is an optional extra: dfbatch[dask]")
distributed = pytest.importorskip("distributed", reason="dfbatch[dask] brings distributed")

import dfbatch  # noqa: E402, F401
from dfbatch.testing import Simulator, expected_embedding  # noqa: E402

KEY = "sk-test"
#: Seconds a LocalCluster computation may take before the test fails instead of hanging.
CLUSTER_TIMEOUT = 120


def _frame(rows: int = 40) -> pd.DataFrame:
    texts: list[object] = [f"text {i}" for i in range(rows)]
    texts[3] = None  # NA: no request, NA answer
    texts[7] = ""  # empty: fails alone, reason in embedding_error
    return pd.DataFrame({"text": texts, "n": range(rows)}, index=pd.RangeIndex(1000, 1000 + rows))


def test_import_dfbatch_loads_no_dask_and_registers_when_dask_comes(tmp_path):
    """Like pandas: `import dfbatch` imports no dask; importing dask.dataframe later registers."""
    code = (
        "import sys, dfbatch\n"
        "print(any(m in sys.modules for m in ('dask', 'distributed', 'redis')))\n"
        "import dask.dataframe as dd, pandas as pd\n"
        "d = dd.from_pandas(pd.DataFrame({'a': ['x']}), npartitions=1)\n"
        "print(type(d.llm).__name__, type(d.a.llm).__name__)\n"
    )
    env = {**os.environ, "DFBATCH_CACHE_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[:2] == ["False", "DaskLlmFrameAccessor DaskLlmSeriesAccessor"]


def test_embed_is_lazy_with_the_right_meta_partitions_and_index():
    """The result is lazy; its meta is what each partition gives; index and partitions kept."""
    df = _frame()
    ddf = dd.from_pandas(df, npartitions=4)
    with Simulator() as sim:
        out = ddf.llm.embed("text", base_url=sim.base_url, api_key=KEY, cache=False, usage=True)
        assert sim.stats.requests == 0  # nothing sent until computed
        assert out.npartitions == 4 and out.divisions == ddf.divisions
        assert list(out.columns) == [
            "text",
            "n",
            "embedding",
            "embedding_error",
            "embedding_tokens",
            "embedding_cost_usd",
        ]
        got = out.compute(scheduler="threads")
    assert got.index.equals(df.index)
    assert dict(got.dtypes) == dict(out._meta.dtypes)
    assert pd.isna(got.loc[1003, "embedding"]) and got.loc[1003, "embedding_error"] is None
    assert pd.isna(got.loc[1007, "embedding"]) and "empty" in got.loc[1007, "embedding_error"]
    vector = got.loc[1000, "embedding"]
    assert vector.dtype == np.float32
    np.testing.assert_array_equal(vector, expected_embedding("text 0"))
    assert got["embedding"].notna().sum() == 38


def test_complete_on_a_dask_series_and_errors_raise_per_partition():
    """dseries.llm.complete gives the Series as a column and the answers beside it."""
    s = dd.from_pandas(pd.Series(["a", "b", None, "c"], name="word"), npartitions=2)
    with Simulator() as sim:
        out = s.llm.complete("Say {}", base_url=sim.base_url, api_key=KEY, cache=False)
        got = out.compute(scheduler="threads")
    assert list(got.columns) == ["word", "completion", "completion_error"]
    assert got["completion"].tolist()[:2] == ["echo: Say a", "echo: Say b"]
    assert pd.isna(got["completion"].iloc[2])


def test_the_result_writes_to_parquet_and_reads_back(tmp_path):
    """to_parquet once the added columns are Arrow-typed (dask cannot infer object columns);
    the vectors come back as float32."""
    from dfbatch.dask.parquet import arrow_typed

    ddf = dd.from_pandas(_frame(20), npartitions=2)
    with Simulator() as sim:
        out = ddf.llm.embed("text", base_url=sim.base_url, api_key=KEY, cache=False)
        arrow_typed(out, embedding="embedding").to_parquet(
            tmp_path / "out", compute_kwargs={"scheduler": "threads"}
        )
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    # Dask keeps the index as a column; its pandas metadata names an Arrow dtype string that
    # pandas cannot parse back, so the columns are read as they are.
    back = table.to_pandas(ignore_metadata=True)
    back = back.set_index(back.columns[-1]).sort_index()
    assert len(back) == 20 and back.index.tolist() == list(range(1000, 1020))
    np.testing.assert_array_equal(
        np.asarray(back.loc[1001, "embedding"], dtype=np.float32), expected_embedding("text 1")
    )
    assert back.loc[1007, "embedding_error"].startswith("HTTP") or back.loc[1007, "embedding_error"]


def test_to_parquet_with_each_partitions_own_schema_reads_back_with_dask(tmp_path):
    """``to_parquet(path, schema=None)`` (each partition's schema, not one inferred from
    dask's stand-in rows) writes the result as it is, and ``dd.read_parquet`` gives the
    vectors back as float32 arrays on their rows."""
    ddf = dd.from_pandas(_frame(20), npartitions=2)
    with Simulator() as sim:
        out = ddf.llm.embed("text", base_url=sim.base_url, api_key=KEY, cache=False)
        out.to_parquet(tmp_path / "out", schema=None, compute_kwargs={"scheduler": "threads"})
    back = dd.read_parquet(tmp_path / "out").compute()
    assert back.index.tolist() == list(range(1000, 1020))
    vector = back.loc[1001, "embedding"]
    assert vector.dtype == np.float32
    np.testing.assert_array_equal(vector, expected_embedding("text 1"))
    assert "empty" in back.loc[1007, "embedding_error"]


def test_partitions_on_threads_share_the_jobs_limit():
    """4 partitions on the threaded scheduler told 3,000 RPM stay under it together."""
    df = pd.DataFrame({"text": [f"t{i}" for i in range(200)]})
    ddf = dd.from_pandas(df, npartitions=4)
    with Simulator(rpm=3000) as sim:
        out = ddf.llm.embed(
            "text", base_url=sim.base_url, api_key=KEY, rpm=3000, batch_size=1, cache=False
        ).compute(scheduler="threads", num_workers=4)
        refused = sim.stats.rate_limited
    assert out["embedding"].notna().all()
    assert refused <= 2  # at most 1% of 200


def test_partitions_on_threads_told_the_full_limit_each_are_refused():
    """The naive setup, for contrast: limiter=None paces each partition alone."""
    df = pd.DataFrame({"text": [f"t{i}" for i in range(200)]})
    ddf = dd.from_pandas(df, npartitions=4)
    with Simulator(rpm=3000) as sim:
        ddf.llm.embed(
            "text",
            base_url=sim.base_url,
            api_key=KEY,
            rpm=3000,
            batch_size=1,
            cache=False,
            limiter=None,
        ).compute(scheduler="threads", num_workers=4)
        refused = sim.stats.rate_limited
    assert refused > 10


@pytest.fixture(scope="module")
def cluster_client():
    """A LocalCluster of 4 single-threaded worker processes (few tests: it is heavy)."""
    cluster = distributed.LocalCluster(
        n_workers=4,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        worker_dashboard_address=None,
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_a_local_cluster_of_4_processes_shares_the_limit_through_an_actor(cluster_client):
    """4 worker processes told 3,000 RPM: one actor keeps the book, no 429s, same answers."""
    df = _frame(240)
    ddf = dd.from_pandas(df, npartitions=4)
    with Simulator(rpm=3000) as sim:
        out = ddf.llm.embed(
            "text", base_url=sim.base_url, api_key=KEY, rpm=3000, batch_size=1, cache=False
        )
        got = cluster_client.compute(out).result(timeout=CLUSTER_TIMEOUT)
        refused = sim.stats.rate_limited
        sent = sim.stats.requests
    assert got.index.equals(df.index)
    assert got["embedding"].notna().sum() == 238
    np.testing.assert_array_equal(got.loc[1239, "embedding"], expected_embedding("text 239"))
    assert refused <= 3 and sent == 238 + refused


def test_a_worker_killed_mid_partition_loses_nothing_answered(cluster_client, tmp_path):
    """With the cache on a path every worker shares, Dask's retry of a killed worker's partition
    sends only what had not been answered (and saved) before the kill."""
    rows = 240
    df = pd.DataFrame({"text": [f"kill {i}" for i in range(rows)]})
    ddf = dd.from_pandas(df, npartitions=4)
    cache = str(tmp_path / "shared-cache.sqlite")
    pids = cluster_client.run(os.getpid)
    with Simulator(rpm=2400, record_inputs=True) as sim:
        killed: list[int] = []

        def kill_one() -> None:
            while sim.stats.embedding_inputs < rows // 2:  # each partition half done
                time.sleep(0.05)
            pid = next(iter(pids.values()))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        killer = threading.Thread(target=kill_one, daemon=True)
        killer.start()
        lazy = ddf.llm.embed(
            "text", base_url=sim.base_url, api_key=KEY, rpm=2400, batch_size=1, cache=cache
        )
        got = cluster_client.compute(lazy).result(timeout=CLUSTER_TIMEOUT)
        killer.join(5)
        counts = dict(sim.stats.inputs)
    assert killed
    assert got["embedding"].notna().all() and len(got) == rows
    asked_twice = sum(c - 1 for c in counts.values() if c > 1)
    # What a kill can cost: requests in flight and answers not yet flushed (0.2 s at 10/s per
    # partition). Without the shared cache the retry would send the ~30 rows answered before.
    assert asked_twice <= 10, asked_twice
    assert len(counts) == rows


def test_the_coordinator_unreachable_mid_run_then_back(cluster_client, tmp_path):
    """The scheduler's lease books stop answering a third of the way through: the partitions
    pace at their even split (a quarter of the limit each), then share again once the books
    answer; every row is answered once and the server refuses almost nothing."""
    from dfbatch.coord.dask_scheduler import books_state

    rows = 240
    ddf = dd.from_pandas(pd.DataFrame({"text": [f"books {i}" for i in range(rows)]}), 4)
    with Simulator(rpm=2400, record_inputs=True) as sim:
        asks: dict[str, int] = {}

        def pause_then_resume() -> None:
            while sim.stats.embedding_inputs < rows // 3:
                time.sleep(0.05)
            asks["before"] = cluster_client.run_on_scheduler(books_state, paused=True)["asks"]
            time.sleep(1.5)  # the senders notice, warn, and pace alone
            asks["paused"] = cluster_client.run_on_scheduler(books_state, paused=False)["asks"]

        switch = threading.Thread(target=pause_then_resume, daemon=True)
        switch.start()
        lazy = ddf.llm.embed(
            "text", base_url=sim.base_url, api_key=KEY, rpm=2400, batch_size=1, cache=False
        )
        got = cluster_client.compute(lazy).result(timeout=CLUSTER_TIMEOUT)
        switch.join(5)
        asks["after"] = cluster_client.run_on_scheduler(books_state)["asks"]
        refused = sim.stats.rate_limited
        counts = dict(sim.stats.inputs)
    assert got["embedding"].notna().all() and len(got) == rows
    assert len(counts) == rows and all(c == 1 for c in counts.values())
    assert asks["paused"] == asks["before"]  # nothing was answered while paused
    assert asks["after"] > asks["paused"]  # the senders came back to sharing
    assert refused <= 3


def test_expand_with_a_pydantic_model_gives_its_fields_as_columns_in_meta():
    """expand=True: the meta names the model's fields, as each partition's result does."""
    from pydantic import BaseModel

    class Answer(BaseModel):
        a: int
        b: str

    ddf = dd.from_pandas(pd.DataFrame({"text": ["x", "y", "z"]}), npartitions=2)
    with Simulator() as sim:
        out = ddf.llm.complete(
            "Say {text}",
            base_url=sim.base_url,
            api_key=KEY,
            cache=False,
            response_format=Answer,
            expand=True,
        )
        assert list(out.columns) == ["text", "a", "b", "completion_error"]
        got = out.compute(scheduler="threads")
    assert list(got.columns) == list(out.columns) and got["a"].notna().all()

"""backend="batch": the Batch API behind the same call, on the simulator's /v1/files and
/v1/batches. The result frame is the online one; nothing is lost or submitted twice."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dfbatch
from dfbatch import BatchFailedError
from dfbatch.cache.batch_record import BatchRecord
from dfbatch.engine import constants as C
from dfbatch.testing import Simulator, expected_embedding

POLL = 0.02


@pytest.fixture
def sim():  # type: ignore[no-untyped-def]
    with Simulator(batch_seconds=0.2, shuffle_data=True) as s:
        yield s


def batch(opts: dict, **more: object) -> dict:
    return {**opts, "backend": "batch", "poll_interval": POLL, **more}


def frame(n: int = 40) -> pd.DataFrame:
    texts: list[object] = [f"text number {i}" for i in range(n)]
    texts[3] = texts[5]  # a duplicate: sent once
    texts[7] = None  # NA: not sent, no error
    texts[9] = ""  # fails alone
    index = pd.MultiIndex.from_tuples([(i % 3, f"k{n - i}") for i in range(n)])
    return pd.DataFrame({"text": texts, "n": range(n)}, index=index)


def same_frames(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """``a`` (through the Batch API) is ``b`` (online), but for its cost: half the price."""
    assert list(a.columns) == list(b.columns)
    assert a.index.equals(b.index)
    for col in a.columns:
        if col.endswith("_cost_usd"):
            halved = a[col].astype("Float64").to_numpy(float, na_value=np.nan) * 2
            online = b[col].astype("Float64").to_numpy(float, na_value=np.nan)
            assert np.allclose(halved, online, equal_nan=True), col
            continue
        for x, y in zip(a[col], b[col], strict=True):
            if isinstance(x, np.ndarray):
                assert x.dtype == np.float32 and np.array_equal(x, y)
            elif isinstance(x, list | dict) or not pd.isna(x):
                assert x == y, (col, x, y)
            else:
                assert pd.isna(y), (col, x, y)


def no_row_twice(sim: Simulator, counter: str = "submitted") -> None:
    """No row's text went in two created batches (``answered``: was answered twice)."""
    twice = {t: n for t, n in getattr(sim.batches.stats, counter).items() if n > 1}
    assert twice == {}, f"rows {counter} twice: {twice}"


# -- the call ---------------------------------------------------------------------------------


def test_embed_batch_returns_the_online_frame(sim, opts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Same columns, row order, MultiIndex, vectors, NA and per-row errors as online."""
    df = frame()
    online = df.llm.embed("text", **{**opts, "cache": False}, usage=True)
    out = df.llm.embed("text", **batch(opts), usage=True)
    same_frames(out, online)
    figures = out.attrs["dfbatch"]
    assert figures["backend"] == "batch" and len(figures["batch_ids"]) == 1
    assert figures["rows"] == len(df) and figures["rows_failed"] == 1
    assert figures["rows_not_sent"] == 1
    assert sim.batches.stats.batches_created == 1
    assert sim.stats.by_endpoint["embeddings"] == 1  # the online call only
    no_row_twice(sim)


def test_complete_batch_returns_the_online_frame(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """Chat rows: answers, JSON parsing, n > 1 and the usage columns match the online call."""
    df = frame(25)
    kw = {"max_tokens": 20, "usage": True}
    online = df.llm.complete("Say {text}", **{**opts, "cache": False}, **kw)
    out = df.llm.complete("Say {text}", **batch(opts), **kw)
    same_frames(out, online)
    js = df.llm.complete("JSON {text}", response_format="json_object", n=2, **batch(opts))
    js_on = df.llm.complete(
        "JSON {text}", response_format="json_object", n=2, **{**opts, "cache": False}
    )
    same_frames(js, js_on)
    no_row_twice(sim)


def test_series_and_async_twins_take_the_backend(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """series.llm.embed and await df.llm.acomplete go through the Batch API too."""
    s = pd.Series(["a", "b", "c"], name="word")
    out = s.llm.embed(**batch(opts))
    assert out.attrs["dfbatch"]["backend"] == "batch"
    assert all(isinstance(v, np.ndarray) for v in out.embedding)
    df = pd.DataFrame({"text": ["x", "y"]})
    res = asyncio.run(df.llm.acomplete("{text}", **batch(opts)))
    assert res.completion.notna().all() and res.attrs["dfbatch"]["backend"] == "batch"


def test_cached_rows_are_not_sent_and_answers_are_cached(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """A second call is answered from the cache; a longer frame submits only the new rows."""
    df = frame(30)
    df.llm.embed("text", **batch(opts))
    created = sim.batches.stats.batches_created
    again = df.llm.embed("text", **batch(opts))
    assert sim.batches.stats.batches_created == created  # nothing submitted
    assert again.attrs["dfbatch"]["rows_from_cache"] == 28  # 30 less the NA and the empty
    bigger = pd.DataFrame({"text": [*df.text.tolist(), "one more", "and another"]})
    bigger.llm.embed("text", **batch(opts))
    assert sim.batches.stats.batches_created == created + 1
    no_row_twice(sim)


def test_the_job_is_split_at_the_apis_limits(sim, opts, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """At most BATCH_MAX_LINES lines a file and BATCH_MAX_EMBEDDING_INPUTS inputs a batch."""
    monkeypatch.setattr(C, "BATCH_MAX_LINES", 3)
    monkeypatch.setattr(C, "BATCH_MAX_EMBEDDING_INPUTS", 7)
    df = pd.DataFrame({"text": [f"t{i}" for i in range(40)]})
    online = df.llm.embed("text", **{**opts, "cache": False})
    out = df.llm.embed("text", batch_size=2, **batch(opts))  # 20 requests of 2 inputs
    same_frames(out, online)
    assert sim.batches.stats.batches_created == 7  # 3 lines (6 inputs) a batch: 20 lines
    assert len(out.attrs["dfbatch"]["batch_ids"]) == 7
    c = pd.DataFrame({"text": [f"q{i}" for i in range(10)]}).llm.complete("{text}", **batch(opts))
    assert c.completion.notna().all()
    assert sim.batches.stats.batches_created == 7 + 4
    no_row_twice(sim)


def test_the_jsonl_is_written_to_disk_not_built_in_memory(sim, opts, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The requests are pulled lazily, one file's worth at a time, while files are written."""
    monkeypatch.setattr(C, "BATCH_MAX_LINES", 5)
    from dfbatch.batch import backend

    pulled: list[int] = []
    seen_uploads: list[int] = []
    original = backend.BatchRun._upload_and_create

    async def spy(self, client, job, path, n):  # type: ignore[no-untyped-def]
        seen_uploads.append(len(pulled))
        return await original(self, client, job, path, n)

    monkeypatch.setattr(backend.BatchRun, "_upload_and_create", spy)
    original_uncovered = backend.BatchRun._uncovered

    def counting(self, requests, covered):  # type: ignore[no-untyped-def]
        for item in original_uncovered(self, requests, covered):
            pulled.append(1)
            yield item

    monkeypatch.setattr(backend.BatchRun, "_uncovered", counting)
    pd.DataFrame({"text": [f"w{i}" for i in range(20)]}).llm.complete("{text}", **batch(opts))
    # each upload happened when only that file's lines (and one more) had been pulled
    assert seen_uploads == [6, 11, 16, 20]


# -- the record and reruns --------------------------------------------------------------------


def test_every_step_is_recorded_and_the_job_ends_done(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """The record holds the file id, batch id, status and counts; done jobs free their lines
    once BATCH_LINES_KEEP has passed."""
    pd.DataFrame({"text": ["a", "b"]}).llm.embed("text", **batch(opts))
    record = BatchRecord(opts["cache"])
    (job,) = record.jobs()
    assert job.state == "done" and job.status == "completed"
    assert job.file_id in sim.batches.files and job.batch_id in sim.batches.batches
    assert job.counts == {"completed": 1, "failed": 0, "total": 1}
    assert len(record.line_keys(job.id)) == 1  # kept a while: another process may need them
    record.prune(time.time() - C.BATCH_LINES_KEEP)
    assert len(record.line_keys(job.id)) == 1
    record.prune(time.time() + 1)
    assert record.line_keys(job.id) == {}
    record.close()


def test_a_record_from_before_lines_kept_what_they_asked_still_opens(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A cache whose batch_lines table has no ``asked`` column (an older version's, maybe
    with a batch still running) opens: its lines keep their keys, new lines keep theirs."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE batch_lines (job INTEGER NOT NULL, line INTEGER NOT NULL, "
        "keys BLOB NOT NULL, PRIMARY KEY (job, line)) WITHOUT ROWID"
    )
    conn.execute("INSERT INTO batch_lines VALUES (1, 0, ?)", (bytes(32),))
    conn.commit()
    conn.close()
    record = BatchRecord(path)
    assert record.line_keys(1) == {0: [bytes(32)]} and record.line_asked(1) == {}
    job = record.begin(server="s", endpoint="/embeddings", model="m")
    record.add_lines(job, [(0, bytes(32), {"inputs": 1, "dimensions": 8}), (1, bytes(32), None)])
    assert record.line_asked(job) == {0: {"inputs": 1, "dimensions": 8}}
    record.close()


def test_waves_meet_the_enqueued_token_limit(sim, opts, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Batches refused for the enqueued-token limit are created again as earlier ones end."""
    monkeypatch.setattr(C, "BATCH_MAX_LINES", 4)
    sim.batches.faults.enqueued_token_limit = 30  # about two batches of 4 short lines
    df = pd.DataFrame({"text": [f"row {i}" for i in range(24)]})
    online = df.llm.complete("{text}", max_tokens=1, **{**opts, "cache": False})
    out = df.llm.complete("{text}", max_tokens=1, **batch(opts))
    same_frames(out, online)
    assert sim.batches.stats.batches_refused > 0
    assert out.attrs["dfbatch"]["batch_refusals"] == sim.batches.stats.batches_refused
    no_row_twice(sim)


def test_a_batch_alone_over_the_token_limit_raises(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """Refused again and again with nothing of ours queued: a run-level error, cause and fix."""
    sim.batches.faults.enqueued_token_limit = 1
    with pytest.raises(BatchFailedError, match="enqueued"):
        pd.DataFrame({"text": ["a long enough text"]}).llm.complete("{text}", **batch(opts))


def test_a_failed_batch_raises_with_the_apis_reasons(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """Validation failure: BatchFailedError names the reasons; a rerun submits again."""
    sim.batches.faults.fail_validation = 1
    df = pd.DataFrame({"text": ["a", "b"]})
    with pytest.raises(BatchFailedError, match="Simulated validation failure") as info:
        df.llm.embed("text", **batch(opts))
    assert info.value.reasons
    out = df.llm.embed("text", **batch(opts))
    assert out.embedding.notna().all()


def test_expired_keeps_its_answers_and_the_rerun_sends_the_rest(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """An expired batch's answers are kept; its other rows fail, and the rerun sends only them."""
    sim.batches.faults.expire_at = 0.5
    df = pd.DataFrame({"text": [f"e{i}" for i in range(10)]})
    first = df.llm.complete("{text}", **batch(opts))
    failed = first.completion_error.notna()
    assert failed.sum() == 5 and first.completion.notna().sum() == 5
    assert first.completion_error[failed].str.contains("expired").all()
    sim.batches.faults.expire_at = None
    second = df.llm.complete("{text}", **batch(opts))
    assert second.completion.notna().all()
    assert second.attrs["dfbatch"]["rows_from_cache"] == 5
    no_row_twice(sim, "answered")
    assert sum(sim.batches.stats.submitted.values()) == 15  # 10, then the 5 expired


def test_a_malformed_output_line_is_that_rows_error(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """A line that is not JSON fails the row it would have answered, and no other."""
    sim.batches.faults.malformed_lines = 1
    df = pd.DataFrame({"text": [f"m{i}" for i in range(6)]})
    out = df.llm.complete("{text}", **batch(opts))
    assert out.completion_error.notna().sum() == 1
    assert "no readable line" in out.completion_error.dropna().iloc[0]
    assert out.completion.notna().sum() == 5


def test_a_line_the_endpoint_refuses_is_that_rows_error(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """A 400 in the error file is the row's error, worded as online."""
    df = pd.DataFrame({"text": ["ok", "bad", "fine"]})

    def prompt(row):  # type: ignore[no-untyped-def]
        return [{"content": row.text}] if row.text == "bad" else row.text  # no role: a 400

    online = df.llm.complete(prompt, **{**opts, "cache": False})
    out = df.llm.complete(prompt, **batch(opts))

    def no_ids(errors):  # type: ignore[no-untyped-def]
        return [e if e is None else e.split(" (request id")[0] for e in errors]

    assert no_ids(out.completion_error) == no_ids(online.completion_error)
    assert out.completion_error.notna().tolist() == [False, True, False]
    assert out.completion_error[1].startswith("HTTP 400")


def test_ctrl_c_stops_waiting_without_cancelling_and_the_rerun_picks_up(sim, opts, capsys) -> None:  # type: ignore[no-untyped-def]
    """Cancelling the wait leaves the batch running; the rerun waits for it, submits nothing."""
    sim.batches.faults.stuck = True
    df = pd.DataFrame({"text": [f"c{i}" for i in range(5)]})

    async def interrupted() -> None:
        task = asyncio.ensure_future(df.llm.acomplete("{text}", **batch(opts)))
        while sim.batches.stats.retrieves < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    assert "Run the same call again" in capsys.readouterr().err
    assert sim.batches.stats.cancels == 0
    (b,) = sim.batches.batches.values()
    assert b.status == "in_progress"
    sim.batches.faults.stuck = False
    out = df.llm.complete("{text}", **batch(opts))
    assert out.completion.notna().all()
    assert sim.batches.stats.batches_created == 1
    no_row_twice(sim)


def test_polling_backs_off(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """A batch that stays in progress is polled ever less often, from poll_interval on."""
    sim.batches.faults.stuck = True
    df = pd.DataFrame({"text": ["p"]})

    async def wait_a_while() -> int:
        task = asyncio.ensure_future(df.llm.acomplete("{text}", **batch(opts, poll_interval=0.01)))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return sim.batches.stats.retrieves

    polls = asyncio.run(wait_a_while())
    # without backoff 1 s / 0.01 s = 100 polls; with x1.5 per unchanged poll, about a dozen
    assert 3 <= polls <= 25


# -- wait=False -------------------------------------------------------------------------------


def test_wait_false_returns_a_handle(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """The handle reports status and progress; result() gives the frame wait=True gives."""
    sim.batches.batch_seconds = 0.6
    df = frame(12)
    job = df.llm.embed("text", **batch(opts, wait=False))
    assert isinstance(job, dfbatch.BatchJob)
    assert job.status() == "in_progress" and not job.done()
    assert job.progress()["total"] == 1
    assert "sk-test" not in repr(job)
    out = job.result()
    assert job.status() == "completed"
    same_frames(out, df.llm.embed("text", **{**opts, "cache": False}))
    assert sim.batches.stats.batches_created == 1


def test_wait_false_cancel_then_result_keeps_what_was_answered(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """cancel() cancels the batches; result() returns the rows they did not run as errors."""
    sim.batches.faults.stuck = True
    df = pd.DataFrame({"text": [f"z{i}" for i in range(10)]})
    job = df.llm.complete("{text}", **batch(opts, wait=False))
    job.cancel()
    out = job.result()
    assert job.status() == "cancelled"
    assert out.completion_error.notna().any()
    assert out.completion_error.dropna().str.contains("cancelled").all()
    assert (out.completion.notna() | out.completion_error.notna()).all()


def test_the_batch_backend_needs_the_cache(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """cache=False has nowhere to keep the record: a ConfigurationError before any upload."""
    with pytest.raises(dfbatch.ConfigurationError, match="record"):
        pd.DataFrame({"text": ["a"]}).llm.embed("text", **batch(opts, cache=False))
    with pytest.raises(dfbatch.ConfigurationError, match="wait=False"):
        pd.DataFrame({"text": ["a"]}).llm.embed("text", **{**opts, "wait": False})
    assert sim.batches.stats.uploads_started == 0


def test_the_key_is_never_in_the_record(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """Nothing of the API key reaches the cache file, the record included."""
    pd.DataFrame({"text": ["a"]}).llm.embed("text", **batch(opts, api_key="sk-secret-123"))
    assert b"sk-secret-123" not in opts["cache"].read_bytes()
    for side in opts["cache"].parent.glob("cache.sqlite*"):
        assert b"sk-secret-123" not in side.read_bytes()


def test_simulator_counters_and_list_pages(sim) -> None:  # type: ignore[no-untyped-def]
    """GET /sim/batches and GET /v1/batches?limit&after page through batches newest first."""
    import urllib.request

    store = sim.batches
    for i in range(3):
        body = json.dumps(
            {
                "custom_id": "x",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"model": "gpt-3.5-turbo", "prompt": f"p{i}"},
            }
        ).encode()
        from dfbatch.testing._batches import _File

        f = _File(f"file-{i}", "f", "batch", body, 0)
        store.files[f.id] = f
        req = urllib.request.Request(
            sim.base_url + "/batches",
            data=json.dumps(
                {"input_file_id": f.id, "endpoint": "/v1/completions", "completion_window": "24h"}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req).read()
    page = json.load(urllib.request.urlopen(sim.base_url + "/batches?limit=2"))
    assert len(page["data"]) == 2 and page["has_more"]
    rest = json.load(urllib.request.urlopen(sim.base_url + f"/batches?after={page['last_id']}"))
    assert [b["input_file_id"] for b in rest["data"]] == ["file-0"]
    stats = json.load(urllib.request.urlopen(sim.url + "/sim/batches"))
    assert stats["batches_created"] == 3 and stats["rows_submitted_twice"] == 0


def test_simulator_status_flow(sim) -> None:  # type: ignore[no-untyped-def]
    """validating -> in_progress -> finalizing -> completed on the simulator's clock."""
    now = [0.0]
    sim.batches.clock = lambda: now[0]
    sim.batches.batch_seconds = 10.0
    from dfbatch.testing._batches import _File

    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": ["x", "y"]},
    }
    sim.batches.files["f"] = _File("f", "f", "batch", json.dumps(line).encode(), 0)

    async def create() -> str:
        from aiohttp import ClientSession

        async with ClientSession() as s:
            r = await s.post(
                sim.base_url + "/batches",
                json={
                    "input_file_id": "f",
                    "endpoint": "/v1/embeddings",
                    "completion_window": "24h",
                },
            )
            return (await r.json())["id"]

    bid = asyncio.run(create())
    b = sim.batches.batches[bid]
    seen = []
    for t in (0.5, 2.0, 9.5, 10.0):
        now[0] = t
        seen.append(sim.batches._advance(b).status)
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    out = sim.batches.files[b.output_file_id].content
    assert json.loads(out)["response"]["body"]["data"][1]["index"] == 1


def test_lines_are_read_as_hostile() -> None:
    """Odd output lines become errors, never exceptions or wrong answers."""
    from dfbatch.batch.lines import read_line

    for raw in (
        b"[]",
        b"null",
        b'{"custom_id": 5}',
        b'{"custom_id": "a"}',
        b'{"custom_id": "a", "response": {"status_code": 200, "body": "x"}}',
    ):
        result = read_line(raw)
        assert result.response is None and result.error is not None
    err = read_line(
        b'{"custom_id":"a","response":{"status_code":400,"request_id":"r",'
        b'"body":{"error":{"message":"bad","code":"c"}}}}'
    ).error
    assert str(err) == "HTTP 400 c: bad (request id r)"


# -- kill -9 at each stage, then rerun --------------------------------------------------------

KILL_ROWS = 12  # 6 requests of 2 inputs, 2 lines a file: 3 batches


def _child(sim: Simulator, cache) -> subprocess.Popen:  # type: ignore[no-untyped-def, type-arg]
    script = Path(__file__).with_name("_batch_child.py")
    return subprocess.Popen(
        [sys.executable, str(script), sim.base_url, str(cache), str(KILL_ROWS), "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _kill_when(proc, ready, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 60
    while not ready():
        assert proc.poll() is None, f"the child ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"never reached {what}"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("stage", ["upload", "created", "polling", "downloading"])
def test_kill_9_at_any_stage_then_rerun_submits_no_row_twice(sim, opts, stage, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Killed during an upload, right after a create, while polling or while downloading:
    the rerun finds the batches already submitted and submits only rows none covers."""
    store = sim.batches
    faults = store.faults
    if stage == "upload":  # the 2nd file reached the server; its answer never came back
        faults.hold_upload, faults.hold_upload_after = 30, 1
        ready = lambda: store.stats.files_created >= 2  # noqa: E731
    elif stage == "created":  # the 1st batch exists upstream; the client never heard its id
        faults.hold_create = 30
        ready = lambda: store.stats.batches_created >= 1  # noqa: E731
    elif stage == "polling":
        store.batch_seconds = 30
        ready = lambda: store.stats.retrieves >= 3  # noqa: E731
    else:  # the 1st batch's output is being downloaded
        faults.hold_content = 30
        ready = lambda: store.stats.content_started >= 1  # noqa: E731
    _kill_when(_child(sim, opts["cache"]), ready, stage)

    faults.hold_upload = faults.hold_create = faults.hold_content = 0
    store.batch_seconds = 0.2
    if stage == "polling":  # the batches made before the kill still take their 30 s
        for b in store.batches.values():
            b.started -= 30
    monkeypatch.setattr(C, "BATCH_MAX_LINES", 2)
    df = pd.DataFrame({"text": [f"kill test row {i}" for i in range(KILL_ROWS)]})
    out = df.llm.embed("text", batch_size=2, **batch(opts))
    for text, vector in zip(df.text, out.embedding, strict=True):
        assert np.array_equal(vector, expected_embedding(text, model="text-embedding-3-small"))
    no_row_twice(sim)  # no row went into two batches ...
    no_row_twice(sim, "answered")  # ... nor was paid for twice
    assert set(store.stats.submitted) == set(df.text)
    record = BatchRecord(opts["cache"])
    assert {j.state for j in record.jobs()} == {"done"}
    record.close()


def test_two_processes_running_the_same_call_at_once_submit_each_row_once(sim, opts) -> None:  # type: ignore[no-untyped-def]
    """The same cell in two kernels at once, on one cache: while one is uploading, the other
    waits for it to finish submitting, then waits for its batches instead of submitting the
    same rows (it must not take the first one's half-written record for a dead one's)."""
    store = sim.batches
    store.faults.hold_upload = 1.5  # each upload is held after its file exists: the second
    # process, started during the first upload, meets the lock while the first still submits
    first = _child(sim, opts["cache"])
    deadline = time.monotonic() + 60
    while store.stats.uploads_started < 1:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.01)
    second = _child(sim, opts["cache"])
    outs = [p.communicate(timeout=120) for p in (first, second)]
    for proc, (out, err) in zip((first, second), outs, strict=True):
        assert proc.returncode == 0, err
        assert out.split() == [b"done", str(KILL_ROWS).encode()]
    assert store.stats.files_created == 3  # the first process's three, no more
    no_row_twice(sim)
    no_row_twice(sim, "answered")


def test_batches_another_process_ended_while_this_call_waited_are_read_not_resubmitted(
    sim, opts
) -> None:  # type: ignore[no-untyped-def]
    """The same call in a second process, which found nothing in the cache and then waited
    for the submit lock while the first process's batches ended and were read: it reads
    those batches' output back onto its rows instead of submitting the rows again."""
    from filelock import FileLock

    store = sim.batches
    store.batch_seconds = 30
    first = _child(sim, opts["cache"])
    deadline = time.monotonic() + 60
    while store.stats.batches_created < 3 or store.stats.retrieves < 1:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.01)
    lock = FileLock(f"{opts['cache']}.batch-lock", thread_local=False)
    lock.acquire(timeout=30)  # as if a third process were submitting
    second = _child(sim, opts["cache"])
    try:
        assert second.stderr is not None
        while b"waiting for another process" not in second.stderr.readline():
            assert second.poll() is None, second.communicate()
        for b in store.batches.values():  # the first process's batches end now
            b.started -= 30
        out, err = first.communicate(timeout=60)
        assert out.split() == [b"done", str(KILL_ROWS).encode()], err
    finally:
        lock.release()
    out, err = second.communicate(timeout=60)
    assert out.split() == [b"done", str(KILL_ROWS).encode()], err
    assert store.stats.batches_created == 3
    no_row_twice(sim)
    no_row_twice(sim, "answered")


@pytest.mark.parametrize("kind", ["embed", "complete"])
def test_a_row_no_batch_spoke_of_is_an_error_not_a_blank(sim, opts, kind, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Whatever the cause (here: the record lost a batch's lines between the rerun finding
    the batch and reading its output), a row with neither an answer nor an error after the
    call says so in its error column, so a rerun sends it again."""
    df = pd.DataFrame({"text": ["a", "b", None]})

    def call(**kw: object):  # type: ignore[no-untyped-def]
        if kind == "embed":
            return df.llm.embed("text", **batch(opts, **kw))
        return df.llm.complete("{text}", **batch(opts, **kw))

    job = call(wait=False)
    monkeypatch.setattr(BatchRecord, "line_keys", lambda self, job: {})
    out = job.result()
    errors = out.iloc[:, -1]
    assert out.iloc[:2, -2].isna().all()
    assert all("batch_not_answered" in str(e) for e in errors[:2]), errors
    assert errors[2] is None  # the NA row is not sent and not an error
    monkeypatch.undo()
    again = call()
    assert again.iloc[:2, -2].notna().all() and again.iloc[:, -1].isna().all()


@pytest.mark.parametrize("kind", ["embed", "complete"])
def test_another_calls_batch_is_waited_for_and_its_answers_kept(sim, opts, kind) -> None:  # type: ignore[no-untyped-def]
    """Call B shares rows with call A's running batch: B waits for it instead of submitting
    them, keeps A's other answers in the cache, and A's result() then submits nothing."""
    sim.batches.batch_seconds = 0.5
    a = pd.DataFrame({"text": ["a", "b", "c", "d"]})
    b = pd.DataFrame({"text": ["c", "d", "e"]})

    def call(df: pd.DataFrame, **kw: object):  # type: ignore[no-untyped-def]
        if kind == "embed":
            return df.llm.embed("text", batch_size=2, **batch(opts, **kw))
        return df.llm.complete("{text}", **batch(opts, **kw))

    job_a = call(a, wait=False)
    out_b = call(b)
    assert out_b.iloc[:, -2].notna().all()  # the answers column
    assert sim.batches.stats.batches_created == 2  # A's, and B's for "e" alone
    out_a = job_a.result()
    assert out_a.iloc[:, -2].notna().all()
    assert sim.batches.stats.batches_created == 2
    no_row_twice(sim)
    no_row_twice(sim, "answered")


def test_the_bar_shows_the_batches_request_counts(sim, opts, capsys) -> None:  # type: ignore[no-untyped-def]
    """While waiting, the progress bar carries completed, failed and total of the batches."""
    sim.batches.batch_seconds = 0.5
    df = pd.DataFrame({"text": [f"bar {i}" for i in range(8)]})
    df.llm.complete("{text}", **batch(opts, progress=True))
    err = capsys.readouterr().err
    assert "(batch)" in err and "batches=1" in err and "total=8" in err


def test_simulator_files_endpoints(sim) -> None:  # type: ignore[no-untyped-def]
    """Upload (multipart), retrieve, content and delete, with OpenAI's shapes."""
    from aiohttp import ClientSession, FormData

    async def go() -> None:
        async with ClientSession() as s:
            form = FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", b'{"a": 1}\n', filename="in.jsonl")
            up = await (await s.post(sim.base_url + "/files", data=form)).json()
            assert up["object"] == "file" and up["bytes"] == 9 and up["purpose"] == "batch"
            got = await (await s.get(sim.base_url + f"/files/{up['id']}")).json()
            assert got["filename"] == "in.jsonl"
            content = await (await s.get(sim.base_url + f"/files/{up['id']}/content")).read()
            assert content == b'{"a": 1}\n'
            gone = await (await s.delete(sim.base_url + f"/files/{up['id']}")).json()
            assert gone == {"id": up["id"], "object": "file", "deleted": True}
            missing = await s.get(sim.base_url + f"/files/{up['id']}")
            assert missing.status == 404
            bad = await s.post(sim.base_url + "/batches", json={"input_file_id": up["id"]})
            assert bad.status == 400

    asyncio.run(go())


def test_a_create_whose_answer_is_lost_is_adopted_not_repeated(sim, opts, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The create times out after the server made the batch: the client finds that batch
    (GET /batches, by input file) instead of creating a second one."""
    sim.batches.faults.hold_create = 3
    monkeypatch.setattr(C, "BATCH_HTTP_TIMEOUT", 0.5)
    df = pd.DataFrame({"text": ["lost", "answer"]})
    out = df.llm.complete("{text}", **batch(opts))
    assert out.completion.notna().all()
    assert sim.batches.stats.batches_created == 1 and sim.batches.stats.lists >= 1
    assert out.attrs["dfbatch"]["batches_created"] == 0  # adopted, not created by this call
    no_row_twice(sim)


def test_a_refused_key_stops_the_batch_run_at_once(opts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """401 on the upload: AuthenticationError, the key nowhere in the message, nothing created."""
    with Simulator(api_key="sk-right", batch_seconds=0.2) as s:
        o = {**opts, "base_url": s.base_url, "api_key": "sk-wrong-key-123"}
        with pytest.raises(dfbatch.AuthenticationError) as info:
            pd.DataFrame({"text": ["a"]}).llm.embed("text", **batch(o))
        assert "sk-wrong-key-123" not in str(info.value)
        assert s.batches.stats.files_created == 0 and s.batches.stats.batches_created == 0
        record = BatchRecord(opts["cache"])
        (job,) = record.jobs()
        assert job.state == "writing"  # dropped by the next run: nothing reached the server
        record.close()


def test_a_batch_line_that_echoes_the_key_reaches_the_row_without_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An error line of a batch's error file is made a row's error with the key and any
    Bearer token scrubbed, as an online error is; the Batch API client's own messages too."""
    from dfbatch.batch.api import BatchApi
    from dfbatch.batch.backend import BatchRun
    from dfbatch.batch.lines import LineError
    from dfbatch.engine.config import ApiConfig
    from dfbatch.engine.types import ErrorInfo, Outcome, Request

    key = "sk-echoed-0123456789"
    api = ApiConfig.resolve(base_url="http://127.0.0.1:9/v1", api_key=key)
    got: list[Outcome] = []

    class Lines:
        scope = "requests"

        def outcome(self, keys, response=None, error=None):  # type: ignore[no-untyped-def]
            return Outcome(Request(keys[0].hex(), "/chat/completions", {}, 1), response, error)

    record = BatchRecord(tmp_path / "c.sqlite")
    try:
        run = BatchRun(
            api, record, endpoint="/chat/completions", model="m", lines=Lines(),
            on_outcome=got.append,
        )  # fmt: skip
        said = f"Incorrect API key provided: {key}. Authorization: Bearer tok-abcdefgh"
        run._deliver([b"\x01"], None, ErrorInfo(401, "invalid_api_key", said))
        run._deliver([b"\x02"], None, LineError(None, "batch_expired", f"expired ({key})"))
    finally:
        record.close()
    texts = [str(o.error) for o in got]
    assert len(texts) == 2 and all(key not in t and "tok-abcdefgh" not in t for t in texts)
    assert "<redacted>" in texts[0] and texts[1].startswith("batch batch_expired")
    assert key not in BatchApi(api)._redact(f"a message with {key} in it")

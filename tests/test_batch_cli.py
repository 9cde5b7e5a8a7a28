"""``dfbatch embed/complete --batch`` and ``dfbatch batches`` on the simulator."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from dfbatch.cli.main import main
from dfbatch.engine.prices import PRICE_TABLE, usage_cost
from dfbatch.testing import Simulator, expected_embedding

pytestmark = pytest.mark.usefixtures("isolated_env")


@pytest.fixture
def sim():  # type: ignore[no-untyped-def]
    with Simulator(batch_seconds=0.2) as s:
        yield s


def test_embed_batch_writes_the_online_table(sim, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """--batch gives the same parquet as the online command; the job is listed as done."""
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": [f"cli row {i}" for i in range(15)]}).to_csv(src, index=False)
    common = ["embed", str(src), "--column", "text", "--base-url", sim.base_url, "--no-progress"]
    assert main([*common, str(tmp_path / "b.parquet"), "--batch", "--poll-interval", "0.02"]) == 0
    assert main([*common, str(tmp_path / "o.parquet"), "--no-cache"]) == 0
    b = pd.read_parquet(tmp_path / "b.parquet")
    o = pd.read_parquet(tmp_path / "o.parquet")
    for x, y, text in zip(b.embedding, o.embedding, b.text, strict=True):
        assert np.array_equal(x, y)
        assert np.array_equal(np.asarray(x, np.float32), expected_embedding(text))
    assert sim.batches.stats.batches_created == 1
    capsys.readouterr()
    assert main(["batches", "--json"]) == 0
    (job,) = json.loads(capsys.readouterr().out)
    assert job["state"] == "done" and job["status"] == "completed"
    assert job["batch_id"] in sim.batches.batches
    assert main(["batches"]) == 0
    table = capsys.readouterr().out
    assert "completed" in table and job["batch_id"] in table


def test_batches_lists_a_job_still_running(sim, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A job left running (wait=False) shows as not yet downloaded, with how to pick it up."""
    sim.batches.batch_seconds = 30
    df = pd.DataFrame({"text": ["a", "b"]})
    job = df.llm.complete(
        "{text}", base_url=sim.base_url, backend="batch", wait=False, progress=False
    )
    assert main(["batches", "--open"]) == 0
    out = capsys.readouterr().out
    assert job.batch_ids[0] in out and "not yet downloaded" in out


def test_complete_batch_flag(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """dfbatch complete --batch answers every row through the Batch API."""
    src = tmp_path / "in.jsonl"
    pd.DataFrame({"text": ["x", "y", "z"]}).to_json(src, orient="records", lines=True)
    out = tmp_path / "out.parquet"
    args = ["complete", str(src), str(out), "--prompt", "Say {text}", "--batch"]
    assert main([*args, "--base-url", sim.base_url, "--poll-interval", "0.02"]) == 0
    assert pd.read_parquet(out).completion.notna().all()
    assert sim.batches.stats.batches_created == 1
    assert sim.stats.by_endpoint["chat/completions"] == 0


def test_every_chunk_is_submitted_before_any_is_waited_for(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--batch with several chunks: all their batches run side by side, one each."""
    sim.batches.batch_seconds = 1.0
    src = tmp_path / "in.csv"
    texts = [f"chunked row {i}" for i in range(15)]
    pd.DataFrame({"text": texts}).to_csv(src, index=False)
    out = tmp_path / "out.parquet"
    args = ["embed", str(src), str(out), "--column", "text", "--chunk-size", "5", "--batch"]
    assert main([*args, "--base-url", sim.base_url, "--poll-interval", "0.02"]) == 0
    batches = list(sim.batches.batches.values())
    assert len(batches) == 3
    started = [b.started for b in batches]
    assert max(started) - min(started) < 1.0  # the last created before the first could end
    got = pd.read_parquet(out)
    for text, vector in zip(got.text, got.embedding, strict=True):
        assert np.array_equal(np.asarray(vector, np.float32), expected_embedding(text))
    assert sum(sim.batches.stats.submitted.values()) == 15


def _requests_file(path, n: int = 12):  # type: ignore[no-untyped-def]
    with path.open("w") as fh:
        for i in range(n):
            fh.write(
                json.dumps(
                    {"model": "text-embedding-3-small", "input": f"line {i}", "metadata": {"i": i}}
                )
                + "\n"
            )
        fh.write("not json\n")
        fh.write(json.dumps({"model": "gpt-4o-mini", "input": "wrong model kind"}) + "\n")
    return path


def _results(path):  # type: ignore[no-untyped-def]
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_batch_writes_the_online_results_in_order(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """dfbatch run --batch: the results file of the online run, in input order, unusable
    lines and refused lines as errors, nothing sent online; a rerun sends nothing."""
    src = _requests_file(tmp_path / "req.jsonl")
    url = sim.base_url + "/embeddings"
    common = ["run", str(src), "--url", url, "--no-progress", "--log-level", "40"]
    online_out, batch_out = tmp_path / "online.jsonl", tmp_path / "batch.jsonl"
    assert main([*common, "-o", str(online_out), "--no-cache"]) == 1  # two lines fail
    online_calls = sim.stats.by_endpoint["embeddings"]
    args = [*common, "-o", str(batch_out), "--batch", "--poll-interval", "0.02"]
    assert main(args) == 1
    assert sim.stats.by_endpoint["embeddings"] == online_calls  # nothing sent online
    online, batch = _results(online_out), _results(batch_out)
    assert len(batch) == len(online) == 14
    for a, b in zip(online, batch, strict=True):
        assert a[0] == b[0]  # the request, in input order
        answered = isinstance(a[1], dict) and "data" in a[1]
        if answered:
            assert a[1]["data"] == b[1]["data"]  # the same vectors
        else:  # both errors
            assert not (isinstance(b[1], dict) and "data" in b[1]), b
    assert sim.batches.stats.batches_created == 2  # one per model
    assert sum(sim.batches.stats.submitted.values()) == 13
    batch_out.unlink()
    assert main(args) == 1  # a rerun from scratch: answers from the cache
    assert sim.batches.stats.batches_created == 3  # only the refused line is submitted again
    assert sim.batches.stats.submitted["wrong model kind"] == 2
    assert _results(batch_out)[:12] == batch[:12]


def test_run_batch_leaves_an_embed_calls_batches_alone(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Batches of df.llm.embed (keys per input) and of dfbatch run (keys per line) share the
    cache's record; neither picks up the other's, so neither pays twice."""
    sim.batches.batch_seconds = 0.5
    job = pd.DataFrame({"text": ["line 0", "other"]}).llm.embed(
        "text", base_url=sim.base_url, backend="batch", wait=False, progress=False
    )
    src = _requests_file(tmp_path / "req.jsonl", n=3)
    args = ["run", str(src), "-o", str(tmp_path / "out.jsonl"), "--batch", "--no-progress"]
    args += ["--url", sim.base_url + "/embeddings", "--poll-interval", "0.02"]
    assert main([*args, "--log-level", "40"]) == 1
    out = job.result()
    assert out.embedding.notna().all()
    assert sim.batches.stats.batches_created == 3  # the embed call's, and run's two models
    assert sim.batches.stats.answered["line 0"] == 2  # once per kind of call, each used
    assert max(sim.batches.stats.answered.values()) == 2


def test_run_batch_killed_while_polling_resumes_without_resubmitting(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """kill -9 of `dfbatch run --batch` while it waits: the rerun waits for the same batches."""
    sim.batches.batch_seconds = 30
    src = _requests_file(tmp_path / "req.jsonl", n=6)
    out = tmp_path / "out.jsonl"
    args = ["run", str(src), "-o", str(out), "--batch", "--no-progress", "--log-level", "40"]
    args += ["--url", sim.base_url + "/embeddings", "--poll-interval", "0.02"]
    env = {**os.environ, "DFBATCH_CACHE_DIR": os.environ["DFBATCH_CACHE_DIR"]}
    proc = subprocess.Popen([sys.executable, "-m", "dfbatch.cli.main", *args], env=env)
    deadline = time.monotonic() + 60
    while sim.batches.stats.retrieves < 4:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert sim.batches.stats.batches_created == 2  # both models' before any wait
    for b in sim.batches.batches.values():  # let the batches end now
        b.started -= 30
    sim.batches.batch_seconds = 0.2
    assert main(args) == 1  # the one line of the wrong model kind fails
    assert sim.batches.stats.batches_created == 2
    assert max(sim.batches.stats.submitted.values()) == 1
    assert len(out.read_text().splitlines()) == 8


def test_complete_batch_budget_goes_chunk_by_chunk_and_stops_at_the_budget(
    sim, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """dfbatch complete --batch --budget: waves within the budget, chunk by chunk; the spend
    stays under it and the rows left carry "budget reached"."""
    src = tmp_path / "in.jsonl"
    pd.DataFrame({"text": [f"row {i}" for i in range(60)]}).to_json(
        src, orient="records", lines=True
    )
    out = tmp_path / "out.parquet"
    budget = "0.00003"  # gpt-4o-mini at the Batch price: room for a few dozen rows' worst case
    args = ["complete", str(src), str(out), "--prompt", "Say {text}", "--batch", "--chunk-size",
            "20", "--max-tokens", "20", "--budget", budget]  # fmt: skip
    assert main([*args, "--base-url", sim.base_url, "--poll-interval", "0.02"]) == 1
    got = pd.read_parquet(out)
    stopped = got.completion_error.fillna("").str.startswith("budget reached")
    assert 0 < stopped.sum() < len(got)
    err = capsys.readouterr().err
    spent = [float(x) for x in re.findall(r"\$([0-9.e+-]+) spent of the", err)]
    total = spent[-1]  # the closing summary's, over every chunk
    assert total == pytest.approx(sum(spent[:-1])) and total <= float(budget)
    assert total >= 0.5 * float(budget)  # and it did spend: the stop was not at once
    assert sim.stats.by_endpoint["chat/completions"] == 0


def test_run_batch_budget_submits_in_waves_and_never_passes_it(sim, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """dfbatch run --batch --budget: every model's price is checked before anything is
    submitted; waves are settled at the Batch price before the next, the spend stays within
    the budget, the lines left say "budget reached", and a rerun with --overwrite and a
    higher budget submits only them. --batch --dry-run shows the Batch price."""
    src = tmp_path / "requests.jsonl"
    with src.open("w") as fh:
        for i in range(60):
            body = {"model": "gpt-4o-mini", "max_tokens": 20,
                    "messages": [{"role": "user", "content": f"Say row {i}"}]}  # fmt: skip
            fh.write(json.dumps(body) + "\n")
    out = tmp_path / "out.jsonl"
    url = sim.base_url + "/chat/completions"
    args = ["run", str(src), "-o", str(out), "--url", url, "--batch", "--poll-interval", "0.02"]
    args += ["--no-progress"]
    budget = 0.00003  # room for a few dozen lines' worst case at the Batch price
    assert main([*args, "--budget", str(budget)]) == 1
    err = capsys.readouterr().err
    results = _results(out)
    stopped = [r for r in results if "budget reached" in json.dumps(r[1])]
    answered = [r for r in results if isinstance(r[1], dict) and "choices" in r[1]]
    assert len(results) == 60 and len(answered) + len(stopped) == 60
    assert 0 < len(stopped) < 60
    spent = float(re.search(r"\$([0-9.e+-]+) spent of the \$", err).group(1))
    price = PRICE_TABLE["gpt-4o-mini"].batch()
    billed = sum(usage_cost(price, r[1]["usage"]) for r in answered)
    assert spent == pytest.approx(billed, rel=1e-3) and billed <= budget
    assert billed >= 0.5 * budget  # it did spend: the stop was not at once
    assert sim.batches.stats.batches_created >= 2  # in waves
    assert sim.stats.by_endpoint["chat/completions"] == 0  # nothing online
    assert max(sim.batches.stats.submitted.values()) == 1
    assert f"{len(stopped)} rows not sent" in err.replace(",", "")

    assert main([*args, "--budget", "1", "--overwrite"]) == 0
    assert max(sim.batches.stats.submitted.values()) == 1  # only the lines left were sent
    assert sum(sim.batches.stats.submitted.values()) == 60
    assert [r[1]["choices"] for r in _results(out)[:5]] == [r[1]["choices"] for r in results[:5]]

    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"model": "my-local-model", "messages": []}) + "\n")
    created = sim.batches.stats.batches_created
    assert main(["run", str(unknown), "--url", url, "--batch", "--budget", "1"]) == 2
    assert "does not list it" in capsys.readouterr().err
    assert sim.batches.stats.batches_created == created
    assert main(["run", str(src), "--url", url, "--batch", "--dry-run"]) == 0
    assert "Batch API |" in capsys.readouterr().out


def test_run_batch_checks_each_answer_against_its_line_before_caching(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """dfbatch run --batch keeps no request bodies while it waits, yet an answer that is not
    what its line asked (vectors one number short of dimensions=8, two choices where n=1)
    is that line's error and is not cached: the rerun submits exactly those lines again."""
    src = tmp_path / "req.jsonl"
    with src.open("w") as fh:
        for i in range(6):
            body = {"model": "text-embedding-3-small", "input": f"line {i}", "dimensions": 8}
            fh.write(json.dumps(body) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["run", str(src), "-o", str(out), "--batch", "--no-progress", "--log-level", "40"]
    args += ["--url", sim.base_url + "/embeddings", "--poll-interval", "0.02"]
    sim.batches.faults.wrong_answers = 2
    assert main(args) == 1
    results = _results(out)
    bad = [r for r in results if "data" not in r[1]]
    assert len(bad) == 2
    assert all("vectors of 7 dimensions where dimensions=8 was asked" in json.dumps(r) for r in bad)
    for r in results:
        if "data" in r[1]:
            assert len(r[1]["data"][0]["embedding"]) == 8 or isinstance(
                r[1]["data"][0]["embedding"], str
            )
    sim.batches.faults.wrong_answers = 0
    out.unlink()
    assert main(args) == 0  # only the two refused answers are asked again
    assert sum(sim.batches.stats.submitted.values()) == 6 + 2
    assert sorted(t for t, k in sim.batches.stats.submitted.items() if k == 2) == sorted(
        r[0]["input"] for r in bad
    )

    chat = tmp_path / "chat.jsonl"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "n": 1}
    chat.write_text(json.dumps(body) + "\n")
    args = ["run", str(chat), "-o", str(tmp_path / "chat_out.jsonl"), "--batch"]
    args += ["--url", sim.base_url + "/chat/completions", "--poll-interval", "0.02"]
    sim.batches.faults.wrong_answers = 1
    assert main([*args, "--no-progress", "--log-level", "40"]) == 1
    assert "2 choices where n=1 was asked" in (tmp_path / "chat_out.jsonl").read_text()

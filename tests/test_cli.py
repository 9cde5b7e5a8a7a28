"""``dfbatch run``: the cookbook script's command line, done right, against the simulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dfbatch.cli.main import main
from dfbatch.testing import Simulator, expected_embedding

ROOT = Path(__file__).resolve().parents[1]
ADA = "text-embedding-ada-002"
KEY = "sk-proj-SENTINEL0123456789abcdefSECRET"


# A cache of its own per test, and no key or base URL from the environment.
pytestmark = pytest.mark.usefixtures("isolated_env")


@pytest.fixture(scope="module")
def sim():  # type: ignore[no-untyped-def]
    with Simulator() as s:
        yield s


def cookbook_file(path: Path, n: int, *, metadata_every: int = 0) -> Path:
    """The cookbook appendix's example file (optionally with metadata on some lines)."""
    jobs = [{"model": ADA, "input": str(x) + "\n"} for x in range(n)]
    for x, job in enumerate(jobs):
        if metadata_every and x % metadata_every == 0:
            job["metadata"] = {"row": x}
    with path.open("w") as f:
        for job in jobs:
            f.write(json.dumps(job) + "\n")
    return path


def results(path: Path) -> list[list]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(*args: str) -> int:
    return main(["run", *args])


def test_cookbook_command_line_runs_unchanged(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The script's example flags verbatim: one [request, response(, metadata)] a line, in order."""
    requests = cookbook_file(
        tmp_path / "example_requests_to_parallel_process.jsonl", 40, metadata_every=3
    )
    save = tmp_path / "example_requests_to_parallel_process_results.jsonl"
    status = main([
        "--requests_filepath", str(requests),
        "--save_filepath", str(save),
        "--request_url", sim.base_url + "/embeddings",
        "--max_requests_per_minute", "1500",
        "--max_tokens_per_minute", "6250000",
        "--token_encoding_name", "cl100k_base",
        "--max_attempts", "5",
        "--logging_level", "20",
    ])  # fmt: skip
    assert status == 0
    rows = results(save)
    assert len(rows) == 40
    for x, row in enumerate(rows):
        assert row[0] == {"model": ADA, "input": f"{x}\n"}  # metadata is not sent
        vector = np.asarray(row[1]["data"][0]["embedding"], dtype=np.float32)
        assert np.array_equal(vector, expected_embedding(f"{x}\n", model=ADA))
        assert (row[2] == {"row": x}) if x % 3 == 0 else len(row) == 2


def test_output_name_is_derived_like_the_script(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Without --save_filepath the results go to IN with .jsonl replaced by _results.jsonl."""
    requests = cookbook_file(tmp_path / "jobs.jsonl", 3)
    assert run(str(requests), "--url", sim.base_url + "/embeddings") == 0
    assert len(results(tmp_path / "jobs_results.jsonl")) == 3


def test_unusable_lines_become_error_results_and_the_rest_is_answered(
    sim, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """Not JSON, not an object, no model, a blank line: each an error line; nothing else lost."""
    good = {"model": ADA, "input": "fine"}
    lines = [json.dumps(good), "{'model': 'x'}", '{"input": "no model"}', "", "[1, 2]",
             json.dumps({**good, "metadata": 7})]  # fmt: skip
    requests = tmp_path / "mixed.jsonl"
    requests.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    before = sim.stats.requests
    assert run(str(requests), "-o", str(out), "--url", sim.base_url + "/embeddings") == 1
    rows = results(out)
    assert len(rows) == 6 and sim.stats.requests - before == 2
    assert rows[0][0] == good and "data" in rows[0][1]
    assert rows[5][0] == good and rows[5][2] == 7
    errors = {i: rows[i][1][0] for i in (1, 2, 3, 4)}
    assert all(e["code"] == "invalid_request_line" and e["status"] is None for e in errors.values())
    assert rows[1][0] == "{'model': 'x'}" and errors[1]["message"].startswith("line 2: not JSON (")
    assert rows[2][0] == {"input": "no model"} and 'line 3: no "model"' in errors[2]["message"]
    assert rows[3][0] is None and "line 4: blank line" in errors[3]["message"]
    assert rows[4][0] == [1, 2] and "line 5: not a JSON object" in errors[4]["message"]
    assert "line 2: not JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty", "is empty"),
        ("missing", "cannot read the requests file"),
        ("unwritable", "cannot write results to"),
        ("same", "pass -o OUT"),
    ],
)
def test_bad_files_are_refused_with_one_clear_line(sim, tmp_path, capsys, setup, message) -> None:  # type: ignore[no-untyped-def]
    """An empty or missing requests file, an unwritable output: exit 2, a message, nothing sent."""
    requests = tmp_path / "in.jsonl"
    out = tmp_path / "out.jsonl"
    if setup == "empty":
        requests.write_text("")
    elif setup != "missing":
        cookbook_file(requests, 2)
    if setup == "unwritable":
        out = tmp_path / "no" / "such" / "dir" / "out.jsonl"
    if setup == "same":
        requests = cookbook_file(tmp_path / "in.txt", 2)  # no .jsonl: the derived name is IN
        args = [str(requests)]
    else:
        args = [str(requests), "-o", str(out)]
    before = sim.stats.requests
    assert run(*args, "--url", sim.base_url + "/embeddings") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("dfbatch run: error:") and "\n" not in err
    assert sim.stats.requests == before and not out.exists()


def test_usage_errors_exit_2_and_say_how_to_fix(capsys) -> None:
    """argparse's own errors (a bad number, no file) exit 2 with a readable reason."""
    assert run("x.jsonl", "--rpm", "fast") == 2
    assert "must be a number above 0, got 'fast'" in capsys.readouterr().err
    assert run() == 2
    assert "give the requests file" in capsys.readouterr().err


def test_exit_status_0_1_and_3(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """0 when all lines succeed, 1 when one fails (400), 3 when the key is refused (401)."""
    requests = cookbook_file(tmp_path / "in.jsonl", 3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(requests.read_text() + json.dumps({"model": ADA, "input": ""}) + "\n")
    with Simulator(api_key="sk-right-key") as sim:
        url = ["--url", sim.base_url + "/embeddings"]
        assert (
            run(str(requests), "-o", str(tmp_path / "a.jsonl"), *url, "--api-key", "sk-right-key")
            == 0
        )
        assert (
            run(str(bad), "-o", str(tmp_path / "b.jsonl"), *url, "--api-key", "sk-right-key") == 1
        )
        assert results(tmp_path / "b.jsonl")[3][1][0]["status"] == 400
        capsys.readouterr()
        wrong = ["--api-key", "sk-wrong-key", "--no-cache"]  # the cache would answer
        assert run(str(requests), "-o", str(tmp_path / "c.jsonl"), *url, *wrong) == 3
    err = capsys.readouterr().err
    assert "dfbatch run: stopped:" in err and "check the key" in err and "rerun" in err


def test_api_key_appears_nowhere_at_debug_level(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """--logging_level 10, a 401 included: the key is in no log, message, result or cache byte."""
    requests = cookbook_file(tmp_path / "in.jsonl", 5, metadata_every=2)
    out = tmp_path / "out.jsonl"
    cache = tmp_path / "c.sqlite"
    with Simulator(api_key=KEY) as sim:
        common = ["--request_url", sim.base_url + "/embeddings", "--logging_level", "10"]
        assert (
            run(str(requests), "-o", str(out), "--api_key", KEY, *common, "--cache", str(cache))
            == 0
        )
        again = [str(requests), "-o", str(tmp_path / "x.jsonl"), "--api_key", KEY[:-1]]
        assert run(*again, *common, "--no-cache") == 3
    captured = capsys.readouterr()
    assert "DEBUG" in captured.err
    for text in (captured.err, captured.out, out.read_text()):
        assert KEY not in text and KEY[:-1] not in text
    for path in tmp_path.glob("c.sqlite*"):
        assert KEY.encode() not in path.read_bytes()


def test_unordered_writes_one_result_per_line(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--unordered: every line's result exactly once, in any order."""
    requests = cookbook_file(tmp_path / "in.jsonl", 50, metadata_every=5)
    out = tmp_path / "out.jsonl"
    assert run(str(requests), "-o", str(out), "--url", sim.base_url + "/embeddings",
               "--unordered") == 0  # fmt: skip
    inputs = sorted(row[0]["input"] for row in results(out))
    assert inputs == sorted(f"{x}\n" for x in range(50))


def test_rerun_of_a_finished_job_does_nothing_and_says_so(sim, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The same command twice: the second sends nothing and leaves the file as it was."""
    requests = cookbook_file(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    url = ["--url", sim.base_url + "/embeddings"]
    assert run(str(requests), "-o", str(out), *url) == 0
    first, before = out.read_bytes(), sim.stats.requests
    capsys.readouterr()
    assert run(str(requests), "-o", str(out), *url) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert out.read_bytes() == first and sim.stats.requests == before


def test_resume_completes_a_partial_output_with_a_torn_last_line(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """k whole lines and half a line: the half is cut, lines k+1.. are sent, one result each."""
    requests = cookbook_file(tmp_path / "in.jsonl", 30)
    out = tmp_path / "out.jsonl"
    url = ["--url", sim.base_url + "/embeddings", "--no-cache"]
    assert run(str(requests), "-o", str(out), *url) == 0
    whole = out.read_text().splitlines(keepends=True)
    out.write_text("".join(whole[:12]) + whole[12][:40])
    before = sim.stats.requests
    assert run(str(requests), "-o", str(out), *url) == 0
    assert sim.stats.requests - before == 18
    assert out.read_text() == "".join(whole)


def test_an_output_of_other_requests_is_refused(sim, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Results that do not answer this file's lines are never appended to; --overwrite restarts."""
    out = tmp_path / "out.jsonl"
    url = ["--url", sim.base_url + "/embeddings"]
    assert run(str(cookbook_file(tmp_path / "a.jsonl", 5)), "-o", str(out), *url) == 0
    other = tmp_path / "b.jsonl"
    other.write_text("".join(json.dumps({"model": ADA, "input": f"other {i}"}) + "\n"
                             for i in range(8)))  # fmt: skip
    kept = out.read_bytes()
    capsys.readouterr()
    assert run(str(other), "-o", str(out), *url) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == kept
    assert run(str(other), "-o", str(out), *url, "--overwrite") == 0
    assert [r[0]["input"] for r in results(out)] == [f"other {i}" for i in range(8)]


def test_unordered_resume_counts_repeated_lines(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two identical lines need two results: one saved result leaves exactly one to send."""
    line = json.dumps({"model": ADA, "input": "same"}) + "\n"
    requests = tmp_path / "in.jsonl"
    requests.write_text(line * 3 + json.dumps({"model": ADA, "input": "other"}) + "\n")
    out = tmp_path / "out.jsonl"
    url = ["--url", sim.base_url + "/embeddings", "--unordered", "--no-cache"]
    assert run(str(requests), "-o", str(out), *url) == 0
    rows = out.read_text().splitlines(keepends=True)
    out.write_text(
        "".join(r for r in rows if '"other"' in r) + next(r for r in rows if '"same"' in r)
    )
    before = sim.stats.requests
    assert run(str(requests), "-o", str(out), *url) == 0
    assert sim.stats.requests - before == 2
    assert sorted(r[0]["input"] for r in results(out)) == ["other", "same", "same", "same"]


def _count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def test_kill_9_at_half_way_then_rerun_gives_each_line_once_in_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL mid-run, same command again: one result per line, in order; few requests resent."""
    n, in_flight = 400, 20
    requests = cookbook_file(tmp_path / "in.jsonl", n, metadata_every=7)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "DFBATCH_CACHE_DIR": str(tmp_path / "cache")}
    with Simulator(latency=0.04, record_inputs=True) as sim:
        args = [str(requests), "-o", str(out), "--url", sim.base_url + "/embeddings",
                "--rpm", "100000", "--max-in-flight", str(in_flight), "--no-progress"]  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "dfbatch", "run", *args],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while _count_lines(out) < n // 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        written = _count_lines(out)
        assert 0 < written < n, "the run must be killed part way"
        assert run(*args) == 0
        sent = sim.stats.requests
    rows = results(out)
    assert len(rows) == n
    assert [r[0]["input"] for r in rows] == [f"{x}\n" for x in range(n)]
    assert all((r[2] == {"row": x}) if x % 7 == 0 else len(r) == 2 for x, r in enumerate(rows))
    assert sent <= n + in_flight


def test_console_script_and_python_m(tmp_path) -> None:
    """`dfbatch --version` and `python -m dfbatch run --help` work as installed."""
    exe = Path(sys.executable).with_name("dfbatch")
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("dfbatch ")
    helped = subprocess.run(
        [sys.executable, "-m", "dfbatch", "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--max_requests_per_minute" in helped.stdout and "exit status:" in helped.stdout


def test_sink_keeps_at_most_window_lines_ahead_of_the_oldest_unwritten() -> None:
    """The reorder buffer: a reader waits while its line would be `window` past the oldest gap."""
    import asyncio
    import io

    from dfbatch.cli.sink import Sink

    async def scenario() -> list[bytes]:
        buf = io.BytesIO()
        sink = Sink(buf, 0, window=3)
        sink.put(1, b"b")
        sink.put(2, b"c")
        waiter = asyncio.ensure_future(sink.room(3))
        await asyncio.sleep(0.01)
        assert not waiter.done() and buf.getvalue() == b""
        sink.put(0, b"a")
        await asyncio.wait_for(waiter, 1)
        return [buf.getvalue()]

    assert asyncio.run(scenario()) == [b"abc"]

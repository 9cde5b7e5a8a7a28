"""The command line's --dry-run, --budget, --price and --report, against the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dfbatch.cli.main import main
from dfbatch.testing import Simulator

pytestmark = pytest.mark.usefixtures("isolated_env")


@pytest.fixture(scope="module")
def sim():  # type: ignore[no-untyped-def]
    with Simulator(usage="tiktoken") as s:
        yield s


def chat_file(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            body = {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Answer in one word."},
                    {"role": "user", "content": f"What rhymes with number {i}?"},
                ],
                "max_tokens": 12,
            }
            f.write(json.dumps(body) + "\n")
    return path


def figures(text: str) -> dict[str, str]:
    """The estimate's lines as {label: value}."""
    out = {}
    for line in text.splitlines()[1:]:
        label, _, value = line.strip().partition("  ")
        out[label.strip()] = value.strip()
    return out


def test_run_dry_run_sends_nothing_and_counts_what_the_run_sends(sim, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """--dry-run prints requests and input tokens equal to what the run then sends and the
    server bills (prompt_tokens), and sends nothing."""
    requests = chat_file(tmp_path / "in.jsonl", 120)
    url = ["--url", sim.base_url + "/chat/completions", "--no-progress"]
    before = sim.stats.admitted
    assert main(["run", str(requests), "--dry-run", *url]) == 0
    est = figures(capsys.readouterr().out)
    assert sim.stats.admitted == before and not (tmp_path / "in_results.jsonl").exists()
    assert est["requests"] == "120" and est["output tokens, at most"] == f"{120 * 12:,}"
    assert main(["run", str(requests), *url]) == 0
    lines = [json.loads(x) for x in (tmp_path / "in_results.jsonl").read_text().splitlines()]
    billed = sum(response["usage"]["prompt_tokens"] for _, response in lines)
    assert est["input tokens"] == f"{billed:,}"
    # Everything answered: a second dry run has nothing to send and costs nothing.
    assert main(["run", str(requests), "--dry-run", "--overwrite", *url]) == 0
    again = figures(capsys.readouterr().out)
    assert again["rows to send"] == "0" and again["cost, high"] == "$0"
    assert again["rows answered in the cache (cost 0)"] == "120"


def test_run_budget_stops_and_an_overwrite_rerun_sends_only_the_rest(sim, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """--budget stops the run under the cap with the rest written as "budget reached"; a rerun
    with --overwrite and a higher budget sends only those lines; --report writes the plot."""
    requests = chat_file(tmp_path / "in.jsonl", 200)
    url = ["--url", sim.base_url + "/chat/completions", "--no-progress"]
    price = ["--price", "100,400"]  # USD per 1M tokens: a budget of cents covers some rows
    assert main(["run", str(requests), "--dry-run", *price, *url]) == 0
    high = float(figures(capsys.readouterr().out)["cost, high"].lstrip("$"))
    budget = high / 3
    report = tmp_path / "report.html"
    args = ["run", str(requests), *price, *url, "--budget", str(budget), "--report", str(report)]
    assert main(args) == 1  # lines left unsent count as failed
    lines = [json.loads(x) for x in (tmp_path / "in_results.jsonl").read_text().splitlines()]
    stopped = [i for i, line in enumerate(lines) if "budget reached" in json.dumps(line[1])]
    assert 0 < len(stopped) < 200
    spent = sum(
        (r["usage"]["prompt_tokens"] * 100 + r["usage"]["completion_tokens"] * 400) / 1e6
        for _, r in (line[:2] for line in lines)
        if isinstance(r, dict)
    )
    assert 0.9 * budget <= spent <= budget
    page = report.read_text()
    assert "<table>" in page and "spent" in page

    before = sim.stats.admitted
    args = ["run", str(requests), *price, *url, "--budget", str(high * 2), "--overwrite"]
    assert main(args) == 0
    assert sim.stats.admitted - before == len(stopped)


def test_frames_dry_run_and_budget(sim, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """embed --dry-run adds its chunks up; complete --budget holds over all chunks."""
    table = tmp_path / "t.parquet"
    pd.DataFrame({"text": [f"review {i}: fine" for i in range(250)]}).to_parquet(table)
    common = ["--base-url", sim.base_url, "--no-progress", "--chunk-size", "100"]
    before = sim.stats.admitted
    embed = ["embed", str(table), str(tmp_path / "e.parquet"), "--column", "text", *common]
    assert main([*embed, "--dry-run"]) == 0
    est = figures(capsys.readouterr().out)
    assert sim.stats.admitted == before and est["rows to send"] == "250"
    assert est["requests"] == "3"  # one packed request per chunk of 100
    assert main(embed) == 0

    out = tmp_path / "c.parquet"
    prompt = ["--prompt", "Say {text}", "--max-tokens", "10", "--price", "100,400"]
    complete = ["complete", str(table), str(out), *prompt, *common]
    assert main([*complete, "--dry-run"]) == 0
    high = float(figures(capsys.readouterr().out)["cost, high"].lstrip("$"))
    assert main([*complete, "--budget", str(high / 2)]) == 1
    result = pd.read_parquet(out)
    stopped = result["completion_error"].fillna("").str.startswith("budget reached")
    assert 0 < stopped.sum() < 250
    assert result.loc[~stopped, "completion_error"].isna().all()

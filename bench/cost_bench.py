"""Issue 11's figures: estimate CPU, estimate against the bill, and the size of a run report.

    .venv/bin/python bench/cost_bench.py            # the issue's numbers, ~2-3 minutes
    .venv/bin/python bench/cost_bench.py --quick    # smaller counts, ~30 s

(1) ``df.llm.estimate.embed`` on 1,000,000 short rows (cache off: every row counted), and
``dfbatch run --dry-run`` on a 1,000,000-line requests file: CPU (user + system) and, for the
command, its peak RSS, in a process of its own. Target: at most 10 s of CPU for the estimate.
(2) 10,000 rows embedded and 10,000 rows completed against the simulator billing usage with
tiktoken (``Simulator(usage="tiktoken")``): the estimate before, the server's usage and the
run's cost after. (3) the run report of a 1,000,000-request run: the timeline fed exactly the
calls the engine makes per request, over a run of 2,000 s, then its size as the JSON that
``out.attrs["dfbatch"]["timeline"]`` holds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_CACHE = ROOT.parent / "shared" / "tiktoken-cache"
if _CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_CACHE))


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def short_texts(n: int) -> list[str]:
    words = ["quick", "brown", "fox", "lazy", "dog", "review", "product", "great", "bad"]
    words += ["shipping", "price"]
    return [f"{words[i % 11]} {words[(i * 7) % 11]} {i} {words[(i * 3) % 11]}" for i in range(n)]


def bench_estimate_cpu(n: int) -> None:
    import pandas as pd

    import dfbatch  # noqa: F401
    from dfbatch.engine.tokens import count_text

    count_text("warm up the encoding", "cl100k_base")  # loading tiktoken's file is not counted
    df = pd.DataFrame({"text": short_texts(n)})
    start_cpu, start = cpu(), time.perf_counter()
    est = df.llm.estimate.embed("text", cache=False)
    used, wall = cpu() - start_cpu, time.perf_counter() - start
    print(f"(1a) df.llm.estimate.embed, {n:,} short rows, cache off:")
    print(
        f"     CPU {used:.2f} s (wall {wall:.2f} s); target <= 10 s: "
        f"{'PASS' if used <= 10 else 'FAIL'}"
    )
    print(
        f"     {est.requests:,} requests, {est.input_tokens:,} input tokens, "
        f"cost {est.cost_usd_high:.4f} USD"
    )


def bench_dry_run(n: int) -> None:
    _dry_run(n)
    small = _dry_run(n // 10, show=False)
    print(
        f"     (the same for {n // 10:,} lines: peak RSS {small} MB: memory does not grow "
        "with the file)"
    )


def _dry_run(n: int, *, show: bool = True) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "requests.jsonl"
        with path.open("w") as f:
            for i, text in enumerate(short_texts(n)):
                body = {
                    "model": "gpt-4o-mini",
                    "max_tokens": 20,
                    "messages": [{"role": "user", "content": f"Classify: {text}"}],
                }
                if i % 2:
                    body["messages"].insert(0, {"role": "system", "content": "One word."})
                f.write(json.dumps(body) + "\n")
        code = (
            "import resource, time, sys\n"
            "from dfbatch.cli.main import main\n"
            "from dfbatch.engine.tokens import count_text\n"
            "count_text('warm', 'o200k_base')\n"
            "u0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()\n"
            f"rc = main(['run', {str(path)!r}, '--dry-run', '--no-cache', '--no-progress',"
            " '--url', 'https://api.openai.com/v1/chat/completions', '--api-key', 'sk-x'])\n"
            "u1 = resource.getrusage(resource.RUSAGE_SELF)\n"
            "cpu = u1.ru_utime - u0.ru_utime + u1.ru_stime - u0.ru_stime\n"
            # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent.
            "hwm = next(int(x.split()[1]) for x in open('/proc/self/status')"
            " if x.startswith('VmHWM'))\n"
            "print(f'@@ {cpu:.2f} {time.perf_counter() - t0:.2f} {hwm / 1024:.0f}',"
            " file=sys.stderr)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        line = next(x for x in done.stderr.splitlines() if x.startswith("@@"))
        cpu_s, wall, rss = line.split()[1:]
        if not show:
            return rss
        print(
            f"(1b) dfbatch run --dry-run, a {n:,}-line chat requests file "
            f"({path.stat().st_size / 2**20:.0f} MB):"
        )
        print(f"     CPU {cpu_s} s (wall {wall} s), peak RSS {rss} MB")
        for row in done.stdout.splitlines()[1:]:
            print("     " + row.strip())
        return rss


def bench_estimate_vs_bill(n: int) -> None:
    import pandas as pd

    import dfbatch  # noqa: F401
    from dfbatch.testing import Simulator

    df = pd.DataFrame({"text": short_texts(n)})
    print(f"(2) estimate vs the bill, {n:,} rows, simulator billing with tiktoken:")
    with tempfile.TemporaryDirectory() as tmp, Simulator(usage="tiktoken") as sim:
        opts = {
            "base_url": sim.base_url,
            "api_key": "sk-x",
            "progress": False,
            "cache": Path(tmp) / "c.sqlite",
        }
        est = df.llm.estimate.embed("text", **opts)
        out = df.llm.embed("text", **opts)
        f = out.attrs["dfbatch"]
        print(
            f"    embed: requests {est.requests:,} est / {f['requests']:,} sent; input tokens "
            f"{est.input_tokens:,} est / {f['tokens_used']:,} billed; cost "
            f"{est.cost_usd_low:.6f}-{est.cost_usd_high:.6f} est / {f['cost_usd']:.6f} USD"
        )
        kwargs = {"system": "Answer in five words.", "max_tokens": 30}
        est = df.llm.estimate.complete("Summarize: {text}", **kwargs, **opts)
        out = df.llm.complete("Summarize: {text}", usage=True, **kwargs, **opts)
        f = out.attrs["dfbatch"]
        prompt = int(out["completion_prompt_tokens"].sum())
        completion = int(out["completion_completion_tokens"].sum())
        print(
            f"    complete: requests {est.requests:,} est / {f['requests']:,} sent; input "
            f"tokens {est.input_tokens:,} est / {prompt:,} billed; output tokens "
            f"<= {est.max_output_tokens:,} est / {completion:,} billed"
        )
        print(
            f"              cost {est.cost_usd_low:.6f}-{est.cost_usd_high:.6f} est "
            f"(no answers cached: low = input only) / {f['cost_usd']:.6f} USD spent"
        )
        half = df.iloc[: n // 2]
        again = half.llm.estimate.complete("Summarize: {text} (v2)", **kwargs, **opts)
        half.iloc[: n // 10].llm.complete("Summarize: {text} (v2)", **kwargs, **opts)
        again = half.llm.estimate.complete("Summarize: {text} (v2)", **kwargs, **opts)
        print(
            f"              with {n // 10:,} of {n // 2:,} rows answered in the cache: "
            f"expected output {again.expected_output_tokens:,} tokens, cost "
            f"{again.cost_usd_low:.6f}-{again.cost_usd_high:.6f} USD"
        )


def bench_report_size(requests: int, seconds: float) -> None:
    from dfbatch.engine.timeline import Timeline

    timeline = Timeline(start=0.0)
    start_cpu = cpu()
    step = seconds / requests
    for i in range(requests):  # the calls the engine makes for one request
        now = i * step
        timeline.add("requests", now)
        timeline.add("tokens", now, 40)
        timeline.level("rpm_limit", now, 30_000)
        timeline.level("tpm_limit", now, 150_000_000)
        timeline.latency(0.2 + (i % 100) / 100)
        timeline.add("tokens_used", now + 0.2, 38)
        timeline.add("cost_usd", now + 0.2, 38 * 0.15 / 1e6)
        if i % 1000 == 0:
            timeline.add("rate_limited", now)
            timeline.add("retries", now)
    used = cpu() - start_cpu
    data = json.dumps(timeline.to_dict())
    print(f"(3) run report of a {requests:,}-request run over {seconds:,.0f} s:")
    buckets = len(timeline.to_dict()["series"]["requests"])
    print(
        f"    timeline {len(data) / 1024:.1f} KB as JSON ({buckets} buckets of "
        f"{timeline.width:g} s per series); "
        f"{used / requests * 1e6:.2f} us CPU per request to record"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller counts")
    args = p.parse_args()
    big = 100_000 if args.quick else 1_000_000
    rows = 2_000 if args.quick else 10_000
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    print(
        f"dfbatch cost bench, commit {commit}, load average {os.getloadavg()[0]:.2f}, "
        f"{os.cpu_count()} CPUs"
    )
    bench_estimate_cpu(big)
    bench_dry_run(big)
    bench_estimate_vs_bill(rows)
    bench_report_size(big, 2_000.0)


if __name__ == "__main__":
    main()

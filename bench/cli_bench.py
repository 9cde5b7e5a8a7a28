"""Command-line benchmark (issue 5): the cookbook's own job under ``dfbatch run``, and memory.

Every scenario starts a fresh simulator process (``python -m dfbatch.testing --port 0 ...``)
and runs the client as its own process, timed from start to exit (imports included), with a
fresh response cache (a temp ``DFBATCH_CACHE_DIR``), so nothing is answered from a cache.

    (a) The cookbook's example: its 10,000-request embeddings file, generated as its appendix
        says, and its example command line verbatim (--max_requests_per_minute 1500
        --max_tokens_per_minute 6250000 --token_encoding_name cl100k_base --max_attempts 5
        --logging_level 20) under ``dfbatch run``, against a simulator enforcing 1,500 RPM over
        1-second windows: wall time vs the ideal 10,000 / 1,500 per minute = 400 s (target
        within 5%), 429s (target 0). Then the cookbook script itself, extracted at run time
        from the seed page into a temp dir, with the same command line on a fresh simulator,
        capped by --cookbook-timeout (its progress is reported if it times out).
    (b) Peak RSS of the whole ``dfbatch run`` process, as ``/usr/bin/time -v`` reports it, on a
        1,000,000-line and a 100,000-line requests file (embeddings, short inputs, 64-d
        answers) against an unlimited simulator, the default way (cache on): target at most
        150 MB and at most 1.2x the 100,000-line figure, as installed (the console script).
        Also a 20,000-line run of the cookbook's request shape (1,536-d float answers).

    /work/venv/bin/python bench/cli_bench.py            # the issue's figures (~1 h 15 min)
    /work/venv/bin/python bench/cli_bench.py --quick    # smoke check (~3 min)

Prints a report with each target and PASS/FAIL; writes it as JSON to bench/out/cli_bench.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from engine_bench import (  # noqa: E402
    ROOT,
    SEED_PAGE,
    Report,
    Sim,
    extract_cookbook,
    log,
    machine,
)

PY = sys.executable
DFBATCH = str(Path(PY).with_name("dfbatch"))
OUT = BENCH / "out"
RPM, TPM = 1500, 6_250_000
GNU_TIME = "/usr/bin/time"


class CliSim(Sim):
    """engine_bench's simulator process, started as bench/_cli_sim.py."""

    launcher = (str(BENCH / "_cli_sim.py"),)

    def alive(self) -> bool:
        return self.proc.poll() is None


def cookbook_example(path: Path, n: int) -> Path:
    """The appendix's code, with its file name: n requests to text-embedding-ada-002."""
    jobs = [{"model": "text-embedding-ada-002", "input": str(x) + "\n"} for x in range(n)]
    with path.open("w") as f:
        for job in jobs:
            json_string = json.dumps(job)
            f.write(json_string + "\n")
    return path


def short_requests(path: Path, n: int, *, dims: int | None) -> Path:
    """n embeddings requests with a short input each (64-d answers unless dims is None)."""
    with path.open("w") as f:
        for i in range(n):
            body: dict[str, Any] = {"input": f"row {i}: a short sentence to embed"}
            if dims is None:
                body["model"] = "text-embedding-ada-002"
            else:
                body.update(model="text-embedding-3-small", dimensions=dims)
            f.write(json.dumps(body) + "\n")
    return path


def cookbook_flags(requests: Path, save: Path, url: str) -> list[str]:
    """The example command line of the script's docstring, with the simulator's URL."""
    return [
        "--requests_filepath", str(requests),
        "--save_filepath", str(save),
        "--request_url", url,
        "--max_requests_per_minute", str(RPM),
        "--max_tokens_per_minute", str(TPM),
        "--token_encoding_name", "cl100k_base",
        "--max_attempts", "5",
        "--logging_level", "20",
    ]  # fmt: skip


def count_results(path: Path, n: int) -> dict[str, Any]:
    """Lines, successes, failures; whether line i answers input i (in order)."""
    lines = ok = 0
    in_order = True
    inputs: set[str] = set()
    if path.exists():
        with path.open() as fh:
            for i, line in enumerate(fh):
                lines += 1
                try:
                    parts = json.loads(line)
                except ValueError:
                    continue
                response = parts[1]
                if isinstance(response, dict) and "error" not in response:
                    ok += 1
                text = parts[0].get("input") if isinstance(parts[0], dict) else None
                inputs.add(json.dumps(text))
                if text != f"{i}\n":
                    in_order = False
    return {
        "lines": lines, "ok": ok, "failed": lines - ok, "unique": len(inputs),
        "duplicates": lines - len(inputs), "in_order": in_order and lines == n,
    }  # fmt: skip


def timed(cmd: list[str], env: dict[str, str], log_path: Path, timeout: float) -> dict[str, Any]:
    """Run ``cmd`` to its end (or kill it at ``timeout``); wall time and exit status."""
    with log_path.open("w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            status = proc.wait(timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            status = proc.wait()
            timed_out = True
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "exit": status, "timed_out": timed_out}


def env_for(tmp: Path, name: str) -> dict[str, str]:
    cache = tmp / f"cache-{name}"
    return {**os.environ, "DFBATCH_CACHE_DIR": str(cache), "OPENAI_API_KEY": "sk-bench-key"}


# ----------------------------------------------------------------------------- (a)


def scenario_a(
    rep: Report, tmp: Path, n: int, cookbook_timeout: float, skip_cookbook: bool
) -> dict:
    data = tmp / "data"
    data.mkdir()
    requests = cookbook_example(data / "example_requests_to_parallel_process.jsonl", n)
    ideal = n / RPM * 60.0
    sim_flags = ["--rpm", str(RPM), "--tpm", str(TPM)]
    result: dict[str, Any] = {"n": n, "rpm": RPM, "tpm": TPM, "ideal_s": ideal}

    save = data / "example_requests_to_parallel_process_results.jsonl"
    log(f"(a) dfbatch run, {n:,} requests at {RPM} RPM (ideal {ideal:.0f} s)")
    with CliSim(tmp, "a-dfbatch", *sim_flags) as sim:
        cmd = [DFBATCH, "run", *cookbook_flags(requests, save, sim.base_url + "/embeddings")]
        run = timed(cmd, env_for(tmp, "a"), tmp / "a-dfbatch.log", ideal * 3 + 120)
        stats = sim.stats()
    summary = [
        ln for ln in (tmp / "a-dfbatch.log").read_text().splitlines() if "requests/min" in ln
    ]
    d = {**run, **count_results(save, n), "server": stats, "summary": summary[-1:]}
    result["dfbatch"] = d
    save.unlink(missing_ok=True)

    if not skip_cookbook:
        log(f"(a) the cookbook script, same command line (timeout {cookbook_timeout:.0f} s)")
        script = extract_cookbook(SEED_PAGE, tmp)
        with CliSim(tmp, "a-cookbook", *sim_flags) as sim:
            cmd = [PY, str(script), *cookbook_flags(requests, save, sim.base_url + "/embeddings")]
            run = timed(cmd, env_for(tmp, "a-cookbook"), tmp / "a-cookbook.log", cookbook_timeout)
            stats = sim.stats()
        result["cookbook"] = {**run, **count_results(save, n), "server": stats}
        save.unlink(missing_ok=True)

    rep.say(f"(a) the cookbook's example: {n:,} embeddings requests, --max_requests_per_minute "
            f"{RPM}, simulator limit {RPM} RPM over 1 s windows; ideal {ideal:.0f} s")  # fmt: skip
    rows = [("dfbatch run", d)] + ([("cookbook script", result["cookbook"])]
                                   if "cookbook" in result else [])  # fmt: skip
    rep.say(f"    {'client':<16} {'wall s':>8} {'vs ideal':>9} {'429s':>6} {'requests':>9} "
            f"{'results':>8} {'ok':>7} {'dups':>5} {'in order':>9}")  # fmt: skip
    for label, r in rows:
        s = r["server"]
        over = r["wall_s"] / ideal - 1.0
        note = " (timed out)" if r["timed_out"] else ""
        rep.say(f"    {label:<16} {r['wall_s']:>8.1f} {over:>+8.1%} {s['rate_limited']:>6,} "
                f"{s['requests']:>9,} {r['lines']:>8,} {r['ok']:>7,} {r['duplicates']:>5,} "
                f"{'yes' if r['in_order'] else 'no':>9}{note}")  # fmt: skip
    if d["summary"]:
        rep.say(f"    dfbatch's own summary: {d['summary'][0]}")
    if "cookbook" in result and result["cookbook"]["timed_out"]:
        c = result["cookbook"]
        rep.say(f"    the cookbook was stopped at {cookbook_timeout:.0f} s with {c['ok']:,} of "
                f"{n:,} answered ({c['ok'] / (c['wall_s'] / 60):.0f} answers/min)")  # fmt: skip
    ok_all = d["ok"] == n and d["in_order"] and d["exit"] == 0
    wall = f"{d['wall_s']:.1f} s ({d['wall_s'] / ideal - 1:+.1%})"
    rep.check("a", "dfbatch wall time vs ideal", wall, "<= +5%", d["wall_s"] <= ideal * 1.05)
    rep.check("a", "dfbatch 429s", f"{d['server']['rate_limited']:,}", "0",
              d["server"]["rate_limited"] == 0)  # fmt: skip
    rep.check("a", "dfbatch: one ok result per line, in order", f"{d['ok']:,}/{n:,}",
              "all", ok_all)  # fmt: skip
    return result


# ----------------------------------------------------------------------------- (b)

_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def rss_run(tmp: Path, name: str, requests: Path, n: int, launcher: list[str]) -> dict[str, Any]:
    out = tmp / f"{name}-out.jsonl"
    with CliSim(tmp, name) as sim:
        cmd = [GNU_TIME, "-v", *launcher, "run", str(requests), "-o", str(out),
               "--url", sim.base_url + "/embeddings", "--rpm", "1000000000",
               "--tpm", "1000000000000", "--no-progress"]  # fmt: skip
        log_path = tmp / f"{name}.log"
        run = timed(cmd, env_for(tmp, name), log_path, 4 * 3600)
        if not sim.alive():
            raise RuntimeError(f"the simulator of {name} stopped during the run")
        stats = sim.stats()
    text = log_path.read_text(errors="replace")
    match = _RSS.search(text)
    failed = re.search(r"lines, [\d,]+ ok, ([\d,]+) failed", text)
    lines = out.read_bytes().count(b"\n") if out.exists() else 0
    size = out.stat().st_size if out.exists() else 0
    out.unlink(missing_ok=True)
    cache = tmp / f"cache-{name}"
    cache_bytes = sum(p.stat().st_size for p in cache.glob("*")) if cache.exists() else 0
    for p in cache.glob("*"):
        p.unlink()
    return {
        **run, "n": n, "lines": lines, "output_bytes": size, "cache_bytes": cache_bytes,
        "max_rss_kb": int(match.group(1)) if match else None, "requests": stats["requests"],
        "lines_per_s": lines / run["wall_s"] if run["wall_s"] else None,
        "failed": int(failed.group(1).replace(",", "")) if failed else None,
    }  # fmt: skip


def run_imports_pandas() -> bool:
    """Whether the command line's process would load pandas (it should not: ~95 MB with pyarrow)."""
    code = "import sys, dfbatch.cli.main, dfbatch.cli.run; print('pandas' in sys.modules)"
    return subprocess.run([PY, "-c", code], capture_output=True, text=True).stdout.strip() == "True"


def scenario_b(rep: Report, tmp: Path, big: int, base: int, full: int) -> dict[str, Any]:
    result: dict[str, Any] = {"big": big, "base": base}
    files = {m: short_requests(tmp / f"short-{m}.jsonl", m, dims=64) for m in (base, big)}
    launchers = {"dfbatch run": [DFBATCH]}
    result["run_imports_pandas"] = run_imports_pandas()
    for label, launcher in launchers.items():
        runs = {}
        for m in (base, big):
            log(f"(b) RSS {label}: {m:,} lines")
            runs[m] = rss_run(tmp, f"b-{label.replace(' ', '-')}-{m}", files[m], m, launcher)
        result[label] = runs
    if full:
        log(f"(b) RSS as installed: {full:,} lines of the cookbook's shape (1,536-d answers)")
        path = short_requests(tmp / f"full-{full}.jsonl", full, dims=None)
        result["full_size"] = rss_run(tmp, f"b-full-{full}", path, full, [DFBATCH])
    for path in files.values():
        path.unlink()

    rep.say("")
    rep.say("(b) peak RSS of the whole `dfbatch run` process (/usr/bin/time -v), unlimited "
            "simulator, cache on (fresh), short inputs, 64-d answers")  # fmt: skip
    rep.say(f"    {'process':<16} {'lines':>10} {'max RSS MB':>11} {'wall s':>8} {'lines/s':>8} "
            f"{'output MB':>10} {'cache MB':>9} {'all written':>12}")  # fmt: skip
    rows = [(label, result[label][m]) for label in launchers for m in (base, big)]
    if "full_size" in result:
        rows.append(("1,536-d answers", result["full_size"]))
    for label, r in rows:
        rss = r["max_rss_kb"] / 1024 if r["max_rss_kb"] else float("nan")
        rep.say(f"    {label:<16} {r['n']:>10,} {rss:>11.1f} {r['wall_s']:>8.1f} "
                f"{r['lines_per_s']:>8.0f} {r['output_bytes'] / 2**20:>10.0f} "
                f"{r['cache_bytes'] / 2**20:>9.0f} "
                f"{'yes' if r['lines'] == r['n'] and r['failed'] == 0 else 'NO':>12}")  # fmt: skip
    for label in launchers:
        small, large = result[label][base], result[label][big]
        if not (small["max_rss_kb"] and large["max_rss_kb"]):
            continue
        mb = large["max_rss_kb"] / 1024
        ratio = large["max_rss_kb"] / small["max_rss_kb"]
        valid = all(r["lines"] == r["n"] and r["failed"] == 0 for r in (small, large))
        rep.check("b", f"{label}: {big:,}-line peak RSS", f"{mb:.1f} MB", "<= 150 MB",
                  valid and mb <= 150)  # fmt: skip
        rep.check("b", f"{label}: {big:,} vs {base:,} lines", f"{ratio:.2f}x", "<= 1.2x",
                  valid and ratio <= 1.2)  # fmt: skip
    rep.say(f"    pandas loaded by `dfbatch run`: {result['run_imports_pandas']}")
    return result


# ----------------------------------------------------------------------------- main


def wait_until_idle() -> float:
    """Wait while another benchmark runs on this machine, so the figures are not skewed."""
    t0 = time.monotonic()
    while True:
        busy = subprocess.run(["pgrep", "-f", "engine_bench.py|accessor_bench.py"],
                              capture_output=True, text=True).stdout.split()  # fmt: skip
        busy = [p for p in busy if int(p) != os.getpid()]
        if not busy:
            return time.monotonic() - t0
        log(f"waiting: another benchmark is running (pids {', '.join(busy)})")
        time.sleep(30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, a smoke check")
    p.add_argument("--cookbook-timeout", type=float, default=900.0,
                   help="seconds the cookbook script may run (default 900)")  # fmt: skip
    p.add_argument("--skip-cookbook", action="store_true", help="do not run the cookbook script")
    p.add_argument("--skip-a", action="store_true", help="skip scenario (a)")
    p.add_argument("--skip-b", action="store_true", help="skip scenario (b)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for other benchmarks")
    args = p.parse_args()
    if not Path(GNU_TIME).exists():
        print("needs GNU time: apt-get install -y time", file=sys.stderr)
        return 2
    n_a = 1_000 if args.quick else 10_000
    big, base, full = (20_000, 2_000, 0) if args.quick else (1_000_000, 100_000, 20_000)
    waited = 0.0 if args.quick or args.no_wait else wait_until_idle()

    rep = Report()
    started = dt.datetime.now().isoformat(timespec="seconds")
    rep.say(f"dfbatch CLI benchmark, {started}{' (quick)' if args.quick else ''}")
    rep.say(
        f"machine: {machine()}; python {sys.version.split()[0]}; load avg "
        f"{os.getloadavg()[0]:.2f} at start (waited {waited:.0f} s for other benchmarks)"
    )
    rep.say("")
    out: dict[str, Any] = {"started": started, "quick": args.quick, "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="cli-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_a:
            out["a"] = scenario_a(rep, tmp, n_a, args.cookbook_timeout, args.skip_cookbook)
        if not args.skip_b:
            out["b"] = scenario_b(rep, tmp, big, base, full)
    out["checks"] = rep.checks
    rep.say("")
    failed = [c for c in rep.checks if not c["pass"]]
    rep.say(f"{len(rep.checks) - len(failed)} of {len(rep.checks)} targets met")
    OUT.mkdir(exist_ok=True)
    name = "cli_bench_quick.json" if args.quick else "cli_bench.json"
    (OUT / name).write_text(json.dumps(out, indent=2, default=str) + "\n")
    rep.say(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Engine benchmark (issue 2): throughput under a rate limit, client CPU, connections.

Every scenario starts a fresh simulator process (``python -m dfbatch.testing --port 0 ...``)
and runs the client in a process of its own (``bench/_drive_dfbatch.py`` or
``bench/_drive_cookbook.py``), which measures its own CPU (user + system, getrusage) and wall
time around the run only, after its imports. All traffic stays on 127.0.0.1.

    (a) N embeddings requests against 6,000 RPM (1 s windows): dfbatch told rpm=6000, then the
        OpenAI cookbook's api_request_parallel_processor.py (--max_requests_per_minute 6000),
        extracted at run time from the seed page, capped by --cookbook-timeout.
    (b) the same dfbatch run told rpm=12,000 (2x the true limit), and told nothing.
    (c) 10,000 requests against an unlimited, zero-latency simulator: client CPU per request
        of dfbatch and of the cookbook, and TCP connections opened.
    (d) 30,000 RPM with 2 s latency: dfbatch told rpm=30000.
    (e) issue 9, point 12: as (d) over a 20 s run (10,000 requests), with a quiet event loop
        and with a busy one (the driver blocks it 80 ms every 0.5 s): the admitted share once
        the window is open, and over the whole run.
    (f) issue 9, point 10: 20,000 short rows through df.llm.embed against 1,000,000 TPM
        enforced over 1 s windows strictly (a request over 16,667 tokens is refused every
        time; a full pack of 2,048 rows is ~17,000): rows lost, 429s, wall vs ideal.

    /work/venv/bin/python bench/engine_bench.py            # the issue's numbers (~10 min)
    /work/venv/bin/python bench/engine_bench.py --quick    # smoke check (~2 min)

Prints a report with each target and PASS/FAIL; writes it as JSON to bench/out/engine_bench.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PY = sys.executable
MODEL = "text-embedding-3-small"
BIG_TPM = 10_000_000  # a TPM limit that never binds for short inputs
SEED_PAGE = ROOT.parent / "shared" / "seed" / "api_request_parallel_processor.txt"
#: Extra driver flags for every dfbatch run (--dfbatch-body-extra, --dfbatch-max-in-flight).
DFBATCH_FLAGS: list[str] = []

_cache = ROOT.parent / "shared" / "tiktoken-cache"
if _cache.is_dir() and not os.environ.get("TIKTOKEN_CACHE_DIR"):
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_cache)
os.environ.setdefault("TQDM_DISABLE", "1")


# ----------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def extract_cookbook(page: Path, dest: Path) -> Path:
    """Cut the cookbook's Python script out of the seed page's text (unchanged) into dest."""
    lines = page.read_text(encoding="utf-8").splitlines()
    start = next(
        i
        for i in range(len(lines) - 1)
        if lines[i].strip() == '"""' and lines[i + 1].strip() == "API REQUEST PARALLEL PROCESSOR"
    )
    marker = next(
        i
        for i in range(start, len(lines))
        if lines[i].rstrip().endswith("json.dumps does this automatically).")
    )
    end = next(i for i in range(marker, len(lines)) if lines[i].strip() == '"""')
    code = "\n".join(lines[start : end + 1]) + "\n"
    compile(code, str(page), "exec")  # fail here, not in the driver, if the cut is wrong
    path = dest / "api_request_parallel_processor.py"
    path.write_text(code, encoding="utf-8")
    return path


#: The embeddings' wire format in every request file (both clients send the same lines).
#: base64 by default: what dfbatch's embed front end and the official openai SDK both ask for.
ENCODING_FORMAT = ["base64"]


def write_requests(path: Path, n: int) -> Path:
    """n embeddings requests, one short input each (the cookbook's own example workload)."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            body = {"model": MODEL, "input": f"row {i}: a short sentence to embed"}
            if ENCODING_FORMAT[0] != "float":
                body["encoding_format"] = ENCODING_FORMAT[0]
            fh.write(json.dumps(body) + "\n")
    return path


class Sim:
    """A fresh simulator process on 127.0.0.1; ``stats()`` reads GET /sim/stats."""

    #: How the process is started (after the interpreter); a subclass may name another file.
    launcher: tuple[str, ...] = ("-m", "dfbatch.testing")

    def __init__(self, tmp: Path, name: str, *flags: str) -> None:
        self.flags = list(flags)
        self.log_path = tmp / f"sim-{name}.log"
        # Where it dumps its counters when it stops (also if something else stops it).
        self.stats_path = tmp / f"sim-{name}.stats.json"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                PY,
                *self.launcher,
                "--port",
                "0",
                "--stats-file",
                str(self.stats_path),
                *self.flags,
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else ""
        prefix = "dfbatch simulator listening on "
        if not line.startswith(prefix):
            self.close()
            raise RuntimeError(f"simulator did not start: {line!r} (see {self.log_path})")
        self.base_url = line[len(prefix) :].strip()
        self.root = self.base_url.rsplit("/v1", 1)[0]

    def stats(self) -> dict[str, Any]:
        """GET /sim/stats; if the simulator has stopped, the counters it dumped on the way out."""
        try:
            with urllib.request.urlopen(self.root + "/sim/stats", timeout=30) as resp:
                return json.load(resp)
        except OSError as exc:
            rc = self.proc.poll()
            if rc is None:
                raise
            log_tail = self.log_path.read_text(errors="replace")[-1500:]
            if not self.stats_path.exists():
                raise RuntimeError(
                    f"the simulator stopped (exit {rc}) before its counters were read, and "
                    f"dumped none: {exc}; its log ends: {log_tail!r}"
                ) from exc
            out = json.loads(self.stats_path.read_text())
            # Its connection count has no GET /sim/stats of ours: add it, as figures() expects.
            out["connections"] = out.get("connections", 0) + 1
            out["stopped_early"] = f"exit {rc}; counters from its dump on shutdown"
            return out

    def cpu_seconds(self) -> float | None:
        """The simulator process's user+system CPU so far (Linux /proc), or None."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def __enter__(self) -> Sim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_driver(cmd: list[str], tmp: Path, name: str, timeout: float) -> dict[str, Any]:
    err_path = tmp / f"client-{name}.log"
    with err_path.open("w") as err:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout, cwd=ROOT
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = err_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"driver {name} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def run_dfbatch(
    tmp: Path,
    name: str,
    sim_flags: list[str],
    requests: Path,
    *,
    rpm: float | None,
    timeout: float,
    profile: Path | None = None,
    body_extra: str | None = None,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    load = os.getloadavg()[0]
    with Sim(tmp, name, *sim_flags) as sim:
        cmd = [PY, str(BENCH / "_drive_dfbatch.py"), "--base-url", sim.base_url]
        cmd += ["--requests", str(requests)]
        cmd += DFBATCH_FLAGS + (extra or [])
        if body_extra is not None:
            cmd += ["--body-extra", body_extra]
        if rpm is not None:
            cmd += ["--rpm", str(rpm)]
        if profile is not None:
            cmd += ["--profile", str(profile)]
        client = run_driver(cmd, tmp, name, timeout)
        server = sim.stats()
        server["process_cpu_s"] = sim.cpu_seconds()
    return {"client": client, "server": server, "sim_flags": sim_flags, "loadavg_before": load}


def run_embed_window(
    tmp: Path, name: str, sim_flags: list[str], *, rows: int, tpm: float | None, timeout: float
) -> dict[str, Any]:
    """(f): bench/_drive_embed_window.py (df.llm.embed) against a fresh simulator."""
    load = os.getloadavg()[0]
    with Sim(tmp, name, *sim_flags) as sim:
        cmd = [PY, str(BENCH / "_drive_embed_window.py"), "--base-url", sim.base_url]
        cmd += ["--rows", str(rows)]
        if tpm is not None:
            cmd += ["--tpm", str(tpm)]
        client = run_driver(cmd, tmp, name, timeout)
        server = sim.stats()
    return {"client": client, "server": server, "sim_flags": sim_flags, "loadavg_before": load}


def steady_share(run: dict[str, Any], limit_rpm: float) -> float | None:
    """Admitted per second from a second after the first answer to the last admission, over
    the limit: the client's first send in that span (it is admitted within a millisecond,
    see "server lag" in the report) to the simulator's last admission, on the one
    monotonic clock both processes read."""
    c, s = run["client"], run["server"]
    start, n = c.get("first_send_after_steady"), c.get("sends_after_steady")
    if start is None or not n or n < 2 or s.get("last_admitted") is None:
        return None
    span = s["last_admitted"] - start
    return (n - 1) / span / (limit_rpm / 60.0) if span > 0 else None


def run_cookbook(
    tmp: Path,
    name: str,
    sim_flags: list[str],
    requests: Path,
    script: Path,
    *,
    rpm: int,
    tpm: int,
    timeout: float,
    logging_level: int,
) -> dict[str, Any]:
    load = os.getloadavg()[0]
    with Sim(tmp, name, *sim_flags) as sim:
        cmd = [PY, str(BENCH / "_drive_cookbook.py"), "--script", str(script)]
        cmd += ["--request-url", sim.base_url + "/embeddings", "--requests", str(requests)]
        cmd += ["--save", str(tmp / f"{name}-results.jsonl")]
        cmd += ["--rpm", str(rpm), "--tpm", str(tpm), "--timeout", str(timeout)]
        cmd += ["--logging-level", str(logging_level)]
        client = run_driver(cmd, tmp, name, timeout + 120)
        server = sim.stats()
        server["process_cpu_s"] = sim.cpu_seconds()
    (tmp / f"{name}-results.jsonl").unlink(missing_ok=True)
    return {"client": client, "server": server, "sim_flags": sim_flags, "loadavg_before": load}


def figures(run: dict[str, Any], limit_rpm: float | None) -> dict[str, Any]:
    """The numbers the report shows for one run."""
    c, s = run["client"], run["server"]
    n = c["n"]
    out: dict[str, Any] = {
        "n": n,
        "wall_s": c["wall_s"],
        "admitted": s["admitted"],
        "admitted_per_s": s["admitted_per_second"],
        "simple_rate_per_s": n / c["wall_s"] if c["wall_s"] > 0 else None,
        "rate_limited_429": s["rate_limited"],
        "share_429": s["rate_limited"] / n if n else None,
        "ok": c["ok"],
        "failed": c["failed"],
        "outcomes": c["outcomes"],
        "duplicates": c["duplicates"],
        "missing": c["missing"],
        "all_answered": c["ok"] == n and c["duplicates"] == 0 and c["missing"] == 0,
        # the simulator also counts the connection of our own GET /sim/stats: not the client's
        "connections": s["connections"] - 1,
        "max_concurrent": s["max_concurrent"],
        "cpu_s": c["cpu_s"],
        "cpu_ms_per_request": 1000.0 * c["cpu_s"] / n if n else None,
        "server_cpu_s": s.get("process_cpu_s"),
        "timed_out": c.get("timed_out", False),
        "loadavg_before": run.get("loadavg_before"),
        "simulator_stopped_early": s.get("stopped_early"),
    }
    first, second, last, sends = (
        c.get(k) for k in ("first_send", "second_send", "last_send", "sends")
    )
    if first is not None and last is not None and sends and sends > 2 and last > first:
        # The client's own pace (dfbatch driver only), on the clock the simulator stamps with.
        out["client_send_per_s"] = (sends - 1) / (last - first)
        out["client_send_per_s_after_first"] = (
            (sends - 2) / (last - second) if last > second else None
        )
        out["first_request_alone_s"] = second - first
        if s["last_admitted"] is not None:
            out["server_lag_last_s"] = s["last_admitted"] - last
    if limit_rpm:
        per_s = limit_rpm / 60.0
        aps = s["admitted_per_second"]
        out["limit_per_s"] = per_s
        out["share_of_limit"] = aps / per_s if aps else None
        out["simple_share_of_limit"] = out["simple_rate_per_s"] / per_s
    return out


# ----------------------------------------------------------------------------- report


class Report:
    """Lines printed as they come, and the checks with their targets; ``widths`` are those
    of a check line's what, value and target columns."""

    def __init__(self, widths: tuple[int, int, int] = (44, 16, 14)) -> None:
        self.widths = widths
        self.lines: list[str] = []
        self.checks: list[dict[str, Any]] = []

    def say(self, text: str = "") -> None:
        self.lines.append(text)
        print(text, flush=True)

    def check(self, scenario: str, what: str, value: str, target: str, ok: bool) -> None:
        self.checks.append(
            {"scenario": scenario, "what": what, "value": value, "target": target, "pass": ok}
        )
        w_what, w_value, w_target = self.widths
        verdict = "PASS" if ok else "FAIL"
        self.say(f"    {what:<{w_what}} {value:>{w_value}}   target {target:<{w_target}} {verdict}")


def scenario_error(rep: Report, scenario: str, exc: BaseException) -> None:
    """Report a scenario that could not run to its end, and go on with the next."""
    log(f"({scenario}) failed: {type(exc).__name__}: {exc}")
    rep.say(f"  ERROR in ({scenario}): {type(exc).__name__}: {str(exc)[:600]}")
    rep.check(scenario, "scenario ran to its end", "error", "no error", False)


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def describe(rep: Report, label: str, f: dict[str, Any]) -> None:
    rep.say(f"  {label}")
    if f.get("simulator_stopped_early"):
        rep.say(
            f"    NOTE: the simulator stopped before it was asked ({f['simulator_stopped_early']})"
        )
    per_s = f.get("limit_per_s")
    if f.get("client_send_per_s") and per_s:
        after = f["client_send_per_s_after_first"]
        rep.say(
            f"    client pace (sends, first..last) {f['client_send_per_s']:.1f}/s = "
            f"{pct(f['client_send_per_s'] / per_s)}; after the first request "
            f"{after:.1f}/s = {pct(after / per_s)}; the first request went alone for "
            f"{f['first_request_alone_s']:.2f} s; the server admitted the last one "
            f"{1000 * f.get('server_lag_last_s', 0):.0f} ms after the client sent it"
        )
    rate = f["admitted_per_s"]
    line = f"    {f['n']:,} requests in {f['wall_s']:.1f} s wall"
    if f.get("limit_per_s"):
        line += (
            f"; admitted {rate:.1f}/s (server first..last) = {pct(f['share_of_limit'])} of "
            f"{f['limit_per_s']:.0f}/s; N/wall {f['simple_rate_per_s']:.1f}/s = "
            f"{pct(f['simple_share_of_limit'])}"
            if rate
            else "; admitted rate n/a"
        )
    else:
        line += f"; N/wall {f['simple_rate_per_s']:.1f}/s"
    rep.say(line)
    rep.say(
        f"    429s {f['rate_limited_429']:,} ({pct(f['share_429'])} of requests); "
        f"ok {f['ok']:,}, failed {f['failed']:,}, duplicates {f['duplicates']}, "
        f"missing {f['missing']:,}; connections {f['connections']:,}, "
        f"max concurrent {f['max_concurrent']:,}; client CPU {f['cpu_s']:.2f} s "
        f"({f['cpu_ms_per_request']:.3f} ms/request)"
        + ("; TIMED OUT" if f["timed_out"] else "")
        + (f"; simulator CPU {f['server_cpu_s']:.1f} s" if f["server_cpu_s"] is not None else "")
        + f"; load avg before {f['loadavg_before']:.2f}"
    )


def code_version() -> str:
    """The commit benchmarked, and whether dfbatch/ differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "dfbatch"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown (no git)"
    return f"{head or 'unknown'}{' + uncommitted changes in dfbatch/' if dirty else ''}"


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    name = model or platform.processor()
    return f"{platform.machine()} {name}, {cores} cores ({affinity} usable)"


# ----------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small counts, a smoke check")
    p.add_argument("--n-a", type=int, default=None, help="requests in (a) and (b) [3000]")
    p.add_argument("--n-c", type=int, default=None, help="requests in (c) [10000]")
    p.add_argument("--n-d", type=int, default=None, help="requests in (d) [30000]")
    p.add_argument("--n-e", type=int, default=None, help="requests in (e): 20 s [10000]")
    p.add_argument(
        "--busy-e", default="0.08/0.5", help="(e)'s busy loop: BLOCK/EVERY seconds [0.08/0.5]"
    )
    p.add_argument("--rows-f", type=int, default=None, help="rows in (f) [20000]")
    p.add_argument("--rpm-a", type=int, default=6000, help="true limit of (a)/(b) [6000]")
    p.add_argument("--rpm-d", type=int, default=30000, help="limit of (d) [30000]")
    p.add_argument("--latency-d", default="2", help="simulator latency of (d) [2]")
    p.add_argument(
        "--cookbook-timeout", type=float, default=None, help="cap on the cookbook in (a) [400 s]"
    )
    p.add_argument(
        "--cookbook-logging-level",
        type=int,
        default=30,
        help="the cookbook's --logging_level (30: no per-request INFO lines) [30]",
    )
    p.add_argument("--skip-cookbook", action="store_true", help="run dfbatch only")
    p.add_argument(
        "--encoding-format",
        choices=("base64", "float"),
        default="base64",
        help="embeddings wire format in the request files, for both clients [base64]",
    )
    p.add_argument("--only", default="abcdef", help="scenarios to run, e.g. 'cd' [abcdef]")
    p.add_argument("--cookbook-page", type=Path, default=SEED_PAGE)
    p.add_argument("--out", type=Path, default=BENCH / "out" / "engine_bench.json")
    p.add_argument("--profile", action="store_true", help="also cProfile dfbatch in (c)")
    p.add_argument(
        "--dfbatch-body-extra",
        default=None,
        help='JSON merged into every dfbatch request body, e.g. \'{"encoding_format": "base64"}\'',
    )
    p.add_argument("--dfbatch-max-in-flight", type=int, default=None, help="Engine max_in_flight")
    args = p.parse_args()
    ENCODING_FORMAT[0] = args.encoding_format
    if args.dfbatch_body_extra:
        DFBATCH_FLAGS.extend(["--body-extra", args.dfbatch_body_extra])
    if args.dfbatch_max_in_flight:
        DFBATCH_FLAGS.extend(["--max-in-flight", str(args.dfbatch_max_in_flight)])

    quick = args.quick
    n_a = args.n_a or (600 if quick else 3000)
    n_c = args.n_c or (1500 if quick else 10_000)
    n_d = args.n_d or (3000 if quick else 30_000)
    n_e = args.n_e or (3000 if quick else 10_000)
    rows_f = args.rows_f or (6000 if quick else 20_000)
    cb_timeout = args.cookbook_timeout or (45.0 if quick else 400.0)
    rpm_a, rpm_d = args.rpm_a, args.rpm_d

    rep = Report()
    started = time.time()
    rep.say(f"dfbatch engine benchmark{' (--quick)' if quick else ''}")
    rep.say(f"  date:    {dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    rep.say(f"  python:  {platform.python_version()} ({PY})")
    rep.say(f"  code:    {code_version()}")
    rep.say(f"  machine: {machine()}, {platform.system()} {platform.release()}")
    l1, l5, l15 = os.getloadavg()
    rep.say(
        f"  load:    {l1:.2f} {l5:.2f} {l15:.2f} (load average at start; the simulator and the"
        " client share these cores: anything else running skews the numbers)"
    )
    rep.say(
        "  setup:   fresh simulator process per run, client in its own process; client CPU ="
        " user+sys of the client process around its run (imports excluded)"
    )
    rep.say(
        f"  workload: embeddings, model {MODEL}, one short input per request, "
        f"encoding_format={ENCODING_FORMAT[0]}; the cookbook"
        f" runs with --logging_level {args.cookbook_logging_level}"
    )
    if DFBATCH_FLAGS:
        rep.say(f"  dfbatch driver flags: {' '.join(DFBATCH_FLAGS)}")
    result: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": machine(),
        "code": code_version(),
        "quick": quick,
        "params": {
            "n_a": n_a,
            "n_c": n_c,
            "n_d": n_d,
            "n_e": n_e,
            "busy_e": args.busy_e,
            "rows_f": rows_f,
            "rpm_a": rpm_a,
            "rpm_d": rpm_d,
            "latency_d": args.latency_d,
            "cookbook_timeout": cb_timeout,
            "cookbook_logging_level": args.cookbook_logging_level,
            "dfbatch_driver_flags": DFBATCH_FLAGS,
        },
        "runs": {},
    }
    runs = result["runs"]

    with tempfile.TemporaryDirectory(prefix="dfbatch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        script = None
        if not args.skip_cookbook and ("a" in args.only or "c" in args.only):
            script = extract_cookbook(args.cookbook_page, tmp)
        req_a = write_requests(tmp / "requests-a.jsonl", n_a)
        limit_a = ["--rpm", str(rpm_a), "--tpm", str(BIG_TPM)]
        budget_a = 60 + 4 * n_a / (rpm_a / 60)

        # (a) ----------------------------------------------------------------------------
        if "a" in args.only:
            try:
                rep.say()
                rep.say(
                    f"(a) {n_a:,} requests, simulator {rpm_a:,} RPM (1 s windows), TPM {BIG_TPM:,}"
                )
                log("(a) dfbatch")
                run = run_dfbatch(tmp, "a-dfbatch", limit_a, req_a, rpm=rpm_a, timeout=budget_a)
                f = runs["a_dfbatch"] = {**run, "figures": figures(run, rpm_a)}
                describe(rep, f"dfbatch, rpm={rpm_a}", f["figures"])
                ff = f["figures"]
                rep.check(
                    "a",
                    "share of the limit (admitted first..last)",
                    pct(ff["share_of_limit"]),
                    ">= 97%",
                    (ff["share_of_limit"] or 0) >= 0.97,
                )
                rep.check(
                    "a", "429s", str(ff["rate_limited_429"]), "0", ff["rate_limited_429"] == 0
                )
                rep.check(
                    "a",
                    "every request answered once",
                    f"{ff['ok']}/{ff['n']}",
                    "all",
                    ff["all_answered"],
                )
                if script is not None:
                    log(f"(a) cookbook (cap {cb_timeout:.0f} s)")
                    run = run_cookbook(
                        tmp,
                        "a-cookbook",
                        limit_a,
                        req_a,
                        script,
                        rpm=rpm_a,
                        tpm=BIG_TPM,
                        timeout=cb_timeout,
                        logging_level=args.cookbook_logging_level,
                    )
                    f = runs["a_cookbook"] = {**run, "figures": figures(run, rpm_a)}
                    describe(
                        rep,
                        f"cookbook, --max_requests_per_minute {rpm_a} (for comparison)",
                        f["figures"],
                    )
                    if f["figures"]["timed_out"]:
                        rep.say(
                            f"    the cookbook was stopped at {cb_timeout:.0f} s: "
                            f"{f['figures']['ok']:,} of {n_a:,} saved as answered"
                        )
            except Exception as exc:  # one broken run must not lose the others
                scenario_error(rep, "a", exc)

        # (b) ----------------------------------------------------------------------------
        if "b" in args.only:
            try:
                rep.say()
                rep.say(
                    f"(b) {n_a:,} requests, simulator {rpm_a:,} RPM; dfbatch told 2x, or nothing"
                )
                for key, told in (("b_dfbatch_2x", 2 * rpm_a), ("b_dfbatch_none", None)):
                    log(f"(b) dfbatch rpm={told}")
                    run = run_dfbatch(tmp, key, limit_a, req_a, rpm=told, timeout=budget_a)
                    f = runs[key] = {**run, "figures": figures(run, rpm_a)}
                    ff = f["figures"]
                    describe(rep, f"dfbatch, rpm={told}", ff)
                    rep.check(
                        "b",
                        f"rpm={told}: share of the TRUE limit",
                        pct(ff["share_of_limit"]),
                        ">= 90%",
                        (ff["share_of_limit"] or 0) >= 0.90,
                    )
                    rep.check(
                        "b",
                        f"rpm={told}: 429s / requests",
                        pct(ff["share_429"]),
                        "<= 1%",
                        ff["share_429"] <= 0.01,
                    )
                    rep.check(
                        "b",
                        f"rpm={told}: every request answered once",
                        f"{ff['ok']}/{ff['n']}",
                        "all",
                        ff["all_answered"],
                    )
            except Exception as exc:  # one broken run must not lose the others
                scenario_error(rep, "b", exc)

        # (c) ----------------------------------------------------------------------------
        if "c" in args.only:
            try:
                rep.say()
                rep.say(f"(c) {n_c:,} requests, unlimited simulator, zero latency: client CPU")
                req_c = write_requests(tmp / "requests-c.jsonl", n_c)
                log("(c) dfbatch")
                prof = (BENCH / "out" / "dfbatch_c.prof") if args.profile else None
                if prof is not None:
                    prof.parent.mkdir(parents=True, exist_ok=True)
                run = run_dfbatch(tmp, "c-dfbatch", [], req_c, rpm=None, timeout=600)
                f = runs["c_dfbatch"] = {**run, "figures": figures(run, None)}
                fd = f["figures"]
                cap = run["client"]["max_in_flight"]
                describe(rep, f"dfbatch, rpm=None, max_in_flight={cap}", fd)
                other = "float" if ENCODING_FORMAT[0] == "base64" else "base64"
                log(f"(c) dfbatch, {other} bodies")
                run = run_dfbatch(
                    tmp,
                    "c-dfbatch-other",
                    [],
                    req_c,
                    rpm=None,
                    timeout=600,
                    body_extra=json.dumps({"encoding_format": other}),
                )
                f = runs["c_dfbatch_other_format"] = {**run, "figures": figures(run, None)}
                fb = f["figures"]
                describe(
                    rep,
                    f"dfbatch, same requests with encoding_format={other} (info only)",
                    fb,
                )
                fc = None
                if script is not None:
                    log("(c) cookbook")
                    run = run_cookbook(
                        tmp,
                        "c-cookbook",
                        [],
                        req_c,
                        script,
                        rpm=100_000_000,
                        tpm=10_000_000_000,
                        timeout=600,
                        logging_level=args.cookbook_logging_level,
                    )
                    f = runs["c_cookbook"] = {**run, "figures": figures(run, None)}
                    fc = f["figures"]
                    describe(rep, "cookbook, --max_requests_per_minute 1e8 --max_tokens 1e10", fc)
                rep.check(
                    "c",
                    "dfbatch client CPU per request",
                    f"{fd['cpu_ms_per_request']:.3f} ms",
                    "<= 0.45 ms",
                    fd["cpu_ms_per_request"] <= 0.45,
                )
                if fc is not None:
                    ratio = fc["cpu_ms_per_request"] / fd["cpu_ms_per_request"]
                    runs["c_ratio"] = ratio
                    rep.check(
                        "c", "cookbook CPU / dfbatch CPU", f"{ratio:.2f}x", ">= 2.5x", ratio >= 2.5
                    )
                    rep.say(
                        f"    connections opened: dfbatch {fd['connections']:,}, cookbook "
                        f"{fc['connections']:,}"
                    )
                rep.say(
                    f"    info: dfbatch CPU per request with {other} bodies "
                    f"{fb['cpu_ms_per_request']:.3f} ms ({ENCODING_FORMAT[0]} bodies "
                    f"{fd['cpu_ms_per_request']:.3f} ms; an answer is 1,536 JSON floats, 21 KB, "
                    f"or 8 KB of base64)"
                )
                rep.check(
                    "c",
                    "dfbatch TCP connections opened",
                    f"{fd['connections']:,}",
                    f"<= {cap:,} (cap)",
                    fd["connections"] <= cap,
                )
                rep.check(
                    "c",
                    "every request answered once",
                    f"{fd['ok']}/{fd['n']}",
                    "all",
                    fd["all_answered"],
                )
                if prof is not None:
                    log("(c) dfbatch under cProfile")
                    run_dfbatch(
                        tmp, "c-dfbatch-prof", [], req_c, rpm=None, timeout=600, profile=prof
                    )
                    rep.say(f"    cProfile of a second dfbatch run: {prof}")
            except Exception as exc:  # one broken run must not lose the others
                scenario_error(rep, "c", exc)

        # (d) ----------------------------------------------------------------------------
        if "d" in args.only:
            try:
                rep.say()
                rep.say(
                    f"(d) {n_d:,} requests, simulator {rpm_d:,} RPM, latency {args.latency_d} s"
                )
                req_d = write_requests(tmp / "requests-d.jsonl", n_d)
                log("(d) dfbatch")
                flags = ["--rpm", str(rpm_d), "--latency", args.latency_d]
                run = run_dfbatch(
                    tmp, "d-dfbatch", flags, req_d, rpm=rpm_d, timeout=120 + 4 * n_d / (rpm_d / 60)
                )
                f = runs["d_dfbatch"] = {**run, "figures": figures(run, rpm_d)}
                ff = f["figures"]
                ff["steady_share_of_limit"] = steady_share(run, rpm_d)
                describe(rep, f"dfbatch, rpm={rpm_d}", ff)
                rep.say(
                    f"    info: once the window is open (a second after the first answer) "
                    f"{pct(ff['steady_share_of_limit'])} of the limit; before the first answer "
                    f"{run['client'].get('sends_before_first_answer')} requests went (issue 9.11)"
                )
                rep.check(
                    "d",
                    "share of the limit (admitted first..last)",
                    pct(ff["share_of_limit"]),
                    ">= 95%",
                    (ff["share_of_limit"] or 0) >= 0.95,
                )
                rep.check(
                    "d",
                    "every request answered once",
                    f"{ff['ok']}/{ff['n']}",
                    "all",
                    ff["all_answered"],
                )
            except Exception as exc:  # one broken run must not lose the others
                scenario_error(rep, "d", exc)

        # (e) ----------------------------------------------------------------------------
        if "e" in args.only:
            try:
                rep.say()
                rep.say(
                    f"(e) {n_e:,} requests ({n_e / (rpm_d / 60):.0f} s at the limit), simulator "
                    f"{rpm_d:,} RPM, latency {args.latency_d} s; quiet and busy event loop"
                )
                req_e = write_requests(tmp / "requests-e.jsonl", n_e)
                flags = ["--rpm", str(rpm_d), "--latency", args.latency_d]
                block, every = (float(x) for x in args.busy_e.split("/"))
                for key, label, extra in (
                    ("e_quiet", "quiet event loop", []),
                    (
                        "e_busy",
                        f"busy event loop (blocked {1000 * block:.0f} ms every {every:g} s)",
                        ["--busy", args.busy_e],
                    ),
                ):
                    log(f"(e) dfbatch, {label}")
                    run = run_dfbatch(
                        tmp,
                        key,
                        flags,
                        req_e,
                        rpm=rpm_d,
                        timeout=120 + 4 * n_e / (rpm_d / 60),
                        extra=extra,
                    )
                    ff = figures(run, rpm_d)
                    ff["steady_share_of_limit"] = steady_share(run, rpm_d)
                    c = run["client"]
                    first_answer = (c.get("first_answer") or 0.0) - (c.get("first_send") or 0.0)
                    runs[key] = {**run, "figures": ff}
                    describe(rep, f"dfbatch, rpm={rpm_d}, {label}", ff)
                    rep.say(
                        f"    first answer {first_answer:.2f} s after the first send, "
                        f"{c.get('sends_before_first_answer')} requests sent before it (the "
                        f"window opens at the first answer; until then 1, 2, 4... in flight); "
                        f"admitted over the whole run {pct(ff['share_of_limit'])} of the limit,"
                        f" once the window is open {pct(ff['steady_share_of_limit'])}"
                    )
                    rep.check(
                        "e",
                        f"{label.split(' (')[0]}: admitted share, open window",
                        pct(ff["steady_share_of_limit"]),
                        ">= 98%",
                        (ff["steady_share_of_limit"] or 0) >= 0.98,
                    )
                    rep.check(
                        "e",
                        f"{label.split(' (')[0]}: 429s",
                        str(ff["rate_limited_429"]),
                        "0",
                        ff["rate_limited_429"] == 0,
                    )
                    rep.check(
                        "e",
                        f"{label.split(' (')[0]}: every request answered once",
                        f"{ff['ok']}/{ff['n']}",
                        "all",
                        ff["all_answered"],
                    )
            except Exception as exc:  # one broken run must not lose the others
                scenario_error(rep, "e", exc)

        # (f) ----------------------------------------------------------------------------
        if "f" in args.only:
            try:
                tpm_f = 1_000_000
                rep.say()
                rep.say(
                    f"(f) df.llm.embed of {rows_f:,} short rows (8-9 tokens; a full pack of "
                    f"2,048 is ~17,000), simulator {tpm_f:,} TPM over 1 s windows, strict: "
                    f"a request over {tpm_f / 60:,.0f} tokens is refused every time"
                )
                sim_flags = ["--tpm", str(tpm_f), "--strict-windows"]
                for key, told in (("f_told_nothing", None), ("f_told_tpm", tpm_f)):
                    log(f"(f) dfbatch embed, tpm={told}")
                    run = run_embed_window(tmp, key, sim_flags, rows=rows_f, tpm=told, timeout=900)
                    c, srv = run["client"], run["server"]
                    ideal = srv["tokens_admitted"] / (tpm_f / 60.0)
                    runs[key] = {**run, "ideal_wall_s": ideal}
                    rep.say(f"  dfbatch, tpm={told}")
                    rep.say(
                        f"    {c['rows']:,} rows in {c['wall_s']:.1f} s wall; ideal "
                        f"{ideal:.1f} s (the {srv['tokens_admitted']:,} tokens the server "
                        f"counted, at {tpm_f / 60:,.0f} a second) = {c['wall_s'] / ideal:.2f}x"
                    )
                    rep.say(
                        f"    requests {srv['requests']:,} (admitted {srv['admitted']:,}), "
                        f"429s {srv['rate_limited']:,}; rows lost {c['rows_lost']:,} (wrong "
                        f"vectors {c['rows_wrong']}), failures {c['failures_by_cause']}; the "
                        f"client estimated {c['tokens_estimated']:,} tokens"
                    )
                    rep.check(
                        "f",
                        f"tpm={told}: rows lost",
                        f"{c['rows_lost']:,}",
                        "0",
                        c["rows_lost"] == 0,
                    )
            except Exception as exc:  # one broken run must not lose the others
                scenario_error(rep, "f", exc)

    passed = sum(c["pass"] for c in rep.checks)
    rep.say()
    rep.say(f"summary: {passed}/{len(rep.checks)} checks pass; took {time.time() - started:.0f} s")
    failed = [f"({c['scenario']}) {c['what']}" for c in rep.checks if not c["pass"]]
    if failed:
        rep.say("  FAIL: " + "; ".join(failed))
    result["checks"] = rep.checks
    result["report"] = "\n".join(rep.lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    rep.say(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

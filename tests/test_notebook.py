"""dfbatch in a real Jupyter kernel (ipykernel): the example notebook, re-runs and interrupts.

* notebooks/example.ipynb runs top to bottom with nbclient, without an error, and its cells
  show what they say (the failed rows, the run summary, the parquet round trip).
* With jupyter_client directly: the same cell run twice gives the same answers; a cell
  interrupted mid-run stops promptly with KeyboardInterrupt, leaves nothing running in the
  kernel (no ``dfbatch-run`` thread, no request in flight, no new requests) and returns no
  partial result; the next cells work and give the right values.

The kernel is always this interpreter (``sys.executable``): the tests write their own
``python3`` kernelspec to a temporary folder rather than trust whichever one Jupyter finds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dfbatch.testing import expected_content

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "example.ipynb"
MAKER = ROOT / "notebooks" / "make_example.py"

MISSING = [
    name
    for name in ("ipykernel", "nbclient", "nbformat", "jupyter_client")
    if importlib.util.find_spec(name) is None
]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"needs {', '.join(MISSING)} to run a Jupyter kernel (pip install -e '.[test]')",
)

HAVE_WIDGETS = importlib.util.find_spec("ipywidgets") is not None
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


# --------------------------------------------------------------------------- kernel set-up
@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a ``python3`` kernelspec that runs ipykernel on this interpreter."""
    root = tmp_path_factory.mktemp("kernels")
    spec = root / "python3"
    spec.mkdir()
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (dfbatch tests)",
                "language": "python",
                "interrupt_mode": "signal",
            }
        )
    )
    return root


def kernel_env() -> dict[str, str]:
    """The kernel's environment: ours (TIKTOKEN_CACHE_DIR included when set), no API key."""
    env = dict(os.environ)
    env.pop("OPENAI_API_KEY", None)
    env.pop("OPENAI_BASE_URL", None)
    env.pop("TQDM_DISABLE", None)
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # quiets debugpy's start-up note
    return env


def kernel_manager(kernel_dir: Path, *, asynchronous: bool = False) -> Any:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager, KernelManager

    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    cls = AsyncKernelManager if asynchronous else KernelManager
    return cls(kernel_name="python3", kernel_spec_manager=specs)


# --------------------------------------------------------------------------- the notebook
def cell_outputs(nb: Any) -> dict[str, dict[str, Any]]:
    """Per cell id: its stdout, stderr, text/plain results, output mime types and errors."""
    cells: dict[str, dict[str, Any]] = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        got: dict[str, Any] = {"stdout": "", "stderr": "", "text": "", "mimes": set(), "errors": []}
        for out in cell.outputs:
            if out.output_type == "stream":
                got[out.name] += out.text
            elif out.output_type in ("execute_result", "display_data"):
                got["mimes"].update(out.data)
                got["text"] += out.data.get("text/plain", "") + "\n"
            elif out.output_type == "error":
                got["errors"].append(f"{out.ename}: {out.evalue}")
        cells[cell.id] = got
    return cells


def labels(text: str) -> list[str]:
    """The review ids (``R-1xxxx``) shown in a DataFrame's text (wide frames wrap: each once)."""
    return list(dict.fromkeys(re.findall(r"\bR-\d{5}\b", text)))


def test_notebook_is_committed_clean_and_matches_its_maker() -> None:
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"cell {cell.id} has outputs: clear them before committing"
            )
    spec = importlib.util.spec_from_file_location("make_example", MAKER)
    assert spec is not None and spec.loader is not None
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    made = maker.build()
    assert [(c.id, c.cell_type, c.source) for c in nb.cells] == [
        (c.id, c.cell_type, c.source) for c in made.cells
    ], "notebooks/example.ipynb is out of date: run python notebooks/make_example.py"


def test_example_notebook_runs_in_a_kernel(kernel_dir: Path, tmp_path: Path) -> None:
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    probe = nbformat.v4.new_code_cell(
        "import sys, json, dfbatch\n"
        "print(json.dumps({'executable': sys.executable, 'dfbatch': dfbatch.__file__}))"
    )
    probe.id = "test-probe"
    nb.cells.append(probe)

    km = kernel_manager(kernel_dir, asynchronous=True)
    client = nbclient.NotebookClient(
        nb,
        km=km,
        kernel_name="python3",
        timeout=120,
        startup_timeout=60,
        resources={"metadata": {"path": str(tmp_path)}},
        shutdown_kernel="immediate",
    )
    # cleanup_kc: shut the kernel down and close the client's sockets even though the
    # kernel manager is ours (nbclient leaves a kernel it did not create running by default).
    client.execute(env=kernel_env(), cleanup_kc=True)

    cells = cell_outputs(nb)
    errors = {cid: got["errors"] for cid, got in cells.items() if got["errors"]}
    assert not errors, errors
    tracebacks = {cid: got["stderr"] for cid, got in cells.items() if "Traceback" in got["stderr"]}
    assert not tracebacks, tracebacks

    where = json.loads(cells["test-probe"]["stdout"])
    assert Path(where["executable"]).resolve() == Path(sys.executable).resolve()
    import dfbatch

    assert Path(where["dfbatch"]).resolve() == Path(dfbatch.__file__).resolve()

    # the table: a realistic index, shown
    assert labels(cells["table"]["text"])[:2] == ["R-10000", "R-10001"]

    # embed: a progress bar (a widget when ipywidgets is installed), the summary, the vectors
    for cid in ("embed", "complete"):
        assert "dfbatch: 200 rows" in cells[cid]["stderr"], cells[cid]["stderr"]
        if HAVE_WIDGETS:
            assert WIDGET_MIME in cells[cid]["mimes"], f"no progress widget in cell {cid}"
            assert "TqdmWarning" not in cells["imports"]["stderr"]
    assert "(197, 256) float32" in cells["embed-shape"]["stdout"]
    assert "rows without a vector: 3" in cells["embed-shape"]["stdout"]
    assert "197 from cache" in cells["complete"]["stderr"]  # the chained embed: no requests

    # the failures: exactly the invalid-JSON row, and exactly the empty review for embed
    failures = cells["failures"]["text"]
    assert labels(failures) == ["R-10150"], failures
    assert "invalid JSON" in failures
    embed_failures = cells["embed-failures"]["text"]
    assert labels(embed_failures) == ["R-10042"], embed_failures
    assert "empty text" in embed_failures
    summary = cells["summary"]["text"]
    assert "'rows': 200" in summary and "'rows_failed': 1" in summary, summary

    # the estimate before the first call, the cost, the budget stop and rerun, the report
    assert "text/html" in cells["estimate"]["mimes"]
    assert "requests=1 " in cells["estimate"]["text"], cells["estimate"]["text"]
    assert "'cost_usd': " in summary and "<timeline: " in summary, summary
    budget = cells["budget"]["stdout"]
    assert "within budget: True" in budget, budget
    stopped = int(re.search(r"rows stopped by the budget: (\d+)", budget).group(1))
    assert 0 < stopped < 197, budget
    assert "budget reached" in cells["budget"]["stderr"]
    rerun = cells["rerun"]["stdout"]
    sent = int(re.search(r"requests sent by the rerun: (\d+)", rerun).group(1))
    assert 0 < sent <= stopped and "still stopped: 0" in rerun, rerun
    # every row sent before (all but the 2 missing reviews) is either stopped or cached now
    assert f"rows from the cache: {198 - stopped}" in rerun, rerun
    assert "text/html" in cells["report"]["mimes"]

    # the parquet round trip
    parquet = cells["parquet"]["stdout"]
    assert "same index: True" in parquet, parquet
    assert "vectors read back: 197 float32 (256,)" in parquet, parquet
    assert "float32 and equal after the round trip: True" in parquet, parquet


# --------------------------------------------------------------------------- re-runs, interrupts
class Kernel:
    """A kernel and a blocking client, with cells that return their outputs."""

    def __init__(self, kernel_dir: Path, cwd: Path) -> None:
        self.km = kernel_manager(kernel_dir)
        self.km.start_kernel(env=kernel_env(), cwd=str(cwd))
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=60)
        except BaseException:
            self.close()
            raise

    def submit(self, code: str) -> str:
        return self.kc.execute(code, store_history=True)

    def result(self, msg_id: str, timeout: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """The execute_reply content to ``msg_id`` and the cell's outputs."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no execute_reply within {timeout} s")
            try:
                msg = self.kc.get_shell_msg(timeout=left)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                reply = msg["content"]
                break
        out: dict[str, Any] = {"stdout": "", "stderr": "", "errors": []}
        while True:  # outputs until the kernel says it is idle for this cell
            left = deadline + 10 - time.monotonic()
            msg = self.kc.get_iopub_msg(timeout=max(left, 0.1))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out[content["name"]] += content["text"]
            elif kind == "error":
                out["errors"].append(f"{content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                return reply, out

    def run(self, code: str, timeout: float = 60) -> dict[str, Any]:
        """Run a cell that must succeed; returns its outputs."""
        reply, out = self.result(self.submit(code), timeout)
        assert reply["status"] == "ok", (reply.get("ename"), reply.get("evalue"), out)
        assert not out["errors"], out
        return out

    def run_json(self, code: str, timeout: float = 60) -> Any:
        """Run a cell whose last stdout line is JSON; returns it decoded."""
        out = self.run(code, timeout)
        return json.loads(out["stdout"].strip().splitlines()[-1])

    def close(self) -> None:
        try:
            self.kc.stop_channels()
        finally:
            self.km.shutdown_kernel(now=True)


SETUP = """
import json, sys, threading, time
import numpy as np
import pandas as pd
import dfbatch
from dfbatch.testing import Simulator, expected_embedding

# 2,000 rows at 6,000 requests a minute take about 20 s: long enough to interrupt.
sim = Simulator(rpm=6_000, latency=0.5).start()
opts = dict(base_url=sim.base_url, rpm=6_000, cache=False)
small = pd.DataFrame(
    {"text": [f"quick row {i}" for i in range(20)]},
    index=pd.Index([f"k{i}" for i in range(20)][::-1], name="key"),
)
big = pd.DataFrame({"text": [f"long row {i}" for i in range(2_000)]})
print(json.dumps({"url": sim.url, "executable": sys.executable}))
"""

QUICK = """
quick = small.llm.complete("Say: {text}", max_tokens=5, **opts)
print(json.dumps({"index": quick.index.tolist(), "answers": quick["completion"].tolist(),
                  "errors": int(quick["completion_error"].notna().sum())}))
"""

LONG = """
big_out = big.llm.complete("Say: {text}", max_tokens=5, **opts)
"""

AFTER = """
def dfbatch_threads():
    return [t.name for t in threading.enumerate() if t.name == "dfbatch-run"]

right_after = dfbatch_threads()
deadline = time.monotonic() + 5
while (dfbatch_threads() or sim.stats.in_flight) and time.monotonic() < deadline:
    time.sleep(0.05)
first = sim.stats.requests
time.sleep(1.0)
print(json.dumps({
    "right_after": right_after,
    "threads": dfbatch_threads(),
    "in_flight": sim.stats.in_flight,
    "requests": [first, sim.stats.requests],
    "big_out": "big_out" in globals(),
}))
"""

EMBED = """
texts = ["alpha", "beta", None, "gamma", "alpha"]
emb = pd.Series(texts, index=[5, 3, 9, 1, 5], name="text").llm.embed(dimensions=64, **opts)
print(json.dumps({
    "index": emb.index.tolist(),
    "right": [
        bool(v is None) if t is None
        else bool(v.dtype == np.float32 and np.array_equal(v, expected_embedding(t, dimensions=64)))
        for t, v in zip(texts, emb["embedding"])
    ],
}))
"""


def sim_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/sim/stats", timeout=5) as resp:
        return json.load(resp)


def test_rerun_and_interrupt_in_a_kernel(kernel_dir: Path, tmp_path: Path) -> None:
    kernel = Kernel(kernel_dir, tmp_path)
    try:
        where = kernel.run_json(SETUP)
        assert Path(where["executable"]).resolve() == Path(sys.executable).resolve()

        # the same cell twice: same answers, on the caller's index
        expected = [
            expected_content({"messages": [{"role": "user", "content": f"Say: quick row {i}"}]})
            for i in range(20)
        ]
        first = kernel.run_json(QUICK)
        second = kernel.run_json(QUICK)
        assert first == second
        assert first["index"] == [f"k{i}" for i in range(19, -1, -1)]
        assert first["answers"] == expected and first["errors"] == 0

        # a long cell, interrupted once its requests are flowing
        started = time.monotonic()
        msg_id = kernel.submit(LONG)
        while sim_stats(where["url"])["requests"] < 50:
            assert time.monotonic() - started < 15, "the long cell sent no requests"
            time.sleep(0.05)
        time.sleep(max(0.0, 1.5 - (time.monotonic() - started)))
        assert sim_stats(where["url"])["in_flight"] > 0  # mid-run
        interrupted = time.monotonic()
        kernel.km.interrupt_kernel()
        reply, _ = kernel.result(msg_id, timeout=30)
        took = time.monotonic() - interrupted
        print(f"interrupt: reply after {took:.2f} s, {time.monotonic() - started:.2f} s in")
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
        assert took < 10, f"the interrupt took {took:.1f} s"
        assert time.monotonic() - started < 15, "the long cell was not cut short"

        # nothing keeps running, and no partial result was handed back
        after = kernel.run_json(AFTER)
        print("after the interrupt:", after)
        assert after["threads"] == [], after
        assert after["in_flight"] == 0, after
        assert after["requests"][0] == after["requests"][1], after
        assert after["requests"][0] < 1_000, after  # it really stopped early
        assert after["big_out"] is False, after

        # the kernel is usable: the next runs work and give the right values
        embedded = kernel.run_json(EMBED)
        assert embedded["index"] == [5, 3, 9, 1, 5]
        assert embedded["right"] == [True] * 5, embedded
        assert kernel.run_json(QUICK) == first
    finally:
        kernel.close()

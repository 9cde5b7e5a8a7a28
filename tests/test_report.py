"""The run report: a bounded timeline, text and HTML, and a plot rendered headless (Agg)."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

import dfbatch
from dfbatch.engine.timeline import Timeline
from dfbatch.testing import Faults, Simulator


def test_timeline_stays_bounded_and_keeps_every_count() -> None:
    """Ten million requests over a day: at most TIMELINE_MAX_BUCKETS buckets, sums kept,
    a report of kilobytes."""
    t = Timeline(start=0.0, max_buckets=1024)
    seconds = 86_400
    for s in range(seconds):  # 10,000,000 requests spread over a day, one call per second
        t.add("requests", s + 0.5, 10_000_000 / seconds)
        t.level("rpm_limit", s + 0.5, 600_000)
    t.latency(0.2)
    data = t.to_dict()
    assert len(data["series"]["requests"]) <= 1024 and data["bucket_s"] == 128
    assert sum(data["series"]["requests"]) == pytest.approx(10_000_000)
    assert set(data["series"]["rpm_limit"]) == {600_000}
    assert len(json.dumps(data)) < 100_000


def test_latency_percentiles_come_from_the_histogram() -> None:
    """Percentiles read to within one bin (12% wide)."""
    t = Timeline(start=0.0)
    for i in range(1, 101):
        t.latency(i / 100)  # 10 ms ... 1 s
    assert t.latency_percentile(50) == pytest.approx(0.5, rel=0.13)
    assert t.latency_percentile(99) == pytest.approx(0.99, rel=0.13)


@pytest.fixture(scope="module")
def run_frame(tmp_path_factory):  # type: ignore[no-untyped-def]
    cache = tmp_path_factory.mktemp("report") / "cache.sqlite"
    df = pd.DataFrame({"text": [f"review number {i}" for i in range(300)]})
    with Simulator(rpm=6_000, faults=Faults(error_5xx=0.05), usage="tiktoken") as sim:
        return df.llm.complete(
            "Summarize: {text}",
            max_tokens=10,
            base_url=sim.base_url,
            api_key="sk-test",
            cache=cache,
            progress=False,
            budget=1.0,
        )


def test_report_holds_the_timeline_of_the_run(run_frame) -> None:  # type: ignore[no-untyped-def]
    """Requests, tokens, retries and money per bucket add up to the run's figures."""
    rep = dfbatch.report(run_frame)
    figures = run_frame.attrs["dfbatch"]
    assert sum(rep.series["requests"]) == figures["requests"]
    assert sum(rep.series["retries"]) == figures["retries"] > 0
    assert sum(rep.series["tokens_used"]) == figures["tokens_used"]
    assert sum(rep.series["cost_usd"]) == pytest.approx(figures["cost_usd"])
    assert any(v is not None for v in rep.series["rpm_limit"])  # the limit the server announced
    text = str(rep)
    assert "requests" in text and "spent" in text and "latency p50" in text
    assert "budget" in text


def test_report_plots_headless_and_saves(run_frame, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """plot() renders with Agg: three panels with the series drawn; .png and .html written."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    rep = dfbatch.report(run_frame)
    figure = rep.plot()
    axes = figure.get_axes()
    assert len(axes) == 3
    requests_line = axes[0].get_lines()[0]
    assert list(requests_line.get_ydata()) == rep.per_second("requests")
    labels = [t.get_text() for ax in axes for t in ax.get_legend().get_texts()]
    assert "retries/s" in labels and "budget" in labels and "limit (RPM / 60)" in labels
    png = rep.save(tmp_path / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = rep.save(tmp_path / "report.html").read_text()
    assert "<table>" in page and "data:image/png;base64," in page


def test_plot_without_matplotlib_says_what_to_install(run_frame, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """No matplotlib: plot() raises ImportError naming the extra; the HTML still shows."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rep = dfbatch.report(run_frame)
    with pytest.raises(ImportError, match=r"dfbatch\[plot\]"):
        rep.plot()
    assert "dfbatch[plot]" in rep._repr_html_()


def test_report_of_something_else_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="attrs"):
        dfbatch.report(pd.DataFrame({"a": [1]}))

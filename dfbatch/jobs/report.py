"""A run report you can look at: the run's figures, its timeline, and a plot.

    rep = dfbatch.report(out)        # a frame from embed/complete, or a run's figures dict
    rep                              # in Jupyter: a table (and the plot, with matplotlib)
    print(rep)                       # the same as text
    rep.plot()                       # matplotlib: pace against the limits, 429s, retries, money
    rep.save("report.png")           # or .html (the table and the plot in one file)

The figures come from the run (``out.attrs["dfbatch"]``): its timeline holds per-second
buckets (merged two by two when a run is long, so a report stays a few KB however many
requests were sent), and latency percentiles from a fixed histogram. Plotting needs the
optional extra ``pip install "dfbatch[plot]"`` (matplotlib), imported only by ``plot``.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .display import html_table, text_table
from .progress import format_usd

PLOT_HINT = 'plotting a run report needs matplotlib: pip install "dfbatch[plot]"'


class RunReport:
    """One run's figures and timeline; ``plot()``, ``save()``, text and HTML."""

    def __init__(self, figures: Mapping[str, Any]) -> None:
        self.figures = dict(figures)
        timeline = self.figures.get("timeline") or {}
        self.bucket_s: float = float(timeline.get("bucket_s") or 1.0)
        self.series: dict[str, list[Any]] = dict(timeline.get("series") or {})
        self.latency_s: dict[str, float | None] = dict(timeline.get("latency_s") or {})

    def __repr__(self) -> str:
        return f"<RunReport {len(self.times())} buckets of {self.bucket_s:g} s>"

    def times(self) -> list[float]:
        """Seconds since the start of the run, one per bucket (its start)."""
        n = len(self.series.get("requests") or [])
        return [i * self.bucket_s for i in range(n)]

    def per_second(self, name: str) -> list[float]:
        """A counted series as a rate per second (``requests``, ``tokens``, ...)."""
        return [(v or 0.0) / self.bucket_s for v in self.series.get(name) or []]

    def _rows(self) -> list[tuple[str, str]]:
        f = self.figures
        rows = [
            ("requests", f"{f.get('requests', 0):,}"),
            ("retries", f"{f.get('retries', 0):,}"),
            ("429s", f"{f.get('rate_limited', 0):,}"),
            ("tokens used", f"{f.get('tokens_used', 0):,}"),
            ("elapsed", f"{f.get('elapsed_s', 0):,.1f} s"),
        ]
        if f.get("effective_rpm"):
            rows.append(("requests/min", f"{f['effective_rpm']:,.0f}"))
        if f.get("effective_tpm"):
            rows.append(("tokens/min", f"{f['effective_tpm']:,.0f}"))
        for name, value in self.latency_s.items():
            if value is not None:
                rows.append((f"latency {name}", f"≤ {value * 1000:,.0f} ms"))
        if "cost_usd" in f:
            cost = f["cost_usd"]
            rows.append(("spent", "unknown (no price)" if cost is None else format_usd(cost)))
        if f.get("budget_usd") is not None:
            rows.append(("budget", format_usd(f["budget_usd"])))
            if f.get("rows_budget_reached"):
                rows.append(("rows stopped by the budget", f"{f['rows_budget_reached']:,}"))
        return rows

    def __str__(self) -> str:
        return text_table("dfbatch run report", self._rows())

    def _table_html(self) -> str:
        return html_table("dfbatch run report", self._rows())

    def _repr_html_(self) -> str:
        try:
            png = self._png()
        except ImportError:
            return self._table_html() + f"<p>{html.escape(PLOT_HINT)}</p>"
        return self._table_html() + f"<img src='data:image/png;base64,{png}'/>"

    def _png(self) -> str:
        figure = self.plot()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        _close(figure)
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def plot(self) -> Any:
        """A matplotlib Figure: requests/s and tokens/min against the limits over time (429s
        and retries marked), and the money spent. Needs ``pip install "dfbatch[plot]"``."""
        try:
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise ImportError(PLOT_HINT) from exc
        t = self.times()
        figure = Figure(figsize=(9, 7.5), layout="constrained")
        ax_req, ax_tok, ax_cost = figure.subplots(3, 1, sharex=True)

        ax_req.plot(t, self.per_second("requests"), label="requests/s admitted")
        rpm = [None if v is None else v / 60.0 for v in self.series.get("rpm_limit") or []]
        if any(v is not None for v in rpm):
            ax_req.step(t, _nan(rpm), where="post", linestyle="--", label="limit (RPM / 60)")
        for name, marker, color in (("rate_limited", "x", "red"), ("retries", "o", "orange")):
            points = [(x, v) for x, v in zip(t, self.series.get(name) or [], strict=False) if v]
            if points:
                xs, vs = zip(*points, strict=True)
                ax_req.scatter(
                    xs,
                    [v / self.bucket_s for v in vs],
                    marker=marker,
                    color=color,
                    label="429s/s" if name == "rate_limited" else "retries/s",
                    zorder=3,
                )
        ax_req.set_ylabel("per second")
        ax_req.legend(loc="upper right", fontsize="small")
        latency = ", ".join(
            f"{k} ≤ {v * 1000:,.0f} ms" for k, v in self.latency_s.items() if v is not None
        )
        ax_req.set_title("requests" + (f" (latency {latency})" if latency else ""))

        tokens = [v * 60.0 for v in self.per_second("tokens")]
        ax_tok.plot(t, tokens, label="tokens/min charged (estimated)")
        used = [v * 60.0 for v in self.per_second("tokens_used")]
        ax_tok.plot(t, used, label="tokens/min used (usage)", alpha=0.7)
        tpm = self.series.get("tpm_limit") or []
        if any(v is not None for v in tpm):
            ax_tok.step(t, _nan(tpm), where="post", linestyle="--", label="limit (TPM)")
        ax_tok.set_ylabel("tokens per minute")
        ax_tok.legend(loc="upper right", fontsize="small")

        spent, total = [], 0.0
        for v in self.series.get("cost_usd") or []:
            total += v or 0.0
            spent.append(total)
        ax_cost.plot(t, spent, label="spent")
        budget = self.figures.get("budget_usd")
        if budget is not None:
            ax_cost.axhline(budget, linestyle="--", color="red", label="budget")
        ax_cost.set_ylabel("USD")
        ax_cost.set_xlabel(f"seconds since the start (buckets of {self.bucket_s:g} s)")
        ax_cost.legend(loc="upper left", fontsize="small")
        if self.figures.get("cost_usd") is None and "cost_usd" in self.figures:
            ax_cost.set_title("money spent: unknown (no price for this model)")
        return figure

    def save(self, path: str | Path) -> Path:
        """Write the report: ``.png`` (the plot) or ``.html`` (the table and the plot)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".html":
            path.write_text(
                "<!doctype html><meta charset='utf-8'><title>dfbatch run report</title>"
                + self._repr_html_(),
                encoding="utf-8",
            )
        elif suffix in (".png", ".svg", ".pdf"):
            figure = self.plot()
            figure.savefig(path, bbox_inches="tight")
            _close(figure)
        else:
            raise ValueError(f"a report is saved as .png, .svg, .pdf or .html, not {path.name!r}")
        return path


def report(obj: Any) -> RunReport:
    """The run report of a frame returned by ``embed``/``complete`` (or of a run's figures).

    >>> report({"requests": 2, "timeline": {"bucket_s": 1.0, "series": {"requests": [2.0]}}})
    <RunReport 1 buckets of 1 s>
    """
    attrs = getattr(obj, "attrs", None)
    figures = attrs.get("dfbatch") if isinstance(attrs, Mapping) else obj
    if not isinstance(figures, Mapping) or "requests" not in figures:
        raise ValueError(
            "no dfbatch run figures here: pass the frame embed()/complete() returned "
            "(its .attrs['dfbatch'])"
        )
    return RunReport(figures)


def _nan(values: list[Any]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def _close(figure: Any) -> None:
    # A Figure made without pyplot holds no global state; drop its canvas' buffers.
    figure.clear()

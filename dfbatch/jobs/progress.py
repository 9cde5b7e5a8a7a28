"""The progress bar (tqdm.auto: a widget in Jupyter, a bar on a terminal) and the run summary."""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm

from ..engine.prices import format_usd
from ..engine.types import RunStats

#: Seconds between refreshes of the rates and counters shown beside the bar.
POSTFIX_INTERVAL = 0.5


class Progress:
    """Rows done of total, with requests and tokens per minute, retries, 429s and failures.

    ``enabled=None`` follows tqdm: off when the output is not a terminal or a notebook.
    ``TQDM_DISABLE=1`` in the environment silences it too.
    """

    def __init__(
        self,
        total: int | None,
        *,
        enabled: bool | None = True,
        desc: str = "dfbatch",
        unit: str = "row",
        file: Any = None,
    ) -> None:
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            disable=None if enabled is None else not enabled,
            file=file,
            dynamic_ncols=True,
            smoothing=0.1,
        )
        self._next_postfix = 0.0
        self.cached = 0
        self.failed = 0

    def advance(self, n: int = 1, *, failed: int = 0, cached: int = 0) -> None:
        self.failed += failed
        self.cached += cached
        self._bar.update(n)

    def show(self, stats: RunStats, now: float, *, force: bool = False) -> None:
        """Refresh the counters beside the bar, at most every ``POSTFIX_INTERVAL`` seconds."""
        wall = time.monotonic()
        if self._bar.disable or (wall < self._next_postfix and not force):
            return
        self._next_postfix = wall + POSTFIX_INTERVAL
        minutes = stats.elapsed(now) / 60.0
        postfix: dict[str, Any] = {}
        if minutes > 0:
            postfix["req/min"] = f"{stats.requests_sent / minutes:,.0f}"
            postfix["tok/min"] = f"{stats.tokens_used / minutes:,.0f}"
        postfix["retries"] = stats.retries
        postfix["429s"] = stats.rate_limited
        postfix["failed"] = self.failed
        if self.cached:
            postfix["cached"] = self.cached
        if stats.cost_usd is not None:
            spent = format_usd(stats.cost_usd)
            if stats.budget_usd is not None:
                spent += f" of {format_usd(stats.budget_usd)}"
            postfix["spent"] = spent
        self._bar.set_postfix(postfix, refresh=False)

    def show_batches(self, counts: dict[str, int]) -> None:
        """The Batch API's ``request_counts`` over the run's batches, beside the bar."""
        if not self._bar.disable:
            self._bar.set_postfix(counts, refresh=True)

    def close(self) -> None:
        self._bar.close()


def format_summary(figures: dict[str, Any], *, rows: int, failed: int, cached: int = 0) -> str:
    """One paragraph that says what happened, for the log, the notebook and the terminal.

    >>> print(format_summary({"requests": 3, "retries": 0, "rate_limited": 0, "elapsed_s": 1.5,
    ...     "tokens_used": 30, "effective_rpm": 120.0, "failures_by_cause": {}}, rows=3, failed=0))
    ... # doctest: +NORMALIZE_WHITESPACE
    dfbatch: 3 rows, 3 ok, 0 failed; 3 requests, 30 tokens, 0 retries, 0 429s in 1.5 s
    (120 requests/min)
    """
    not_sent = figures.get("rows_not_sent") or 0
    ok = rows - failed - not_sent
    text = (
        f"dfbatch: {rows:,} rows, {ok:,} ok, {failed:,} failed"
        + (f", {not_sent:,} not sent (NA)" if not_sent else "")
        + (f", {cached:,} from cache" if cached else "")
        + f"; {figures.get('requests', 0):,} requests, {figures.get('tokens_used', 0):,} tokens, "
        f"{figures.get('retries', 0):,} retries, {figures.get('rate_limited', 0):,} 429s "
        f"in {figures.get('elapsed_s', 0):.1f} s"
    )
    if figures.get("effective_rpm"):
        text += f" ({figures['effective_rpm']:,.0f} requests/min)"
    text += cost_text(figures)
    if figures.get("backend") == "batch":
        ids = figures.get("batch_ids") or []
        text += f"\n  Batch API: {len(ids):,} batch(es)" + (
            f": {', '.join(ids[:5])}" if ids else ""
        )
        text += " ..." if len(ids) > 5 else ""
    causes = figures.get("failures_by_cause") or {}
    if causes:
        text += "\n  failed rows by cause: " + ", ".join(
            f"{cause}: {count:,}" for cause, count in sorted(causes.items(), key=lambda kv: -kv[1])
        )
    return text


def cost_text(figures: dict[str, Any]) -> str:
    """The money part of the summary: spent, the budget, and what the budget stopped.

    >>> print(cost_text({"cost_usd": 0.5, "budget_usd": 0.5, "rows_budget_reached": 10}))
    ... # doctest: +NORMALIZE_WHITESPACE
    ; $0.5 spent of the $0.5 budget
      budget reached: 10 rows not sent (their _error says so); rerun with a higher budget= to
      send only them
    """
    if "cost_usd" not in figures:
        return ""
    cost = figures["cost_usd"]
    text = (
        "; cost unknown (no price for this model: pass price=)"
        if cost is None
        else (f"; {format_usd(cost)} spent")
    )
    if figures.get("budget_usd") is not None:
        text += f" of the {format_usd(figures['budget_usd'])} budget"
    stopped = figures.get("rows_budget_reached") or 0
    if stopped:
        text += (
            f"\n  budget reached: {stopped:,} rows not sent (their _error says so); rerun with "
            "a higher budget= to send only them"
        )
    return text

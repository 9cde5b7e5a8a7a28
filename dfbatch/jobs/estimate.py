"""What a run will cost and how long it must take, before a single request is sent.

A front end plans the run exactly as it would run it (the same request building, packing,
dedupe and cache lookups) and hands each request it would send to an ``EstimateBuilder``; the
builder keeps only sums, so a file of millions of lines is estimated in constant memory. The
result is an ``Estimate``: plain attributes, ``str()`` as text and an HTML table in Jupyter.

- input tokens: the same tiktoken count the limiter charges (exact for text);
- output tokens: the bound ``n x max_tokens`` (1,024 per choice when none is given), and an
  expected figure when there is a basis for one: the mean of the answers already in the cache
  for the same call (embeddings have no output: 0, exactly);
- cost: low = input + expected output (input only without a basis), high = input + the bound;
  unknown (None) when the model has no price and no ``price=`` was given;
- time: the shortest the limits allow (requests / RPM, tokens charged / TPM), with the limits
  given, else the ones OpenAI documents for its lowest paid tier, else unknown;
- ``backend="batch"``: the cost at the Batch API's price, with the online price beside it, and
  no shortest time (the Batch API answers within its 24 h window, on a quota of its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engine import constants as C
from ..engine.budget import output_bound
from ..engine.prices import Price, format_usd, price_for, tokens_cost
from ..engine.types import Request
from .display import html_table, text_table

_TITLE = "dfbatch estimate (nothing sent)"


@dataclass
class Estimate:
    """A run's figures before it runs. Every count is of what would be sent, now."""

    model: str | None
    rows: int = 0  # rows that need a request
    rows_cached: int = 0  # answered from the cache: cost 0
    rows_not_sent: int = 0  # NA cells: no request, no error
    rows_invalid: int = 0  # fail before any request (empty, too long, bad prompt)
    requests: int = 0  # after packing and dedupe
    input_tokens: int = 0
    max_output_tokens: int = 0
    expected_output_tokens: int | None = None
    price: Price | None = None
    rpm: float | None = None
    tpm: float | None = None
    limits_source: str | None = None  # "given", "OpenAI tier 1", or None
    budget_usd: float | None = None
    backend: str = "online"  # "batch": the Batch API's price applies

    def _cost(self, price: Price | None, output_tokens: int) -> float | None:
        if self.requests == 0:
            return 0.0
        if price is None:
            return None
        return tokens_cost(price, self.input_tokens, output_tokens)

    @property
    def online_cost_usd_low(self) -> float | None:
        return self._cost(self.price, self.expected_output_tokens or 0)

    @property
    def online_cost_usd_high(self) -> float | None:
        return self._cost(self.price, self.max_output_tokens)

    @property
    def batch_cost_usd_low(self) -> float | None:
        return self._cost(self.price and self.price.batch(), self.expected_output_tokens or 0)

    @property
    def batch_cost_usd_high(self) -> float | None:
        return self._cost(self.price and self.price.batch(), self.max_output_tokens)

    @property
    def cost_usd_low(self) -> float | None:
        """The low cost on the run's backend (the Batch API's price with ``backend="batch"``)."""
        return self.batch_cost_usd_low if self.backend == "batch" else self.online_cost_usd_low

    @property
    def cost_usd_high(self) -> float | None:
        return self.batch_cost_usd_high if self.backend == "batch" else self.online_cost_usd_high

    @property
    def min_seconds(self) -> float | None:
        """The shortest time the limits allow: requests over RPM, charged tokens over TPM
        (None with the Batch API: it answers within its window, on a quota of its own)."""
        if self.backend == "batch":
            return None
        times = []
        if self.rpm:
            times.append(self.requests / self.rpm * 60.0)
        if self.tpm:
            times.append((self.input_tokens + self.max_output_tokens) / self.tpm * 60.0)
        return max(times) if times else None

    def merge(self, other: Estimate) -> Estimate:
        """This estimate and ``other`` (the next chunk of the same call) as one."""
        out = Estimate(
            self.model,
            price=self.price if self.price == other.price else None,
            rpm=self.rpm,
            tpm=self.tpm,
            limits_source=self.limits_source,
            budget_usd=self.budget_usd,
            backend=self.backend,
        )
        for name in (
            "rows",
            "rows_cached",
            "rows_not_sent",
            "rows_invalid",
            "requests",
            "input_tokens",
            "max_output_tokens",
        ):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        if self.expected_output_tokens is not None and other.expected_output_tokens is not None:
            out.expected_output_tokens = self.expected_output_tokens + other.expected_output_tokens
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "rows": self.rows,
            "rows_cached": self.rows_cached,
            "rows_not_sent": self.rows_not_sent,
            "rows_invalid": self.rows_invalid,
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "max_output_tokens": self.max_output_tokens,
            "expected_output_tokens": self.expected_output_tokens,
            "cost_usd_low": self.cost_usd_low,
            "cost_usd_high": self.cost_usd_high,
            "min_seconds": self.min_seconds,
            "budget_usd": self.budget_usd,
            "backend": self.backend,
            **(
                {
                    "online_cost_usd_low": self.online_cost_usd_low,
                    "online_cost_usd_high": self.online_cost_usd_high,
                }
                if self.backend == "batch"
                else {}
            ),
        }

    def _lines(self) -> list[tuple[str, str]]:
        def usd(value: float | None) -> str:
            return (
                "unknown (no price for this model: pass price=)"
                if value is None
                else format_usd(value)
            )

        expected = (
            f"{self.expected_output_tokens:,}"
            if self.expected_output_tokens is not None
            else "no basis (no answers in the cache for this call)"
        )
        if self.backend == "batch":
            time = "within 24 h (the Batch API's window, on a quota of its own)"
        elif self.min_seconds is None:
            time = "unknown: pass rpm= / tpm= (your account's limits)"
        else:
            limits = ", ".join(
                f"{v:,.0f} {name}" for name, v in (("RPM", self.rpm), ("TPM", self.tpm)) if v
            )
            time = f"{_duration(self.min_seconds)} at {limits} ({self.limits_source})"
        lines = [
            ("model", str(self.model)),
            ("rows to send", f"{self.rows:,}"),
            ("rows answered in the cache (cost 0)", f"{self.rows_cached:,}"),
            ("rows not sent (NA, or a failure already written)", f"{self.rows_not_sent:,}"),
        ]
        if self.rows_invalid:
            lines.append(("rows that fail before sending", f"{self.rows_invalid:,}"))
        lines += [
            ("requests", f"{self.requests:,}"),
            ("input tokens", f"{self.input_tokens:,}"),
            ("output tokens, at most", f"{self.max_output_tokens:,}"),
            ("output tokens, expected", expected),
            *self._cost_lines(usd),
            ("shortest time", time),
        ]
        if self.budget_usd is not None:
            high = self.cost_usd_high
            verdict = (
                "within it"
                if high is not None and high <= self.budget_usd
                else "the run may stop at the budget"
            )
            lines.append(("budget", f"{format_usd(self.budget_usd)} ({verdict})"))
        return lines

    def _cost_lines(self, usd: Any) -> list[tuple[str, str]]:
        if self.backend != "batch":
            return [("cost, low", usd(self.cost_usd_low)), ("cost, high", usd(self.cost_usd_high))]

        # both prices side by side: what the wait saves
        def both(batch: float | None, online: float | None) -> str:
            return f"{usd(batch)} Batch API | {usd(online)} online"

        return [
            ("cost, low", both(self.batch_cost_usd_low, self.online_cost_usd_low)),
            ("cost, high", both(self.batch_cost_usd_high, self.online_cost_usd_high)),
        ]

    def __str__(self) -> str:
        return text_table(_TITLE, self._lines())

    def _repr_html_(self) -> str:
        return html_table(_TITLE, self._lines())

    def __repr__(self) -> str:
        low, high = self.cost_usd_low, self.cost_usd_high
        cost = "unknown" if low is None else f"${low:.4f}-${high:.4f}"
        return (
            f"<Estimate {self.model} rows={self.rows:,} requests={self.requests:,} "
            f"input_tokens={self.input_tokens:,} cost={cost}>"
        )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.1f} min"
    return f"{seconds / 3600:,.1f} h"


@dataclass
class EstimateBuilder:
    """Sums of what a run would send; a front end feeds it the requests it would make."""

    model: str | None
    price: Any = None  # price= as given
    rpm: float | None = None
    tpm: float | None = None
    budget: float | None = None
    limits_source: str = "given"  # how the rpm/tpm passed came about, for the text
    backend: str = "online"
    estimate: Estimate = field(init=False)
    _answered: int = 0  # cached answers seen, and their output tokens: the expected basis
    _answered_output: int = 0
    _models: set[str] = field(default_factory=set)  # other models met (dfbatch run files)

    def __post_init__(self) -> None:
        self.estimate = Estimate(self.model, budget_usd=self.budget, backend=self.backend)

    def add(self, request: Request, rows: int = 1) -> None:
        """One request the run would send, for ``rows`` rows."""
        if self.price is None and isinstance(request.body, dict):
            model = request.body.get("model")
            if self.model is None:
                self.model = self.estimate.model = model
            elif model != self.model:
                self._models.add(str(model))
        bound = output_bound(request.endpoint, request.body)
        est = self.estimate
        est.requests += 1
        est.rows += rows
        est.input_tokens += max(0, request.tokens - bound)
        est.max_output_tokens += bound

    def cached(self, rows: int, response: Any = None) -> None:
        """Rows answered from the cache; ``response`` (a cached answer) is a basis for the
        expected output of the requests still to send."""
        self.estimate.rows_cached += rows
        usage = response.get("usage") if isinstance(response, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self._answered += 1
            self._answered_output += usage["completion_tokens"]

    def finish(self, *, no_output: bool = False) -> Estimate:
        est = self.estimate
        if no_output:
            est.expected_output_tokens = 0
        elif self._answered:
            mean = self._answered_output / self._answered
            est.expected_output_tokens = min(est.max_output_tokens, round(mean * est.requests))
        est.price = price_for(self.model, self.price)
        if self._models:  # several models, no price= for all: the cost is not one figure
            est.price = None
            est.model = f"{self.model} and {', '.join(sorted(self._models))}"
        if self.rpm or self.tpm:
            est.rpm, est.tpm, est.limits_source = self.rpm, self.tpm, self.limits_source
        else:
            documented = documented_limits(self.model)
            if documented is not None:
                est.rpm, est.tpm = documented
                est.limits_source = "OpenAI's documented tier-1 limits"
        return est


def documented_limits(model: Any) -> tuple[float, float] | None:
    """(RPM, TPM) OpenAI documents for ``model`` at its lowest paid tier, if dfbatch knows."""
    if not isinstance(model, str):
        return None
    name = model.lower()
    for prefix, limits in C.DOCUMENTED_TIER1_LIMITS.items():
        if name.startswith(prefix):
            return limits
    return None

"""What tokens cost: a dated price table and the pure arithmetic of a request's cost.

Prices are USD per 1M tokens: ``input``, ``cached_input`` (prompt tokens the server served from
its prompt cache, ``usage.prompt_tokens_details.cached_tokens``) and ``output``. The Batch API
charges ``BATCH_DISCOUNT`` of the online price for both input and output.

    price_for(model, price=None)        the Price to use, or None when it is unknown
    usage_cost(price, usage)            USD of one answer, from its ``usage``
    worst_cost(price, in, out_bound)    USD a request may cost at most (for the budget)

``price=`` overrides the table for any model or server: a number (the same USD per 1M tokens
for input and output; ``price=0`` for a local server), or a mapping with ``"input"`` and
``"output"`` (and optionally ``"cached_input"``). A model that is not in the table and has no
``price=`` has an unknown cost: reported as unknown, never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .checks import check_number
from .errors import ConfigurationError

PER_TOKENS = 1_000_000

#: The Batch API's price as a share of the online price (input and output): "Batch API usage
#: costs 50% of the model's online price" (OpenAI's pricing page, Batch API section).
BATCH_DISCOUNT = 0.5


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens."""

    input: float
    output: float
    cached_input: float | None = None  # None: cached tokens are charged as input (upper bound)

    def batch(self) -> Price:
        """The Batch API's price for the same model.

        >>> PRICE_TABLE["gpt-4o-mini"].batch()
        Price(input=0.075, output=0.3, cached_input=0.0375)
        """
        cached = None if self.cached_input is None else self.cached_input * BATCH_DISCOUNT
        return Price(self.input * BATCH_DISCOUNT, self.output * BATCH_DISCOUNT, cached)


# USD per 1M tokens: (input, cached input, output); embeddings have no output or cached price.
# As of 2026-11-30, from OpenAI's pricing page https://developers.openai.com/api/docs/pricing
# (formerly https://openai.com/api/pricing), as quoted by:
#   - https://chatgptpricing-akr.pages.dev/api-pricing (it cites the page above)
#   - https://tokenmath.io/openai-api-pricing-explained (gpt-4.1, gpt-4.1-mini,
#     text-embedding-3-small; "OpenAI model pricing, checked Jun 21, 2026")
#   - https://tokenprice.fyi/models/text-embedding-3-small (snapshot of 3 Jul 2026)
#   - LiteLLM's model price map (gpt-4.1, gpt-4.1-mini incl. cached input)
#   - https://llmpricing.site/models/openai/openai-gpt-4-1-nano/ and
#     https://custom.typingmind.com/tools/estimate-llm-usage-costs/openai/gpt-4.1-nano
# Only figures that two or more of these agree on are listed. gpt-4.1-nano's cached-input price
# is given as 0.025 by some and 0.03 by others: it is left unknown (None), so its cached tokens
# are charged at the input price, an upper bound. Models whose prices these sources disagree on
# (gpt-5*, o-series) are left out: their cost is unknown unless you pass price=.
PRICE_TABLE: dict[str, Price] = {
    "text-embedding-3-small": Price(0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.0),
    "text-embedding-ada-002": Price(0.10, 0.0),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40),
}
PRICE_TABLE_DATE = "2026-11-30"


def _base(model: str) -> str:
    """``gpt-4o-mini-2024-07-18`` -> the longest table name it starts with (dated snapshots)."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    if name in PRICE_TABLE:
        return name
    best = ""
    for known in PRICE_TABLE:
        # a dated snapshot: the name, a dash, then a digit ("gpt-4o-2024-08-06", not "gpt-4o-mini")
        if name.startswith(known + "-") and name[len(known) + 1 : len(known) + 2].isdigit():
            best = max(best, known, key=len)
    return best


def parse_price(price: Any) -> Price:
    """``price=`` as a Price; ConfigurationError (with the fix) when it is not one.

    >>> parse_price(0)
    Price(input=0.0, output=0.0, cached_input=None)
    >>> parse_price({"input": 0.5, "output": 1.5})
    Price(input=0.5, output=1.5, cached_input=None)
    """
    if isinstance(price, Price):
        return price
    if isinstance(price, int | float) and not isinstance(price, bool):
        each = check_number("price", price, above=None, at_least=0)  # finite: NaN is no price
        return Price(each, each)
    if isinstance(price, Mapping):
        unknown = set(price) - {"input", "output", "cached_input"}
        try:
            if unknown:
                raise KeyError(sorted(unknown)[0])
            value = Price(
                float(price["input"]),
                float(price.get("output", 0.0)),
                None if price.get("cached_input") is None else float(price["cached_input"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"price= must be a number or a dict like {{'input': 0.15, 'output': 0.60}} "
                f"(USD per 1M tokens; optional 'cached_input'); got {price!r} ({exc})"
            ) from None
        for name in ("input", "output", "cached_input"):
            check_number(f"price[{name!r}]", getattr(value, name), above=None, at_least=0,
                         optional=name == "cached_input")  # fmt: skip
        return value
    raise ConfigurationError(
        f"price= must be a number or a dict like {{'input': 0.15, 'output': 0.60}} "
        f"(USD per 1M tokens), got {type(price).__name__}"
    )


def price_for(model: Any, price: Any = None) -> Price | None:
    """The price of ``model``: ``price=`` when given, else the table's, else None (unknown).

    >>> price_for("gpt-4o-mini-2024-07-18").output
    0.6
    >>> price_for("my-azure-deployment") is None
    True
    >>> price_for("my-azure-deployment", {"input": 1, "output": 2}).output
    2.0
    """
    if price is not None:
        return parse_price(price)
    if not isinstance(model, str):
        return None
    base = _base(model)
    return PRICE_TABLE.get(base) if base else None


def budget_needs_price(model: Any, price: Any) -> Price:
    """The price a ``budget=`` run counts with; ConfigurationError before any request if none."""
    found = price_for(model, price)
    if found is None:
        known = ", ".join(sorted(PRICE_TABLE))
        raise ConfigurationError(
            f"budget= needs to know what {model!r} costs, and dfbatch's price table (dated "
            f"{PRICE_TABLE_DATE}) does not list it. Fix: pass price={{'input': ..., "
            f"'output': ...}} in USD per 1M tokens (price=0 for a free local server), or use "
            f"one of the listed models: {known}"
        )
    return found


def tokens_cost(
    price: Price, input_tokens: float, output_tokens: float = 0, cached_tokens: float = 0
) -> float:
    """USD of ``input_tokens`` (of which ``cached_tokens`` were cached) and ``output_tokens``.

    >>> round(tokens_cost(Price(0.15, 0.60, 0.075), 1_000_000, 500_000), 6)
    0.45
    """
    cached = min(max(cached_tokens, 0), input_tokens)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    return (
        (input_tokens - cached) * price.input + cached * cached_rate + output_tokens * price.output
    ) / PER_TOKENS


def usage_cost(price: Price, usage: Any) -> float:
    """USD of one answer from its ``usage`` (chat, completions or embeddings); 0 without one.

    >>> usage_cost(Price(0.15, 0.60, 0.075), {"prompt_tokens": 1000, "completion_tokens": 100,
    ...     "prompt_tokens_details": {"cached_tokens": 0}}) * 1e6
    210.0
    """
    if not isinstance(usage, Mapping):
        return 0.0
    prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
    output = _count(usage.get("completion_tokens", usage.get("output_tokens")))
    if prompt is None and output is None:
        total = _count(usage.get("total_tokens")) or 0
        prompt, output = total, 0
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, Mapping) else None
    return tokens_cost(price, prompt or 0, output or 0, cached or 0)


def worst_cost(price: Price, input_tokens: float, output_bound: float) -> float:
    """The most a request may cost: every input token uncached, every output token used."""
    return (input_tokens * price.input + output_bound * price.output) / PER_TOKENS


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(0, int(value))


def format_usd(value: float) -> str:
    """Dollars with the digits that matter for API bills.

    >>> format_usd(12.3456), format_usd(0.0123456), format_usd(0)
    ('$12.35', '$0.01235', '$0')
    """
    if value == 0:
        return "$0"
    if value >= 1:
        return f"${value:,.2f}"
    return f"${value:.4g}"

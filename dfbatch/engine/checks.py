"""Checking numbers: every numeric option, the command line's flags included.

The engine, the cache and both front ends check their options here, before any request.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import ConfigurationError

#: What to do instead, by option, for the messages.
_HINTS = {
    "rpm": "leave it out (None) to learn the limit from the server",
    "tpm": "leave it out (None) to learn the limit from the server",
    "timeout": "give seconds, e.g. 60",
}


def _refuse(name: str, value: Any, wanted: str) -> ConfigurationError:
    hint = _HINTS.get(name)
    return ConfigurationError(
        f"{name} must be {wanted}, got {value!r}" + (f"; {hint}" if hint else "")
    )


def check_number(
    name: str,
    value: Any,
    *,
    above: float | None = 0,
    at_least: float | None = None,
    at_most: float | None = None,
    optional: bool = False,
) -> float | None:
    """``value`` as a finite float within the bounds, or ConfigurationError naming ``name``.

    NaN and infinities are refused (NaN passes every ``<`` test, so it would slip through).

    >>> check_number("rpm", 600)
    600.0
    >>> try:
    ...     check_number("timeout", float("nan"))
    ... except ConfigurationError as exc:
    ...     print(exc)
    timeout must be a finite number above 0, got nan; give seconds, e.g. 60
    """
    if value is None and optional:
        return None
    wanted = "a finite number"
    if above is not None:
        wanted += f" above {above:g}"
    if at_least is not None and at_most is not None:
        wanted += f" from {at_least:g} to {at_most:g}"
    elif at_least is not None:
        wanted += f" of at least {at_least:g}"
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise _refuse(name, value, wanted)
    number = float(value)
    if (
        not math.isfinite(number)
        or (above is not None and number <= above)
        or (at_least is not None and number < at_least)
        or (at_most is not None and number > at_most)
    ):
        raise _refuse(name, value, wanted)
    return number


def check_whole(name: str, value: Any, *, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` as an int of at least ``minimum``, or ConfigurationError naming ``name``.

    >>> check_whole("max_attempts", 3)
    3
    >>> check_whole("n", 2.5)
    Traceback (most recent call last):
    ...
    dfbatch.ConfigurationError: n must be a whole number of at least 1, got 2.5
    """
    if value is None and optional:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise _refuse(name, value, f"a whole number of at least {minimum}")
    return int(value)

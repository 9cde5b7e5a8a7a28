"""A run's figures over time, in bounded memory: what a run report plots.

Counts go into fixed-width time buckets (one second at first). When a run outlasts
``TIMELINE_MAX_BUCKETS`` buckets, neighbours are merged and the width doubles, so a run of any
length keeps at most that many buckets per series (a 10-million-request run: kilobytes). Latencies
go into a fixed log-spaced histogram (``LATENCY_BINS_PER_DECADE`` bins per factor of 10), from
which percentiles are read to within one bin.

Pure: every method takes the time as a number.

>>> t = Timeline(start=0.0)
>>> t.add("requests", 0.2); t.add("requests", 1.5, 2); t.level("rpm_limit", 1.5, 600)
>>> t.to_dict()["series"]["requests"], t.to_dict()["series"]["rpm_limit"]
([1.0, 2.0], [None, 600.0])
"""

from __future__ import annotations

import math
from array import array
from typing import Any

from . import constants as C

#: Summed per bucket.
COUNTS = ("requests", "tokens", "tokens_used", "rate_limited", "retries", "failed", "cost_usd")
#: The last value seen in each bucket (limits in effect, per minute).
LEVELS = ("rpm_limit", "tpm_limit")

_NAN = float("nan")


class TimelineData(dict):  # type: ignore[type-arg]
    """A timeline as plain values (a dict), shown in one line where the run's figures are.

    pandas deep-copies ``attrs`` on every operation; a run's record is read, never changed, so
    the copies share it instead of copying thousands of numbers each time.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> TimelineData:
        return self

    def __repr__(self) -> str:
        n = len((self.get("series") or {}).get("requests") or [])
        return f"<timeline: {n} buckets of {self.get('bucket_s', 1.0):g} s; dfbatch.report(out)>"


class Timeline:
    def __init__(self, start: float, *, max_buckets: int = C.TIMELINE_MAX_BUCKETS) -> None:
        self.start = start
        self.width = 1.0
        self.max_buckets = max(2, max_buckets - max_buckets % 2)
        self._series: dict[str, array[float]] = {name: array("d") for name in COUNTS + LEVELS}
        self._count = 0  # buckets in use
        decades = C.LATENCY_MAX_EXP - C.LATENCY_MIN_EXP
        self._latency = array("q", bytes(8 * (decades * C.LATENCY_BINS_PER_DECADE + 2)))
        self.latency_n = 0

    def _bucket(self, now: float) -> int:
        i = int(max(0.0, now - self.start) // self.width)
        while i >= self.max_buckets:
            self._halve()
            i = int(max(0.0, now - self.start) // self.width)
        if i >= self._count:
            grow = i + 1 - self._count
            for name in COUNTS:
                self._series[name].extend([0.0] * grow)
            for name in LEVELS:
                self._series[name].extend([_NAN] * grow)
            self._count = i + 1
        return i

    def _halve(self) -> None:
        """Merge neighbouring buckets: half as many, twice as wide."""
        for name, values in self._series.items():
            merged = array("d")
            for j in range(0, len(values), 2):
                pair = values[j : j + 2]
                if name in COUNTS:
                    merged.append(sum(pair))
                else:
                    known = [v for v in pair if not math.isnan(v)]
                    merged.append(known[-1] if known else _NAN)
            self._series[name] = merged
        self._count = len(self._series[COUNTS[0]])
        self.width *= 2

    def add(self, name: str, now: float, amount: float = 1.0) -> None:
        i = self._bucket(now)  # first: it may merge buckets and replace the arrays
        self._series[name][i] += amount

    def level(self, name: str, now: float, value: float | None) -> None:
        if value is not None:
            i = self._bucket(now)
            self._series[name][i] = value

    def latency(self, seconds: float) -> None:
        self._latency[_latency_bin(seconds)] += 1
        self.latency_n += 1

    def latency_percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100) of latencies, as the upper edge of its bin."""
        if not self.latency_n:
            return None
        rank = q / 100.0 * self.latency_n
        seen = 0
        for i, n in enumerate(self._latency):
            seen += n
            if n and seen >= rank:
                return _bin_upper(i)
        return _bin_upper(len(self._latency) - 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists of floats, None for an unknown level): a few KB at most."""
        series: dict[str, list[Any]] = {}
        for name, values in self._series.items():
            series[name] = [None if math.isnan(v) else v for v in values]
        return TimelineData(
            {
                "start": self.start,
                "bucket_s": self.width,
                "series": series,
                "latency_s": {f"p{q}": self.latency_percentile(q) for q in C.LATENCY_PERCENTILES},
                "latency_n": self.latency_n,
            }
        )


def _latency_bin(seconds: float) -> int:
    if seconds <= 10.0**C.LATENCY_MIN_EXP:
        return 0
    i = 1 + int((math.log10(seconds) - C.LATENCY_MIN_EXP) * C.LATENCY_BINS_PER_DECADE)
    return min(i, (C.LATENCY_MAX_EXP - C.LATENCY_MIN_EXP) * C.LATENCY_BINS_PER_DECADE + 1)


def _bin_upper(i: int) -> float:
    return round(10.0 ** (C.LATENCY_MIN_EXP + i / C.LATENCY_BINS_PER_DECADE), 6)

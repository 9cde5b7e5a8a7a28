"""What ``dfbatch run`` was asked to do: the arguments, resolved, as one value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..engine.config import ApiConfig


@dataclass(frozen=True, repr=False)
class RunJob:
    """Everything ``dfbatch run`` was asked to do (the key is inside ``api``, a Secret)."""

    requests: Path
    output: Path
    url: str
    api: ApiConfig
    rpm: float | None
    tpm: float | None
    encoding: str | None
    max_attempts: int
    max_in_flight: int
    timeout: float
    cache: Path | bool  # a path, True (the default store) or False
    ordered: bool
    progress: bool
    overwrite: bool
    budget: float | None = None
    price: dict[str, float] | None = None
    report: Path | None = None
    batch: bool = False  # --batch: through the Batch API (cli.run_batch)
    poll_interval: float | None = None
    limiter: str | None = None  # "redis://...": rpm/tpm shared with other processes

"""dfbatch: push DataFrames through the OpenAI API as fast as the rate limits allow.

The public API is what ``__all__`` lists here, the ``.llm`` accessors, ``dfbatch.testing`` and
the ``dfbatch`` command. The subpackages are the rooms of the house, in the order the data goes:
``frames`` and ``cli`` (front ends) -> ``jobs`` (rows to requests, outcomes to values) ->
``batch`` (the Batch API backend) -> ``cache`` (answers paid for) -> ``engine`` (limiter,
retry policy, transport).

>>> import dfbatch                                            # doctest: +SKIP
>>> df.llm.embed("text")                                      # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .dask.hook import register_accessor_with_dask
from .engine.config import ApiConfig
from .engine.core import Engine
from .engine.errors import (
    AuthenticationError,
    BatchFailedError,
    ConfigurationError,
    DfbatchError,
    ModelNotFoundError,
    QuotaExceededError,
    RowsFailedError,
    RunAbortedError,
)
from .engine.types import ErrorInfo, Outcome, Request, RunStats
from .frames.hook import register_accessor_with_pandas

logging.getLogger(__name__).addHandler(logging.NullHandler())
register_accessor_with_pandas()
register_accessor_with_dask()

__version__ = "0.1.0"

# Loaded on first use: ``import dfbatch`` stays light (no tqdm, no report or batch code).
_LAZY = {
    "BatchJob": "jobs.batch_job",
    "Estimate": "jobs.estimate",
    "RunReport": "jobs.report",
    "report": "jobs.report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'dfbatch' has no attribute {name!r}")


if TYPE_CHECKING:
    from .jobs.batch_job import BatchJob
    from .jobs.estimate import Estimate
    from .jobs.report import RunReport, report

__all__ = [
    "ApiConfig",
    "AuthenticationError",
    "BatchFailedError",
    "BatchJob",
    "ConfigurationError",
    "DfbatchError",
    "Engine",
    "ErrorInfo",
    "Estimate",
    "ModelNotFoundError",
    "Outcome",
    "QuotaExceededError",
    "Request",
    "RowsFailedError",
    "RunAbortedError",
    "RunReport",
    "RunStats",
    "__version__",
    "report",
]

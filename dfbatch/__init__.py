"""dfbatch: push DataFrames through the OpenAI API as fast as the rate limits allow.

The public API is what ``__all__`` lists here, the ``.llm`` accessors, ``dfbatch.testing`` and
the ``dfbatch`` command. The subpackages are the rooms of the house, in the order the data goes:
``frames`` and ``cli`` (front ends) -> ``jobs`` (rows to requests, outcomes to values) ->
``cache`` (answers paid for) -> ``engine`` (limiter, retry policy, transport).

>>> import dfbatch                                            # doctest: +SKIP
>>> df.llm.embed("text")                                      # doctest: +SKIP
"""

from __future__ import annotations

import logging

from .dask.hook import register_accessor_with_dask
from .engine.config import ApiConfig
from .engine.core import Engine
from .engine.errors import (
    AuthenticationError,
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

__all__ = [
    "ApiConfig",
    "AuthenticationError",
    "ConfigurationError",
    "DfbatchError",
    "Engine",
    "ErrorInfo",
    "ModelNotFoundError",
    "Outcome",
    "QuotaExceededError",
    "Request",
    "RowsFailedError",
    "RunAbortedError",
    "RunStats",
    "__version__",
]

"""dfbatch: push DataFrames through the OpenAI API as fast as the rate limits allow.

>>> import dfbatch                                            # doctest: +SKIP
>>> df.llm.embed("text")                                      # doctest: +SKIP
"""

from __future__ import annotations

import logging

from ._accessor_hook import register_accessor_with_pandas
from ._config import ApiConfig
from ._engine import Engine
from ._errors import (
    AuthenticationError,
    ConfigurationError,
    DfbatchError,
    ModelNotFoundError,
    QuotaExceededError,
    RowsFailedError,
    RunAbortedError,
)
from ._types import ErrorInfo, Outcome, Request, RunStats

logging.getLogger(__name__).addHandler(logging.NullHandler())
register_accessor_with_pandas()

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

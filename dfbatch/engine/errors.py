"""The exception tree.

    DfbatchError                 base of everything dfbatch raises
    ├── ConfigurationError       bad arguments, missing column, no API key: fix the call
    ├── RunAbortedError          the server says no request can succeed; the run stops at once
    │   ├── AuthenticationError  401: the API key is wrong or revoked
    │   ├── QuotaExceededError   insufficient_quota / spend limit: add credit or raise the limit
    │   ├── ModelNotFoundError   404 model_not_found: the model name is wrong or not yours
    │   └── BatchFailedError     a Batch API batch ended ``failed`` (validation errors)
    └── RowsFailedError          errors="raise": some rows failed after every retry

A row that fails alone (a 400, retries exhausted) is never an exception: it is data, an
:class:`~dfbatch.ErrorInfo` in the outcome and a message in the ``{output}_error`` column.
"""

from __future__ import annotations

from typing import Any


class DfbatchError(Exception):
    """Base class of every error dfbatch raises."""


class ConfigurationError(DfbatchError, ValueError):
    """The call cannot run as written; the message says what to change."""


class RunAbortedError(DfbatchError):
    """The server answered in a way that no retry can fix; nothing more is sent."""

    def __init__(self, message: str, *, error: Any = None) -> None:
        super().__init__(message)
        self.error = error


class AuthenticationError(RunAbortedError):
    """401: the API key was refused."""


class QuotaExceededError(RunAbortedError):
    """The account has no quota or hit its spend limit."""


class ModelNotFoundError(RunAbortedError):
    """The model does not exist or this key has no access to it."""


class BatchFailedError(RunAbortedError):
    """A batch ended ``failed``: the API's reasons are in the message and in ``.reasons``."""

    def __init__(self, message: str, *, reasons: list[str]) -> None:
        super().__init__(message)
        self.reasons = reasons


class RowsFailedError(DfbatchError):
    """Raised after a run with ``errors="raise"`` when some rows failed."""

    def __init__(self, message: str, *, failed: int, result: Any = None) -> None:
        super().__init__(message)
        self.failed = failed
        #: The full result (answers and error columns), so finished rows are not lost.
        self.result = result


# Tracebacks and reprs name them where users import them from (``dfbatch.ConfigurationError``),
# not the room they live in; pickle finds them there too.
for _cls in (
    DfbatchError,
    ConfigurationError,
    RunAbortedError,
    AuthenticationError,
    QuotaExceededError,
    ModelNotFoundError,
    BatchFailedError,
    RowsFailedError,
):
    _cls.__module__ = "dfbatch"
del _cls

"""The run options every front end accepts, typed once."""

from __future__ import annotations

from os import PathLike
from typing import Any, TypedDict


class RunKwargs(TypedDict, total=False):
    """Keyword options shared by ``embed``, ``complete`` and their async twins.

    - ``base_url``: an OpenAI-compatible server (default ``OPENAI_BASE_URL`` or OpenAI's).
    - ``api_key``: default ``OPENAI_API_KEY``. Never logged, cached or shown.
    - ``api_version``: Azure OpenAI's ``api-version`` (switches to the ``api-key`` header).
    - ``rpm``, ``tpm``: the account's limits; leave out to learn them from the server.
    - ``max_attempts``: tries per request, the first included (default 5).
    - ``max_in_flight``: requests open at once (default 1,200).
    - ``timeout``: seconds before a hung request is retried (default 60).
    - ``progress``: show a progress bar and summary (default True).
    - ``cache``: True (the per-user store), False, a file path, or a ``ResponseCache``.
    - ``limiter``: share ``rpm``/``tpm`` with other senders: ``"local"`` (threads of this
      process), ``"redis://host:port/db"`` (processes and machines), or a coordinator.
    """

    base_url: str | None
    api_key: str | None
    api_version: str | None
    rpm: float | None
    tpm: float | None
    max_attempts: int
    max_in_flight: int
    timeout: float
    progress: bool | None
    cache: bool | str | PathLike[str] | Any
    transport: Any
    limiter: str | Any | None

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
    - ``budget``: a hard cap in USD on what the run spends; rows left when it is reached get
      ``{output}_error`` "budget reached" (not cached), and a rerun with a higher budget sends
      only those.
    - ``price``: USD per 1M tokens, overriding dfbatch's price table: a number, or
      ``{"input": ..., "output": ...}`` (``price=0`` for a local server).
    - ``backend``: ``"online"`` (default) or ``"batch"``: the Batch API, half the price,
      answers within 24 h, resumable across restarts (the record is in the cache).
    - ``poll_interval``: with ``backend="batch"``, seconds between the first status checks
      (default 10; 1.5x longer after each, up to 5 minutes).
    - ``wait``: with ``backend="batch"``, False returns a job handle at once.
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
    budget: float | None
    price: float | dict[str, float] | None
    backend: str
    poll_interval: float | None
    wait: bool
    limiter: str | Any | None

"""The OpenAI API simulator: an aiohttp.web server on 127.0.0.1 with OpenAI's limits and faults.

    >>> import json, urllib.request
    >>> with Simulator(rpm=6000) as sim:
    ...     req = urllib.request.Request(sim.base_url + "/embeddings",
    ...         data=json.dumps({"model": "text-embedding-3-small", "input": "hi"}).encode(),
    ...         headers={"Content-Type": "application/json"})
    ...     body = json.load(urllib.request.urlopen(req))
    >>> body["usage"]
    {'prompt_tokens': 1, 'total_tokens': 1}

Requests go through, in order: auth (401), quota (429 insufficient_quota), route, JSON body,
model (400 missing / 404 unknown), validation (400), the rate limiter (429), the fault draw,
the latency, the answer. See :class:`Simulator` for the options.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ._batches import BatchStore
from ._handlers import Handlers
from ._ratelimit import RateLimiter
from ._stats import SimStats

__all__ = ["KNOWN_MODELS", "Faults", "Latency", "Simulator"]

#: Models served by default; ``Simulator(models=...)`` adds more.
KNOWN_MODELS: tuple[str, ...] = (
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-5",
    "gpt-5-mini",
    "gpt-3.5-turbo",
    "o3-mini",
    "o4-mini",
)

#: ``0.2`` (seconds), ``("uniform", lo, hi)``, ``("lognormal", median, sigma)`` or a
#: zero-argument callable returning seconds.
Latency = float | tuple[str, float, float] | Callable[[], float]

_FAULT_KINDS = ("error_5xx", "reset", "non_json", "hang")
_SHUTDOWN_TIMEOUT = 0.5  # seconds hung requests get on stop() before they are cancelled


@dataclass(frozen=True, slots=True)
class Faults:
    """Probability per admitted request of each fault (their sum must be at most 1).

    * ``error_5xx``: a 500 server_error, or a 502/503 "The engine is currently overloaded";
    * ``reset``: the connection is reset, no response at all;
    * ``non_json``: a 200 with an HTML body (a proxy's error page);
    * ``hang``: no answer for ``hang_seconds`` (the client must time out).

    >>> Faults(error_5xx=0.05).pick(0.01), Faults(error_5xx=0.05).pick(0.5)
    ('error_5xx', None)
    """

    error_5xx: float = 0.0
    reset: float = 0.0
    non_json: float = 0.0
    hang: float = 0.0

    def __post_init__(self) -> None:
        probs = [getattr(self, k) for k in _FAULT_KINDS]
        if any(not 0.0 <= p <= 1.0 for p in probs) or sum(probs) > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities must be in [0, 1] and sum to <= 1: {self}")

    @property
    def enabled(self) -> bool:
        """True when some fault has a positive probability."""
        return any(getattr(self, k) > 0 for k in _FAULT_KINDS)

    def pick(self, draw: float) -> str | None:
        """The fault for a uniform ``draw`` in [0, 1), or None."""
        edge = 0.0
        for kind in _FAULT_KINDS:
            p = getattr(self, kind)
            edge += p
            if p > 0 and draw < edge:
                return kind
        return None


def _check_latency(latency: Latency) -> Latency:
    if callable(latency):
        return latency
    if isinstance(latency, tuple):
        if len(latency) != 3 or latency[0] not in ("uniform", "lognormal"):
            raise ValueError(
                "latency tuple must be ('uniform', lo, hi) or ('lognormal', median, sigma)"
            )
        if latency[1] < 0 or latency[2] < 0:
            raise ValueError("latency parameters must not be negative")
        return latency
    if float(latency) < 0:
        raise ValueError("latency must not be negative")
    return float(latency)


class Simulator:
    """A local OpenAI-compatible server with OpenAI's rate limits, errors and faults.

    Args:
        rpm, tpm: requests / tokens per minute, enforced as per-second token buckets
            (None: unlimited). See :mod:`dfbatch.testing._ratelimit`.
        strict_windows: refuse (429, every time) a request of more tokens than one second's
            share of ``tpm``, instead of admitting it when the bucket is full.
        latency: seconds before answering an admitted request (see :data:`Latency`).
        faults: :class:`Faults` probabilities, drawn after rate-limit admission.
        hang_seconds: how long a ``hang`` fault holds the request.
        seed: seeds the fault, latency and shuffle draws (reproducible runs).
        api_key: when set, ``Authorization: Bearer KEY`` or ``api-key: KEY`` is required.
        quota_exhausted: every API request gets 429 insufficient_quota.
        rate_limit_headers: send ``x-ratelimit-*`` headers (only for the limits that are set).
        shuffle_data: return embedding ``data`` items in a shuffled order.
        record_inputs: count each answered text in ``stats.inputs``.
        usage: ``"words"`` (default) bills ``count_tokens``; ``"tiktoken"`` bills what OpenAI
            would (tiktoken, the cookbook's chat formula) and cuts answers at ``max_tokens``.
        models: model names served besides :data:`KNOWN_MODELS` (a name containing
            "embed" is an embedding model, any other a chat model).
        port: TCP port on 127.0.0.1 (0: a free one, see ``sim.port`` once started).
        clock: the monotonic clock of the rate limiter and the stats timestamps.
        organization: the organization named in 429 messages.
        batch_seconds: how long a batch of the Batch API takes, creation to completion
            (see :mod:`dfbatch.testing._batches`; faults in ``sim.batches.faults``).

    Use ``with Simulator() as sim:`` (a background thread with its own event loop), or
    ``sim.start()`` / ``sim.stop()``, or ``async with Simulator() as sim:`` (the caller's loop).
    The public attributes ``latency``, ``faults``, ``hang_seconds``, ``api_key``,
    ``quota_exhausted``, ``rate_limit_headers``, ``shuffle_data`` and ``record_inputs``
    may be changed while it runs; limits with :meth:`set_limits`.
    """

    def __init__(
        self,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        strict_windows: bool = False,
        latency: Latency = 0.0,
        faults: Faults | None = None,
        hang_seconds: float = 3600.0,
        seed: int = 0,
        api_key: str | None = None,
        quota_exhausted: bool = False,
        rate_limit_headers: bool = True,
        shuffle_data: bool = False,
        record_inputs: bool = False,
        usage: str = "words",
        models: Iterable[str] | None = None,
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        organization: str = "org-sim",
        batch_seconds: float = 2.0,
    ) -> None:
        self.latency: Latency = _check_latency(latency)
        self.faults = faults or Faults()
        if hang_seconds < 0:
            raise ValueError("hang_seconds must not be negative")
        self.hang_seconds = float(hang_seconds)
        self.api_key = api_key
        self.quota_exhausted = quota_exhausted
        self.rate_limit_headers = rate_limit_headers
        self.shuffle_data = shuffle_data
        self.record_inputs = record_inputs
        if usage not in ("words", "tiktoken"):
            raise ValueError(f"usage must be 'words' or 'tiktoken', got {usage!r}")
        self.usage = usage
        self.models: set[str] = set(KNOWN_MODELS) | set(models or ())
        self.organization = organization
        self.clock = clock
        self.stats = SimStats()
        self.strict_windows = strict_windows
        self.limiter = RateLimiter(rpm, tpm, clock=clock, strict=strict_windows)
        self.fault_rng = random.Random(seed)
        self.latency_rng = random.Random(seed + 1)
        self.shuffle_rng = random.Random(seed + 2)
        self._requested_port = port
        #: The Batch API's files and batches (``sim.batches.faults``, ``sim.batches.stats``).
        self.batches = BatchStore(
            models=lambda: self.models,
            api_key=lambda: self.api_key,
            clock=clock,
            batch_seconds=batch_seconds,
            seed=seed,
            organization=organization,
            usage=usage,
        )
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._handlers: Handlers | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- properties
    @property
    def rpm(self) -> float | None:
        """The requests-per-minute limit (None: unlimited)."""
        return self.limiter.requests.limit if self.limiter.requests else None

    @property
    def tpm(self) -> float | None:
        """The tokens-per-minute limit (None: unlimited)."""
        return self.limiter.tokens.limit if self.limiter.tokens else None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the server root (also the Azure endpoint)."""
        if self.port is None:
            raise RuntimeError("the simulator is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: what the openai SDK calls ``base_url``."""
        return self.url + "/v1"

    @property
    def azure_endpoint(self) -> str:
        """The endpoint for an Azure-configured client (``/openai/deployments/...`` below it)."""
        return self.url

    @property
    def counters(self) -> SimStats:
        """Alias of :attr:`stats`."""
        return self.stats

    @property
    def running(self) -> bool:
        """True between start and stop."""
        return self._runner is not None

    # ----------------------------------------------------------------- control
    def set_limits(self, rpm: float | None = None, tpm: float | None = None) -> None:
        """Replace the RPM/TPM limits (new buckets, full)."""
        self.limiter = RateLimiter(rpm, tpm, clock=self.clock, strict=self.strict_windows)

    def reset_stats(self, *, refill: bool = False) -> None:
        """Zero the counters (``refill=True`` also refills the rate-limit buckets)."""
        fresh = SimStats()
        fresh.in_flight = self.stats.in_flight
        self.stats = fresh
        if refill:
            self.limiter.fill()

    def draw_latency(self) -> float:
        """Seconds of latency for the next admitted request."""
        spec = self.latency
        if callable(spec):
            return max(0.0, float(spec()))
        if isinstance(spec, tuple):
            kind, a, b = spec
            if kind == "uniform":
                return self.latency_rng.uniform(a, b)
            return a * math.exp(b * self.latency_rng.gauss(0.0, 1.0)) if a > 0 else 0.0
        return spec

    def draw_fault(self) -> str | None:
        """The fault for the next admitted request (None: answer normally)."""
        faults = self.faults
        return faults.pick(self.fault_rng.random()) if faults.enabled else None

    # ----------------------------------------------------------------- lifecycle
    async def _astart(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        app = web.Application(client_max_size=64 * 1024 * 1024)
        handlers = Handlers(self)
        self.batches.install(app)  # before the handlers' catch-all route
        handlers.install(app)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
            keepalive_timeout=75.0,
        )
        await runner.setup()
        self._hook_connections(runner)
        site = web.TCPSite(
            runner, "127.0.0.1", self._requested_port, backlog=4096, reuse_address=True
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.limiter.fill()
        self._runner, self._handlers = runner, handlers
        self.port = int(runner.addresses[0][1])

    async def _astop(self) -> None:
        runner, self._runner = self._runner, None
        handlers, self._handlers = self._handlers, None
        if runner is not None:
            await runner.cleanup()
        if handlers is not None:
            await handlers.cancel_pending()
        self.port = None

    def _hook_connections(self, runner: web.AppRunner) -> None:
        """Count TCP connections as the server accepts them."""
        server = runner.server
        if server is None:
            return
        original = server.connection_made

        def connection_made(handler: Any, transport: Any) -> None:
            self.stats.connections += 1
            original(handler, transport)

        server.connection_made = connection_made  # type: ignore[method-assign]

    def start(self) -> Simulator:
        """Serve from a background thread with its own event loop; returns self."""
        if self._runner is not None or self._thread is not None:
            raise RuntimeError("the simulator is already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name=f"dfbatch-simulator-{id(self):x}", daemon=True
        )
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._astart(), loop).result(timeout=30)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        """Stop serving (hung requests are cancelled); a no-op when not running."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            if self._runner is not None:
                raise RuntimeError("started with `async with`: leave that block to stop")
            return
        try:
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(timeout=30)
            asyncio.run_coroutine_threadsafe(_cancel_others(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Simulator:
        await self._astart()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._astop()

    def __repr__(self) -> str:
        where = self.base_url if self.port is not None else "stopped"
        return f"<Simulator {where} rpm={self.rpm} tpm={self.tpm}>"


async def _cancel_others() -> None:
    """Cancel every other task of the simulator's private loop, so it closes cleanly."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

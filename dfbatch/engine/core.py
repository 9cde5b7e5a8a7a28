"""The engine: requests in, one outcome per request out, as fast as the limits allow.

    requests (any iterable, pulled lazily) ──> gate (Limiter: RPM, TPM, headers, 429s, window)
        ──> transport.send ──> classify (retry policy) ──> retry after backoff | outcome

Memory is bounded: a request is pulled from the iterable only when one of
``max_in_flight * (1 + QUEUED_SHARE)`` slots is free (at most ``max_in_flight`` of them on the
wire, the rest waiting their turn at the gate), and a slot is held until its outcome has been
handed over, so a generator of millions of requests runs in constant memory. Outcomes are
handed to a callback in completion order; the front ends put them back in row order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson

from . import constants as C
from .config import ApiConfig
from .errors import ConfigurationError, RunAbortedError
from .http_client import default_transport
from .lease import SharedBudget
from .limiter import Limiter, RateHeaders, Ticket
from .retry import Action, Verdict, backoff, classify_exception, classify_response
from .transport import Transport, TransportError
from .types import ErrorInfo, Outcome, Request, RunStats

log = logging.getLogger(__name__)

OutcomeCallback = Callable[[Outcome], None]

_FIXES = {
    "AuthenticationError": "check the key: pass api_key=... or set OPENAI_API_KEY "
    "(AZURE_OPENAI_API_KEY for Azure)",
    "QuotaExceededError": "add credit or raise the spend limit in the account's billing "
    "settings; answers already received are kept",
    "ModelNotFoundError": "check the model name and base_url (GET /models lists the models "
    "this key can use)",
}


class _RunStopped(Exception):
    """Raised in requests still waiting at the gate when the run has been stopped."""


class _Gate:
    """Admits requests one at a time, in arrival order, when the limiter says they may go."""

    def __init__(
        self,
        limiter: Limiter,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        before_send: Callable[[int], None] | None = None,
    ) -> None:
        self.limiter = limiter
        self.before_send = before_send
        self.in_flight = 0
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()  # FIFO: waiters are served in order
        self._freed = asyncio.Event()
        self.closed = False  # set when the run stops: nothing more is sent

    def close(self) -> None:
        self.closed = True
        self._freed.set()

    async def acquire(self, tokens: int) -> Ticket:
        if not self._lock.locked() and not self.closed and self.in_flight < self.limiter.window:
            # Nobody is waiting: go now if the limiter allows, without queueing on the lock.
            now = self._clock()
            if self.limiter.delay(tokens, now) <= 0.0:
                return self._send(tokens, now)
        async with self._lock:
            while True:
                if self.closed:
                    raise _RunStopped
                grace = self.limiter.probe_over(self._clock())
                if self.in_flight >= self.limiter.window:
                    self._freed.clear()
                    if grace is None:
                        await self._freed.wait()
                    else:  # the window opens when the first request's grace is over
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._freed.wait(), grace)
                    continue
                now = self._clock()
                wait = self.limiter.delay(tokens, now)
                if wait <= 0.0:
                    return self._send(tokens, now)
                await self._sleep(wait)

    def _send(self, tokens: int, now: float) -> Ticket:
        if self.before_send is not None:
            self.before_send(self.in_flight)
        self.in_flight += 1
        return self.limiter.on_send(tokens, now)

    def release(self) -> None:
        self.in_flight -= 1
        self._freed.set()


class Engine:
    """Sends requests through one connection pool under RPM/TPM limits, with retries.

    >>> async def main():                                     # doctest: +SKIP
    ...     engine = Engine(ApiConfig.resolve(base_url=sim.base_url), rpm=6000)
    ...     outcomes = []
    ...     stats = await engine.run(requests, outcomes.append)
    """

    def __init__(
        self,
        api: ApiConfig,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        max_in_flight: int = C.DEFAULT_MAX_IN_FLIGHT,
        max_attempts: int = C.DEFAULT_MAX_ATTEMPTS,
        timeout: float = C.DEFAULT_TIMEOUT,
        transport: Transport | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
        shared: SharedBudget | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be at least 1, got {max_attempts}")
        for name, value in (("rpm", rpm), ("tpm", tpm), ("timeout", timeout)):
            if value is not None and value <= 0:
                raise ConfigurationError(f"{name} must be positive, got {value}")
        self.api = api
        self.rpm, self.tpm = rpm, tpm
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.timeout = timeout
        self._transport = transport
        self._clock_arg = clock
        self._clock: Callable[[], float] = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._rng = rng or random.Random()
        self.shared = shared  # rpm/tpm shared with other senders (dfbatch.coord), or None
        self.stats = RunStats()
        self.limiter: Limiter | None = None
        self._urls: dict[str, str] = {}

    def __repr__(self) -> str:
        return (
            f"<Engine {self.api!r} rpm={self.rpm} tpm={self.tpm} "
            f"max_in_flight={self.max_in_flight} max_attempts={self.max_attempts}>"
        )

    async def run(
        self,
        requests: Iterable[Request],
        on_outcome: OutcomeCallback,
        *,
        before_pull: Callable[[], Awaitable[None]] | None = None,
        before_send: Callable[[int], None] | None = None,
    ) -> RunStats:
        """Send every request; call ``on_outcome`` once per request as each one ends.

        ``before_pull`` is awaited before each request is taken from ``requests``: a front end
        that writes results in input order uses it to bound its reorder buffer.
        ``before_send(in_flight)`` is called just before each request goes out; nothing else
        runs between a request's answer and ``on_outcome``, so a front end that saves answers
        in batches can save them there and keep answered-but-unsaved plus in-flight requests
        within ``max_in_flight`` (what a kill -9 can cost).

        Raises a :class:`RunAbortedError` subclass at once when the server refuses the whole run
        (bad key, no quota, unknown model); whatever ``on_outcome`` raises stops the run too.
        Cancelling the task cancels every request in flight.
        """
        # The loop's clock by default, so a virtual-time loop in the tests moves it too.
        self._clock = self._clock_arg or asyncio.get_running_loop().time
        now = self._clock()
        self.stats = stats = RunStats(started=now)
        share, close_share = None, None
        if self.shared is not None:
            share, close_share = await self.shared.open(
                rpm=self.rpm, tpm=self.tpm, clock=self._clock
            )
        self.limiter = Limiter(
            rpm=self.rpm, tpm=self.tpm, max_in_flight=self.max_in_flight, now=now, share=share
        )
        gate = _Gate(self.limiter, self._clock, self._sleep, before_send)
        transport = self._transport or default_transport(
            self.api.base_url, max_connections=self.max_in_flight
        )
        headers = self.api.headers()
        # Requests pulled and not yet handed over: those in flight plus a queue at the gate.
        slots = asyncio.Semaphore(self.max_in_flight + int(self.max_in_flight * C.QUEUED_SHARE))
        tasks: set[asyncio.Task[None]] = set()
        failure: list[BaseException] = []

        async def process(request: Request) -> None:
            try:
                outcome = await self._attempts(request, gate, transport, headers)
                on_outcome(outcome)
            except (asyncio.CancelledError, _RunStopped):
                pass
            except BaseException as exc:  # an abort, or the callback's own error
                if not failure:
                    failure.append(exc)
                gate.close()
                stop.set()
            finally:
                slots.release()

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if not tasks and feeding_over:
                stop.set()

        stop = asyncio.Event()
        feeding_over = False
        try:
            pending = iter(requests)
            while True:
                await slots.acquire()  # pull only when a slot is free: memory stays bounded
                if before_pull is not None and not failure:
                    await before_pull()
                if failure:
                    break
                request = next(pending, None)
                if request is None:
                    slots.release()
                    break
                task = asyncio.ensure_future(process(request))
                tasks.add(task)
                task.add_done_callback(done)
            feeding_over = True
            if tasks and not failure:
                await stop.wait()
            if failure:
                raise failure[0]
        finally:
            gate.close()
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if self._transport is None:
                await transport.aclose()
            if close_share is not None:
                await close_share()
            stats.finished = self._clock()
        return stats

    async def _attempts(
        self, request: Request, gate: _Gate, transport: Transport, headers: dict[str, str]
    ) -> Outcome:
        stats = self.stats
        limiter = gate.limiter
        url = self._urls.get(request.endpoint)
        if url is None:
            url = self._urls[request.endpoint] = self.api.url(request.endpoint)
        try:
            body = orjson.dumps(request.body)  # strict as json: a set or bytes fails, not guessed
        except TypeError as exc:  # e.g. a numpy value in extra_body: that row fails alone
            error = ErrorInfo(None, "invalid_request", f"the request body is not JSON: {exc}")
            return self._failed(request, Verdict(Action.FAIL_ROW, error=error), 0)
        attempt = 0
        while True:
            attempt += 1
            ticket = await gate.acquire(request.tokens)
            stats.requests_sent += 1
            stats.tokens_estimated += request.tokens
            try:
                try:
                    raw = await transport.send(url, headers, body, self.timeout)
                except TransportError as exc:
                    verdict = classify_exception(exc.kind, str(exc))
                    rate = None
                else:
                    verdict = classify_response(raw.status, raw.headers, raw.body)
                    rate = RateHeaders.parse(raw.headers)
                if verdict.action is Action.ABORT:
                    gate.close()  # before the slot frees: nothing else may go out
                    raise self._abort_error(verdict)
                now = self._clock()
                if verdict.rate_limited:
                    stats.rate_limited += 1
                    limiter.on_rate_limited(ticket, rate, verdict.retry_after, now)
                else:
                    limiter.on_response(ticket, rate, now)
            finally:
                gate.release()

            if verdict.action is Action.SUCCESS:
                stats.succeeded += 1
                usage = verdict.body.get("usage") if isinstance(verdict.body, dict) else None
                if isinstance(usage, dict):
                    stats.tokens_used += int(usage.get("total_tokens") or 0)
                return Outcome(request, response=verdict.body, attempts=attempt)
            if verdict.action is Action.ABORT:
                raise self._abort_error(verdict)
            if verdict.action is Action.RETRY and attempt < self.max_attempts:
                stats.retries += 1
                wait = verdict.retry_after
                if wait is None:
                    wait = backoff(attempt, self._rng.random())
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "request %r attempt %d: %s; retrying in %.2fs",
                        request.id,
                        attempt,
                        verdict.error,
                        wait,
                    )
                await self._sleep(wait)
                continue
            return self._failed(request, verdict, attempt)

    def _failed(self, request: Request, verdict: Verdict, attempt: int) -> Outcome:
        stats = self.stats
        stats.failed += 1
        error = verdict.error or ErrorInfo(None, None, "unknown error")
        cause = _cause(error)
        stats.failures_by_cause[cause] = stats.failures_by_cause.get(cause, 0) + 1
        log.debug("request %r failed after %d attempt(s): %s", request.id, attempt, error)
        return Outcome(request, error=error, attempts=attempt)

    def _abort_error(self, verdict: Verdict) -> RunAbortedError:
        error = verdict.error
        kind = verdict.abort or RunAbortedError
        message = f"{error}" if error else "the server refused the run"
        key = self.api.api_key.reveal() if self.api.api_key else None
        if key and key in message:
            message = message.replace(key, "<redacted>")
        text = f"{message}. Fix: {_FIXES.get(kind.__name__, 'see the message')}"
        log.error("run stopped: %s", text)
        return kind(text, error=error)


def _cause(error: ErrorInfo) -> str:
    """A short label to group failures by in summaries."""
    if error.status is None:
        return error.code or "network"
    return f"HTTP {error.status} {error.code}" if error.code else f"HTTP {error.status}"


def run_stats_summary(stats: RunStats) -> dict[str, Any]:
    """Run figures as plain values (for ``DataFrame.attrs`` and the CLI's summary)."""
    elapsed = stats.elapsed(stats.finished or stats.started)
    minutes = elapsed / 60.0 if elapsed > 0 else None
    return {
        "requests": stats.requests_sent,
        "requests_succeeded": stats.succeeded,
        "requests_failed": stats.failed,
        "retries": stats.retries,
        "rate_limited": stats.rate_limited,
        "tokens_estimated": stats.tokens_estimated,
        "tokens_used": stats.tokens_used,
        "elapsed_s": round(elapsed, 3),
        "effective_rpm": round(stats.requests_sent / minutes, 1) if minutes else None,
        "effective_tpm": round(stats.tokens_used / minutes, 1) if minutes else None,
        "failures_by_cause": dict(stats.failures_by_cause),
    }

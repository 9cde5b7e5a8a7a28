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
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

import orjson

from . import constants as C
from .answers import answer_check
from .budget import BudgetCap, output_bound
from .checks import check_number, check_whole
from .config import ApiConfig, scrub_error
from .errors import RunAbortedError
from .gate import Gate, RunStopped
from .http_client import default_transport
from .lease import SharedBudget
from .limiter import Limiter, RateHeaders
from .prices import (
    Price,
    budget_needs_price,
    format_usd,
    price_for,
    usage_cost,
    worst_cost,
)
from .retry import Action, Verdict, backoff, classify_exception, classify_response, usage_total
from .timeline import Timeline
from .transport import Transport, TransportError
from .types import BUDGET_REACHED, ErrorInfo, Outcome, Request, RunStats

log = logging.getLogger(__name__)

OutcomeCallback = Callable[[Outcome], None]
#: ``split(request, max_tokens)``: the request as several smaller ones, each of at most
#: ``max_tokens`` (halves when None), or None when it cannot be split (one input).
Splitter = Callable[[Request, float | None], list[Request] | None]

_FIXES = {
    "AuthenticationError": "check the key: pass api_key=... or set OPENAI_API_KEY "
    "(AZURE_OPENAI_API_KEY for Azure)",
    "QuotaExceededError": "add credit or raise the spend limit in the account's billing "
    "settings; answers already received are kept",
    "ModelNotFoundError": "check the model name and base_url (GET /models lists the models "
    "this key can use)",
}


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
        price: Any = None,
        budget: float | None = None,
        shared: SharedBudget | None = None,
    ) -> None:
        # Finite numbers in range: NaN would pass any "<= 0" test and turn pacing off.
        max_in_flight = check_whole("max_in_flight", max_in_flight)  # type: ignore[assignment]
        max_attempts = check_whole("max_attempts", max_attempts)  # type: ignore[assignment]
        rpm = check_number("rpm", rpm, optional=True)
        tpm = check_number("tpm", tpm, optional=True)
        timeout = check_number("timeout", timeout)  # type: ignore[assignment]
        budget = check_number("budget", budget, above=None, at_least=0, optional=True)
        self.price = price  # price= as given: None (the table), a number or a dict
        self.budget = budget
        self._prices: dict[Any, Price | None] = {}
        self._cap: BudgetCap | None = None
        self._settled = asyncio.Event()
        self.api = api
        self.rpm, self.tpm = rpm, tpm
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.timeout = timeout
        self._transport = transport
        self._clock_arg = clock
        self._clock: Callable[[], float] = clock or time.monotonic
        self._sleep_arg = sleep
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
        split: Splitter | None = None,
    ) -> RunStats:
        """Send every request; call ``on_outcome`` once per request as each one ends.

        ``before_pull`` is awaited before each request is taken from ``requests``: a front end
        that writes results in input order uses it to bound its reorder buffer.
        ``before_send(in_flight)`` is called just before each request goes out; nothing else
        runs between a request's answer and ``on_outcome``, so a front end that saves answers
        in batches can save them there and keep answered-but-unsaved plus in-flight requests
        within ``max_in_flight`` (what a kill -9 can cost).
        ``split`` lets the engine cut a request that is too large for the server's window
        (packed embeddings): each part then ends in an outcome of its own, the whole none.

        Raises a :class:`RunAbortedError` subclass at once when the server refuses the whole run
        (bad key, no quota, unknown model); whatever ``on_outcome`` raises stops the run too.
        Cancelling the task cancels every request in flight.
        """
        # The loop's clock by default, so a virtual-time loop in the tests moves it too.
        self._clock = self._clock_arg or asyncio.get_running_loop().time
        now = self._clock()
        self.stats = stats = RunStats(started=now, budget_usd=self.budget)
        stats.timeline = Timeline(now)
        self._cap = BudgetCap(self.budget) if self.budget is not None else None
        self._settled = asyncio.Event()
        share, close_share = None, None
        if self.shared is not None:
            share, close_share = await self.shared.open(
                rpm=self.rpm, tpm=self.tpm, clock=self._clock
            )
        self.limiter = Limiter(
            rpm=self.rpm, tpm=self.tpm, max_in_flight=self.max_in_flight, now=now, share=share
        )
        gate = Gate(self.limiter, self._clock, self._sleep_arg, before_send)
        transport = self._transport or default_transport(
            self.api.base_url, max_connections=self.max_in_flight
        )
        headers = self.api.headers()
        secrets = self.api.secrets()
        # Requests pulled and not yet handed over: those in flight plus a queue at the gate.
        slots = asyncio.Semaphore(self.max_in_flight + int(self.max_in_flight * C.QUEUED_SHARE))
        tasks: set[asyncio.Task[None]] = set()
        failure: list[BaseException] = []

        async def settle(request: Request) -> None:
            """One request to its outcome, or its parts to theirs; a run-level error (an
            abort, or the callback's own) stops the run at once, wherever it happens."""
            try:
                result = await self._attempts(request, gate, transport, headers, secrets, split)
                if isinstance(result, Outcome):
                    on_outcome(result)
                else:  # split: the parts side by side in this slot, tasks the run cancels
                    await asyncio.wait([track(settle(part)) for part in result])
            except (asyncio.CancelledError, RunStopped):
                pass
            except BaseException as exc:  # an abort, or the callback's own error
                if not failure:
                    failure.append(exc)
                gate.close()
                stop.set()

        async def process(request: Request) -> None:
            try:
                await settle(request)
            finally:
                slots.release()

        def track(coro: Awaitable[None]) -> asyncio.Future[None]:
            task = asyncio.ensure_future(coro)
            tasks.add(task)
            task.add_done_callback(done)
            return task

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
                track(process(request))
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
        self,
        request: Request,
        gate: Gate,
        transport: Transport,
        headers: dict[str, str],
        secrets: tuple[str, ...],
        split: Splitter | None = None,
    ) -> Outcome | list[Request]:
        """Send ``request`` until it has an outcome; or return its parts when it was split.

        A 429 that is a rate-limit wait does not use up one of ``max_attempts`` when another
        request succeeded since this one's last 429 (the server is answering, this request
        only waits its turn; at most MAX_RATE_LIMIT_WAITS times); when nothing succeeds
        meanwhile it counts like any error, so a server that only ever answers 429 still
        ends each request after ``max_attempts`` tries.
        """
        if parts := _parts_to_fit(request, gate.limiter, split):
            return parts
        url = self._urls.get(request.endpoint)
        if url is None:
            url = self._urls[request.endpoint] = self.api.url(request.endpoint)
        try:
            body = orjson.dumps(request.body)  # strict as json: a set or bytes fails, not guessed
        except TypeError as exc:  # e.g. a numpy value in extra_body: that row fails alone
            error = ErrorInfo(None, "invalid_request", f"the request body is not JSON: {exc}")
            return self._failed(request, Verdict(Action.FAIL_ROW, error=error), 0)
        price = self._price_of(request)
        cap = self._cap
        if cap is None:
            return await self._send(
                request, gate, transport, headers, secrets, url, body, price, split
            )
        worst = worst_cost(price, *_split_tokens(request)) if price is not None else 0.0
        while True:
            hold = cap.reserve(worst)
            if hold is not None:
                break
            if not cap.must_wait(worst):
                return self._refused(request, cap, worst)
            settled = self._settled
            await settled.wait()  # a request in flight settles: try again
        actual = 0.0
        try:
            outcome = await self._send(
                request, gate, transport, headers, secrets, url, body, price, split
            )
            if isinstance(outcome, Outcome) and outcome.ok and price is not None:
                actual = usage_cost(price, _usage(outcome.response))
            return outcome
        finally:
            cap.settle(hold, actual)
            self._settled.set()
            self._settled = asyncio.Event()

    async def _send(
        self,
        request: Request,
        gate: Gate,
        transport: Transport,
        headers: dict[str, str],
        secrets: tuple[str, ...],
        url: str,
        body: bytes,
        price: Price | None,
        split: Splitter | None,
    ) -> Outcome | list[Request]:
        stats = self.stats
        limiter = gate.limiter
        timeline: Timeline = stats.timeline
        check = answer_check(request.endpoint, request.body)  # before it counts or is cached
        attempt = 0  # sends
        charged = 0  # of max_attempts
        waits = 0  # 429s that were only waits
        succeeded_before = stats.succeeded  # successes of the run at this request's last 429
        while True:
            attempt += 1
            ticket = await gate.acquire(request.tokens)
            if split is not None and (parts := _parts_to_fit(request, limiter, split)):
                limiter.give_back(ticket, self._clock())  # the limit was learned while it
                gate.release()  # waited: not sent
                gate.nudge()
                return parts
            sent_at = self._clock()
            stats.requests_sent += 1
            stats.tokens_estimated += request.tokens
            timeline.add("requests", sent_at)
            timeline.add("tokens", sent_at, request.tokens)
            rpm, tpm = limiter.requests.rate, limiter.tokens.rate
            timeline.level("rpm_limit", sent_at, None if rpm is None else rpm * 60.0)
            timeline.level("tpm_limit", sent_at, None if tpm is None else tpm * 60.0)
            try:
                try:
                    raw = await transport.send(url, headers, body, self.timeout)
                except TransportError as exc:
                    verdict = classify_exception(exc.kind, str(exc))
                    rate = None
                else:
                    verdict = classify_response(raw.status, raw.headers, raw.body, check=check)
                    rate = RateHeaders.parse(raw.headers)
                if verdict.error is not None:  # the one place a server's words become an
                    verdict = _scrubbed(verdict, secrets)  # error: take the key out of them
                if verdict.action is Action.ABORT:
                    gate.close()  # before the slot frees: nothing else may go out
                    raise self._abort_error(verdict)
                now = self._clock()
                timeline.latency(now - sent_at)
                if verdict.rate_limited:
                    stats.rate_limited += 1
                    timeline.add("rate_limited", now)
                    limiter.on_rate_limited(ticket, rate, verdict.retry_after, now)
                else:
                    limiter.on_response(ticket, rate, now)
                if verdict.tokens_limit is not None and (rate is None or not rate.tokens.limit):
                    limiter.learn_token_limit(verdict.tokens_limit)  # a 429's "Limit X"
                if verdict.refused or (verdict.oversized and split is not None):
                    limiter.give_back(ticket, now)  # never processed: never charged
                    gate.nudge()
            finally:
                gate.release()

            if verdict.action is Action.SUCCESS:
                stats.succeeded += 1
                now = self._clock()
                used = usage_total(verdict.body)  # the answer check vouched for its usage
                stats.tokens_used += used
                timeline.add("tokens_used", now, used)
                if price is None:
                    stats.cost_usd = None  # unknown: never a guess
                else:
                    cost = usage_cost(price, _usage(verdict.body))
                    if stats.cost_usd is not None:
                        stats.cost_usd += cost
                    timeline.add("cost_usd", now, cost)
                return Outcome(request, verdict.body, attempts=attempt, value=verdict.value)
            if verdict.action is Action.ABORT:
                raise self._abort_error(verdict)
            if verdict.oversized and split is not None:
                parts = split(request, limiter.request_token_cap())
                if parts:
                    return parts
            if (
                verdict.rate_limited
                and stats.succeeded > succeeded_before
                and waits < C.MAX_RATE_LIMIT_WAITS
            ):
                waits += 1  # the server answers others: this one waits its turn
            else:
                charged += 1
            if verdict.rate_limited:
                succeeded_before = stats.succeeded
            if verdict.action is Action.RETRY and charged < self.max_attempts:
                stats.retries += 1
                timeline.add("retries", self._clock())
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

    def _price_of(self, request: Request) -> Price | None:
        """The price of the request's model (memoised); a budget with no price is an error."""
        model = request.body.get("model") if isinstance(request.body, dict) else None
        key = model if isinstance(model, str) else None
        if key not in self._prices:
            if self.budget is not None:
                self._prices[key] = budget_needs_price(model, self.price)
            else:
                self._prices[key] = price_for(model, self.price)
        return self._prices[key]

    def _refused(self, request: Request, cap: BudgetCap, worst: float) -> Outcome:
        """The budget is reached: this request is not sent (and its rows are not cached)."""
        cap.refuse()
        stats = self.stats
        stats.budget_refused += 1
        if stats.budget_refused == 1:
            log.warning(
                "budget reached: %s of the %s budget spent; the next request could cost up to "
                "%s, so nothing more is sent. Rerun with a higher budget= to send the rows left.",
                format_usd(cap.spent),
                format_usd(cap.limit),
                format_usd(worst),
            )
        message = (
            f"budget reached: {format_usd(cap.spent)} of the {format_usd(cap.limit)} budget "
            "spent, this row was not sent (rerun with a higher budget= to send it)"
        )
        return Outcome(request, error=ErrorInfo(None, BUDGET_REACHED, message))

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
        text = f"{message}. Fix: {_FIXES.get(kind.__name__, 'see the message')}"
        log.error("run stopped: %s", text)
        return kind(text, error=error)


def _scrubbed(verdict: Verdict, secrets: tuple[str, ...]) -> Verdict:
    """The verdict with the key taken out of its error (see :func:`scrub_error`)."""
    assert verdict.error is not None
    return replace(verdict, error=scrub_error(verdict.error, secrets))


def _parts_to_fit(
    request: Request, limiter: Limiter, split: Splitter | None
) -> list[Request] | None:
    """The request cut into packs that fit the server's window, if it does not."""
    window = None if split is None else limiter.window_tokens()
    if split is None or window is None or request.tokens <= window:
        return None
    return split(request, limiter.request_token_cap())


def _usage(body: Any) -> Any:
    return body.get("usage") if isinstance(body, dict) else None


def _split_tokens(request: Request) -> tuple[int, int]:
    """(input tokens, output bound) of a request, from its TPM estimate and its body."""
    bound = output_bound(request.endpoint, request.body)
    return max(0, request.tokens - bound), bound


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
        "cost_usd": stats.cost_usd,
        **({"budget_usd": stats.budget_usd} if stats.budget_usd is not None else {}),
        "requests_not_sent_budget": stats.budget_refused,
    }

"""The gate: where a run's requests wait for the limiter's pace and a free place in flight.

One per run. Requests are admitted one at a time in arrival order (a FIFO lock), so a large
request is never starved by small ones; ``nudge`` wakes a paced wait early when the limiter gets
capacity back (a refused request's tokens), and ``close`` stops every waiter when the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from .limiter import Limiter, Ticket


class RunStopped(Exception):
    """Raised in requests still waiting at the gate when the run has been stopped."""


class Gate:
    """Admits requests one at a time, in arrival order, when the limiter says they may go."""

    def __init__(
        self,
        limiter: Limiter,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] | None,
        before_send: Callable[[int], None] | None = None,
    ) -> None:
        self.limiter = limiter
        self.before_send = before_send
        self.in_flight = 0
        self._clock = clock
        self._sleep = sleep  # an injected sleep (a fake clock's); None: the loop's timers
        self._lock = asyncio.Lock()  # FIFO: waiters are served in order
        self._freed = asyncio.Event()
        self._waker: asyncio.Future[None] | None = None  # the paced wait in progress
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
                    raise RunStopped
                grace = self.limiter.probe_over(self._clock())
                if self.in_flight >= self.limiter.window:
                    self._freed.clear()
                    if grace is None:
                        await self._freed.wait()
                    else:  # the window grows when the wait for the first answer has doubled
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._freed.wait(), grace)
                    continue
                now = self._clock()
                wait = self.limiter.delay(tokens, now)
                if wait <= 0.0:
                    return self._send(tokens, now)
                await self._pause(wait)

    async def _pause(self, wait: float) -> None:
        """Wait ``wait`` seconds for the pace, or less if :meth:`nudge` says it changed."""
        if self._sleep is not None:
            await self._sleep(wait)
            return
        loop = asyncio.get_running_loop()
        waker = self._waker = loop.create_future()
        timer = loop.call_later(wait, _wake, waker)
        try:
            await waker
        finally:
            timer.cancel()
            self._waker = None

    def nudge(self) -> None:
        """The limiter got capacity back (a refused request's tokens): look again now."""
        _wake(self._waker)

    def _send(self, tokens: int, now: float) -> Ticket:
        if self.before_send is not None:
            self.before_send(self.in_flight)
        self.in_flight += 1
        return self.limiter.on_send(tokens, now)

    def release(self) -> None:
        self.in_flight -= 1
        self._freed.set()


def _wake(waker: asyncio.Future[None] | None) -> None:
    if waker is not None and not waker.done():
        waker.set_result(None)

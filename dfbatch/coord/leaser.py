"""The edge between a run's wallet and its coordinator: one lease loop per run.

The limiter spends from the wallet (pure, ``engine/lease.py``); this loop asks the coordinator
for the next slice when the wallet wants one, hands back what expired unspent, and carries the
429s and ``x-ratelimit-*`` headers the run saw. When an ask fails or times out the wallet spends
an even split of the account's limits, with a warning, and the loop asks again every
``LEASE_RETRY_ALONE`` seconds until the coordinator answers; then sharing resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import warnings
from collections.abc import Awaitable, Callable
from typing import Protocol

from ..engine import constants as C
from ..engine.lease import Ask, Grant, Share, Wallet

log = logging.getLogger(__name__)


class Coordinator(Protocol):
    """Keeps one account's ``LeaseBook`` and answers asks; raises when it cannot."""

    async def lease(self, ask: Ask) -> Grant: ...
    async def aclose(self) -> None: ...


class _WakingShare:
    """The wallet as the limiter sees it; wakes the lease loop when the wallet wants a slice."""

    __slots__ = ("_wake", "_wallet")

    def __init__(self, wallet: Wallet, wake: asyncio.Event) -> None:
        self._wallet = wallet
        self._wake = wake

    def delay(self, tokens: float, now: float) -> float:
        wait = self._wallet.delay(tokens, now)
        if wait > 0 and not self._wake.is_set() and self._wallet.wants(now):
            self._wake.set()
        return wait

    def spend(self, tokens: float, now: float) -> None:
        self._wallet.spend(tokens, now)
        if not self._wake.is_set() and self._wallet.wants(now):
            self._wake.set()

    def on_rate_limited(self, retry_after: float | None, now: float) -> None:
        self._wallet.on_rate_limited(retry_after, now)
        self._wake.set()

    def on_headers(
        self,
        limit_requests: int | None,
        remaining_requests: int | None,
        limit_tokens: int | None,
        remaining_tokens: int | None,
    ) -> None:
        self._wallet.on_headers(limit_requests, remaining_requests, limit_tokens, remaining_tokens)


class LeasedBudget:
    """A ``SharedBudget`` over a coordinator: what ``Engine(shared=...)`` takes."""

    def __init__(
        self, coordinator: Coordinator, *, name: str = "", timeout: float = C.LEASE_TIMEOUT
    ) -> None:
        self.coordinator = coordinator
        self.name = name or type(coordinator).__name__
        self.timeout = timeout
        self.wallet: Wallet | None = None  # the last run's, for tests and figures
        self.asks = 0  # round trips made (for the benchmark's figures)
        self.fallbacks = 0  # times the coordinator was lost

    def __repr__(self) -> str:
        return f"<LeasedBudget {self.name} asks={self.asks} fallbacks={self.fallbacks}>"

    async def open(
        self, *, rpm: float | None, tpm: float | None, clock: Callable[[], float]
    ) -> tuple[Share, Callable[[], Awaitable[None]]]:
        wallet = Wallet(uuid.uuid4().hex[:12], rpm=rpm, tpm=tpm, now=clock())
        # Until the coordinator has counted the senders, the even split assumes what the
        # coordinator says to expect (a Dask job: its workers), else this sender alone.
        wallet.senders = max(1, int(getattr(self.coordinator, "senders", 1) or 1))
        self.wallet = wallet
        wake = asyncio.Event()
        running = [True]  # the loop's own stop flag: on 3.11 wait_for may swallow a cancel
        task = asyncio.ensure_future(self._loop(wallet, clock, wake, running))

        async def close() -> None:
            running[0] = False
            wake.set()
            task.cancel()
            await asyncio.wait({task}, timeout=self.timeout)
            wallet.asking = False
            ask = wallet.ask(clock(), closing=True)  # give back what was not spent
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.coordinator.lease(ask), self.timeout)
            with contextlib.suppress(Exception):
                await self.coordinator.aclose()

        return _WakingShare(wallet, wake), close

    async def _loop(
        self,
        wallet: Wallet,
        clock: Callable[[], float],
        wake: asyncio.Event,
        running: list[bool],
    ) -> None:
        while running[0]:
            now = clock()
            if wallet.wants(now):
                ask = wallet.ask(now)
                self.asks += 1
                try:
                    grant = await asyncio.wait_for(self.coordinator.lease(ask), self.timeout)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    was_alone = wallet.alone
                    wallet.on_lost(ask, clock())
                    if not was_alone:
                        self.fallbacks += 1
                        message = (
                            f"dfbatch: the shared rate limiter ({self.name}) is unreachable "
                            f"({exc!r}); this sender now paces alone at 1/{wallet.senders} of "
                            "the limits until it answers again"
                        )
                        log.warning("%s", message)
                        warnings.warn(message, RuntimeWarning, stacklevel=1)
                    continue
                if wallet.alone:
                    log.warning("dfbatch: the shared rate limiter (%s) answers again", self.name)
                wallet.on_grant(grant, clock())
                continue
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), C.LEASE_LOOP_TICK)

"""A coordinator on a Dask ``distributed`` cluster: an actor on one worker keeps the books.

No extra service: the job's client starts the actor (``client.submit(BookActor, actor=True)``)
and hands its handle to every partition; each run's lease loop calls ``lease`` on it from a
thread (an actor call blocks). When the worker holding the actor dies, asks fail and every
sender paces at its even split until the end of its partition (an actor does not come back).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from ..engine import constants as C
from ..engine.lease import Ask, Grant, LeaseBook


class BookActor:
    """Runs on one worker: the books of the accounts the job sends to."""

    def __init__(self) -> None:
        self._books: dict[str, LeaseBook] = {}
        self._lock = threading.Lock()
        self.asks = 0  # round trips answered (the benchmark's figure)

    def round_trips(self) -> int:
        """Asks answered so far."""
        return self.asks

    def lease(self, account: str, ask: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.asks += 1
            now = time.monotonic()
            book = self._books.get(account)
            if book is None:
                book = self._books[account] = LeaseBook(now)
            return book.lease(Ask.from_dict(ask), now).to_dict()


class ActorCoordinator:
    """What a partition's run talks to: the actor's handle and the account's name."""

    def __init__(self, actor: Any, account: str, senders: int = 1) -> None:
        self.actor = actor
        self.account = account
        self.senders = senders  # the job's workers: the even split if the actor is lost

    def __repr__(self) -> str:
        return f"<ActorCoordinator {self.account[:8]}>"

    def bind(self) -> None:
        """Tie the handle to this worker; call in the task's own thread. (An actor handle
        finds its worker through the task thread's state, and the lease loop calls it from
        another thread.)"""
        bind = getattr(self.actor, "_try_bind_worker_client", None)
        if bind is not None:
            bind()

    async def lease(self, ask: Ask) -> Grant:
        def call() -> dict[str, Any]:
            return self.actor.lease(self.account, ask.to_dict()).result(timeout=C.LEASE_TIMEOUT)

        return Grant.from_dict(await asyncio.to_thread(call))

    async def aclose(self) -> None:
        return None

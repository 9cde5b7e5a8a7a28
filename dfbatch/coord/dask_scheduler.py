"""A coordinator on a Dask ``distributed`` cluster: the scheduler keeps the books.

No extra service and no worker to lose: each partition's lease loop asks the scheduler itself
(``client.run_on_scheduler``), which keeps one ``LeaseBook`` per account on its own object. The
books live as long as the cluster; a worker's death costs nothing but its partition's retry.
If the scheduler cannot be reached, senders pace at their even split (the job's workers) and
go back to sharing as soon as it answers again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from ..engine import constants as C
from ..engine.lease import Ask, Grant, LeaseBook

#: The attribute of the scheduler object that holds the books.
BOOKS = "_dfbatch_lease_books"
_lock = threading.Lock()


def lease_on_scheduler(
    account: str, ask: dict[str, Any], dask_scheduler: Any = None
) -> dict[str, Any]:
    """Runs on the scheduler: one ask against the account's book (created on first use)."""
    with _lock:
        books = getattr(dask_scheduler, BOOKS, None)
        if books is None:
            books = {"asks": 0, "paused": False}
            setattr(dask_scheduler, BOOKS, books)
        if books["paused"]:  # tests: the coordinator made unreachable on purpose
            raise ConnectionError("the dfbatch lease books are paused")
        books["asks"] += 1
        now = time.monotonic()
        book = books.get(account)
        if book is None:
            book = books[account] = LeaseBook(now)
        return book.lease(Ask.from_dict(ask), now).to_dict()


def books_state(dask_scheduler: Any = None, *, paused: bool | None = None) -> dict[str, Any]:
    """Runs on the scheduler: the asks answered (and, given ``paused``, pause or resume)."""
    with _lock:
        books = getattr(dask_scheduler, BOOKS, None)
        if books is None:
            books = {"asks": 0, "paused": False}
            setattr(dask_scheduler, BOOKS, books)
        if paused is not None:
            books["paused"] = paused
        return {"asks": books["asks"], "paused": books["paused"]}


class SchedulerCoordinator:
    """What a partition's run talks to: the worker's client and the account's name."""

    def __init__(self, account: str, senders: int = 1) -> None:
        self.account = account
        self.senders = senders  # the job's workers: the even split while unreachable
        self._client: Any = None

    def __repr__(self) -> str:
        return f"<SchedulerCoordinator {self.account[:8]}>"

    def __getstate__(self) -> dict[str, Any]:  # shipped to the workers without a client
        return {"account": self.account, "senders": self.senders, "_client": None}

    def bind(self) -> None:
        """Take this worker's client; call in the task's own thread (the lease loop calls it
        from another thread, where the worker cannot be found)."""
        from distributed import get_client

        self._client = get_client()

    async def lease(self, ask: Ask) -> Grant:
        client = self._client
        if client is None:
            raise ConnectionError("no Dask client on this worker (bind() was not called)")

        def call() -> dict[str, Any]:
            return client.run_on_scheduler(lease_on_scheduler, self.account, ask.to_dict())

        answer = await asyncio.wait_for(asyncio.to_thread(call), C.LEASE_TIMEOUT)
        return Grant.from_dict(answer)

    async def aclose(self) -> None:
        return None

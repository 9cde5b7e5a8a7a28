"""A coordinator in this process: engines in several threads share one book under a lock.

Dask's threaded scheduler runs partitions in threads of one process; two notebooks' cells in
one kernel do the same. Books are kept per account for the life of the process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..engine.lease import Ask, Grant, LeaseBook

_books: dict[str, LeaseBook] = {}
_lock = threading.Lock()


class LocalCoordinator:
    """The book of ``account`` in this process (a fresh one per ``account`` name)."""

    def __init__(self, account: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.account = account
        self.clock = clock

    def __repr__(self) -> str:
        return f"<LocalCoordinator {self.account[:8]}>"

    def lease_now(self, ask: Ask) -> Grant:
        with _lock:
            now = self.clock()
            book = _books.get(self.account)
            if book is None:
                book = _books[self.account] = LeaseBook(now)
            return book.lease(ask, now)

    async def lease(self, ask: Ask) -> Grant:
        return self.lease_now(ask)

    async def aclose(self) -> None:
        return None


def forget(account: str) -> None:
    """Drop an account's book (tests)."""
    with _lock:
        _books.pop(account, None)

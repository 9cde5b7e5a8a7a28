"""Where results go: in input order through a bounded reorder buffer, or as they come.

The ordered sink writes line ``i`` only after lines ``0 .. i-1``; ``room(i)`` makes the
reader wait while line ``i`` would be more than ``window`` lines ahead of the oldest line not
yet written, which bounds the buffer (and the memory) whatever the file's length.
"""

from __future__ import annotations

import asyncio
from typing import IO


class Sink:
    """Writes results: in input order through a bounded reorder buffer, or as they come."""

    def __init__(self, fh: IO[bytes], start: int, window: int | None) -> None:
        self.fh = fh
        self.next = start  # ordered: the index of the next line to write
        self.window = window  # None: unordered, write at once
        self.pending: dict[int, bytes] = {}
        self._moved = asyncio.Event()

    def put(self, index: int, data: bytes) -> None:
        if self.window is None:
            self.fh.write(data)
            self.fh.flush()
            return
        self.pending[index] = data
        if index != self.next:
            return
        pending, write = self.pending, self.fh.write
        while self.next in pending:
            write(pending.pop(self.next))
            self.next += 1
        self.fh.flush()  # a kill -9 loses no written line (the OS has it)
        self._moved.set()

    async def room(self, index: int) -> None:
        """Wait until line ``index`` may be taken on: at most ``window`` lines ahead."""
        if self.window is None:
            return
        while index >= self.next + self.window:
            self._moved.clear()
            await self._moved.wait()

"""A coordinator in Redis: processes and machines that share an API key share its budget.

The account's ``LeaseBook`` is one Redis key (``dfbatch:lease:<account hash>``, JSON). An ask is
two round trips: one script reads the book and Redis' clock (``TIME``: every sender sees one
clock), the book is updated here by the same pure code the other coordinators use, and a second
script writes it back only if nobody wrote in between (compare-and-set); on a conflict the ask is
read and computed again. Slices keep the asks to a few per second per sender.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from ..engine import constants as C
from ..engine.lease import Ask, Grant, LeaseBook

_READ = """
local t = redis.call('TIME')
return {redis.call('GET', KEYS[1]) or '', t[1], t[2]}
"""
_WRITE = """
if (redis.call('GET', KEYS[1]) or '') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


class RedisCoordinator:
    """The book of ``account`` in the Redis at ``url`` (``redis://host:port/db``)."""

    def __init__(self, url: str, account: str) -> None:
        self.url = url
        self.account = account
        self.key = f"dfbatch:lease:{account}"
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.conflicts = 0

    def __repr__(self) -> str:
        return f"<RedisCoordinator {self.url} {self.account[:8]}>"

    def _redis(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=C.LEASE_TIMEOUT,
                socket_connect_timeout=C.LEASE_TIMEOUT,
            )
            self._loop = loop
        return self._client

    async def lease(self, ask: Ask) -> Grant:
        client = self._redis()
        while True:
            raw, sec, usec = await client.eval(_READ, 1, self.key)
            now = int(sec) + int(usec) / 1e6
            book = LeaseBook.from_dict(orjson.loads(raw) if raw else None, now)
            grant = book.lease(ask, now)
            new = orjson.dumps(book.to_dict())
            if await client.eval(_WRITE, 1, self.key, raw, new, C.LEASE_STATE_TTL):
                return grant
            self.conflicts += 1  # another sender wrote first: read again

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

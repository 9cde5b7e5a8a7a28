"""The one place that does network I/O: ``send`` a request, get status, headers and bytes.

Like httpx's transports, the engine sees only :class:`Transport`; tests swap in a fake that
answers from a function (:class:`MockTransport`) and keep the real server for end-to-end tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from . import constants as C


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    headers: Mapping[str, str]  # case-insensitive keys
    body: bytes


class TransportError(Exception):
    """No HTTP answer: ``kind`` is ``"timeout"`` or ``"connection"``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Transport(Protocol):
    async def send(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> RawResponse:
        """POST ``body`` to ``url``; raise :class:`TransportError` when no answer comes."""
        ...

    async def aclose(self) -> None: ...


class AiohttpTransport:
    """One aiohttp session and connection pool for a whole run; connections are reused.

    ``trust_env=True`` honours HTTP(S)_PROXY / NO_PROXY and ~/.netrc, as the openai SDK does:
    the engine picks this transport when a proxy is set for the server it talks to.
    """

    def __init__(
        self,
        *,
        max_connections: int = C.DEFAULT_MAX_IN_FLIGHT,
        connect_timeout: float = C.DEFAULT_CONNECT_TIMEOUT,
        trust_env: bool = False,
    ) -> None:
        self._max_connections = max_connections
        self._trust_env = trust_env
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._session_headers: Mapping[str, str] | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _open(self, headers: Mapping[str, str]) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=self._max_connections,
            ttl_dns_cache=300,
            enable_cleanup_closed=False,
        )
        # The run's headers become the session's defaults, so they are not merged again for
        # every request (aiohttp's per-request header work is a tenth of the client's CPU).
        self._session_headers = headers
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            headers=dict(headers),
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=self._trust_env,
        )

    async def send(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> RawResponse:
        if self._session is None:
            self._session = self._open(headers)
        extra = None if headers is self._session_headers else headers
        to = self._timeouts.get(timeout)
        if to is None:
            to = self._timeouts[timeout] = aiohttp.ClientTimeout(
                total=timeout, sock_connect=self._connect_timeout
            )
        try:
            async with self._session.post(url, data=body, headers=extra, timeout=to) as resp:
                data = await resp.read()
                return RawResponse(resp.status, resp.headers, data)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TransportError("timeout", f"no answer within {timeout:g} s") from exc
        except aiohttp.ClientError as exc:
            raise TransportError("connection", f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


Handler = Callable[[str, Mapping[str, str], bytes], Awaitable[RawResponse]]


class MockTransport:
    """A transport that answers from an async function, for unit tests.

    >>> async def handler(url, headers, body):
    ...     return RawResponse(200, {}, b'{"ok": true}')
    >>> transport = MockTransport(handler)
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls = 0

    async def send(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> RawResponse:
        self.calls += 1
        try:
            return await asyncio.wait_for(self.handler(url, headers, body), timeout)
        except TimeoutError as exc:
            raise TransportError("timeout", f"no answer within {timeout:g} s") from exc

    async def aclose(self) -> None:
        return None

"""The one place that does network I/O: ``send`` a request, get status, headers and bytes.

Like httpx's transports, the engine sees only :class:`Transport`; tests swap in a fake that
answers from a function (:class:`MockTransport`) and keep the real server for end-to-end tests.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp.http_exceptions import LineTooLong

from . import constants as C


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    headers: Mapping[str, str]  # case-insensitive keys
    body: bytes


class TransportError(Exception):
    """No usable HTTP answer: ``kind`` is ``"timeout"``, ``"connection"`` or ``"too_large"``
    (an answer over a size cap: its body, once inflated, or its headers; not retried)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def size_text(n: int) -> str:
    """``64 MiB``, ``64 KiB`` or ``1,000 bytes``."""
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n:,} bytes"


_RAISE_IT = "if real answers are this large, set DFBATCH_MAX_RESPONSE_MIB to a larger number of MiB"
HEADERS_FIX = "a real answer's are under 2 KiB: the server or a proxy on the way is broken"


def too_large(what: str, limit: int, fix: str = _RAISE_IT) -> TransportError:
    """The error of an answer over a cap, ``what`` being e.g. ``"the answer's body is"``."""
    return TransportError(
        "too_large", f"{what} over the {size_text(limit)} limit, so it was not read; {fix}"
    )


def decode_body(body: bytes, coding: str, limit: int) -> bytes:
    """``body`` as sent with ``Content-Encoding: coding``, inflated to at most ``limit`` bytes.

    gzip and deflate are read (a server may compress although asked not to); any other coding,
    a broken stream or more than ``limit`` inflated bytes (a gzip bomb) is a TransportError.
    """
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return body
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise TransportError(
            "connection", f"the answer is {coding}-encoded, which dfbatch cannot read"
        )
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32 if "gzip" in coding else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)  # stops at limit + 1: memory stays bounded
    except zlib.error as exc:
        raise TransportError("connection", f"invalid {coding} answer: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise too_large(f"the answer's {coding} body inflates to", limit)
    if not inflater.eof:
        raise TransportError("connection", f"invalid {coding} answer: the stream is cut short")
    return out


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

    A redirect is never followed (aiohttp would send Azure's ``api-key`` header to the new
    host): the 3xx is the answer, which the retry policy makes that request's error. Answers
    are read within the same caps as the lean transport's (:mod:`dfbatch.engine.http_client`):
    the body, once inflated, at most ``max_response_bytes``, the headers at most
    ``MAX_HEADER_BYTES``.
    """

    def __init__(
        self,
        *,
        max_connections: int = C.DEFAULT_MAX_IN_FLIGHT,
        connect_timeout: float = C.DEFAULT_CONNECT_TIMEOUT,
        trust_env: bool = False,
        max_response_bytes: int = C.MAX_RESPONSE_BYTES,
    ) -> None:
        self._max_connections = max_connections
        self._limit = max_response_bytes
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
        defaults = dict(headers)
        if not any(k.lower() == "accept-encoding" for k in defaults):
            defaults["Accept-Encoding"] = "gzip, deflate"  # inflated by _read, within the cap
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            headers=defaults,
            auto_decompress=False,
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
            async with self._session.post(
                url, data=body, headers=extra, timeout=to, allow_redirects=False
            ) as resp:
                return RawResponse(resp.status, resp.headers, await self._read(resp))
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TransportError("timeout", f"no answer within {timeout:g} s") from exc
        except aiohttp.ClientError as exc:
            if _over_header_limits(exc):
                raise TransportError(
                    "too_large",
                    f"the answer's headers are over aiohttp's limits (a line over 8,190 bytes or "
                    f"too many lines), so it was not read; {HEADERS_FIX}",
                ) from exc
            raise TransportError("connection", f"{type(exc).__name__}: {exc}") from exc

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body, inflated; over a cap, a TransportError and the connection is closed."""
        limit = self._limit
        try:
            if sum(len(k) + len(v) + 4 for k, v in resp.raw_headers) > C.MAX_HEADER_BYTES:
                raise too_large("the answer's headers are", C.MAX_HEADER_BYTES, HEADERS_FIX)
            length = resp.content_length
            if length is not None and length > limit:
                raise too_large(f"the answer's body ({length:,} bytes announced) is", limit)
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise too_large("the answer's body is", limit)
                chunks.append(chunk)
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            return decode_body(body, resp.headers.get("Content-Encoding", ""), limit)
        except TransportError:
            resp.close()  # never reused: the rest of the answer may still be on its way
            raise

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _over_header_limits(exc: BaseException) -> bool:
    """True when aiohttp refused an answer's headers for its own caps: a line over 8,190 bytes
    (``LineTooLong``, a few causes down) or too many lines."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, LineTooLong) or "too many headers" in str(seen).lower():
            return True
        seen = seen.__cause__
    return False


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

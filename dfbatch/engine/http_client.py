"""A lean HTTP/1.1 transport: keep-alive connections, one POST at a time on each.

The engine sends one small JSON POST after another to one host and reads one JSON answer each;
aiohttp's general client (redirects, cookies, proxies, tracing, middlewares, multipart) spent
~60% of the client's CPU on that. Here a request is one ``write`` of bytes prepared once per
run, and the answer is parsed by ``httptools`` (llhttp, the parser Node.js and aiohttp use):
10,000 embedding requests took 2.5 s of client CPU this way, 3.6-4.1 s through aiohttp.
:class:`~dfbatch.engine.transport.AiohttpTransport` stays available (``Engine(transport=...)``) for
what this one does not do (HTTP proxies). Neither follows a redirect: the key would go along.

Each connection serves one request at a time; idle ones wait in a pool per host. A connection
the server closed while idle fails its next send at once, before any byte of an answer, and
the engine's retry policy sends again (a connection error; the request was not processed).

Every byte from the server is counted as it arrives: headers past ``MAX_HEADER_BYTES``, a body
(announced or received) past ``max_response_bytes`` or one that inflates past it end the read
at once with a ``too_large`` TransportError and close the connection, so memory per request
stays bounded whatever the server sends. Bytes nobody asked for close the connection too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import os
import ssl
import urllib.request
from collections import deque
from collections.abc import Mapping
from urllib.parse import urlsplit

import httptools

from . import constants as C
from .errors import ConfigurationError
from .transport import (
    HEADERS_FIX,
    AiohttpTransport,
    RawResponse,
    Transport,
    TransportError,
    decode_body,
    too_large,
)

_Origin = tuple[str, str, int]  # scheme, host, port


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the answer it is reading."""

    def __init__(self, limit: int = C.MAX_RESPONSE_BYTES) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[RawResponse] | None = None
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.open = True
        self.reusable = False
        self.limit = limit  # bytes of body, before and after inflating
        self.reading_head = False  # the status line and headers are still coming
        self.head_bytes = 0  # bytes received for the current request while reading_head
        self.header_bytes = 0  # bytes of the header lines parsed for the current request
        self.body_bytes = 0

    def expect(self, waiter: asyncio.Future[RawResponse]) -> None:
        """The answer to the request about to be written goes to ``waiter``."""
        self.waiter = waiter
        self.reusable = False
        self.reading_head = True
        self.head_bytes = self.header_bytes = self.body_bytes = 0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.close()  # bytes nobody asked for: never read them into memory
            return
        try:
            if self.reading_head:
                self.head_bytes += len(data)
            self.parser.feed_data(data)
            if self.reading_head and self.head_bytes > C.MAX_HEADER_BYTES:
                raise too_large("the answer's headers are", C.MAX_HEADER_BYTES, HEADERS_FIX)
        except TransportError as exc:
            self._fail(str(exc), exc.kind)
            self.close()
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # what a callback raised: a cap
            if isinstance(cause, TransportError):
                self._fail(str(cause), cause.kind)
            else:
                self._fail(f"invalid HTTP answer: {exc}")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        # An answer without Content-Length or chunks ends with the connection.
        if self.parser.get_status_code() and not self._has_length():
            self._complete(keep=False)
            return
        self._fail(f"connection closed before the answer ended ({exc or 'closed by the server'})")

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = {}
        self.body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        # data_received bounds a head still coming; this, one that came whole in one read.
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > C.MAX_HEADER_BYTES:
            raise too_large("the answer's headers are", C.MAX_HEADER_BYTES, HEADERS_FIX)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        self.reading_head = False
        length = self.headers.get("content-length", "").strip()
        if length.isdigit() and int(length) > self.limit:  # refused before a byte of it
            raise too_large(f"the answer's body ({int(length):,} bytes announced) is", self.limit)

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.limit:  # raised out of feed_data: the parser stops here
            raise too_large("the answer's body is", self.limit)
        self.body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.parser.get_status_code() < 200:
            self.reading_head = True
            return  # an interim answer (100 Continue): the real one follows
        self._complete(keep=self.parser.should_keep_alive())

    # -- helpers -------------------------------------------------------------------------------

    def _has_length(self) -> bool:
        return "content-length" in self.headers or "chunked" in self.headers.get(
            "transfer-encoding", ""
        )

    def _complete(self, *, keep: bool) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        self.reusable = keep and self.open
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body = []  # the parser and this object hold each other: drop the bytes at once
        try:  # gzip or deflate sent despite "Accept-Encoding: identity": inflated within the cap
            body = decode_body(body, self.headers.get("content-encoding", ""), self.limit)
        except TransportError as exc:
            waiter.set_exception(exc)
            return
        waiter.set_result(RawResponse(self.parser.get_status_code(), self.headers, body))

    def _fail(self, message: str, kind: str = "connection") -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TransportError(kind, message))

    def close(self) -> None:
        self.open = False
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()


class HttpTransport:
    """Keep-alive HTTP/1.1 connections, pooled per host, for one run."""

    def __init__(
        self,
        *,
        connect_timeout: float = C.DEFAULT_CONNECT_TIMEOUT,
        max_response_bytes: int = C.MAX_RESPONSE_BYTES,
    ) -> None:
        # No cap of its own: the engine never has more than max_in_flight sends at once, and
        # each send holds one connection.
        self._connect_timeout = connect_timeout
        self._limit = max_response_bytes
        self._idle: dict[_Origin, deque[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._targets: dict[str, tuple[_Origin, bytes]] = {}  # url -> origin, request head
        self._header_block: tuple[Mapping[str, str], bytes] | None = None
        self._ssl: ssl.SSLContext | None = None

    def _head(self, url: str, headers: Mapping[str, str]) -> tuple[_Origin, bytes]:
        """The origin and the request's head up to its Content-Length value (built once)."""
        block = self._header_block
        if block is None or block[0] is not headers:
            for k, v in headers.items():
                if any(c in f"{k}{v}" for c in "\r\n\0"):  # never echo the value: a key?
                    raise ConfigurationError(f"the {k!r} header holds a line break or NUL")
                if max(map(ord, f"{k}{v}"), default=0) > 255:  # not latin-1: raise no codec
                    raise ConfigurationError(  # error, whose repr holds every header
                        f"the {k!r} header holds a character HTTP headers cannot carry "
                        "(not latin-1); check it was copied whole and without typographic marks"
                    )
            lines = "".join(
                f"{k}: {v}\r\n"
                for k, v in headers.items()
                if k.lower() not in ("host", "content-length")
            )
            if not any(k.lower() == "accept-encoding" for k in headers):
                # Uncompressed: decompressing would cost the client more CPU than it saves.
                lines += "Accept-Encoding: identity\r\n"
            block = self._header_block = (headers, lines.encode("latin-1"))
            self._targets.clear()
        cached = self._targets.get(url)
        if cached is not None:
            return cached
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError("connection", f"cannot send to {url!r}: not an http(s) URL")
        default_port = 443 if parts.scheme == "https" else 80
        port = parts.port or default_port
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # IPv6
        host = name if port == default_port else f"{name}:{port}"
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\n".encode("latin-1")
            + block[1]
            + b"Content-Length: "
        )
        cached = self._targets[url] = ((parts.scheme, parts.hostname, port), head)
        return cached

    async def _connect(self, origin: _Origin) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._limit),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context else None,
                )
        except TimeoutError as exc:
            raise TransportError(
                "timeout", f"no connection to {host}:{port} within {self._connect_timeout:g} s"
            ) from exc
        except OSError as exc:
            raise TransportError("connection", f"cannot connect to {host}:{port}: {exc}") from exc
        self._all.add(conn)
        return conn

    async def send(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> RawResponse:
        origin, head = self._head(url, headers)
        idle = self._idle.get(origin)
        conn = None
        while idle:
            candidate = idle.pop()  # the most recently used: the least likely to have timed out
            if candidate.open:
                conn = candidate
                break
            self._all.discard(candidate)
        if conn is None:
            conn = await self._connect(origin)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[RawResponse] = loop.create_future()
        conn.expect(waiter)
        timer = loop.call_later(timeout, _expire, waiter, timeout)
        try:
            assert conn.transport is not None
            conn.transport.write(b"%s%d\r\n\r\n%s" % (head, len(body), body))
            response = await waiter
        except BaseException:
            conn.close()  # a timeout, a cancel, a broken answer: never reuse this connection
            self._all.discard(conn)
            raise
        finally:
            timer.cancel()
            conn.waiter = None
        if conn.reusable:
            self._idle.setdefault(origin, deque()).append(conn)
        else:
            conn.close()
            self._all.discard(conn)
        return response

    async def aclose(self) -> None:
        for conn in self._all:
            with contextlib.suppress(Exception):
                conn.close()
        self._all.clear()
        self._idle.clear()


def default_transport(base_url: str, *, max_connections: int) -> Transport:
    """The transport a run uses when none is given: this lean one, or aiohttp's when the
    environment sets a proxy for ``base_url`` (HTTPS_PROXY, ALL_PROXY..., unless NO_PROXY
    exempts its host), which this one does not speak. ``DFBATCH_MAX_RESPONSE_MIB`` sets the
    cap on an answer's size (``MAX_RESPONSE_BYTES`` by default)."""
    limit = max_response_bytes(os.environ.get("DFBATCH_MAX_RESPONSE_MIB"))
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not _is_loopback(host) and not urllib.request.proxy_bypass(host):
        return AiohttpTransport(
            max_connections=max_connections, trust_env=True, max_response_bytes=limit
        )
    return HttpTransport(max_response_bytes=limit)


def max_response_bytes(mib: str | None) -> int:
    """The cap on an answer's size: ``mib`` MiB (``DFBATCH_MAX_RESPONSE_MIB``), else the default.

    >>> max_response_bytes(None) == C.MAX_RESPONSE_BYTES, max_response_bytes("0.5")
    (True, 524288)
    """
    if mib is None or not mib.strip():
        return C.MAX_RESPONSE_BYTES
    try:
        value = float(mib)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value * 2**20 >= 1):
        raise ConfigurationError(
            f"DFBATCH_MAX_RESPONSE_MIB must be a positive number of MiB, got {mib!r}"
        )
    return int(value * 2**20)


def _is_loopback(host: str) -> bool:
    """A server on this machine (a simulator, a local vLLM) is never reached via a proxy."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _expire(waiter: asyncio.Future[RawResponse], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(TransportError("timeout", f"no answer within {timeout:g} s"))

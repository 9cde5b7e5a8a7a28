"""The lean HTTP/1.1 transport against a raw socket server that answers what each test scripts:
chunks, answers ended by a close, interim answers, keep-alive, hangs, garbage, dead ports."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest
from _raw_http import RawServer

from dfbatch import ConfigurationError
from dfbatch.engine.http_client import HttpTransport, default_transport
from dfbatch.engine.transport import AiohttpTransport, TransportError

HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-test"}
Answer = Callable[[bytes], Awaitable[bytes | None]]  # request head+body -> bytes to send back


class ScriptedServer(RawServer):
    """Writes what ``answer`` returns for each request; None closes the connection without an
    answer. Counts connections and requests."""

    def __init__(self, answer: Answer, *, close_after: bool = False) -> None:
        super().__init__()
        self.answer = answer
        self.close_after = close_after

    async def respond(self, request: bytes, writer: asyncio.StreamWriter) -> bool:
        reply = await self.answer(request)
        if reply is None:
            return False
        writer.write(reply)
        await writer.drain()
        return not self.close_after


def ok(body: bytes = b'{"ok": true}', extra: bytes = b"") -> Answer:
    async def answer(_request: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)

    return answer


def run(coro: Awaitable[object]) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_keep_alive_reuses_one_connection_and_sends_the_request_as_given() -> None:
    async def main() -> None:
        server = ScriptedServer(
            ok(extra=b"X-Request-Id: req_1\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n")
        )
        async with server as url:
            transport = HttpTransport()
            for i in range(5):
                raw = await transport.send(url, HEADERS, b'{"i": %d}' % i, 5)
                assert raw.status == 200 and raw.body == b'{"ok": true}'
            await transport.aclose()
        assert server.connections == 1 and len(server.requests) == 5
        assert raw.headers["x-request-id"] == "req_1"  # names lowercased
        assert raw.headers["set-cookie"] == "a, b"  # repeated fields joined
        first = server.requests[0]
        assert first.startswith(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"Authorization: Bearer sk-test\r\n" in first
        assert first.endswith(b'Content-Length: 8\r\n\r\n{"i": 0}')

    run(main())


def test_chunked_and_close_delimited_answers_are_read_whole() -> None:
    async def chunked(_request: bytes) -> bytes:
        return (
            b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\n"
            b'Retry-After-Ms: 20\r\n\r\n5\r\n{"a":\r\n3;ext=1\r\n 1}\r\n0\r\n\r\n'
        )

    async def until_close(_request: bytes) -> bytes:
        return b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 70_000

    async def main() -> None:
        async with ScriptedServer(chunked) as url:
            raw = await HttpTransport().send(url, HEADERS, b"{}", 5)
            assert (raw.status, raw.body, raw.headers["retry-after-ms"]) == (429, b'{"a": 1}', "20")
        server = ScriptedServer(until_close, close_after=True)
        async with server as url:
            transport = HttpTransport()
            for _ in range(2):  # HTTP/1.0 without keep-alive: a new connection each time
                raw = await transport.send(url, HEADERS, b"{}", 5)
                assert raw.status == 200 and raw.body == b"x" * 70_000
        assert server.connections == 2

    run(main())


def test_a_gzip_answer_sent_anyway_is_decompressed_and_brotli_refused() -> None:
    import gzip

    packed = gzip.compress(b'{"zipped": true}')

    async def main() -> None:
        extra = b"Content-Encoding: gzip\r\n"
        server = ScriptedServer(ok(packed, extra=extra))
        async with server as url:
            raw = await HttpTransport().send(url, HEADERS, b"{}", 5)
        assert raw.body == b'{"zipped": true}'
        assert b"Accept-Encoding: identity\r\n" in server.requests[0]
        async with ScriptedServer(ok(b"xx", extra=b"Content-Encoding: br\r\n")) as url:
            with pytest.raises(TransportError, match="br-encoded"):
                await HttpTransport().send(url, HEADERS, b"{}", 5)

    run(main())


def test_an_interim_100_continue_is_skipped() -> None:
    async def answer(_request: bytes) -> bytes:
        return b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    async def main() -> None:
        async with ScriptedServer(answer) as url:
            raw = await HttpTransport().send(url, HEADERS, b"{}", 5)
        assert (raw.status, raw.body) == (200, b"{}")

    run(main())


def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async def main() -> None:
        server = ScriptedServer(ok(), close_after=True)  # answers with keep-alive, then closes
        async with server as url:
            transport = HttpTransport()
            for _ in range(3):
                assert (await transport.send(url, HEADERS, b"{}", 5)).status == 200
                await asyncio.sleep(0.05)  # the close reaches the client while it is idle
            await transport.aclose()
        assert server.connections == 3

    run(main())


@pytest.mark.parametrize(
    ("reply", "kind", "message"),
    [
        (None, "connection", "connection closed before the answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", "connection", "before the answer"),
        (b"NOT HTTP AT ALL\r\n\r\n", "connection", "invalid HTTP answer"),
        ("hang", "timeout", "no answer within 0.2 s"),
    ],
    ids=["closed", "cut-short", "garbage", "hang"],
)
def test_a_broken_answer_is_a_transport_error_and_its_connection_is_dropped(
    reply: bytes | str | None, kind: str, message: str
) -> None:
    async def answer(_request: bytes) -> bytes | None:
        if reply == "hang":
            await asyncio.sleep(10)
        if isinstance(reply, bytes) and b"Content-Length: 10" in reply:
            server.close_after = True
        return reply  # type: ignore[return-value]

    server = ScriptedServer(answer)

    async def main() -> None:
        async with server as url:
            transport = HttpTransport()
            with pytest.raises(TransportError) as caught:
                await transport.send(url, HEADERS, b"{}", 0.2)
            assert caught.value.kind == kind and message in str(caught.value)
            assert not any(transport._idle.values())
            await transport.aclose()

    run(main())


def test_a_cancelled_send_never_leaves_its_connection_for_reuse() -> None:
    async def slow(_request: bytes) -> bytes:
        await asyncio.sleep(0.3)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    async def main() -> None:
        server = ScriptedServer(slow)
        async with server as url:
            transport = HttpTransport()
            task = asyncio.ensure_future(transport.send(url, HEADERS, b"{}", 5))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The late answer to the cancelled request must not be read as this one's.
            raw = await transport.send(url, HEADERS, b'{"second": 1}', 5)
            assert raw.body == b"{}" and server.connections == 2
            await transport.aclose()

    run(main())


def test_nothing_listening_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there

    async def main() -> None:
        with pytest.raises(TransportError, match=r"cannot connect to 127\.0\.0\.1") as caught:
            await HttpTransport().send(f"http://127.0.0.1:{port}/v1/x", HEADERS, b"{}", 5)
        assert caught.value.kind == "connection"

    run(main())


def test_a_header_with_a_line_break_is_refused_without_echoing_it() -> None:
    async def main() -> None:
        bad = {**HEADERS, "X-Extra": "sk-secret\r\nInjected: 1"}
        with pytest.raises(ConfigurationError, match="'X-Extra' header") as caught:
            await HttpTransport().send("http://127.0.0.1:9/v1/x", bad, b"{}", 5)
        assert "sk-secret" not in str(caught.value)

    run(main())


def test_host_header_for_default_ports_and_ipv6() -> None:
    transport = HttpTransport()
    origin, head = transport._head("https://api.openai.com/v1/embeddings?x=1", HEADERS)
    assert origin == ("https", "api.openai.com", 443)
    assert head.startswith(b"POST /v1/embeddings?x=1 HTTP/1.1\r\nHost: api.openai.com\r\n")
    _, head = transport._head("http://[::1]:8000/v1/chat/completions", HEADERS)
    assert b"Host: [::1]:8000\r\n" in head


def test_a_proxy_in_the_environment_picks_aiohttp(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy", "NO_PROXY", "no_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    assert isinstance(default_transport("https://api.openai.com/v1", max_connections=4),
                      HttpTransport)  # fmt: skip
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert isinstance(default_transport("https://api.openai.com/v1", max_connections=4),
                      AiohttpTransport)  # fmt: skip
    # A server on this machine is never reached through a proxy; NO_PROXY is honoured.
    assert isinstance(default_transport("http://127.0.0.1:8000/v1", max_connections=4),
                      HttpTransport)  # fmt: skip
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "vllm.internal")
    assert isinstance(default_transport("http://vllm.internal/v1", max_connections=4),
                      HttpTransport)  # fmt: skip

"""Hostile servers at the transport, both of them (the lean one and aiohttp's, used behind a
proxy): answers too large to hold (announced, endless, a gzip bomb, a header block without
end) and redirects. Each is that request's error, read in bounded memory and time; the
connection is dropped, nothing is followed, and other requests are answered."""

from __future__ import annotations

import asyncio
import gzip
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable

import pandas as pd
import pytest
from _hostile import HostileApi
from _raw_http import RawServer

import dfbatch  # noqa: F401  (registers .llm)
from dfbatch import ApiConfig, ConfigurationError
from dfbatch.engine import constants as C
from dfbatch.engine.core import Engine
from dfbatch.engine.http_client import HttpTransport, default_transport
from dfbatch.engine.retry import Action, classify_exception, classify_response
from dfbatch.engine.transport import AiohttpTransport, Transport, TransportError
from dfbatch.engine.types import Outcome, Request

KEY = "sk-proj-SENTINEL0123456789abcdefSECRET"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
CAP = 2**20  # a small cap, so that the tests move little data
CHUNK = b"x" * 65_536
MAX_CHUNKS = 2_048  # what a hostile server sends at most: 128 MiB, unless it is stopped
#: Bytes a server may get out past the cap before the client's close reaches it: what the
#: client reads in one go plus the sockets' buffers on loopback. Far below 128 MiB.
SENT_SLACK = 16 * 2**20
#: Memory the client may use while refusing an answer: the body up to the cap, inflating it
#: may hold it twice (zlib's output blocks, then their join), and the reads on their way
#: (measured: at most 2.6 MiB). Without the caps: 32 MiB for the gzip bomb, 128 MiB for others.
MEMORY_BOUND = 4 * CAP
OK_BODY = b'{"object": "list", "data": [{"index": 0, "embedding": [1.0]}]}'

Script = Callable[["HostileServer", asyncio.StreamWriter], Awaitable[bool]]
TRANSPORTS: dict[str, Callable[[], Transport]] = {
    "lean": lambda: HttpTransport(max_response_bytes=CAP),
    "aiohttp": lambda: AiohttpTransport(max_response_bytes=CAP),
}


class HostileServer(RawServer):
    """Answers a request whose body holds ``bad`` with ``script`` (which writes what it likes
    and says whether to keep the connection), any other with a small 200. Counts connections,
    requests, and the bytes the hostile script managed to send; ``done`` is set when it ends."""

    def __init__(self, script: Script) -> None:
        super().__init__()
        self.script = script
        self.sent = 0
        self.done = asyncio.Event()

    async def write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.sent += len(data)

    async def respond(self, request: bytes, writer: asyncio.StreamWriter) -> bool:
        if b"bad" not in request.partition(b"\r\n\r\n")[2]:
            ok = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
            writer.write(ok % (len(OK_BODY), OK_BODY))
            return True
        try:
            return await self.script(self, writer)
        finally:
            self.done.set()


async def announced_huge(server: HostileServer, writer: asyncio.StreamWriter) -> bool:
    await server.write(writer, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (128 * 2**20))
    for _ in range(MAX_CHUNKS):
        await server.write(writer, CHUNK)
    return False


async def endless_chunked(server: HostileServer, writer: asyncio.StreamWriter) -> bool:
    await server.write(writer, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(MAX_CHUNKS):
        await server.write(writer, b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
    return False


async def endless_until_close(server: HostileServer, writer: asyncio.StreamWriter) -> bool:
    await server.write(writer, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    for _ in range(MAX_CHUNKS):
        await server.write(writer, CHUNK)
    return False


BOMB_SIZE = 32 * CAP  # inflated; about 32 KiB compressed


async def gzip_bomb(server: HostileServer, writer: asyncio.StreamWriter) -> bool:
    packer, zeros = zlib.compressobj(1, zlib.DEFLATED, 31), bytes(len(CHUNK))  # 31: gzip
    bomb = b"".join(packer.compress(zeros) for _ in range(BOMB_SIZE // len(zeros)))
    bomb += packer.flush()
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb)
    await server.write(writer, head + bomb)
    return True


async def many_headers(server: HostileServer, writer: asyncio.StreamWriter) -> bool:
    pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1_000) for i in range(100))  # 100 KB
    await server.write(writer, b"HTTP/1.1 200 OK\r\n" + pad + b"Content-Length: 2\r\n\r\n{}")
    return True


async def endless_header(server: HostileServer, writer: asyncio.StreamWriter) -> bool:
    await server.write(writer, b"HTTP/1.1 200 OK\r\nX-Endless: ")
    for _ in range(MAX_CHUNKS):
        await server.write(writer, CHUNK)
    return False


@pytest.mark.parametrize("transport_name", TRANSPORTS)
@pytest.mark.parametrize(
    ("script", "message"),
    [
        pytest.param(
            announced_huge,
            "body (134,217,728 bytes announced) is over the 1 MiB limit",
            id="announced",
        ),
        pytest.param(endless_chunked, "body is over the 1 MiB limit", id="endless-chunked"),
        pytest.param(endless_until_close, "body is over the 1 MiB limit", id="endless-until-close"),
        pytest.param(gzip_bomb, "gzip body inflates to over the 1 MiB limit", id="gzip-bomb"),
        pytest.param(many_headers, "headers are over", id="many-headers"),
        pytest.param(endless_header, "headers are over", id="endless-header"),
    ],
)
def test_an_answer_over_a_cap_is_refused_in_bounded_memory_and_the_next_request_works(
    transport_name: str, script: Script, message: str
) -> None:
    """A too_large TransportError that names the cap; the client stops reading at once (the
    server gets little past the cap out, memory stays within the cap); a fresh connection
    answers the next request."""

    async def main() -> None:
        server = HostileServer(script)
        async with server as url:
            transport = TRANSPORTS[transport_name]()
            tracemalloc.start()
            try:
                with pytest.raises(TransportError) as caught:
                    await transport.send(url, HEADERS, b'{"input": "bad"}', 10)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            await asyncio.wait_for(server.done.wait(), 10)  # the server's writes failed
            raw = await transport.send(url, HEADERS, b'{"input": "good"}', 10)
            await transport.aclose()
        assert caught.value.kind == "too_large"
        assert message in str(caught.value) and "so it was not read" in str(caught.value)
        assert server.sent < CAP + SENT_SLACK, server.sent
        assert peak < MEMORY_BOUND, peak
        assert (raw.status, raw.body) == (200, OK_BODY)
        # The refused answer's connection is not reused. (aiohttp gives a connection back to
        # its pool once an answer has come whole: a gzip bomb or a header block that came
        # whole, read to its end, leaves nothing on the wire.)
        whole = transport_name == "aiohttp" and script in (gzip_bomb, many_headers)
        assert server.connections == (1 if whole else 2)

    asyncio.run(main())


@pytest.mark.parametrize("transport_name", TRANSPORTS)
def test_an_answer_within_the_cap_is_read_whole(transport_name: str) -> None:
    """Exactly the cap, plain then gzip: read and inflated whole, on one kept-alive connection."""
    body = b"y" * CAP
    packed = gzip.compress(body)

    async def plain(server: HostileServer, writer: asyncio.StreamWriter) -> bool:
        await server.write(writer, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (CAP, body))
        return True

    async def gzipped(server: HostileServer, writer: asyncio.StreamWriter) -> bool:
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
        await server.write(writer, head % len(packed) + packed)
        return True

    async def main() -> None:
        server = HostileServer(plain)
        async with server as url:
            transport = TRANSPORTS[transport_name]()
            assert (await transport.send(url, HEADERS, b'{"input": "bad"}', 10)).body == body
            server.script = gzipped
            assert (await transport.send(url, HEADERS, b'{"input": "bad"}', 10)).body == body
            await transport.aclose()
        assert server.connections == 1

    asyncio.run(main())


def run_engine(api: ApiConfig, texts: list[str], transport: Transport | None) -> list[Outcome]:
    """Each text as one embeddings request through an Engine; the outcomes in request order."""

    async def main() -> list[Outcome]:
        outcomes: list[Outcome] = []
        requests = [Request(i, "/embeddings", {"input": t}) for i, t in enumerate(texts)]
        await Engine(api, max_attempts=5, transport=transport).run(requests, outcomes.append)
        if transport is not None:
            await transport.aclose()
        return sorted(outcomes, key=lambda o: o.id)

    return asyncio.run(main())


@pytest.mark.parametrize("transport_name", TRANSPORTS)
def test_an_oversized_answer_fails_its_row_alone_and_is_not_retried(transport_name: str) -> None:
    """The same request would get the same answer: one attempt, that row's error, others
    answered."""

    async def main() -> tuple[list[Outcome], HostileServer]:
        server = HostileServer(endless_chunked)
        async with server as url:
            api = ApiConfig.resolve(base_url=url.removesuffix("/embeddings"), api_key=KEY)
            outcomes = await asyncio.to_thread(
                run_engine, api, ["good 0", "bad", "good 2"], TRANSPORTS[transport_name]()
            )
        return outcomes, server

    outcomes, server = asyncio.run(main())
    assert [o.ok for o in outcomes] == [True, False, True]
    error = outcomes[1].error
    assert error is not None and error.code == "too_large" and outcomes[1].attempts == 1
    assert "body is over the 1 MiB limit" in str(error) and "DFBATCH_MAX_RESPONSE_MIB" in str(error)
    assert sum(b'"bad"' in r for r in server.requests) == 1


def test_the_cap_is_set_by_an_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """DFBATCH_MAX_RESPONSE_MIB (MiB) reaches whichever transport a run picks; nonsense is a
    configuration error that names the variable."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("DFBATCH_MAX_RESPONSE_MIB", raising=False)
    assert default_transport("http://127.0.0.1:1/v1", max_connections=1)._limit == (  # type: ignore[attr-defined]
        C.MAX_RESPONSE_BYTES
    )
    monkeypatch.setenv("DFBATCH_MAX_RESPONSE_MIB", "256")
    assert default_transport("http://127.0.0.1:1/v1", max_connections=1)._limit == 256 * 2**20  # type: ignore[attr-defined]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    proxied = default_transport("https://api.openai.com/v1", max_connections=1)
    assert isinstance(proxied, AiohttpTransport) and proxied._limit == 256 * 2**20
    for bad in ("0", "-1", "lots", "inf", "nan"):
        monkeypatch.setenv("DFBATCH_MAX_RESPONSE_MIB", bad)
        with pytest.raises(ConfigurationError, match="DFBATCH_MAX_RESPONSE_MIB must be"):
            default_transport("http://127.0.0.1:1/v1", max_connections=1)


def test_an_oversized_answer_is_its_rows_error_in_the_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """End to end with the cap set by the environment: the row whose answer is 3 MiB fails
    with the reason in ``embedding_error``, once; every other row is answered."""
    monkeypatch.setenv("DFBATCH_MAX_RESPONSE_MIB", "1")
    df = pd.DataFrame({"text": ["a", "huge b", "c", "d"]})
    with HostileApi() as api:
        out = df.llm.embed("text", base_url=api.base_url, batch_size=1, cache=False, progress=False)
        sent = [body["input"] for _, _, body in api.requests]
    assert out["embedding_error"].notna().tolist() == [False, True, False, False]
    assert "network too_large: the answer's body" in out["embedding_error"].iloc[1]
    assert sorted(map(str, sent)) == ["['a']", "['c']", "['d']", "['huge b']"]  # no retry


# -- redirects ----------------------------------------------------------------------------------


PLAIN: dict[str, Callable[[], Transport]] = {"lean": HttpTransport, "aiohttp": AiohttpTransport}


def moved_to(target: str) -> Script:
    async def script(server: HostileServer, writer: asyncio.StreamWriter) -> bool:
        await server.write(
            writer,
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n"
            % target.encode(),
        )
        return True

    return script


async def answer_from_elsewhere(server: HostileServer, writer: asyncio.StreamWriter) -> bool:
    body = b'{"data": [{"index": 0, "embedding": [666.0]}]}'  # must never be taken
    await server.write(
        writer, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    return True


@pytest.mark.parametrize("transport_name", TRANSPORTS)
def test_no_transport_follows_a_redirect(transport_name: str) -> None:
    """Azure's api-key header never reaches the redirect's host, whose answer is never taken:
    the 307 is that request's error, clearly worded; other requests are answered."""

    async def main() -> tuple[list[Outcome], HostileServer]:
        elsewhere = HostileServer(answer_from_elsewhere)
        async with elsewhere as other_url:
            server = HostileServer(moved_to(other_url))
            async with server as url:
                api = ApiConfig.resolve(
                    base_url=url.removesuffix("/embeddings"), api_key=KEY, api_version="2024-06-01"
                )
                assert "api-key" in api.headers()  # Azure: the header aiohttp would pass on
                transport = PLAIN[transport_name]()
                raw = await transport.send(url, api.headers(), b'{"input": "bad"}', 5)
                assert raw.status == 307 and raw.body == b""
                await transport.aclose()
                outcomes = await asyncio.to_thread(
                    run_engine, api, ["good 0", "bad", "good 2"], PLAIN[transport_name]()
                )
        return outcomes, elsewhere

    outcomes, elsewhere = asyncio.run(main())
    assert elsewhere.requests == []  # nothing, the key least of all, went to the other host
    assert [o.ok for o in outcomes] == [True, False, True]
    error = outcomes[1].error
    assert error is not None and (error.status, error.code) == (307, "redirect")
    assert "never follows a redirect" in error.message and "set base_url" in error.message
    assert "/v1/embeddings'" in error.message and outcomes[1].attempts == 1


def test_through_a_proxy_a_redirect_is_not_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    """With HTTP_PROXY set the run goes through aiohttp; the proxy answers 307 to another host
    for one request: no request for that host goes out (aiohttp would have sent Azure's
    api-key header with it), the row fails with the redirect named, the others are answered."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    async def proxy_answer(server: HostileServer, writer: asyncio.StreamWriter) -> bool:
        await moved_to("http://attacker.test/v1/embeddings")(server, writer)
        return True

    async def main() -> tuple[list[Outcome], HostileServer]:
        proxy = HostileServer(proxy_answer)
        async with proxy as url:
            monkeypatch.setenv("HTTP_PROXY", url.removesuffix("/v1/embeddings"))
            api = ApiConfig.resolve(
                base_url="http://azure.example.test", api_key=KEY, api_version="2024-06-01"
            )
            assert isinstance(default_transport(api.base_url, max_connections=4), AiohttpTransport)
            outcomes = await asyncio.to_thread(run_engine, api, ["good 0", "bad", "good 2"], None)
        return outcomes, proxy

    outcomes, proxy = asyncio.run(main())
    request_lines = [r.split(b"\r\n", 1)[0] for r in proxy.requests]
    assert all(b"azure.example.test" in line for line in request_lines)  # through the proxy
    assert not any(b"attacker.test" in line for line in request_lines)
    assert len(request_lines) == 3
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].error is not None and outcomes[1].error.code == "redirect"
    assert "'http://attacker.test/v1/embeddings'" in outcomes[1].error.message


def test_the_retry_policy_fails_a_redirect_or_an_oversized_answer_at_once() -> None:
    """A 3xx fails its row (whatever x-should-retry says), naming where it pointed, cut to 200
    characters; too_large fails its row; a dropped connection is still retried."""
    moved = classify_response(
        301,
        {"location": "https://elsewhere.example/v1/" + "x" * 5_000, "x-should-retry": "true"},
        b"",
    )
    assert moved.action is Action.FAIL_ROW and moved.error is not None
    assert (moved.error.status, moved.error.code) == (301, "redirect")
    assert "redirects to 'https://elsewhere.example/v1/xxx" in moved.error.message
    assert len(moved.error.message) < 400
    bare = classify_response(304, {}, b"")
    assert bare.action is Action.FAIL_ROW and bare.error is not None
    assert bare.error.message.startswith("the server redirects, and dfbatch never follows")
    assert classify_exception("too_large", "over").action is Action.FAIL_ROW
    assert classify_exception("connection", "reset").action is Action.RETRY

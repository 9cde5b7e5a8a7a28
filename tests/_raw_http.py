"""A raw HTTP/1.1 server on 127.0.0.1 for the transport tests: it reads each request (head and
Content-Length body) and lets a subclass answer it with whatever bytes the test scripts."""

from __future__ import annotations

import asyncio


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request, head and body (its Content-Length bytes)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


class RawServer:
    """Counts connections and requests; ``respond`` answers one request and says whether to
    keep the connection. ``async with`` gives the embeddings URL it serves."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []

    async def respond(self, request: bytes, writer: asyncio.StreamWriter) -> bool:
        raise NotImplementedError

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                request = await read_request(reader)
                self.requests.append(request)
                if not await self.respond(request, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/embeddings"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

"""A hostile embeddings server for end-to-end tests: it answers most inputs, and misbehaves for
inputs that carry a marker word, the way real servers, proxies and attackers do.

    "leak"   400 whose message, type, code and x-request-id echo the key (and a Bearer line)
    "flaky"  500 whose message echoes the key (retried, logged at DEBUG, then the row's error)
    "huge"   200 whose body is padded to ``huge_bytes`` (past a small size cap)
    "moved"  307 to ``redirect_to``, a server that records what reaches it

A request signed with a key other than ``key`` gets OpenAI's 401, the key echoed in it as
OpenAI does ("Incorrect API key provided: sk-..."). Any other input gets a 4-float vector.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def do_POST(self) -> None:
        api = self.server.api
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        bearer = self.headers.get("Authorization", "")
        got = self.headers.get("api-key") or bearer.removeprefix("Bearer ")
        with api.lock:
            api.requests.append((self.path, dict(self.headers.items()), body))
        if api.key is not None and got != api.key:
            message = (
                f"Incorrect API key provided: {got}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            error = {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}
            return self._send(401, {"error": error})
        inputs = body.get("input")
        texts = inputs if isinstance(inputs, list) else [inputs]
        joined = " ".join(map(str, texts))
        if "leak" in joined:
            error = {
                "message": f"Invalid 'input' in a request signed 'Authorization: {bearer}' ({got})",
                "type": f"invalid_request_error:{got}",
                "param": "input",
                "code": got,
            }
            return self._send(400, {"error": error}, {"x-request-id": f"req_{got}"})
        if "flaky" in joined:
            error = {"message": f"The server had an error for key {got}", "type": "server_error"}
            return self._send(500, {"error": error})
        if "moved" in joined:
            return self._send(307, {}, {"Location": api.redirect_to or "http://127.0.0.1:9/"})
        # vectors of the length asked, else the model's own (answers are checked for it),
        # starting with the input's length so that tests can tell rows apart
        dims = body.get("dimensions") or (
            3072 if body.get("model") == "text-embedding-3-large" else 1536
        )
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": [float(len(str(t))), 1.0, 2.0, 3.0] + [0.0] * (dims - 4),
            }
            for i, t in enumerate(texts)
        ]
        answer: dict[str, Any] = {"object": "list", "data": data, "model": body.get("model")}
        answer["usage"] = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        if "huge" in joined:
            answer["padding"] = "x" * api.huge_bytes
        return self._send(200, answer)

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: HostileApi


class HostileApi:
    """``with HostileApi(key=KEY) as api:`` serves on ``api.base_url`` from a thread."""

    def __init__(
        self,
        *,
        key: str | None = None,
        redirect_to: str | None = None,
        huge_bytes: int = 3 * 2**20,
    ) -> None:
        self.key = key
        self.redirect_to = redirect_to
        self.huge_bytes = huge_bytes
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> HostileApi:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.api = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

"""The simulator's HTTP side: routes, the pipeline of a request, the endpoints' answers.

A request goes through: auth (401), quota (429 insufficient_quota), route, JSON body, model
(400 missing / 404 unknown), validation (400), the rate limiter (429), the fault draw, the
latency, the answer. Every response gets an ``x-request-id: req_<hex>`` header.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import secrets
import socket
import struct
import sys
import time
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from . import _usage
from ._answers import (
    estimated_tokens,
    expected_completion,
    expected_embeddings,
    input_texts,
    last_user_text,
)
from ._checks import (
    BAD_JSON,
    LIMITS_URL,
    QUOTA_MESSAGE,
    ApiError,
    check_auth,
    check_embeddings,
    check_generation,
    check_model,
    error_response,
    json_response,
    new_request_id,
)
from ._ratelimit import Admission, go_duration

if TYPE_CHECKING:
    import random
    from collections.abc import Awaitable, Callable, Iterable

    from ._ratelimit import RateLimiter
    from ._stats import SimStats


class ServerState(Protocol):
    """What the handlers read of their :class:`~dfbatch.testing.Simulator` (which imports
    them, so they name its shape rather than the class)."""

    api_key: str | None
    quota_exhausted: bool
    rate_limit_headers: bool
    shuffle_data: bool
    record_inputs: bool
    usage: str
    hang_seconds: float
    models: set[str]
    organization: str
    clock: Callable[[], float]
    stats: SimStats
    limiter: RateLimiter
    fault_rng: random.Random
    shuffle_rng: random.Random

    def reset_stats(self, *, refill: bool = False) -> None: ...
    def draw_latency(self) -> float: ...
    def draw_fault(self) -> str | None: ...


__all__ = ["HTML_PAGE", "Handlers"]


_log = logging.getLogger("dfbatch.testing")
SERVER_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"
HTML_PAGE = (
    "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
)


@lru_cache(maxsize=16)
def _float_row_format(dim: int) -> str:
    """``"[%.9g,...,%.9g]"``: 9 significant digits always parse back (via float64) to the
    exact float32, are 3x faster to write than ``repr`` and 40% shorter."""
    return "[" + ",".join(["%.9g"] * dim) + "]"


class Handlers:
    """The aiohttp handlers of one :class:`~dfbatch.testing.Simulator`."""

    def __init__(self, sim: ServerState) -> None:
        self.sim = sim
        #: Tasks of the API requests being handled (cancelled on stop: hung ones never end).
        self.tasks: set[asyncio.Task[Any]] = set()

    async def cancel_pending(self) -> None:
        """Cancel the requests still being handled (hangs, latencies) and wait for them."""
        tasks = [t for t in self.tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(3):  # let aiohttp's connection tasks see their handlers end
            await asyncio.sleep(0)

    def install(self, app: web.Application) -> None:
        """Add the routes and the ``x-request-id`` hook to ``app``."""
        app.on_response_prepare.append(self._on_prepare)
        router = app.router
        router.add_get("/sim/stats", self.sim_stats)
        router.add_post("/sim/reset", self.sim_reset)
        for endpoint in ("embeddings", "chat/completions", "completions"):
            router.add_post(f"/v1/{endpoint}", self._route(endpoint))
            router.add_post(f"/openai/deployments/{{deployment}}/{endpoint}", self._route(endpoint))
        router.add_get("/v1/models", self._route("models"))
        router.add_get("/v1/models/{model}", self._route("models"))
        router.add_route("*", "/{tail:.*}", self._route("other"))

    @staticmethod
    async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        if "x-request-id" not in response.headers:
            response.headers["x-request-id"] = new_request_id()

    def _route(self, endpoint: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._api(request, endpoint)

        return handler

    async def sim_stats(self, request: web.Request) -> web.Response:
        """GET /sim/stats: the counters as JSON (``?inputs=1`` adds ``inputs``)."""
        with_inputs = self.sim.record_inputs or request.query.get("inputs") in ("1", "true")
        return json_response(self.sim.stats.as_dict(inputs=with_inputs))

    async def sim_reset(self, request: web.Request) -> web.Response:
        """POST /sim/reset: zero the counters (``?refill=1`` also refills the buckets)."""
        self.sim.reset_stats(refill=request.query.get("refill") in ("1", "true"))
        return json_response({"ok": True})

    async def _api(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        st = self.sim.stats
        st.requests += 1
        st.by_endpoint[endpoint] += 1
        st.in_flight += 1
        st.max_concurrent = max(st.max_concurrent, st.in_flight)
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            resp = await self._answer(request, endpoint)
        except ApiError as exc:
            resp = exc.response()
        except web.HTTPException:
            raise
        except Exception:  # a bug, or a body too odd for the answer helpers: say so as OpenAI
            _log.exception("simulator failed to answer %s %s", request.method, request.path)
            resp = error_response(500, SERVER_ERROR_MESSAGE, type="server_error")
        finally:
            self.sim.stats.in_flight -= 1
            self.tasks.discard(task)  # type: ignore[arg-type]
        if resp is None:  # connection reset: nothing can be sent
            return web.Response(status=500)
        self.sim.stats.by_status[resp.status] += 1
        return resp

    async def _answer(self, request: web.Request, endpoint: str) -> web.Response | None:
        sim = self.sim
        check_auth(request, sim.api_key)
        if sim.quota_exhausted:
            sim.stats.quota_rejected += 1
            raise ApiError(429, QUOTA_MESSAGE, type="insufficient_quota", code="insufficient_quota")
        deployment = request.match_info.get("deployment")
        if deployment is not None and "api-version" not in request.query:
            raise ApiError(404, "Resource not found", param="api-version", code="404")
        if endpoint == "models":
            return self._models(request.match_info.get("model"))
        if endpoint == "other":
            raise ApiError(404, f"Invalid URL ({request.method} {request.path})")
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise ApiError(400, BAD_JSON) from None
        if not isinstance(body, dict):
            raise ApiError(400, BAD_JSON)
        model = check_model(body, deployment, sim.models)
        texts: list[str] = []
        dims: int | None = None
        fmt = "float"
        if endpoint == "embeddings":
            texts, dims, fmt, tokens = check_embeddings(body, model)
        else:
            check_generation(body, model, chat=endpoint == "chat/completions")
            tokens = estimated_tokens(body)

        headers: dict[str, str] = {}
        limiter = sim.limiter
        now = sim.clock()
        if limiter.active:
            verdict = limiter.admit(tokens, now)
            if sim.rate_limit_headers:
                headers = limiter.headers(now)
            if not verdict.admitted:
                return self._rate_limited(verdict, model, deployment, request, headers)
        st = sim.stats
        st.admitted += 1
        st.tokens_admitted += tokens
        if st.first_admitted is None:
            st.first_admitted = now
        st.last_admitted = now

        fault = sim.draw_fault()
        if fault is not None:
            sim.stats.faults[fault] += 1
            if fault == "reset":
                self._reset(request)
                return None
            if fault == "hang":
                await asyncio.sleep(sim.hang_seconds)
        delay = sim.draw_latency()
        if delay > 0:
            await asyncio.sleep(delay)
        if fault == "error_5xx":
            return self._server_error(headers)
        if fault == "non_json":
            return web.Response(text=HTML_PAGE, content_type="text/html", headers=headers)

        if endpoint == "embeddings":
            raw = self._embeddings(texts, model, dims, fmt, tokens)
            resp = web.Response(body=raw, headers=headers, content_type="application/json")
        else:
            resp = json_response(self._generation(body, endpoint), headers=headers)
        sim.stats.accepted += 1
        return resp

    # ------------------------------------------------------------------ answers
    def _models(self, model: str | None) -> web.Response:
        def entry(name: str) -> dict[str, Any]:
            return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "system"}

        if model is None:
            return json_response(
                {"object": "list", "data": [entry(m) for m in sorted(self.sim.models)]}
            )
        if model not in self.sim.models:
            raise ApiError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        return json_response(entry(model))

    def _embeddings(
        self, texts: list[str], model: str, dims: int | None, fmt: str, tokens: int
    ) -> bytes:
        """The embeddings response body, assembled by hand (json.dumps is the slow part)."""
        vecs = expected_embeddings(texts, model=model, dimensions=dims)
        if fmt == "base64":
            if sys.byteorder != "little":
                vecs = vecs.astype("<f4")
            b64 = base64.b64encode
            embs = ['"' + b64(row.tobytes()).decode("ascii") + '"' for row in vecs]
        else:
            fmt_row = _float_row_format(vecs.shape[1])
            embs = [fmt_row % tuple(row) for row in vecs.tolist()]
        order: Iterable[int] = range(len(texts))
        sim = self.sim
        if sim.shuffle_data:
            order = list(order)
            sim.shuffle_rng.shuffle(order)
        st = sim.stats
        st.embedding_inputs += len(texts)
        if sim.record_inputs:
            st.inputs.update(texts)
        data = ",".join(
            f'{{"object":"embedding","index":{i},"embedding":{embs[i]}}}' for i in order
        )
        if sim.usage == "tiktoken":
            tokens = _usage.embedding_tokens(texts, model)
        usage = f'{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}'
        return (
            f'{{"object":"list","data":[{data}],"model":{json.dumps(model)},"usage":{usage}}}'
        ).encode()

    def _generation(self, body: dict[str, Any], endpoint: str) -> dict[str, Any]:
        answer = expected_completion(body)
        if self.sim.usage == "tiktoken":
            answer = _usage.bill(answer, body)
        chat = endpoint == "chat/completions"
        if self.sim.record_inputs:
            if chat:
                self.sim.stats.inputs[last_user_text(body["messages"])] += 1
            else:
                self.sim.stats.inputs.update(input_texts(body.get("prompt")))
        prefix = "chatcmpl-" if chat else "cmpl-"
        return {
            "id": prefix + secrets.token_hex(12),
            "created": int(time.time()),
            **answer,
            "system_fingerprint": "fp_sim",
        }

    # ------------------------------------------------------------------ failures
    def _rate_limited(
        self,
        verdict: Admission,
        model: str,
        deployment: str | None,
        request: web.Request,
        headers: dict[str, str],
    ) -> web.Response:
        self.sim.stats.rate_limited += 1
        org = self.sim.organization
        if verdict.kind == "too_large":
            message = (
                f"Request too large for {model} in organization {org} on tokens per min "
                f"(TPM): Limit {verdict.limit}, Requested {verdict.requested}. The input or "
                f"output tokens must be reduced in order to run successfully. {LIMITS_URL}"
            )
            return error_response(
                429, message, type="tokens", code="rate_limit_exceeded", headers=headers
            )
        wait_ms = max(1, math.ceil(verdict.wait * 1000 - 1e-6))
        seconds = max(1, math.ceil(wait_ms / 1000))
        headers = {**headers, "retry-after-ms": str(wait_ms), "retry-after": str(seconds)}
        kind = verdict.kind or "requests"
        if deployment is not None:  # Azure's wording and code
            what = "call" if kind == "requests" else "token"
            version = request.query.get("api-version", "")
            message = (
                f"Requests to the deployment {deployment} under Azure OpenAI API version "
                f"{version} have exceeded {what} rate limit of your current pricing tier. "
                f"Please retry after {seconds} second{'s' if seconds > 1 else ''}."
            )
            return error_response(429, message, type=kind, code="429", headers=headers)
        label = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        message = (
            f"Rate limit reached for {model} in organization {org} on {label}: Limit "
            f"{verdict.limit}, Used {verdict.used}, Requested {verdict.requested}. Please "
            f"try again in {go_duration(verdict.wait)}. {LIMITS_URL}"
        )
        return error_response(429, message, type=kind, code="rate_limit_exceeded", headers=headers)

    def _server_error(self, headers: dict[str, str]) -> web.Response:
        status = self.sim.fault_rng.choice((500, 502, 503))
        if status == 500:
            message = SERVER_ERROR_MESSAGE
        else:
            message = "The engine is currently overloaded, please try again later"
        return error_response(status, message, type="server_error", headers=headers)

    @staticmethod
    def _reset(request: web.Request) -> None:
        """Drop the connection with a TCP RST (SO_LINGER 0), sending nothing."""
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

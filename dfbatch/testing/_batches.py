"""The simulator's Batch API: ``/v1/files`` and ``/v1/batches``, state in memory.

A batch moves through OpenAI's statuses on the simulator's clock, ``batch_seconds`` from
creation to completion (``validating`` for the first tenth, ``in_progress`` while its lines
are answered one after the other, ``finalizing`` for the last tenth)::

    validating -> in_progress -> finalizing -> completed
              \\-> failed (validation errors, the enqueued-token limit)
    in_progress -> expired (fault ``expire_at``)       cancelling -> cancelled

Every line is answered as the online endpoint would answer it (the same functions of
``_answers``); a line the endpoint would refuse goes to the error file with its 400 body.
Output lines come in a shuffled (seeded) order: clients must join on ``custom_id``.

Faults (:class:`BatchFaults`, ``sim.batches.faults``): failed validation, expiry after part
of the lines, a batch that stays ``in_progress``, a cap on tokens enqueued per model, malformed
output lines, and holds on uploads, creations and downloads (to kill a client mid-step).
Counters (``sim.batches.stats``, ``GET /sim/batches``) say what was uploaded, created and
submitted: ``submitted`` counts each row's text over every created batch, so a test can check
that no row was paid for twice.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import _usage
from ._answers import expected_completion, expected_embeddings, input_texts, last_user_text
from ._checks import (
    ApiError,
    check_auth,
    check_embeddings,
    check_generation,
    check_model,
    json_response,
)
from ._handlers import _float_row_format

__all__ = ["BatchFaults", "BatchStats", "BatchStore"]

#: The API's limits on one input file and one batch.
MAX_FILE_LINES = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_BATCH_EMBEDDING_INPUTS = 50_000
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions")
_SHARE_VALIDATING = 0.1
_SHARE_FINALIZING = 0.1
_TERMINAL = ("completed", "failed", "expired", "cancelled")
TOKEN_LIMIT_MESSAGE = (
    "Enqueued token limit reached for {model} in organization {org}. Limit: {limit} enqueued "
    "tokens. The number of enqueued tokens has surpassed the configured limit. Please try again "
    "once some in_progress batches have been completed."
)


@dataclass
class BatchFaults:
    """Batch faults; change them on ``sim.batches.faults`` while the simulator runs.

    * ``fail_validation``: the next N batches fail validation (``errors.data`` says why);
    * ``expire_at``: batches expire once this share of their lines is answered (0..1);
    * ``stuck``: batches stay ``in_progress`` (until cancelled);
    * ``enqueued_token_limit``: tokens that may be enqueued per model over the batches still
      validating or in progress; a batch over it fails with ``token_limit_exceeded``;
    * ``malformed_lines``: the first N lines of each output file are not JSON;
    * ``wrong_answers``: the first N answered lines of each batch answer something else than
      their request asked (an embedding one number short, a chat answer with one choice too
      many), each well formed: only a check against the request finds them;
    * ``hold_upload``, ``hold_create``, ``hold_content``: seconds each such request is held
      after the server took it in (the file exists, the batch is created, before answering);
      uploads are held only once ``hold_upload_after`` files have been created.
    """

    fail_validation: int = 0
    expire_at: float | None = None
    stuck: bool = False
    enqueued_token_limit: int | None = None
    malformed_lines: int = 0
    wrong_answers: int = 0
    hold_upload: float = 0.0
    hold_upload_after: int = 0
    hold_create: float = 0.0
    hold_content: float = 0.0


@dataclass
class BatchStats:
    """What the Batch endpoints saw."""

    uploads_started: int = 0
    files_created: int = 0
    files_deleted: int = 0
    lines_uploaded: int = 0
    batches_created: int = 0
    batches_refused: int = 0  # failed for the enqueued-token limit
    retrieves: int = 0
    lists: int = 0
    cancels: int = 0
    content_downloads: int = 0
    content_started: int = 0
    #: per row's text (an embedding input, the last user message, a prompt): how many
    #: created batches carried it. A value over 1 is a row paid for twice.
    submitted: Counter[str] = field(default_factory=Counter)
    #: per row's text: how many batches answered it (what is paid for). Lines an expired or
    #: cancelled batch never ran are submitted but not answered.
    answered: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("submitted", "answered")}
        out["rows_submitted"] = sum(self.submitted.values())
        out["rows_submitted_twice"] = sum(1 for v in self.submitted.values() if v > 1)
        out["rows_answered"] = sum(self.answered.values())
        out["rows_answered_twice"] = sum(1 for v in self.answered.values() if v > 1)
        return out


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def shape(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    model: str | None
    created_at: int
    started: float  # the simulator's clock at creation
    lines: list[dict[str, Any]]
    tokens: int
    metadata: dict[str, Any] | None
    status: str = "validating"
    errors: list[dict[str, Any]] | None = None
    done: int = 0  # lines answered so far
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    cancel_at: float | None = None
    stamps: dict[str, int] = field(default_factory=dict)

    def shape(self) -> dict[str, Any]:
        total = len(self.lines) if self.errors is None else 0
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.stamps.get("in_progress"),
            "expires_at": self.created_at + 86_400,
            "finalizing_at": self.stamps.get("finalizing"),
            "completed_at": self.stamps.get("completed"),
            "failed_at": self.stamps.get("failed"),
            "expired_at": self.stamps.get("expired"),
            "cancelling_at": self.stamps.get("cancelling"),
            "cancelled_at": self.stamps.get("cancelled"),
            "request_counts": {"total": total, "completed": self.done, "failed": self.failed},
            "metadata": self.metadata,
        }


class BatchStore:
    """The files and batches of one simulator, and their HTTP handlers."""

    def __init__(
        self,
        *,
        models: Callable[[], set[str]],
        api_key: Callable[[], str | None],
        clock: Callable[[], float] = time.monotonic,
        batch_seconds: float = 2.0,
        seed: int = 0,
        organization: str = "org-sim",
        usage: str = "words",
    ) -> None:
        self.usage = usage  # billed as the online endpoints bill: "words" or "tiktoken"
        self._models = models
        self._api_key = api_key
        self.clock = clock
        self.batch_seconds = batch_seconds
        self.faults = BatchFaults()
        self.stats = BatchStats()
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self.organization = organization
        self._rng = random.Random(seed + 3)

    # ---------------------------------------------------------------- routes
    def install(self, app: web.Application) -> None:
        """Add the routes (before the simulator's catch-all)."""
        r = app.router
        r.add_post("/v1/files", self._wrap(self.upload))
        r.add_get("/v1/files/{id}", self._wrap(self.retrieve_file))
        r.add_get("/v1/files/{id}/content", self._wrap(self.content))
        r.add_delete("/v1/files/{id}", self._wrap(self.delete_file))
        r.add_post("/v1/batches", self._wrap(self.create))
        r.add_get("/v1/batches", self._wrap(self.list))
        r.add_get("/v1/batches/{id}", self._wrap(self.retrieve))
        r.add_post("/v1/batches/{id}/cancel", self._wrap(self.cancel))
        r.add_get("/sim/batches", self.sim_stats)

    def _wrap(self, handler: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                check_auth(request, self._api_key())
                return await handler(request)
            except ApiError as exc:
                return exc.response()

        return wrapped

    async def sim_stats(self, request: web.Request) -> web.Response:
        return json_response(self.stats.as_dict())

    # ---------------------------------------------------------------- files
    async def upload(self, request: web.Request) -> web.Response:
        self.stats.uploads_started += 1
        if not request.content_type.startswith("multipart/"):
            raise ApiError(400, "Expected a multipart/form-data upload with 'file' and 'purpose'")
        reader = await request.multipart()
        purpose = None
        filename = "upload.jsonl"
        content = None
        while True:
            part = await reader.next()
            if part is None:
                break
            if part.name == "purpose":
                purpose = (await part.read()).decode()  # type: ignore[union-attr]
            elif part.name == "file":
                filename = part.filename or filename  # type: ignore[union-attr]
                chunks = []
                size = 0
                while chunk := await part.read_chunk(1 << 20):  # type: ignore[union-attr]
                    size += len(chunk)
                    if size > MAX_FILE_BYTES:
                        raise ApiError(400, f"File is too large: the limit is {MAX_FILE_BYTES}")
                    chunks.append(chunk)
                content = b"".join(chunks)
        if content is None or purpose is None:
            raise ApiError(400, "Missing 'file' or 'purpose' in the upload", param="file")
        if purpose != "batch":
            raise ApiError(400, f"Unsupported purpose {purpose!r} (only 'batch' here)")
        f = _File("file-" + secrets.token_hex(12), filename, purpose, content, int(time.time()))
        self.files[f.id] = f
        self.stats.files_created += 1
        self.stats.lines_uploaded += content.count(b"\n") + (not content.endswith(b"\n"))
        if self.faults.hold_upload and self.stats.files_created > self.faults.hold_upload_after:
            await asyncio.sleep(self.faults.hold_upload)
        return json_response(f.shape())

    def _file(self, request: web.Request) -> _File:
        f = self.files.get(request.match_info["id"])
        if f is None:
            raise ApiError(404, f"No such File object: {request.match_info['id']}")
        return f

    async def retrieve_file(self, request: web.Request) -> web.Response:
        return json_response(self._file(request).shape())

    async def content(self, request: web.Request) -> web.StreamResponse:
        f = self._file(request)
        self.stats.content_started += 1
        if self.faults.hold_content:
            await asyncio.sleep(self.faults.hold_content)
        self.stats.content_downloads += 1
        return web.Response(body=f.content, content_type="application/octet-stream")

    async def delete_file(self, request: web.Request) -> web.Response:
        f = self._file(request)
        del self.files[f.id]
        self.stats.files_deleted += 1
        return json_response({"id": f.id, "object": "file", "deleted": True})

    # ---------------------------------------------------------------- batches
    async def create(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise ApiError(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "We could not parse the JSON body of your request.")
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise ApiError(400, f"Invalid endpoint {endpoint!r}", param="endpoint")
        if body.get("completion_window") != "24h":
            raise ApiError(400, "completion_window must be '24h'", param="completion_window")
        f = self.files.get(str(body.get("input_file_id")))
        if f is None:
            raise ApiError(404, f"No such File object: {body.get('input_file_id')}")
        lines, model, tokens, errors = self._validate(f, endpoint)
        batch = _Batch(
            id="batch_" + secrets.token_hex(12),
            input_file_id=f.id,
            endpoint=endpoint,
            model=model,
            created_at=int(time.time()),
            started=self.clock(),
            lines=lines,
            tokens=tokens,
            metadata=body.get("metadata") if isinstance(body.get("metadata"), dict) else None,
        )
        self.stats.batches_created += 1
        if self.faults.fail_validation > 0:
            self.faults.fail_validation -= 1
            errors = errors or [
                {
                    "code": "invalid_request",
                    "message": "Simulated validation failure.",
                    "param": None,
                    "line": 1,
                }
            ]
        limit = self.faults.enqueued_token_limit
        if not errors and limit is not None and model is not None:
            queued = sum(
                b.tokens
                for b in self.batches.values()
                if b.model == model and self._advance(b).status in ("validating", "in_progress")
            )
            if queued + tokens > limit:
                self.stats.batches_refused += 1
                message = TOKEN_LIMIT_MESSAGE.format(
                    model=model, org=self.organization, limit=limit
                )
                errors = [
                    {
                        "code": "token_limit_exceeded",
                        "message": message,
                        "param": None,
                        "line": None,
                    }
                ]
        if errors:
            batch.errors = errors
            batch.lines = []
        else:
            for line in lines:
                for text in _row_texts(endpoint, line["body"]):
                    self.stats.submitted[text] += 1
        self.batches[batch.id] = batch
        if self.faults.hold_create:
            await asyncio.sleep(self.faults.hold_create)
        return json_response(self._advance(batch).shape())

    def _validate(
        self, f: _File, endpoint: str
    ) -> tuple[list[dict[str, Any]], str | None, int, list[dict[str, Any]] | None]:
        lines: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        models: set[str] = set()
        tokens = 0
        inputs = 0
        raw_lines = f.content.splitlines()
        if len(raw_lines) > MAX_FILE_LINES:
            errors.append(_err("too_many_requests", f"over {MAX_FILE_LINES} requests", None))
        for n, raw in enumerate(raw_lines, 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                errors.append(_err("invalid_json_line", "This line is not valid JSON.", n))
                continue
            if not isinstance(line, dict) or not isinstance(line.get("body"), dict):
                errors.append(_err("invalid_request", "A line needs a 'body' object.", n))
                continue
            cid = line.get("custom_id")
            if not isinstance(cid, str) or cid in seen:
                errors.append(_err("duplicate_custom_id", "custom_id missing or repeated.", n))
                continue
            seen.add(cid)
            if line.get("method") != "POST" or line.get("url") != endpoint:
                errors.append(_err("mismatched_endpoint", f"The line's url must be {endpoint}.", n))
                continue
            model = line["body"].get("model")
            models.add(str(model))
            body = line["body"]
            if endpoint == "/v1/embeddings":
                texts = input_texts(body.get("input"))
                inputs += len(texts)
                tokens += sum(len(t) // 4 + 1 for t in texts)
            else:
                tokens += sum(len(t) // 4 + 1 for t in _row_texts(endpoint, body))
                tokens += int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
            lines.append(line)
        if len(models) > 1:
            errors.append(_err("mismatched_model", "All lines must use the same model.", None))
        if inputs > MAX_BATCH_EMBEDDING_INPUTS:
            errors.append(
                _err(
                    "too_many_inputs",
                    f"{inputs} embedding inputs, over the {MAX_BATCH_EMBEDDING_INPUTS} limit",
                    None,
                )
            )
        if not lines and not errors:
            errors.append(_err("empty_file", "The input file has no requests.", None))
        model = next(iter(models)) if len(models) == 1 else None
        return lines, model, tokens, errors or None

    def _batch(self, request: web.Request) -> _Batch:
        b = self.batches.get(request.match_info["id"])
        if b is None:
            raise ApiError(404, f"No such Batch object: {request.match_info['id']}")
        return b

    async def retrieve(self, request: web.Request) -> web.Response:
        self.stats.retrieves += 1
        return json_response(self._advance(self._batch(request)).shape())

    async def list(self, request: web.Request) -> web.Response:
        self.stats.lists += 1
        try:
            limit = max(1, min(100, int(request.query.get("limit", "20"))))
        except ValueError:
            raise ApiError(400, "limit must be an integer", param="limit") from None
        after = request.query.get("after")
        ordered = list(reversed(self.batches.values()))  # newest first
        if after is not None:
            ids = [b.id for b in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        page = ordered[:limit]
        data = [self._advance(b).shape() for b in page]
        return json_response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(ordered) > limit,
            }
        )

    async def cancel(self, request: web.Request) -> web.Response:
        self.stats.cancels += 1
        b = self._advance(self._batch(request))
        if b.status in _TERMINAL:
            raise ApiError(409, f"Cannot cancel a batch with status '{b.status}'.")
        if b.status != "cancelling":
            b.status = "cancelling"
            b.stamps["cancelling"] = int(time.time())
            b.cancel_at = self.clock()
        return json_response(b.shape())

    # ---------------------------------------------------------------- the clock
    def _advance(self, b: _Batch) -> _Batch:
        """Move ``b`` to where the clock says it is."""
        if b.status in _TERMINAL:
            return b
        now = self.clock()
        elapsed = now - b.started
        span = max(self.batch_seconds, 1e-9)
        if b.status == "cancelling":
            self._finish(b, "cancelled", b.done)
            return b
        if b.errors is not None:
            if elapsed >= span * _SHARE_VALIDATING:
                b.status = "failed"
                b.stamps["failed"] = int(time.time())
            return b
        if elapsed < span * _SHARE_VALIDATING:
            return b
        if b.status == "validating":
            b.status = "in_progress"
            b.stamps["in_progress"] = int(time.time())
        work = span * (1 - _SHARE_VALIDATING - _SHARE_FINALIZING)
        share = min(1.0, (elapsed - span * _SHARE_VALIDATING) / work)
        if self.faults.stuck:
            share = min(share, 0.5)
        n = len(b.lines)
        expire = self.faults.expire_at
        if expire is not None and share >= expire:
            self._finish(b, "expired", int(n * expire))
            return b
        b.done = int(n * share)
        if self.faults.stuck or share < 1.0:
            return b
        if elapsed < span:
            if b.status != "finalizing":
                b.status = "finalizing"
                b.stamps["finalizing"] = int(time.time())
            return b
        self._finish(b, "completed", n)
        return b

    def _finish(self, b: _Batch, status: str, done: int) -> None:
        """Answer the first ``done`` lines, write the output and error files, end ``b``."""
        out: list[bytes] = []
        err: list[bytes] = []
        completed = failed = 0
        for i, line in enumerate(b.lines):
            if i < done:
                for text in _row_texts(b.endpoint, line["body"]):
                    self.stats.answered[text] += 1
                status_code, body = self._answer(b.endpoint, line["body"])
                if status_code == 200 and completed < self.faults.wrong_answers:
                    body = _wrong(body)
                record = {
                    "id": "batch_req_" + secrets.token_hex(12),
                    "custom_id": line["custom_id"],
                    "response": {
                        "status_code": status_code,
                        "request_id": "req_" + secrets.token_hex(16),
                        "body": body,
                    },
                    "error": None,
                }
                if status_code == 200:
                    completed += 1
                    out.append(json.dumps(record).encode())
                else:
                    failed += 1
                    err.append(json.dumps(record).encode())
            else:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                message = (
                    "This request could not be executed before the completion window expired."
                    if status == "expired"
                    else "This request was not executed because the batch was cancelled."
                )
                record = {
                    "id": "batch_req_" + secrets.token_hex(12),
                    "custom_id": line["custom_id"],
                    "response": None,
                    "error": {"code": code, "message": message},
                }
                err.append(json.dumps(record).encode())
        self._rng.shuffle(out)
        for k in range(min(self.faults.malformed_lines, len(out))):
            out[k] = b'{"id": "batch_req_broken", "custom_id": ' + str(k).encode()
        if out:
            self.output_file(b, out, "output")
        if err:
            self.output_file(b, err, "error")
        b.done, b.failed = completed, failed
        b.status = status
        b.stamps[status] = int(time.time())
        if status == "completed":
            b.stamps.setdefault("finalizing", int(time.time()))

    def output_file(self, b: _Batch, lines: list[bytes], kind: str) -> None:
        f = _File(
            "file-" + secrets.token_hex(12),
            f"{b.id}_{kind}.jsonl",
            "batch_output",
            b"\n".join(lines) + b"\n",
            int(time.time()),
        )
        self.files[f.id] = f
        if kind == "output":
            b.output_file_id = f.id
        else:
            b.error_file_id = f.id

    def _answer(self, endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """What the online endpoint would answer (status, JSON body)."""
        try:
            model = check_model(body, None, self._models())
            if endpoint == "/v1/embeddings":
                texts, dims, fmt, tokens = check_embeddings(body, model)
                if self.usage == "tiktoken":
                    tokens = _usage.embedding_tokens(texts, model)
                return 200, _embeddings_body(texts, model, dims, fmt, tokens)
            check_generation(body, model, chat=endpoint == "/v1/chat/completions")
        except ApiError as exc:
            error = {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
            return exc.status, {"error": error}
        prefix = "chatcmpl-" if endpoint == "/v1/chat/completions" else "cmpl-"
        answer = expected_completion(body)
        if self.usage == "tiktoken":
            answer = _usage.bill(answer, body)
        return 200, {
            "id": prefix + secrets.token_hex(12),
            "created": int(time.time()),
            **answer,
            "system_fingerprint": "fp_sim",
        }


def _wrong(body: dict[str, Any]) -> dict[str, Any]:
    """A well-formed answer to another request than the one sent."""
    body = json.loads(json.dumps(body))
    for item in body.get("data") or []:
        vector = item["embedding"]
        if isinstance(vector, str):  # base64 float32: drop the last number
            raw = base64.b64decode(vector)[:-4]
            item["embedding"] = base64.b64encode(raw).decode()
        else:
            item["embedding"] = vector[:-1]
    choices = body.get("choices")
    if choices:
        choices.append({**choices[-1], "index": len(choices)})
    return body


def _err(code: str, message: str, line: int | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}


def _row_texts(endpoint: str, body: dict[str, Any]) -> list[str]:
    """The texts a line carries, one per row it answers (for the ``submitted`` counter)."""
    if endpoint == "/v1/embeddings":
        return input_texts(body.get("input"))
    if endpoint == "/v1/chat/completions":
        messages = body.get("messages")
        return [last_user_text(messages)] if isinstance(messages, list) else []
    return input_texts(body.get("prompt"))


def _embeddings_body(
    texts: list[str], model: str, dims: int | None, fmt: str, tokens: int
) -> dict[str, Any]:
    vecs = expected_embeddings(texts, model=model, dimensions=dims)
    if fmt == "base64":
        if sys.byteorder != "little":
            vecs = vecs.astype("<f4")
        embs: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in vecs]
    else:
        row_format = _float_row_format(vecs.shape[1])  # the online endpoint's 9 digits
        embs = [json.loads(row_format % tuple(row)) for row in vecs.tolist()]
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embs)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }

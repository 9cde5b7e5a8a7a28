"""The Batch API's HTTP calls: files (upload, content, delete) and batches (create, retrieve,
list, cancel), through aiohttp.

The key goes in the headers :meth:`ApiConfig.headers` builds and nowhere else; error messages
are the server's, bounded and with the key cut out. 5xx, 429, 408/409 and dropped connections
are retried (the engine's retry policy decides, full-jitter backoff); any other refusal is a
run-level error that names the call. Uploads stream the file from disk; downloads stream to a
file, bounded in size, so neither an input nor an output file is ever whole in memory.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from ..engine import constants as C
from ..engine.config import ApiConfig
from ..engine.errors import RunAbortedError
from ..engine.retry import Action, backoff, classify_exception, classify_response

log = logging.getLogger(__name__)


class BatchApiError(RunAbortedError):
    """A files/batches call the server refused; the message names the call and the reason."""


class BatchApi:
    """One session's worth of files and batches calls against ``api``."""

    def __init__(self, api: ApiConfig, *, rng: random.Random | None = None) -> None:
        self.api = api
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<BatchApi {self.api!r}>"

    async def __aenter__(self) -> BatchApi:
        timeout = aiohttp.ClientTimeout(
            total=C.BATCH_HTTP_TIMEOUT, connect=C.DEFAULT_CONNECT_TIMEOUT
        )
        self._session = aiohttp.ClientSession(timeout=timeout, trust_env=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, *, json_body: bool) -> dict[str, str]:
        headers = self.api.headers()
        if not json_body:
            headers.pop("Content-Type", None)
        return headers

    # -- calls -------------------------------------------------------------------------------

    async def upload(self, path: Path, filename: str) -> dict[str, Any]:
        """``POST /files`` (purpose=batch), the file streamed from disk."""

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("purpose", "batch")
            data.add_field(
                "file",
                open(path, "rb"),  # noqa: SIM115 - aiohttp streams and closes it
                filename=filename,
                content_type="application/jsonl",
            )
            return data

        return await self._call("POST", "/files", f"upload {filename}", form=form)

    async def create(
        self, file_id: str, endpoint: str, metadata: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "input_file_id": file_id,
            "endpoint": endpoint,
            "completion_window": C.BATCH_COMPLETION_WINDOW,
        }
        if metadata:
            body["metadata"] = dict(metadata)
        # Never retried here: a create whose answer was lost may have made a batch, and a
        # second one would be paid twice. The caller looks for it (find_by_file) first.
        return await self._call(
            "POST", "/batches", f"create a batch from {file_id}", json=body, attempts=1
        )

    async def find_by_file(self, file_id: str, *, pages: int = C.BATCH_LIST_PAGES) -> Any:
        """The newest batch made from ``file_id`` that did not fail (reading at most ``pages``
        pages), or None."""
        after = None
        for _ in range(pages):
            page = await self.list(after=after)
            data = page.get("data")
            if not isinstance(data, list):
                return None
            for batch in data:
                if (
                    isinstance(batch, dict)
                    and batch.get("input_file_id") == file_id
                    and batch.get("status") != "failed"  # refused: nothing was submitted
                ):
                    return batch
            last = page.get("last_id")
            if not page.get("has_more") or not isinstance(last, str):
                return None
            after = last
        return None

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/batches/{batch_id}", f"check batch {batch_id}")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return await self._call("POST", f"/batches/{batch_id}/cancel", f"cancel {batch_id}")

    async def list(self, *, after: str | None = None, limit: int = 100) -> dict[str, Any]:
        params = {"limit": str(limit)}
        if after:
            params["after"] = after
        return await self._call("GET", "/batches", "list batches", params=params)

    async def delete_file(self, file_id: str) -> dict[str, Any]:
        return await self._call("DELETE", f"/files/{file_id}", f"delete {file_id}")

    async def download(self, file_id: str, target: Path) -> int:
        """``GET /files/{id}/content`` streamed into ``target``; its size in bytes."""
        what = f"download {file_id}"
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._request("GET", f"/files/{file_id}/content") as resp:
                    if resp.status >= 300:
                        body = await resp.content.read(C.BATCH_MAX_STATUS_BYTES)
                        self._verdict_or_raise(resp.status, resp.headers, body, what, attempt)
                        await self._sleep(attempt)
                        continue
                    size = 0
                    with open(target, "wb") as out:
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            size += len(chunk)
                            if size > C.BATCH_MAX_OUTPUT_BYTES:
                                raise BatchApiError(
                                    f"{what}: the file is over "
                                    f"{C.BATCH_MAX_OUTPUT_BYTES:,} bytes; refusing it"
                                )
                            out.write(chunk)
                    return size
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._network_or_raise(exc, what, attempt)
                await self._sleep(attempt)

    # -- plumbing ----------------------------------------------------------------------------

    def _request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
        if self._session is None:
            raise RuntimeError("BatchApi is used outside `async with`")
        return self._session.request(
            method,
            self.api.url(endpoint),
            headers=self._headers(json_body="json" in kwargs),
            **kwargs,
        )

    async def _call(
        self,
        method: str,
        endpoint: str,
        what: str,
        *,
        form: Any = None,
        attempts: int = C.BATCH_HTTP_ATTEMPTS,
        **kwargs: Any,
    ) -> dict[str, Any]:
        attempt = 0
        while True:
            attempt += 1
            if form is not None:
                kwargs["data"] = form()  # a fresh body (and file handle) per attempt
            try:
                async with self._request(method, endpoint, **kwargs) as resp:
                    body = await resp.content.read(C.BATCH_MAX_STATUS_BYTES + 1)
                    if len(body) > C.BATCH_MAX_STATUS_BYTES:
                        raise BatchApiError(f"{what}: the server's answer is too large")
                    verdict = self._verdict_or_raise(
                        resp.status, resp.headers, body, what, attempt, attempts
                    )
                    if verdict is not None:
                        return verdict
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._network_or_raise(exc, what, attempt, attempts)
            await self._sleep(attempt)

    def _verdict_or_raise(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        what: str,
        attempt: int,
        attempts: int = C.BATCH_HTTP_ATTEMPTS,
    ) -> dict[str, Any] | None:
        """The answer's JSON object; None to retry; raises for a refusal."""
        verdict = classify_response(status, headers, body)
        if verdict.action is Action.SUCCESS:
            if isinstance(verdict.body, dict):
                return verdict.body
            raise BatchApiError(f"{what}: the server's answer is not a JSON object")
        if verdict.action is Action.RETRY and attempt < attempts:
            log.debug("%s: %s; retrying", what, verdict.error)
            return None
        message = self._redact(f"{what}: {verdict.error}")
        kind = verdict.abort or BatchApiError
        raise kind(f"{message}. Fix: check the key, base_url and that it offers the Batch API")

    def _network_or_raise(
        self, exc: BaseException, what: str, attempt: int, attempts: int = C.BATCH_HTTP_ATTEMPTS
    ) -> None:
        kind = "timeout" if isinstance(exc, TimeoutError) else "connection"
        verdict = classify_exception(kind, str(exc))
        if verdict.action is Action.RETRY and attempt < attempts:
            return
        raise BatchApiError(
            self._redact(f"{what}: {str(exc) or type(exc).__name__}") + ". Fix: check the network "
            "and base_url; rerun the same call to pick the job up where it stopped"
        ) from None

    def _redact(self, text: str) -> str:
        key = self.api.api_key.reveal() if self.api.api_key else None
        return text.replace(key, "<redacted>") if key else text

    async def _sleep(self, attempt: int) -> None:
        await asyncio.sleep(backoff(attempt, self._rng.random()))


# -- reading the server's batch objects ----------------------------------------------------


_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


def valid_id(value: Any) -> bool:
    """A file or batch id the server may give: it goes into URL paths, so nothing else.

    >>> valid_id("file-abc_1"), valid_id("../../v1/models"), valid_id(None)
    (True, False, False)
    """
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def request_counts(value: Any) -> dict[str, int]:
    """A batch's ``request_counts``, each a whole number in range (0 when it is not)."""
    out = {"completed": 0, "failed": 0, "total": 0}
    if isinstance(value, dict):
        for k in out:
            v = value.get(k)
            if isinstance(v, int) and 0 <= v < 1 << 40:
                out[k] = v
    return out


def failure_reasons(batch: dict[str, Any]) -> list[tuple[str, str]]:
    """(code, message) of a failed batch's ``errors.data``: at most 100, each cut short."""
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    out: list[tuple[str, str]] = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict):
            continue
        code = item.get("code")
        message = item.get("message")
        line = item.get("line")
        text = message[:500] if isinstance(message, str) else ""
        if isinstance(line, int):
            text = f"line {line}: {text}"
        out.append((code[:100] if isinstance(code, str) else "error", text))
        if len(out) >= 100:
            break
    return out

"""The Batch backend: the same requests as the online engine, sent through ``/v1/batches``.

    reconcile: the record's open jobs for this server, endpoint and model
        writing  -> dropped (nothing reached the server)
        uploaded -> the batch made from that file if the server has one, else created now
        created  -> waited for like the new ones
    submit:    requests (less the inputs an open job already carries) -> JSONL files on disk,
               split at the API's limits -> record the lines -> upload -> record the file ->
               create -> record the batch
    wait:      poll (``poll_interval``, 1.5x longer each time, up to 5 minutes); a batch refused
               for the enqueued-token limit is created again once an earlier one ends (waves)
    download:  each ended batch's output and error files, line by line -> ``on_outcome`` per
               line (the job caches answers) -> flush -> record the job done

Every step is committed to the record before the next call goes out, so a kill -9 anywhere
costs no double payment: see :mod:`dfbatch.cache.batch_record`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from ..cache.batch_record import BatchRecord, JobRow, custom_id, parse_custom_id, server_id
from ..engine import constants as C
from ..engine.answers import answer_check, asked_of, check_as_asked
from ..engine.config import ApiConfig, scrub_error
from ..engine.errors import (
    BatchFailedError,
    ConfigurationError,
    DfbatchError,
    RunAbortedError,
)
from ..engine.types import ErrorInfo, Outcome, Request
from .api import BatchApi, BatchApiError, failure_reasons, request_counts, valid_id
from .lines import BatchLines, LineError, checked, file_lines, missing, read_line, shape_only

log = logging.getLogger(__name__)

ENDED = ("completed", "expired", "cancelled")
STATUSES = ("validating", "in_progress", "finalizing", "cancelling", "failed", *ENDED)


class BatchSubmitted(DfbatchError):
    """``wait=False``: the batches are submitted and the call returns; ``.jobs`` are the
    record's ids of the jobs that answer the call, ``.batch_ids`` the API's."""

    def __init__(self, jobs: list[int], batch_ids: list[str]) -> None:
        super().__init__(f"submitted {len(batch_ids)} batch(es): {', '.join(batch_ids)}")
        self.jobs = jobs
        self.batch_ids = batch_ids


@dataclass
class BatchCounts:
    """The figures of one run through the Batch API."""

    started: float = field(default_factory=time.monotonic)
    lines_submitted: int = 0
    tokens_estimated: int = 0
    files_uploaded: int = 0
    batches_created: int = 0
    refusals: int = 0
    answered: int = 0
    succeeded: int = 0
    failed: int = 0
    tokens_used: int = 0
    bad_lines: int = 0
    failures_by_cause: dict[str, int] = field(default_factory=dict)
    batch_ids: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        return {
            "requests": self.answered,
            "requests_succeeded": self.succeeded,
            "requests_failed": self.failed,
            "retries": 0,
            "rate_limited": 0,
            "tokens_estimated": self.tokens_estimated,
            "tokens_used": self.tokens_used,
            "elapsed_s": round(elapsed, 3),
            "effective_rpm": None,
            "effective_tpm": None,
            "failures_by_cause": dict(self.failures_by_cause),
            "backend": "batch",
            "batch_ids": list(self.batch_ids),
            "batch_files_uploaded": self.files_uploaded,
            "batches_created": self.batches_created,
            "batch_lines_submitted": self.lines_submitted,
            "batch_refusals": self.refusals,
        }


StatusCallback = Callable[[dict[str, int]], None]


class BatchRun:
    """One call's trip through the Batch API (see the module's docstring)."""

    def __init__(
        self,
        api: ApiConfig,
        record: BatchRecord,
        *,
        endpoint: str,
        model: str | None,
        lines: BatchLines,
        on_outcome: Callable[[Outcome], None],
        flush: Callable[[], None] = lambda: None,
        poll_interval: float | None = None,
        on_status: StatusCallback | None = None,
    ) -> None:
        if api.azure:
            raise ConfigurationError(
                "backend='batch' is not available for Azure OpenAI in this version; "
                "use the online backend"
            )
        interval = C.BATCH_POLL_INTERVAL if poll_interval is None else poll_interval
        if interval <= 0:
            raise ConfigurationError(f"poll_interval must be positive, got {poll_interval}")
        self.api = api
        self._secrets = api.secrets()
        self.record = record
        self.endpoint = endpoint
        self.url = "/v1/" + endpoint.lstrip("/")
        self.model = model
        self.lines = lines
        self.on_outcome = on_outcome
        self.flush = flush
        self.poll_interval = interval
        self.on_status = on_status
        self.server = server_id(api.base_url)
        self.counts = BatchCounts()
        self.active: dict[int, JobRow] = {}  # created, not yet downloaded
        self.to_create: list[int] = []  # uploaded, batch to (re)create
        self.snapshots: dict[int, dict[str, int]] = {}
        self.lone_refusals = 0
        self.started = time.time()
        self.finished: set[int] = set()  # jobs this run downloaded

    def __repr__(self) -> str:
        return f"<BatchRun {self.endpoint} {self.model} active={len(self.active)}>"

    async def run(self, requests: Iterable[Request], *, wait: bool = True) -> dict[str, Any]:
        async with BatchApi(self.api) as client:
            async with self.record.submitting():  # one process at a time (see there)
                await self._reconcile(client)
                await self._submit(client, requests)
            if not wait and (self.active or self.to_create):
                ids = [j.batch_id for j in self.active.values() if j.batch_id]
                raise BatchSubmitted(sorted({*self.active, *self.to_create}), ids)
            try:
                await self._wait(client)
            except asyncio.CancelledError:
                self._say_stopped()
                raise
        return self.counts.figures()

    # -- reconcile ---------------------------------------------------------------------------

    async def _reconcile(self, client: BatchApi) -> None:
        self.record.prune(time.time() - C.BATCH_LINES_KEEP)
        for job in self.record.jobs(
            server=self.server,
            endpoint=self.endpoint,
            model=self.model,
            scope=self.lines.scope,
            open_only=True,
            done_since=self.started,
        ):
            if job.state == "writing":  # its writer died before the file reached the server
                self.record.drop(job.id)
            elif job.state == "uploaded":
                await self._create(client, job.id, job.file_id or "", adopt=True)
            elif job.state == "created" or (
                # Ended since this call started, in another process running the same call
                # (this one waited for the submit lock meanwhile): its rows may be this
                # call's, not in the cache when it looked. Read its output again.
                job.id not in self.finished and job.batch_id and job.status in ENDED
            ):
                self.active[job.id] = job
                if job.batch_id:
                    self.counts.batch_ids.append(job.batch_id)
        if self.active or self.to_create:
            log.info(
                "picking up %d batch job(s) already submitted (by this call or an earlier one)",
                len(self.active) + len(self.to_create),
            )

    # -- submit ------------------------------------------------------------------------------

    async def _submit(self, client: BatchApi, requests: Iterable[Request]) -> None:
        requests = iter(requests)
        first = next(requests, None)
        if first is None:  # nothing to submit: no need to learn what the batches carry
            return
        covered = set(self.record.covered_keys([*self.active, *self.to_create]))
        stream = self._uncovered(itertools.chain([first], requests), covered)
        pending: list[tuple[Request, list[bytes]]] = []
        while True:
            job, path, n = self._write_file(stream, pending)
            if job is None:
                return
            try:
                await self._upload_and_create(client, job, path, n)
            finally:
                path.unlink(missing_ok=True)

    def _uncovered(
        self, requests: Iterable[Request], covered: set[bytes]
    ) -> Iterator[tuple[Request, list[bytes]]]:
        for request in requests:
            keys = self.lines.keys(request)
            if covered:
                drop = {i for i, k in enumerate(keys) if k in covered}
                if drop:
                    kept = self.lines.without(request, drop)
                    if kept is None:
                        continue
                    request = kept
                    keys = [k for i, k in enumerate(keys) if i not in drop]
            yield request, keys

    def _write_file(
        self,
        stream: Iterator[tuple[Request, list[bytes]]],
        pending: list[tuple[Request, list[bytes]]],
    ) -> tuple[int | None, Path, int]:
        """Write the next input file (up to the API's limits) and record its lines."""
        first = pending.pop() if pending else next(stream, None)
        if first is None:
            return None, Path(), 0
        job = self.record.begin(
            server=self.server, endpoint=self.endpoint, model=self.model, scope=self.lines.scope
        )
        fd, name = tempfile.mkstemp(prefix=f"dfbatch-{job}-", suffix=".jsonl")
        path = Path(name)
        embeddings = self.endpoint.rstrip("/").endswith("embeddings")
        size = inputs = n = 0
        recorded: list[tuple[int, bytes, dict[str, Any]]] = []
        with os.fdopen(fd, "wb") as out:
            item: tuple[Request, list[bytes]] | None = first
            while item is not None:
                request, keys = item
                line = orjson.dumps(
                    {
                        "custom_id": custom_id(job, n),
                        "method": "POST",
                        "url": self.url,
                        "body": request.body,
                    }
                )
                more_inputs = len(keys) if embeddings else 0
                if n and (
                    n >= C.BATCH_MAX_LINES
                    or size + len(line) + 1 > C.BATCH_MAX_FILE_BYTES
                    or inputs + more_inputs > C.BATCH_MAX_EMBEDDING_INPUTS
                ):
                    pending.append(item)
                    break
                out.write(line)
                out.write(b"\n")
                size += len(line) + 1
                inputs += more_inputs
                recorded.append((n, b"".join(keys), asked_of(self.url, request.body)))
                if len(recorded) >= C.BATCH_RECORD_CHUNK:  # a file's 50,000 lines, in parts
                    self.record.add_lines(job, recorded)
                    recorded.clear()
                self.counts.tokens_estimated += request.tokens
                n += 1
                item = next(stream, None)
        self.record.add_lines(job, recorded)  # every line committed before the upload starts
        return job, path, n

    async def _upload_and_create(self, client: BatchApi, job: int, path: Path, n: int) -> None:
        uploaded = await client.upload(path, f"dfbatch-{job}.jsonl")
        file_id = uploaded.get("id")
        if not valid_id(file_id):
            raise BatchApiError("upload: the server's answer has no usable file id")
        self.record.uploaded(job, file_id)
        self.counts.files_uploaded += 1
        self.counts.lines_submitted += n
        await self._create(client, job, file_id, adopt=False)

    async def _create(self, client: BatchApi, job: int, file_id: str, *, adopt: bool) -> None:
        """Create the batch of ``job`` (or adopt the one the server already made from its
        file: a kill or a lost answer after the create went out)."""
        batch = await client.find_by_file(file_id) if adopt else None
        if batch is None:
            try:
                batch = await client.create(file_id, self.url, {"dfbatch_job": str(job)})
                self.counts.batches_created += 1
            except (BatchApiError, RunAbortedError):
                batch = await client.find_by_file(file_id)  # did it go through after all?
                if batch is None:
                    raise
        batch_id = batch.get("id")
        if not valid_id(batch_id):
            raise BatchApiError(f"create a batch from {file_id}: the answer has no usable id")
        status = batch.get("status")
        self.record.created(job, batch_id, status if isinstance(status, str) else None)
        row = self.record.job(job)
        assert row is not None
        self.active[job] = row
        if job in self.to_create:
            self.to_create.remove(job)
        if batch_id not in self.counts.batch_ids:
            self.counts.batch_ids.append(batch_id)

    # -- wait --------------------------------------------------------------------------------

    async def _wait(self, client: BatchApi) -> None:
        interval = 0.0
        cap = max(C.BATCH_POLL_MAX, self.poll_interval)
        while self.active or self.to_create:
            ended = 0
            for job in list(self.active.values()):
                batch = await client.retrieve(job.batch_id or "")
                status = batch.get("status")
                if status not in STATUSES:
                    raise BatchApiError(f"batch {job.batch_id}: unknown status {status!r}")
                counts = request_counts(batch.get("request_counts"))
                if (status, counts) != (job.status, self.snapshots.get(job.id)):
                    job.status = status
                    self.snapshots[job.id] = counts
                    self.record.status(job.id, status, counts)
                if status in ENDED:
                    await self._download(client, job, batch)
                    del self.active[job.id]
                    ended += 1
                elif status == "failed":
                    del self.active[job.id]
                    self._failed(job, batch)  # raises, or queues it for a later wave
            self._show()
            if self.to_create and (ended or not self.active):
                await self._waves(client, lone=not self.active and not ended)
                ended += 1
            if not (self.active or self.to_create):
                return
            # From poll_interval, 1.5x longer after each poll; from the start again once a
            # batch has ended (the others, submitted together, may be about to end too).
            if ended or not interval:
                interval = self.poll_interval
            else:
                interval = min(interval * C.BATCH_POLL_BACKOFF, cap)
            await asyncio.sleep(interval)

    async def _waves(self, client: BatchApi, *, lone: bool) -> None:
        """Create the refused batches again, now that earlier ones have ended."""
        if lone:
            self.lone_refusals += 1
            if self.lone_refusals > C.BATCH_LONE_REFUSALS:
                raise BatchFailedError(
                    f"the Batch API keeps refusing a batch for {self.model}: more tokens are "
                    "enqueued than the model's limit allows, and none of this job's batches is "
                    "queued. Fix: wait for other batches of this organization to finish, or "
                    "raise the limit; rerun the same call to go on (nothing is lost)",
                    reasons=["token_limit_exceeded"],
                )
        for job in list(self.to_create):
            row = self.record.job(job)
            if row is not None and row.file_id:
                await self._create(client, job, row.file_id, adopt=False)

    def _failed(self, job: JobRow, batch: dict[str, Any]) -> None:
        reasons = failure_reasons(batch)
        if any(code == "token_limit_exceeded" for code, _ in reasons):
            self.counts.refusals += 1
            self.record.refused(job.id, "token_limit_exceeded")
            self.to_create.append(job.id)
            log.info(
                "batch %s refused for the enqueued-token limit; resubmitting in a later wave",
                job.batch_id,
            )
            return
        texts = [f"{code}: {message}" for code, message in reasons] or ["no reason given"]
        self.record.done(job.id, status="failed", detail="; ".join(texts)[:2_000])
        raise BatchFailedError(
            f"batch {job.batch_id} failed validation: "
            + "; ".join(texts[:10])
            + ". Fix: correct the requests (the reasons name the line), then rerun the same "
            "call: rows answered by other batches are kept",
            reasons=texts,
        )

    # -- download ----------------------------------------------------------------------------

    async def _download(self, client: BatchApi, job: JobRow, batch: dict[str, Any]) -> None:
        keys_by_line = self.record.line_keys(job.id)
        asked_by_line = self.record.line_asked(job.id)
        seen: set[int] = set()
        for name in ("output_file_id", "error_file_id"):
            file_id = batch.get(name)
            if file_id is None:
                continue
            if not valid_id(file_id):
                raise BatchApiError(f"batch {job.batch_id}: its {name} is not a file id")
            fd, tmp = tempfile.mkstemp(prefix="dfbatch-out-", suffix=".jsonl")
            os.close(fd)
            path = Path(tmp)
            try:
                await client.download(file_id, path)
                for raw in file_lines(path):
                    self._line(job, raw, keys_by_line, asked_by_line, seen)
            finally:
                path.unlink(missing_ok=True)
        status = str(batch.get("status"))
        for line in sorted(keys_by_line.keys() - seen):
            self._deliver(keys_by_line[line], None, missing(status))
        self.flush()  # the answers are durable before the record lets go of the lines
        self.record.done(job.id, status=status)
        self.finished.add(job.id)

    def _line(
        self,
        job: JobRow,
        raw: bytes | None,
        keys_by_line: dict[int, list[bytes]],
        asked_by_line: dict[int, dict[str, Any]],
        seen: set[int],
    ) -> None:
        if raw is None:  # a line over the size bound
            self.counts.bad_lines += 1
            return
        result = read_line(raw)
        where = parse_custom_id(result.custom_id)
        if where is None or where[0] != job.id or where[1] not in keys_by_line or where[1] in seen:
            self.counts.bad_lines += 1  # its request is answered as missing below
            return
        seen.add(where[1])
        self._deliver(
            keys_by_line[where[1]], result.response, result.error, asked_by_line.get(where[1])
        )

    def _deliver(
        self,
        keys: list[bytes],
        response: Any,
        error: ErrorInfo | None,
        asked: dict[str, Any] | None = None,
    ) -> None:
        # Every answer is checked before it counts or is cached, as the engine checks online
        # ones: first against what its line asked, as recorded (all that `dfbatch run
        # --batch` and another call's rows picked up on the way get; a line recorded by an
        # older version has only its shape checked), then against the request it answers.
        # A line's error may echo the key, as online ones.
        if error is not None:
            error = scrub_error(error, self._secrets)
        elif asked is not None:
            _, error = checked(check_as_asked(self.endpoint, asked), response)
        else:
            shape = shape_only(self.endpoint, response)
            _, error = checked(answer_check(self.endpoint, shape), response)
        outcome = self.lines.outcome(keys, response if error is None else None, error)
        if outcome is not None and outcome.error is None:
            request = outcome.request
            check = answer_check(request.endpoint, request.body)
            value, problem = checked(check, outcome.response)
            outcome = (
                Outcome(request, error=problem, attempts=outcome.attempts)
                if problem is not None
                else replace(outcome, value=value)  # what the check decoded: not read again
            )
        final = error if outcome is None else outcome.error
        c = self.counts
        c.answered += 1
        if final is None:
            c.succeeded += 1
            usage = response.get("usage") if isinstance(response, dict) else None
            if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
                c.tokens_used += usage["total_tokens"]
        else:
            c.failed += 1
            cause = (
                f"batch {final.code}" if isinstance(final, LineError) else f"HTTP {final.status}"
            )
            c.failures_by_cause[cause] = c.failures_by_cause.get(cause, 0) + 1
        if outcome is not None:
            self.on_outcome(outcome)

    # -- telling the user --------------------------------------------------------------------

    def _show(self) -> None:
        if self.on_status is None:
            return
        total = {"batches": len(self.snapshots), "completed": 0, "failed": 0, "total": 0}
        for counts in self.snapshots.values():
            for k in ("completed", "failed", "total"):
                total[k] += counts.get(k, 0)
        self.on_status(total)

    def _say_stopped(self) -> None:
        n = len(self.active) + len(self.to_create)
        text = (
            f"dfbatch: stopped waiting; {n} batch job(s) keep running on the server (nothing "
            "was cancelled). Run the same call again to pick them up and download their "
            "answers; `dfbatch batches` lists them."
        )
        log.warning("%s", text)
        print(text, file=sys.stderr)

"""The durable record of Batch API jobs, in the response cache's SQLite file.

Every step of a batch is committed here before the next one starts, so a kill -9 at any
point leaves a record that a rerun can act on without paying twice:

    state      what is known                         what a rerun does
    ---------  ------------------------------------  ---------------------------------------
    writing    the lines (their keys), no file yet   nothing exists upstream: drop the record
    uploaded   + the input file id                   find a batch made from that file
                                                     (GET /batches), else create one
    created    + the batch id                        poll it, download what it answered
    done       its output read and cached            nothing: its rows are answered or free
               (lines kept BATCH_LINES_KEEP s)       (a call that started before it ended, in
                                                     another process, downloads it too)

Two tables beside the cache's own (which ignores them): ``batch_jobs`` (one row per input
file and batch: ids, endpoint, model, server, state, the API's status and counts) and
``batch_lines`` (per line of the input file, the 32-byte cache keys it answers, concatenated,
and what its answer is checked against: the few fields of its body that
:func:`dfbatch.engine.answers.asked_of` keeps, as JSON; the body itself is gone by then).
A line's ``custom_id`` is ``dfb-<job>-<line>``. The server is kept as a hash of the base URL
(never the key), so a record is reconciled only against the server that holds the batch; the
``scope`` says what kind of keys the lines hold (``requests``: one request key a line;
``inputs``: one embedding key per input), so a job only picks up lines whose keys it reads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from filelock import AsyncFileLock, Timeout

from ..engine import constants as C

log = logging.getLogger(__name__)

KEY_BYTES = 32

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS batch_jobs (
        id INTEGER PRIMARY KEY,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        server TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        model TEXT,
        scope TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        lines INTEGER NOT NULL DEFAULT 0,
        file_id TEXT,
        batch_id TEXT,
        status TEXT,
        counts TEXT,
        detail TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS batch_jobs_state ON batch_jobs (state)",
    """CREATE TABLE IF NOT EXISTS batch_lines (
        job INTEGER NOT NULL,
        line INTEGER NOT NULL,
        keys BLOB NOT NULL,
        asked TEXT,
        PRIMARY KEY (job, line)
    ) WITHOUT ROWID""",
)

OPEN_STATES = ("writing", "uploaded", "created")


def server_id(base_url: str) -> str:
    """Which server a record belongs to: a hash of the base URL (no key, no credentials).

    >>> server_id("https://api.openai.com/v1") == server_id("https://api.openai.com/v1/")
    True
    """
    return sha256(base_url.rstrip("/").encode()).hexdigest()[:16]


def custom_id(job: int, line: int) -> str:
    return f"dfb-{job}-{line}"


def parse_custom_id(value: Any) -> tuple[int, int] | None:
    """(job, line) of a ``custom_id`` this package wrote, or None.

    >>> parse_custom_id("dfb-3-17"), parse_custom_id("row-1"), parse_custom_id(5)
    ((3, 17), None, None)
    """
    if not isinstance(value, str) or not value.startswith("dfb-") or len(value) > 64:
        return None
    parts = value[4:].split("-")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


@dataclass
class JobRow:
    """One input file and its batch, as recorded."""

    id: int
    created: float
    updated: float
    server: str
    endpoint: str
    model: str | None
    scope: str
    state: str
    lines: int
    file_id: str | None
    batch_id: str | None
    status: str | None
    counts: dict[str, Any] | None
    detail: str | None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> JobRow:
        values = list(row)
        try:
            values[12] = json.loads(values[12]) if values[12] else None
        except ValueError:
            values[12] = None
        return cls(*values)


_COLUMNS = (
    "id, created, updated, server, endpoint, model, scope, state, lines, file_id, batch_id, "
    "status, counts, detail"
)


class BatchRecord:
    """The batch tables of one cache file. Each method commits before it returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            self.path, timeout=C.CACHE_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        for statement in _SCHEMA:
            self._conn.execute(statement)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(batch_lines)")}
        if "asked" not in columns:  # a record written by an older version: its lines have none
            self._conn.execute("ALTER TABLE batch_lines ADD COLUMN asked TEXT")

    def close(self) -> None:
        self._conn.close()

    def __repr__(self) -> str:
        return f"<BatchRecord {self.path}>"

    @contextlib.asynccontextmanager
    async def submitting(self) -> AsyncIterator[None]:
        """Held from reconciling the record to the last batch created: one process at a time
        decides what to submit from this cache. Without it, the same call running in two
        kernels at once would each take the other's record in state ``writing`` for a
        killed process's, drop it and submit the same rows. With it, a ``writing`` record
        that a rerun finds is a dead process's. A lock file beside the cache (``flock``:
        freed by the system when its holder dies, so a kill -9 leaves no stale lock)."""
        # run_in_executor=False: each try is one non-blocking flock call, no thread needed
        lock = AsyncFileLock(f"{self.path}.batch-lock", run_in_executor=False)
        try:
            await lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for another process that is submitting batches from %s", self.path)
            await lock.acquire(poll_interval=C.BATCH_LOCK_POLL)
        try:
            yield
        finally:
            await lock.release()

    # -- writing -----------------------------------------------------------------------------

    def begin(self, *, server: str, endpoint: str, model: str | None, scope: str = "") -> int:
        """A new job in state ``writing``; its id."""
        now = time.time()
        cur = self._conn.execute(
            "INSERT INTO batch_jobs (created, updated, server, endpoint, model, scope, state) "
            "VALUES (?, ?, ?, ?, ?, ?, 'writing')",
            (now, now, server, endpoint, model, scope),
        )
        return int(cur.lastrowid or 0)

    def add_lines(
        self, job: int, lines: Iterable[tuple[int, bytes, dict[str, Any] | None]]
    ) -> None:
        """Record (line, concatenated keys, what was asked) of ``job``, in one transaction."""
        with self._transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO batch_lines (job, line, keys, asked) VALUES (?, ?, ?, ?)",
                (
                    (job, line, keys, None if asked is None else json.dumps(asked))
                    for line, keys, asked in lines
                ),
            )
            conn.execute(
                "UPDATE batch_jobs SET lines = (SELECT COUNT(*) FROM batch_lines WHERE job = ?),"
                " updated = ? WHERE id = ?",
                (job, time.time(), job),
            )

    def uploaded(self, job: int, file_id: str) -> None:
        self._update(job, state="uploaded", file_id=file_id)

    def created(self, job: int, batch_id: str, status: str | None) -> None:
        self._update(job, state="created", batch_id=batch_id, status=status)

    def refused(self, job: int, detail: str) -> None:
        """The batch was refused (the enqueued-token limit): back to ``uploaded``, to retry."""
        self._update(job, state="uploaded", batch_id=None, status=None, detail=detail)

    def status(self, job: int, status: str, counts: dict[str, Any] | None) -> None:
        self._update(job, status=status, counts=json.dumps(counts) if counts else None)

    def done(self, job: int, *, status: str | None = None, detail: str | None = None) -> None:
        """The job's output is read and cached (or there is none). Its lines stay a while
        (:meth:`prune`): another process running the same call may be waiting for this batch
        too, and needs them to read its output back onto its own rows."""
        with self._transaction() as conn:
            fields = {"state": "done", "updated": time.time()}
            if status is not None:
                fields["status"] = status
            if detail is not None:
                fields["detail"] = detail
            sets = ", ".join(f"{k} = ?" for k in fields)
            conn.execute(f"UPDATE batch_jobs SET {sets} WHERE id = ?", (*fields.values(), job))

    def prune(self, ended_before: float) -> None:
        """Free the lines of jobs done before ``ended_before`` (a time.time())."""
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM batch_lines WHERE job IN "
                "(SELECT id FROM batch_jobs WHERE state = 'done' AND updated < ?)",
                (ended_before,),
            )

    def drop(self, job: int) -> None:
        """Forget a job that never reached the server."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM batch_lines WHERE job = ?", (job,))
            conn.execute("DELETE FROM batch_jobs WHERE id = ?", (job,))

    def _update(self, job: int, **fields: Any) -> None:
        fields["updated"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._conn.execute(f"UPDATE batch_jobs SET {sets} WHERE id = ?", (*fields.values(), job))

    # -- reading -----------------------------------------------------------------------------

    def jobs(
        self,
        *,
        server: str | None = None,
        endpoint: str | None = None,
        model: str | None = None,
        scope: str | None = None,
        open_only: bool = False,
        done_since: float | None = None,
    ) -> list[JobRow]:
        """The jobs, oldest first; ``open_only``: those not done, and with ``done_since``
        also those done since then (a time.time())."""
        where, args = [], []
        pairs = (("server", server), ("endpoint", endpoint), ("model", model), ("scope", scope))
        for column, value in pairs:
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if open_only:
            clause = f"state IN ({','.join('?' * len(OPEN_STATES))})"
            args.extend(OPEN_STATES)
            if done_since is not None:
                clause = f"({clause} OR (state = 'done' AND updated >= ?))"
                args.append(done_since)
            where.append(clause)
        sql = f"SELECT {_COLUMNS} FROM batch_jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [JobRow.from_row(r) for r in self._conn.execute(sql + " ORDER BY id", args)]

    def job(self, job: int) -> JobRow | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM batch_jobs WHERE id = ?", (job,))
        found = row.fetchone()
        return JobRow.from_row(found) if found else None

    def line_keys(self, job: int) -> dict[int, list[bytes]]:
        """Each line of ``job``: the keys it answers."""
        rows = self._conn.execute("SELECT line, keys FROM batch_lines WHERE job = ?", (job,))
        return {line: split_keys(keys) for line, keys in rows}

    def line_asked(self, job: int) -> dict[int, dict[str, Any]]:
        """Each line of ``job`` that has it: what its answer is checked against."""
        rows = self._conn.execute(
            "SELECT line, asked FROM batch_lines WHERE job = ? AND asked IS NOT NULL", (job,)
        )
        out: dict[int, dict[str, Any]] = {}
        parsed: dict[str, Any] = {}  # most lines ask alike: one dict for each distinct text
        for line, text in rows:
            if text not in parsed:
                try:
                    parsed[text] = json.loads(text)
                except ValueError:
                    parsed[text] = None
            if isinstance(parsed[text], dict):
                out[line] = parsed[text]
        return out

    def covered_keys(self, jobs: Iterable[int]) -> Iterator[bytes]:
        """Every key the lines of ``jobs`` answer."""
        for job in jobs:
            rows = self._conn.execute("SELECT keys FROM batch_lines WHERE job = ?", (job,))
            for (keys,) in rows:
                yield from split_keys(keys)

    def _transaction(self) -> _Tx:
        return _Tx(self._conn)


class _Tx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind: object, *exc: object) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")


def split_keys(blob: bytes) -> list[bytes]:
    """The 32-byte keys packed in ``blob``.

    >>> split_keys(bytes(32) + bytes([1]) * 32)[1][:2]
    b'\\x01\\x01'
    """
    return [blob[i : i + KEY_BYTES] for i in range(0, len(blob), KEY_BYTES)]

"""The response cache's SQLite file: its tables, opening and checking it, and what happens when it
is damaged or of another format (see :mod:`dfbatch.cache.store` for the rules).

Tables (format 3):

- ``entries``: one row per JSON answer (key, model, created, crc, value);
- ``vector_blocks``: one row per block of embeddings, as one response brought them: the block's
  keys (``count`` raw 32-byte digests, in row order), the ``offset`` of its vectors (``count x
  dims`` little-endian float32) in the vectors file beside the database
  (:mod:`dfbatch.cache.vector_file`), and one crc32 over keys and vectors
  (see :mod:`dfbatch.cache.vectors`).

:class:`Db` is not locked on its own: :class:`~dfbatch.cache.store.ResponseCache` serializes calls.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..engine import constants as C
from ..engine.errors import ConfigurationError
from .vector_file import SUFFIX as VECTORS_SUFFIX
from .vector_file import VectorFile, vectors_path

log = logging.getLogger(__name__)

#: Format of the tables; bump it with any change and add a migration or a set-aside rule.
#: 1: one row per answer, vectors included; 2: vectors in blocks (``vector_blocks``); 3: the
#: blocks' vectors in the vectors file, not in SQLite.
SCHEMA_VERSION = 3
#: ``PRAGMA application_id`` of a dfbatch store ("dfbc"): another program's database is never
#: mistaken for one, so never renamed or rebuilt.
APPLICATION_ID = 0x64666263
#: Page size of new stores. Only keys and JSON answers live in SQLite now, and small answers
#: favour small pages (each flush rewrites whole pages): 50,000 answers flushed 50 at a time
#: took 1.4 s with 4 KiB pages, 1.65 s with 16 KiB, 2.0 s with 32 KiB, 2.4 s with 64 KiB.
PAGE_SIZE = 4_096
#: Page cache of a connection (KiB): room for a flush's JSON answers and the keys of a few
#: hundred blocks, without keeping tens of MB resident in a notebook.
CACHE_KIB = 8 * 1024
#: Bytes of the file read through mmap: none. Every mapped page read stays in the process's
#: resident set, and JSON lookups cost the same either way (2.3 s per 100,000).
MMAP_BYTES = 0

JSON_COLUMNS = ("key", "model", "created", "crc", "value")
BLOCK_COLUMNS = ("id", "model", "dims", "count", "created", "crc", "offset", "keys")
# Rowid tables: rows are appended in arrival order. The big value comes last, so reading the
# other columns never walks its overflow pages.
_SCHEMA = (
    """CREATE TABLE entries (
        key TEXT PRIMARY KEY NOT NULL,
        model TEXT,
        created REAL NOT NULL,
        crc INTEGER NOT NULL,
        value BLOB NOT NULL
    )""",
    "CREATE INDEX entries_model ON entries (model)",
    "CREATE INDEX entries_created ON entries (created)",
    """CREATE TABLE vector_blocks (
        id INTEGER PRIMARY KEY,
        model TEXT,
        dims INTEGER NOT NULL,
        count INTEGER NOT NULL,
        created REAL NOT NULL,
        crc INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        keys BLOB NOT NULL
    )""",
)
_TABLES = {"entries": JSON_COLUMNS, "vector_blocks": BLOCK_COLUMNS}
# Moved with a set-aside file; "-shm" is only an index.
_SIDE_FILES = ("-wal", "-journal", VECTORS_SUFFIX)


def is_damage(exc: BaseException) -> bool:
    """Whether an SQLite error says the file is damaged (not busy, not full, not missing)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class _Problem(Exception):
    """The file cannot be used as it is: ``reason`` is corrupt, older, newer or foreign."""

    def __init__(self, reason: str, detail: str, *, version: int = 0) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.version = version

    @property
    def why(self) -> str:
        if self.reason == "corrupt":
            return f"is damaged ({self.detail})"
        return f"cannot be used: {self.detail}"


_State = tuple[int, int, dict[str, tuple[str, ...]]]  # application_id, user_version, columns


class Db:
    """The SQLite side: open and check the file, set a damaged one aside, read and write."""

    def __init__(self, path: Path, *, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        self.conn: sqlite3.Connection | None = None
        self.vectors = VectorFile(vectors_path(path), readonly=readonly)
        self._identity: tuple[int, int] | None = None
        self._sql: dict[int, str] = {}  # one statement per number of keys, built once
        self.open()

    # -- opening ---------------------------------------------------------------------------

    def open(self) -> None:
        self.close()
        if self.readonly and not self.path.exists():
            return  # nothing stored yet: every read misses, and nothing is created
        if not self.readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot create the folder of the response cache {self.path}: {exc}; "
                    "pass another path or set DFBATCH_CACHE_DIR"
                ) from exc
        for _ in range(3):  # at most: set one file aside, then open the new one
            conn = self._connect()
            try:
                identity = self._stat()
                empty, created = self._check(conn)
            except _Problem as problem:
                conn.close()
                if problem.reason in ("foreign", "newer") or self.readonly:
                    raise self._refusal(problem) from None
                self._set_aside(problem, identity)
                continue
            except BaseException:
                conn.close()
                raise
            if empty:
                conn.close()  # read-only and an empty file: nothing to read
                return
            self.conn, self._identity = conn, identity
            if created:
                self.vectors.truncate()  # left by a deleted store: no row points into it
            return
        raise ConfigurationError(f"cannot build a response cache at {self.path}")

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False: a front end may open the cache in the caller's thread and
        # use it from the event loop's thread; ResponseCache's lock keeps calls one at a time.
        try:
            if self.readonly:
                uri = self.path.absolute().as_uri() + "?mode=ro"
                if self._immutable():
                    uri += "&immutable=1"
                target: str | Path = uri
            else:
                target = self.path
            return sqlite3.connect(
                target,
                timeout=C.CACHE_BUSY_TIMEOUT,
                isolation_level=None,  # transactions are begun and committed by hand
                check_same_thread=False,
                uri=self.readonly,
            )
        except sqlite3.Error as exc:
            raise ConfigurationError(
                f"cannot open the response cache at {self.path}: {exc}; pass another path "
                "or set DFBATCH_CACHE_DIR"
            ) from exc

    def _immutable(self) -> bool:
        """Whether to read the store as immutable: no ``-wal`` beside it, and the file or its
        folder is read-only to this process (a team's shared store). ``mode=ro`` alone would
        need to create ``-wal`` and ``-shm`` files (failing where the folder is read-only, and
        leaving read-only ones behind where it is not); without a ``-wal`` file everything
        committed is in the file itself. Should its owner write to it meanwhile, a page read
        half-changed fails its checksum or reads as damaged: a miss or a clear error, never a
        wrong answer."""
        wal = self.path.with_name(self.path.name + "-wal")
        writable = os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)
        return not wal.exists() and not writable

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _check(self, conn: sqlite3.Connection) -> tuple[bool, bool]:
        """Raise _Problem unless ``conn`` is a usable store; create the tables in a new file.
        (empty, created): empty when the file is (only when read-only: a writer creates the
        tables), created when this call made the tables.
        """
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(C.CACHE_BUSY_TIMEOUT * 1000)}")
            state = self._state(conn)
            created = False
            if state is None and not self.readonly:
                created = self._create(conn)
                state = self._state(conn)
            if state is None:
                return True, False
            app_id, version, tables = state
            if app_id not in (0, APPLICATION_ID) or (app_id == 0 and "entries" not in tables):
                raise _Problem("foreign", "it is an SQLite database but not a dfbatch cache")
            if version > SCHEMA_VERSION:
                raise _Problem(
                    "newer",
                    f"it was written by a newer dfbatch (cache format {version}, this one "
                    f"reads {SCHEMA_VERSION}); upgrade dfbatch or use another cache path",
                    version=version,
                )
            complete = all(set(cols) <= set(tables.get(t, ())) for t, cols in _TABLES.items())
            if app_id == 0 or version < SCHEMA_VERSION or not complete:
                # Formats 1 and 2 kept the vectors inside SQLite; they predate any release, so
                # they are set aside (with a warning) rather than migrated.
                raise _Problem(
                    "older",
                    f"it was written by an older dfbatch (format {version})",
                    version=version,
                )
            self._tune(conn)
            self._probe(conn)
            return False, created
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise _Problem("corrupt", str(exc)) from None
            raise

    @staticmethod
    def _state(conn: sqlite3.Connection) -> _State | None:
        """(application_id, user_version, columns by table); None for an empty file."""
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        if not names and app_id == 0 and version == 0:
            return None
        tables = {
            name: tuple(r[1] for r in conn.execute(f"PRAGMA table_info({name})"))
            for name in names
            if name in _TABLES
        }
        return app_id, version, tables

    @staticmethod
    def _create(conn: sqlite3.Connection) -> bool:
        """Make the tables unless another process just did; whether this call made them."""
        # Page size and auto_vacuum only take effect before the first table exists.
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # lets clear() give space back
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")  # another process may be creating the same file
        try:
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='entries'"
            ).fetchone()
            if exists is None:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
            return exists is None
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _tune(self, conn: sqlite3.Connection) -> None:
        if not self.readonly:
            conn.execute("PRAGMA journal_mode = WAL")  # stored in the file; a no-op once set
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
        conn.execute(f"PRAGMA journal_size_limit = {C.CACHE_WAL_LIMIT_BYTES}")
        # Not cell_size_check: it re-checks every cell of a page on each visit (a 100,000-
        # vector read in format 1 went from 0.9 to 4.4 s); the checksums guard the values.

    def _probe(self, conn: sqlite3.Connection) -> None:
        """Cheap checks for a truncated file; ``PRAGMA quick_check`` reads every page (1.4 s
        for 640 MB), too slow for each open, so later damage is caught when a query meets it.
        """
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        # With frames in the log the file may legitimately be shorter than the database.
        wal = file_size(self.path.with_name(self.path.name + "-wal"))
        if wal <= 32 and file_size(self.path) < page_size * pages:
            raise _Problem("corrupt", "the file is shorter than its header says (truncated)")
        # The right-most pages of the tables and indexes, written last, are the first lost.
        # One aggregate per query: only then does SQLite walk one path instead of every row.
        for column in ("rowid", "key", "model", "created"):
            conn.execute(f"SELECT max({column}) FROM entries").fetchone()
        conn.execute("SELECT max(id) FROM vector_blocks").fetchone()

    def _refusal(self, problem: _Problem) -> ConfigurationError:
        if problem.reason == "newer":
            fix = ""  # the detail says what to do
        elif problem.reason == "foreign":
            fix = "; pass another path or set DFBATCH_CACHE_DIR"
        else:
            fix = "; open it without readonly=True to rebuild it, or pass another path"
        return ConfigurationError(f"the response cache {self.path} {problem.why}{fix}")

    def _set_aside(self, problem: _Problem, identity: tuple[int, int] | None) -> None:
        """Rename the unusable file (with its log) and warn; the next open starts afresh."""
        if identity is not None and self._stat() != identity:
            return  # another process already replaced it: open the new file
        if problem.reason == "corrupt":
            suffix = ".corrupt-" + time.strftime("%Y%m%dT%H%M%S")
        else:
            suffix = f".v{problem.version}.bak"
        why = problem.why
        target = self.path.with_name(self.path.name + suffix)
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}{suffix}-{n}")
        try:
            os.replace(self.path, target)
            for side in _SIDE_FILES:
                source = self.path.with_name(self.path.name + side)
                if source.exists():
                    os.replace(source, target.with_name(target.name + side))
            self.path.with_name(self.path.name + "-shm").unlink(missing_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"the response cache {self.path} {why}, and it could not be moved aside "
                f"({exc}); close other programs using it, or pass another path"
            ) from exc
        message = (
            f"the response cache {self.path} {why}; it was moved to {target} and a new, "
            "empty cache was started (answers stored before will be asked again)"
        )
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=5)

    def recover(self, exc: BaseException) -> bool:
        """After an error in a query: set a damaged file aside and reopen; False otherwise."""
        if not is_damage(exc):
            return False
        if self.readonly:
            raise self._refusal(_Problem("corrupt", str(exc))) from exc
        identity = self._identity
        self.close()
        self._set_aside(_Problem("corrupt", str(exc)), identity)
        self.open()
        return True

    def ensure_current(self) -> None:
        """Reopen when the file was deleted or replaced under us, so writes are not lost."""
        if not self.readonly and self.conn is not None and self._stat() != self._identity:
            log.info("response cache %s was replaced or deleted; reopening it", self.path)
            self.open()

    def close(self) -> None:
        self.vectors.close()
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.close()

    # -- reading and writing ---------------------------------------------------------------

    def select_json(self, keys: Sequence[str]) -> Iterator[tuple]:
        """Rows (key, crc, value) of the JSON answers stored under ``keys``, in chunks."""
        if self.conn is None:
            return
        size = C.CACHE_QUERY_CHUNK
        for start in range(0, len(keys), size):
            part = keys[start : start + size]
            sql = self._sql.get(len(part))
            if sql is None:
                marks = ",".join("?" * len(part))
                sql = self._sql[len(part)] = (
                    f"SELECT key, crc, value FROM entries WHERE key IN ({marks})"
                )
            yield from self.conn.execute(sql, part)

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection | None]:
        """One read transaction: the queries inside see one state of the file (a snapshot)."""
        conn = self.conn
        if conn is None:
            yield None
            return
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed at the end or rolled back on an error."""
        conn = self.conn
        if conn is None:
            raise ConfigurationError(f"the response cache {self.path} is closed")
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def write(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run ``sql`` over ``rows`` in one transaction; the number of rows changed."""
        with self.writing() as conn:
            return conn.executemany(sql, rows).rowcount

"""The durable response cache: every answer is stored as it arrives, so a rerun sends only what
is missing and a killed kernel loses at most the last fraction of a second.

    put / put_vector ──> buffer in memory ──(maybe_flush, every flush_interval)──> SQLite file
    get / get_many / get_vectors <── the buffer first, then the file

Keys say what was asked, never who asked or where: :func:`request_key` hashes the endpoint and
the JSON body, :func:`embedding_key` hashes one input (model, dimensions, text), so a rerun hits
even when inputs are packed into requests differently. The API key and the base URL are never
part of a key or of a row. Only successes are stored: the front ends put an answer when a
request succeeded and never an error, so a failed row is asked again on the next run.

The store is one SQLite file in WAL mode: readers never wait, writers take turns for a few
milliseconds (``busy_timeout``), and each flush is one small transaction. A committed flush
survives a kill -9; ``synchronous=NORMAL`` may lose the last flushes on power loss but never
damages the file. Several kernels and processes can share a store; keep it on a local disk
(WAL needs shared memory, which network file systems do not provide).

Damage never gives a wrong answer:

- a row whose checksum (crc32 of kind, key and value) fails, or whose value does not decode,
  is a miss, and the next put replaces it;
- a file that is not a database, is truncated, or that SQLite reports malformed (at open or
  later) is renamed ``<name>.corrupt-<timestamp>`` and a new store is started, with a warning
  naming both files; the old file is kept for ``sqlite3 <file> .recover``;
- a store written by an older schema (a lower ``user_version``, or a table missing columns)
  is renamed ``<name>.v<N>.bak`` and rebuilt, with the same warning; format 1 is the first,
  so there is nothing to migrate yet (a trivial migration would go in ``_Db._check``);
- a store from a newer dfbatch, or an SQLite file that is not a dfbatch store, is never
  touched: :class:`~dfbatch.ConfigurationError` says to upgrade or to pick another path.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import sys
import threading
import time
import warnings
import weakref
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from hashlib import sha256
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from . import _constants as C
from ._errors import ConfigurationError

log = logging.getLogger(__name__)

#: Format of the tables; bump it with any change and add a migration or a set-aside rule.
SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` of a dfbatch store ("dfbc"): another program's database is never
#: mistaken for one, so never renamed or rebuilt.
APPLICATION_ID = 0x64666263

_FILE_NAME = "cache.sqlite"
_JSON, _VECTOR = 0, 1
_COLUMNS = ("key", "model", "kind", "created", "crc", "value")
# A rowid table: rows are appended in arrival order (fast writes of large vectors) and the key
# index stays small. The value comes last so scans of the other columns never read its pages.
_SCHEMA = (
    """CREATE TABLE entries (
        key TEXT PRIMARY KEY NOT NULL,
        model TEXT,
        kind INTEGER NOT NULL,
        created REAL NOT NULL,
        crc INTEGER NOT NULL,
        value BLOB NOT NULL
    )""",
    "CREATE INDEX entries_model ON entries (model)",
    "CREATE INDEX entries_created ON entries (created)",
)
_INSERT = (
    "INSERT OR REPLACE INTO entries (key, model, kind, created, crc, value) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_SIDE_FILES = ("-wal", "-journal")  # moved with a set-aside file; "-shm" is only an index
_AGE_UNITS = {"s": 1.0, "m": 60.0, "h": 3_600.0, "d": 86_400.0, "w": 604_800.0}
_AGE_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhdw])", re.IGNORECASE)
_MISS = object()

_Row = tuple[str, str | None, int, float, int, bytes]  # in _COLUMNS order


def default_cache_path() -> Path:
    """Where the cache lives when no path is given.

    ``$DFBATCH_CACHE_DIR/cache.sqlite`` when that variable is set; otherwise
    ``dfbatch/cache.sqlite`` in the per-user cache directory: ``$XDG_CACHE_HOME`` or
    ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows.

    >>> default_cache_path().name
    'cache.sqlite'
    """
    override = os.environ.get("DFBATCH_CACHE_DIR")
    if override:
        return Path(override).expanduser() / _FILE_NAME
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        # The XDG spec says to ignore a relative path.
        base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "dfbatch" / _FILE_NAME


def _plain(obj: Any) -> Any:
    # Numpy scalars from DataFrame cells hash like the Python values they are sent as.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _canonical(obj: Any) -> bytes:
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain
    )
    return text.encode("utf-8", "surrogatepass")


def _normalize_endpoint(endpoint: str) -> str:
    # A full URL keeps only its path: host, credentials and query string say where, not what.
    path = endpoint.strip()
    if path.startswith(("http://", "https://")):
        path = urlsplit(path).path
    path = path.split("?", 1)[0].split("#", 1)[0]
    return "/" + path.strip("/")


def request_key(endpoint: str, body: Mapping[str, Any]) -> str:
    """The cache key of one request: sha256 of the endpoint and the body as canonical JSON.

    Only what determines the answer goes in, never the API key or the base URL; keys are
    sorted, so the order of the body's fields does not matter.

    >>> a = request_key("chat/completions", {"model": "m", "messages": []})
    >>> a == request_key("/chat/completions", {"messages": [], "model": "m"})
    True
    >>> a == request_key("/completions", {"model": "m", "messages": []})
    False
    """
    payload = {"endpoint": _normalize_endpoint(endpoint), "body": dict(body)}
    return sha256(_canonical(payload)).hexdigest()


def embedding_key(model: str, dimensions: int | None, text: str) -> str:
    """The cache key of one embedding input: per input, not per request, so a rerun hits even
    when inputs are packed into requests differently.

    >>> embedding_key("text-embedding-3-small", None, "hi") == embedding_key(
    ...     "text-embedding-3-small", 256, "hi")
    False
    """
    return sha256(_canonical(["embedding", model, dimensions, text])).hexdigest()


def parse_age(text: str) -> float:
    """Seconds in an age such as ``"45s"``, ``"90m"``, ``"12h"``, ``"30d"``, ``"2w"``, ``"1d12h"``.

    >>> parse_age("7d")
    604800.0
    """
    compact = str(text).strip().replace(" ", "")
    parts = _AGE_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ConfigurationError(
            f"cannot read {text!r} as an age: write a number and a unit "
            "(s, m, h, d or w), such as 45s, 90m, 12h, 30d or 2w"
        )
    return sum(float(n) * _AGE_UNITS[u.lower()] for n, u in parts)


def _checksum(kind: int, key: str, value: bytes) -> int:
    # The key and kind are in the checksum, so a row never answers for another key.
    return zlib.crc32(value, zlib.crc32(f"{kind}:{key}".encode()))


def _encode_json(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate in some string: escape everything
        return json.dumps(value, separators=(",", ":")).encode()


def _decode(key: str, kind: int, crc: int, value: Any) -> Any:
    """The stored value, or ``_MISS`` when the row is damaged."""
    if not isinstance(value, bytes) or _checksum(kind, key, value) != crc:
        return _MISS
    if kind == _VECTOR:
        return np.frombuffer(value, "<f4") if len(value) % 4 == 0 else _MISS
    if kind == _JSON:
        try:
            return json.loads(value)
        except ValueError:
            return _MISS
    return _MISS


def _is_damage(exc: BaseException) -> bool:
    """Whether an SQLite error says the file is damaged (not busy, not full, not missing)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def _file_size(path: Path) -> int:
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


class _Db:
    """The SQLite side: open and check the file, set a damaged one aside, read and write.

    Not locked on its own: :class:`ResponseCache` serializes every call.
    """

    def __init__(self, path: Path, *, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        self.conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._sql: dict[tuple[bool, int], str] = {}  # one statement per shape, built once
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
                self._check(conn)
            except _Problem as problem:
                conn.close()
                if problem.reason in ("foreign", "newer") or self.readonly:
                    raise self._refusal(problem) from None
                self._set_aside(problem, identity)
                continue
            except BaseException:
                conn.close()
                raise
            if self.readonly and not self._has_entries(conn):
                conn.close()  # an empty file: nothing to read
                return
            self.conn, self._identity = conn, identity
            return
        raise ConfigurationError(f"cannot build a response cache at {self.path}")

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False: a front end may open the cache in the caller's thread and
        # use it from the event loop's thread; ResponseCache's lock keeps calls one at a time.
        try:
            if self.readonly:
                uri = self.path.absolute().as_uri() + "?mode=ro"
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

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _check(self, conn: sqlite3.Connection) -> None:
        """Raise _Problem unless ``conn`` is a usable store; create the tables in a new file."""
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(C.CACHE_BUSY_TIMEOUT * 1000)}")
            state = self._state(conn)
            if state is None and not self.readonly:
                self._create(conn)
                state = self._state(conn)
            if state is None:
                return
            app_id, version, columns = state
            if app_id not in (0, APPLICATION_ID) or (app_id == 0 and columns is None):
                raise _Problem("foreign", "it is an SQLite database but not a dfbatch cache")
            if version > SCHEMA_VERSION:
                raise _Problem(
                    "newer",
                    f"it was written by a newer dfbatch (cache format {version}, this one "
                    f"reads {SCHEMA_VERSION}); upgrade dfbatch or use another cache path",
                    version=version,
                )
            if app_id == 0 or version < SCHEMA_VERSION or not set(_COLUMNS) <= set(columns or ()):
                # No migration exists yet: the only older stores are pre-release ones.
                raise _Problem(
                    "older",
                    f"it was written by an older dfbatch (format {version})",
                    version=version,
                )
            self._tune(conn)
            self._probe(conn)
        except sqlite3.DatabaseError as exc:
            if _is_damage(exc):
                raise _Problem("corrupt", str(exc)) from None
            raise

    @staticmethod
    def _state(conn: sqlite3.Connection) -> tuple[int, int, tuple[str, ...] | None] | None:
        """(application_id, user_version, columns of entries or None); None for an empty file."""
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables and app_id == 0 and version == 0:
            return None
        if "entries" not in tables:
            return app_id, version, None
        columns = tuple(r[1] for r in conn.execute("PRAGMA table_info(entries)"))
        return app_id, version, columns

    @staticmethod
    def _create(conn: sqlite3.Connection) -> None:
        # Page size and auto_vacuum only take effect before the first table exists.
        conn.execute(f"PRAGMA page_size = {C.CACHE_PAGE_SIZE}")
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
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _tune(self, conn: sqlite3.Connection) -> None:
        if not self.readonly:
            conn.execute("PRAGMA journal_mode = WAL")  # stored in the file; a no-op once set
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA mmap_size = {C.CACHE_MMAP_BYTES}")
        conn.execute(f"PRAGMA journal_size_limit = {C.CACHE_WAL_LIMIT_BYTES}")
        # Not cell_size_check: with mmap it re-checks every cell of a page on each visit (a
        # 100,000-vector read went from 0.9 to 4.4 s); the row checksums guard the values.

    def _probe(self, conn: sqlite3.Connection) -> None:
        """Cheap checks for a truncated file; ``PRAGMA quick_check`` reads every page (1.4 s
        for 640 MB), too slow for each open, so later damage is caught when a query meets it.
        """
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        # With frames in the log the file may legitimately be shorter than the database.
        wal = _file_size(self.path.with_name(self.path.name + "-wal"))
        if wal <= 32 and _file_size(self.path) < page_size * pages:
            raise _Problem("corrupt", "the file is shorter than its header says (truncated)")
        # The right-most pages of the table and its indexes, written last, are the first lost.
        # One aggregate per query: only then does SQLite walk one path instead of every row.
        for column in ("rowid", "key", "model", "created"):
            conn.execute(f"SELECT max({column}) FROM entries").fetchone()

    def _has_entries(self, conn: sqlite3.Connection) -> bool:
        return self._state(conn) is not None

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
        if not _is_damage(exc):
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
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.close()

    # -- reading and writing ---------------------------------------------------------------

    def _select_sql(self, n: int, vectors: bool) -> str:
        sql = self._sql.get((vectors, n))
        if sql is None:
            marks = ",".join("?" * n)
            sql = f"SELECT key, kind, crc, value FROM entries WHERE key IN ({marks})"
            if vectors:
                sql += " AND kind = 1"
            self._sql[vectors, n] = sql
        return sql

    def select(self, keys: Sequence[str], *, vectors: bool = False) -> Iterator[tuple]:
        """Rows (key, kind, crc, value) of the keys that are stored, in chunks of keys."""
        if self.conn is None:
            return
        size = C.CACHE_QUERY_CHUNK
        for start in range(0, len(keys), size):
            part = keys[start : start + size]
            yield from self.conn.execute(self._select_sql(len(part), vectors), part)

    def write(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run ``sql`` over ``rows`` in one transaction; the number of rows changed."""
        conn = self.conn
        if conn is None:
            raise ConfigurationError(f"the response cache {self.path} is closed")
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock
        try:
            cursor = conn.executemany(sql, rows)
            changed = cursor.rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return changed


def _flush_at_exit(db: _Db, pending: dict[str, _Row]) -> None:
    """Finalizer: store what is still buffered when a cache is dropped or Python exits."""
    try:
        if pending and db.conn is not None:
            db.write(_INSERT, list(pending.values()))
            pending.clear()
    except Exception as exc:  # nothing to report to at exit; say so in the log
        log.warning("response cache %s: %d answers not stored: %s", db.path, len(pending), exc)
    finally:
        db.close()


class ResponseCache:
    """Answers by key, stored durably as they arrive.

    ``put`` and ``put_vector`` only buffer; ``maybe_flush`` (the front ends call it after every
    outcome) writes the buffer in one small transaction once its oldest answer is
    ``flush_interval`` seconds old, or sooner when it is large, so a kill -9 loses at most
    ``flush_interval`` seconds of answers. Call ``flush`` or ``close`` when a run ends.
    Reads see buffered answers too. Only successful answers are put, never errors.

    >>> import pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp, ResponseCache(
    ...     pathlib.Path(tmp) / "cache.sqlite"
    ... ) as cache:
    ...     key = request_key("/chat/completions", {"model": "m", "messages": []})
    ...     cache.put(key, {"choices": []}, model="m")
    ...     cache.get(key)
    {'choices': []}

    ``path=None`` uses :func:`default_cache_path`. ``readonly=True`` never writes nor creates
    the file; puts raise. Calls are serialized by a lock, so one cache may be shared by
    threads; several caches (and processes) may open the same file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        flush_interval: float = C.CACHE_FLUSH_INTERVAL,
        readonly: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if flush_interval < 0:
            raise ConfigurationError(f"flush_interval must be >= 0, got {flush_interval}")
        self.path = Path(path).expanduser() if path is not None else default_cache_path()
        self.flush_interval = flush_interval
        self.readonly = readonly
        self._clock = clock
        self._wall_clock = wall_clock  # the ``created`` time of rows, for clear(older_than=)
        self._lock = threading.RLock()
        self._pending: dict[str, _Row] = {}  # mutated in place: the finalizer holds it
        self._pending_bytes = 0
        self._since: float | None = None  # clock() when the oldest buffered answer arrived
        self._closed = False
        self._db = _Db(self.path, readonly=readonly)
        self._finalizer = weakref.finalize(self, _flush_at_exit, self._db, self._pending)

    # -- reading ---------------------------------------------------------------------------

    def get(self, key: str) -> Any | None:
        """The stored answer (a vector comes back as a float32 array), or None on a miss."""
        return self.get_many([key]).get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The stored answers among ``keys`` (hits only), looked up in chunks of keys."""
        with self._lock:
            self._check_open()
            out: dict[str, Any] = {}
            wanted = self._from_pending(dict.fromkeys(keys), out, vectors=False)
            damaged = 0
            for key, kind, crc, value in self._rows(wanted, vectors=False):
                decoded = _decode(key, kind, crc, value)
                if decoded is _MISS:
                    damaged += 1
                else:
                    out[key] = decoded
            self._report_damage(damaged)
            return out

    def get_vectors(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored embeddings among ``keys``, as read-only float32 arrays (hits only)."""
        with self._lock:
            self._check_open()
            out: dict[str, Any] = {}
            wanted = self._from_pending(dict.fromkeys(keys), out, vectors=True)
            damaged = 0
            crc32, frombuffer = zlib.crc32, np.frombuffer  # the hot loop: 100,000s of rows
            for key, _kind, crc, value in self._rows(wanted, vectors=True):
                if (
                    isinstance(value, bytes)
                    and len(value) % 4 == 0
                    and crc32(value, crc32(f"1:{key}".encode())) == crc
                ):
                    out[key] = frombuffer(value, "<f4")
                else:
                    damaged += 1
            self._report_damage(damaged)
            return out

    def _from_pending(self, keys: dict[str, None], out: dict[str, Any], *, vectors: bool) -> list:
        """Fill ``out`` from the buffer; the keys still to look up in the file, sorted (in index
        order, consecutive lookups share pages: 15% less time for 100,000 keys).
        """
        wanted = []
        for key in keys:
            row = self._pending.get(key)
            if row is None:
                wanted.append(key)
            elif not vectors or row[2] == _VECTOR:
                out[key] = _decode(key, row[2], row[4], row[5])
        wanted.sort()
        return wanted

    def _rows(self, keys: Sequence[str], *, vectors: bool) -> Iterator[tuple]:
        try:
            yield from self._db.select(keys, vectors=vectors)
        except sqlite3.DatabaseError as exc:
            # Rows already yielded passed their checksums; the rest are misses from now on.
            if not self._db.recover(exc):
                raise

    def _report_damage(self, damaged: int) -> None:
        if damaged:
            log.warning(
                "response cache %s: %d damaged entries ignored (they will be asked again)",
                self.path,
                damaged,
            )

    # -- writing ---------------------------------------------------------------------------

    def put(self, key: str, value: Any, *, model: str | None = None) -> None:
        """Buffer a JSON answer (a response dict, a string...); ``maybe_flush`` stores it."""
        self._put(key, _JSON, _encode_json(value), model)

    def put_vector(self, key: str, vector: Any, *, model: str | None = None) -> None:
        """Buffer an embedding, stored as little-endian float32 bytes (exact for float32)."""
        array = np.asarray(vector, dtype="<f4")
        if array.ndim != 1:
            raise ConfigurationError(f"a vector must be 1-dimensional, got shape {array.shape}")
        self._put(key, _VECTOR, array.tobytes(), model)

    def _put(self, key: str, kind: int, value: bytes, model: str | None) -> None:
        if self.readonly:
            raise ConfigurationError(f"the response cache {self.path} was opened read-only")
        row = (key, model, kind, self._wall_clock(), _checksum(kind, key, value), value)
        with self._lock:
            self._check_open()
            old = self._pending.get(key)
            if old is not None:
                self._pending_bytes -= len(old[5])
            self._pending[key] = row
            self._pending_bytes += len(value)
            if self._since is None:
                self._since = self._clock()

    def maybe_flush(self) -> bool:
        """Flush when the oldest buffered answer is ``flush_interval`` old or the buffer is
        large; True if it wrote. A store locked past ``busy_timeout`` or a full disk is
        logged and tried again one interval later, keeping the answers.
        """
        with self._lock:
            if not self._pending or self._since is None:
                return False
            due = (
                self._clock() - self._since >= self.flush_interval
                or len(self._pending) >= C.CACHE_FLUSH_MAX_ITEMS
                or self._pending_bytes >= C.CACHE_FLUSH_MAX_BYTES
            )
            if not due:
                return False
            try:
                self.flush()
            except sqlite3.OperationalError as exc:
                log.warning(
                    "response cache %s: %d answers not stored yet (%s); retrying",
                    self.path,
                    len(self._pending),
                    exc,
                )
                self._since = self._clock()
                return False
            return True

    def flush(self) -> None:
        """Store every buffered answer in one transaction (the buffer is kept if it fails)."""
        with self._lock:
            if not self._pending:
                return
            self._check_open()
            self._db.ensure_current()
            rows = list(self._pending.values())
            try:
                self._db.write(_INSERT, rows)
            except sqlite3.DatabaseError as exc:
                if not self._db.recover(exc):
                    raise
                self._db.write(_INSERT, rows)
            self._pending.clear()
            self._pending_bytes = 0
            self._since = None

    # -- housekeeping ----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Where the store is and what it holds: path, bytes (file and log), entries,
        by_model, and the oldest and newest ``created`` times (seconds since the epoch).
        """
        with self._lock:
            self._check_open()
            self.flush()
            size = _file_size(self.path) + _file_size(self.path.with_name(self.path.name + "-wal"))
            by_model: dict[str | None, int] = {}
            oldest = newest = None
            conn = self._db.conn
            try:
                if conn is not None:
                    by_model = dict(
                        conn.execute("SELECT model, count(*) FROM entries GROUP BY model")
                    )
                    oldest = conn.execute("SELECT min(created) FROM entries").fetchone()[0]
                    newest = conn.execute("SELECT max(created) FROM entries").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                if not self._db.recover(exc):
                    raise
                by_model, oldest, newest = {}, None, None  # the new store is empty
            return {
                "path": str(self.path),
                "bytes": size,
                "entries": sum(by_model.values()),
                "by_model": by_model,
                "oldest": oldest,
                "newest": newest,
            }

    def clear(self, *, model: str | None = None, older_than: float | None = None) -> int:
        """Delete entries (of one ``model``, or stored more than ``older_than`` seconds ago,
        or all); the number deleted. Freed pages go back to the file system.
        """
        if self.readonly:
            raise ConfigurationError(f"the response cache {self.path} was opened read-only")
        if older_than is not None and older_than < 0:
            raise ConfigurationError(f"older_than must be >= 0 seconds, got {older_than}")
        where, args = [], []
        if model is not None:
            where.append("model = ?")
            args.append(model)
        if older_than is not None:
            where.append("created < ?")
            args.append(self._wall_clock() - older_than)
        sql = "DELETE FROM entries" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            self._check_open()
            self.flush()
            try:
                deleted = self._db.write(sql, [args])
            except sqlite3.DatabaseError as exc:
                if not self._db.recover(exc):
                    raise
                return 0  # the damaged store was set aside: the new one is empty
            conn = self._db.conn
            if deleted and conn is not None:
                # executescript steps the pragma to the end; execute() frees a single page.
                conn.executescript("PRAGMA incremental_vacuum;")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            return deleted

    def close(self) -> None:
        """Flush and close; closing twice is harmless."""
        with self._lock:
            if self._closed:
                return
            try:
                self.flush()
            finally:
                self._closed = True
                self._finalizer.detach()
                self._db.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigurationError(f"the response cache {self.path} is closed")

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return f"<ResponseCache {str(self.path)!r} closed>"
        with self._lock:
            try:
                keys = list(self._pending)
                stored = {row[0] for row in self._db.select(keys)} if keys else set()
                conn = self._db.conn
                count = conn.execute("SELECT count(*) FROM entries").fetchone()[0] if conn else 0
                entries = str(count + len(keys) - len(stored))
            except sqlite3.Error:
                entries = "?"
        return f"<ResponseCache {str(self.path)!r} entries={entries}>"

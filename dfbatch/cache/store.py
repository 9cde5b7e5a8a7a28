"""The durable response cache: every answer is stored as it arrives, so a rerun sends only what
is missing and a killed kernel loses at most the last fraction of a second.

    put / put_vector(s) ──> buffer in memory ──(maybe_flush, every flush_interval)──> SQLite file
    get / get_many / get_vectors / get_vector_rows <── the buffer first, then the file

Keys say what was asked, never who asked or where: :func:`request_key` hashes the endpoint and
the JSON body, :func:`embedding_key` hashes one input (model, dimensions, text), so a rerun hits
even when inputs are packed into requests differently. The API key and the base URL are never
part of a key or of a row. Only successes are stored: the front ends put an answer when a
request succeeded and never an error, so a failed row is asked again on the next run.

JSON answers are one row each. Embeddings are stored the way they arrive, a block of vectors
per response, with their keys beside them (:mod:`dfbatch.cache.vectors`): storing 100,000
1,536-d vectors costs about 1.3 s of CPU, and reading them back into one matrix about 0.85 s.
JSON answers and vectors are two namespaces (request keys and embedding keys never collide):
``get_many`` reads JSON answers, ``get_vectors`` and ``get_vector_rows`` vectors, ``get`` both.

The store is one SQLite file in WAL mode (:mod:`dfbatch.cache.db`): readers never wait,
writers take turns for a few milliseconds (``busy_timeout``), and each flush is one small
transaction. A committed flush survives a kill -9; ``synchronous=NORMAL`` may lose the last
flushes on power loss but never damages the file. Several kernels and processes can share a
store; keep it on a local disk (WAL needs shared memory, which network file systems do not
provide).

Damage never gives a wrong answer:

- a JSON row whose checksum (crc32 of key and value) fails, or whose value does not decode,
  is a miss, and the next put replaces it; a block of vectors whose checksum (of its shape,
  keys and vectors) fails is a miss for its rows only, and a row answers only for the key
  stored beside it;
- a file that is not a database, is truncated, or that SQLite reports malformed (at open or
  later) is renamed ``<name>.corrupt-<timestamp>`` and a new store is started, with a warning
  naming both files; the old file is kept for ``sqlite3 <file> .recover``;
- a store written by an older schema (a lower ``user_version``, or a table missing columns)
  is renamed ``<name>.v<N>.bak`` and rebuilt, with the same warning: format 1 (one row per
  vector) is set aside, not migrated (a migration would go in ``Db._check``);
- a store from a newer dfbatch, or an SQLite file that is not a dfbatch store, is never
  touched: :class:`~dfbatch.ConfigurationError` says to upgrade or to pick another path.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import warnings
import weakref
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import numpy as np

from ..engine import constants as C
from ..engine.checks import check_number
from ..engine.errors import ConfigurationError
from .db import APPLICATION_ID, SCHEMA_VERSION, VECTORS_SUFFIX, Db, file_size
from .keys import (
    default_cache_path,
    embedding_digests,
    embedding_key,
    parse_age,
    request_key,
)
from .vectors import (
    Group,
    PendingVectors,
    StoredKeys,
    as_block,
    raw_key,
    raw_keys,
    vector_groups,
    write_blocks,
)

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "ResponseCache",
    "default_cache_path",
    "embedding_digests",
    "embedding_key",
    "open_for_run",
    "parse_age",
    "request_key",
]

log = logging.getLogger(__name__)

_INSERT = "INSERT OR REPLACE INTO entries (key, model, created, crc, value) VALUES (?, ?, ?, ?, ?)"
_MISS = object()

_Row = tuple[str, str | None, float, int, bytes]  # entries: key, model, created, crc, value


# -- JSON rows ----------------------------------------------------------------------------------


def _checksum(key: str, value: bytes) -> int:
    # The key is in the checksum, so a row never answers for another key ("0:" is the kind
    # JSON had in format 1, kept so the checksums stay the same).
    return zlib.crc32(value, zlib.crc32(f"0:{key}".encode()))


def _encode_json(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate in some string: escape everything
        return json.dumps(value, separators=(",", ":")).encode()


def _decode_json(key: str, crc: int, value: Any) -> Any:
    """The stored answer, or ``_MISS`` when the row is damaged."""
    if not isinstance(value, bytes) or _checksum(key, value) != crc:
        return _MISS
    try:
        return msgspec.json.decode(value)  # 1.6 s for 100,000 answers instead of 2.3 s
    except msgspec.DecodeError:
        pass
    try:  # what msgspec refuses but json writes: NaN, Infinity, lone surrogates
        return json.loads(value)
    except ValueError:
        return _MISS


def _zeros(rows: int, dims: int) -> np.ndarray:
    return np.zeros((rows, dims), np.float32)


def _store(db: Db, rows: list[_Row], vectors: PendingVectors) -> None:
    """Write buffered answers in one transaction."""
    with db.writing() as conn:
        if rows:
            conn.executemany(_INSERT, rows)
        write_blocks(conn, db.vectors, vectors.blocks)


def _flush_at_exit(db: Db, pending: dict[str, _Row], vectors: PendingVectors) -> None:
    """Finalizer: store what is still buffered when a cache is dropped or Python exits."""
    try:
        if (pending or vectors) and db.conn is not None:
            _store(db, list(pending.values()), vectors)
            pending.clear()
            vectors.clear()
    except Exception as exc:  # nothing to report to at exit; say so in the log
        n = len(pending) + vectors.count
        log.warning("response cache %s: %d answers not stored: %s", db.path, n, exc)
    finally:
        db.close()


def open_for_run(path: str | os.PathLike[str] | None, **kwargs: Any) -> ResponseCache:
    """The cache a run uses at ``path`` (None: the default store).

    A store that exists but cannot be written (a team's shared cache, a read-only mount) is
    opened read-only: its answers are served, new ones are not stored, and one warning says
    so, naming ``cache=False``. Any other store is opened (and created) as usual.
    """
    where = Path(path).expanduser() if path is not None else default_cache_path()
    if not _cannot_write(where):
        return ResponseCache(where, **kwargs)
    message = (
        f"the response cache {where} is read-only: answers stored in it are used, but new "
        "answers are not stored (a rerun asks for them again); pass cache=False (--no-cache) "
        "to run without it, or a writable path (cache=PATH, --cache PATH) to keep them"
    )
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=4)
    return ResponseCache(where, readonly=True, discard=True, **kwargs)


def _cannot_write(path: Path) -> bool:
    """Whether ``path`` is an existing store this process may not write (the file, its
    vectors file or log, or the folder, where SQLite keeps its log, is read-only)."""
    if not path.is_file():
        return False  # a new store: created, or refused with the reason, as before
    side = [path.with_name(path.name + s) for s in ("-wal", "-shm", VECTORS_SUFFIX)]
    files = [path, *(p for p in side if p.exists())]
    return not all(os.access(p, os.W_OK) for p in files) or not os.access(path.parent, os.W_OK)


class ResponseCache:
    """Answers by key, stored durably as they arrive.

    ``put``, ``put_vector`` and ``put_vectors`` only buffer; ``maybe_flush`` (the front ends
    call it after every outcome) writes the buffer in one small transaction once its oldest
    answer is ``flush_interval`` seconds old, or sooner when it is large, so a kill -9 loses at
    most ``flush_interval`` seconds of answers. Call ``flush`` or ``close`` when a run ends.
    Reads see buffered answers too. Only successful answers are put, never errors.

    >>> import pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp, ResponseCache(
    ...     pathlib.Path(tmp) / "cache.sqlite"
    ... ) as cache:
    ...     key = request_key("/chat/completions", {"model": "m", "messages": []})
    ...     cache.put(key, {"choices": []}, model="m")
    ...     cache.get(key)
    {'choices': []}

    Keys are strings; vectors may also be keyed by the 32 raw bytes of an embedding key
    (:func:`embedding_digests`), which saves converting 100,000 hex strings.

    ``path=None`` uses :func:`default_cache_path`. ``readonly=True`` never writes nor creates
    the file; puts raise, or with ``discard=True`` are dropped (a run over a store it may
    read but not write: see :func:`open_for_run`). Calls are serialized by a lock, so one
    cache may be shared by threads; several caches (and processes) may open the same file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        flush_interval: float = C.CACHE_FLUSH_INTERVAL,
        readonly: bool = False,
        discard: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        # NaN would pass "< 0" and no answer would ever be flushed on time.
        interval = check_number("flush_interval", flush_interval, above=None, at_least=0)
        self.path = Path(path).expanduser() if path is not None else default_cache_path()
        self.flush_interval = interval
        self.readonly = readonly
        self._discard = readonly and discard
        self._clock = clock
        self._wall_clock = wall_clock  # the ``created`` time of rows, for clear(older_than=)
        self._lock = threading.RLock()
        # Both buffers are mutated in place: the finalizer holds them.
        self._pending: dict[str, _Row] = {}
        self._pending_bytes = 0
        self._vectors = PendingVectors()
        self._since: float | None = None  # clock() when the oldest buffered answer arrived
        self._closed = False
        self._db = Db(self.path, readonly=readonly)
        self._finalizer = weakref.finalize(
            self, _flush_at_exit, self._db, self._pending, self._vectors
        )

    # -- reading ---------------------------------------------------------------------------

    def get(self, key: str) -> Any | None:
        """The stored answer (a vector comes back as a float32 array), or None on a miss."""
        found = self.get_many([key])
        if key in found:
            return found[key]
        return self.get_vectors([key]).get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The stored JSON answers among ``keys`` (hits only), looked up in chunks of keys."""
        with self._lock:
            self._check_open()
            out: dict[str, Any] = {}
            wanted = []
            for key in dict.fromkeys(keys):
                row = self._pending.get(key)
                if row is None:
                    wanted.append(key)
                else:
                    out[key] = _decode_json(key, row[3], row[4])
            # In index order, consecutive lookups share pages: 15% less time for 100,000 keys.
            wanted.sort()
            damaged = 0
            try:
                for key, crc, value in self._db.select_json(wanted):
                    decoded = _decode_json(key, crc, value)
                    if decoded is _MISS:
                        damaged += 1
                    else:
                        out[key] = decoded
            except sqlite3.DatabaseError as exc:
                # Rows already read passed their checksums; the rest are misses from now on.
                if not self._db.recover(exc):
                    raise
            self._report_damage(damaged)
            return out

    def get_vectors(self, keys: Sequence[str | bytes]) -> dict[Any, np.ndarray]:
        """The stored embeddings among ``keys`` (hits only), as float32 arrays: read-only views
        of the blocks they were stored in."""
        out: dict[Any, np.ndarray] = {}
        for _dims, positions, rows, matrix in self._vector_blocks(keys):
            for i, r in zip(positions.tolist(), rows.tolist(), strict=True):
                out[keys[i]] = matrix[r]
        return out

    def get_vector_rows(
        self,
        keys: Sequence[str | bytes],
        *,
        allocate: Callable[[int, int], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The stored embeddings of ``keys`` as one matrix: ``(found, matrix)``, ``found[i]``
        saying whether ``keys[i]`` is stored and ``matrix[i]`` its vector (a new, writable
        ``len(keys) x dims`` float32 array from ``allocate(rows, dims)``, ``np.zeros`` by
        default; zeros where not found), or ``(found, None)`` when nothing is. Each block is
        read and checked once and its rows copied straight into place. Hits of another length
        than the most common one are left as misses.
        """
        found = np.zeros(len(keys), bool)
        matrix: np.ndarray | None = None
        for dims, positions, rows, block in self._vector_blocks(keys, dims_first=True):
            if matrix is None:
                matrix = (allocate or _zeros)(len(keys), dims)
            elif dims != matrix.shape[1]:
                continue
            n = len(rows)
            p0, r0 = int(positions[0]), int(rows[0])
            if (
                positions[-1] - p0 == n - 1
                and rows[-1] - r0 == n - 1
                and (n < 3 or (np.all(np.diff(positions) == 1) and np.all(np.diff(rows) == 1)))
            ):
                matrix[p0 : p0 + n] = block[r0 : r0 + n]  # a whole run: one plain copy
            else:
                matrix[positions] = block[rows]
            found[positions] = True
        return found, matrix

    def _vector_blocks(
        self, keys: Sequence[str | bytes], *, dims_first: bool = False
    ) -> Iterable[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """(dims, positions, rows, block): the hits among ``keys``, one verified block at a
        time; with ``dims_first``, the blocks of the most common length come first."""
        with self._lock:
            self._check_open()
            raw = raw_keys(keys)
            damaged = 0
            try:
                with self._db.reading() as conn:
                    groups: list[Group] = list(
                        vector_groups(conn, self._db.vectors, self._vectors, raw)
                    )
                    if dims_first and groups:
                        weight: dict[int, int] = {}
                        for dims, positions, _rows, _load in groups:
                            weight[dims] = weight.get(dims, 0) + len(positions)
                        common = max(weight, key=weight.__getitem__)
                        groups.sort(key=lambda g: g[0] != common)
                    for dims, positions, rows, load in groups:
                        block = load()
                        if block is None:
                            damaged += len(positions)
                            continue
                        yield dims, positions, rows, block
            except sqlite3.DatabaseError as exc:
                # Blocks already read passed their checksums; the rest are misses.
                if not self._db.recover(exc):
                    raise
            finally:
                self._report_damage(damaged)

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
        if not self._check_writable():
            return
        encoded = _encode_json(value)
        row = (key, model, self._wall_clock(), _checksum(key, encoded), encoded)
        with self._lock:
            self._check_open()
            old = self._pending.get(key)
            if old is not None:
                self._pending_bytes -= len(old[4])
            self._pending[key] = row
            self._pending_bytes += len(encoded)
            self._started()

    def put_vector(self, key: str | bytes, vector: Any, *, model: str | None = None) -> None:
        """Buffer one embedding, stored as little-endian float32 (exact for float32); puts of
        one model in a row are stored as one block."""
        if not self._check_writable():
            return
        array = np.array(vector, dtype="<f4")  # a copy: the caller may reuse its array
        if array.ndim != 1:
            raise ConfigurationError(f"a vector must be 1-dimensional, got shape {array.shape}")
        with self._lock:
            self._check_open()
            self._vectors.add_one(raw_key(key), array, model, self._wall_clock())
            self._started()

    def put_vectors(
        self, keys: Sequence[str | bytes], block: Any, *, model: str | None = None
    ) -> None:
        """Buffer a block of embeddings, ``block[i]`` the vector of ``keys[i]``: stored as one
        row, as the response brought them. ``block`` (``len(keys) x dims``) is kept as it is
        until it is written, without a copy when it is C-contiguous float32 already: do not
        change it afterwards (a changed block reads as damaged, a miss, never a wrong answer).
        """
        if not self._check_writable():
            return
        array = as_block(block)
        if array.ndim != 2 or array.shape[0] != len(keys):
            raise ConfigurationError(
                f"put_vectors takes a {len(keys)} x dims matrix for {len(keys)} keys, "
                f"got shape {array.shape}"
            )
        if not len(keys):
            return
        raw = raw_keys(keys)
        with self._lock:
            self._check_open()
            self._vectors.add_block(raw, array, model, self._wall_clock())
            self._started()

    @property
    def buffered(self) -> int:
        """Answers put and not stored yet (``flush`` stores them)."""
        return len(self._pending) + self._vectors.count

    def _check_writable(self) -> bool:
        """Whether a put is stored: read-only, it raises, or is dropped with ``discard``."""
        if self.readonly:
            if self._discard:
                return False
            raise ConfigurationError(f"the response cache {self.path} was opened read-only")
        return True

    def _started(self) -> None:
        if self._since is None:
            self._since = self._clock()

    def maybe_flush(self, *, now: bool = False) -> bool:
        """Flush when the oldest buffered answer is ``flush_interval`` old or the buffer is
        large (or anything is buffered, with ``now``); True if it wrote. A store locked past
        ``busy_timeout`` or a full disk is logged and tried again one interval later, keeping
        the answers.
        """
        with self._lock:
            if self._since is None:
                return False
            due = (
                now
                or self._clock() - self._since >= self.flush_interval
                or len(self._pending) + self._vectors.count >= C.CACHE_FLUSH_MAX_ITEMS
                or self._pending_bytes + self._vectors.nbytes >= C.CACHE_FLUSH_MAX_BYTES
            )
            if not due:
                return False
            try:
                self.flush()
            except (sqlite3.OperationalError, OSError) as exc:  # busy, or a full disk
                log.warning(
                    "response cache %s: %d answers not stored yet (%s); retrying",
                    self.path,
                    len(self._pending) + self._vectors.count,
                    exc,
                )
                self._since = self._clock()
                return False
            return True

    def flush(self) -> None:
        """Store every buffered answer in one transaction (the buffer is kept if it fails)."""
        with self._lock:
            if not self._pending and not self._vectors:
                return
            self._check_open()
            self._db.ensure_current()
            rows = list(self._pending.values())
            try:
                _store(self._db, rows, self._vectors)
            except sqlite3.DatabaseError as exc:
                if not self._db.recover(exc):
                    raise
                _store(self._db, rows, self._vectors)
            self._pending.clear()
            self._pending_bytes = 0
            self._vectors.clear()
            self._since = None

    # -- housekeeping ----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Where the store is and what it holds: path, bytes (file and log), entries,
        by_model, and the oldest and newest ``created`` times (seconds since the epoch).
        A block of vectors counts the keys it answers for (not those stored again later) and
        is as old as its newest vector.
        """
        with self._lock:
            self._check_open()
            self.flush()
            size = self._db.vectors.size() + sum(
                file_size(self.path.with_name(self.path.name + side)) for side in ("", "-wal")
            )
            by_model: dict[str | None, int] = {}
            times: list[float] = []
            try:
                with self._db.reading() as conn:
                    if conn is not None:
                        by_model = dict(
                            conn.execute("SELECT model, count(*) FROM entries GROUP BY model")
                        )
                        span = conn.execute(
                            "SELECT min(created), max(created) FROM entries"
                        ).fetchone()
                        times = [t for t in span if t is not None]
                        stored = StoredKeys.read(conn)
                        for b, n in enumerate(stored.live().tolist()):
                            if n:
                                model = stored.models[b]
                                by_model[model] = by_model.get(model, 0) + n
                                times.append(stored.created[b])
            except sqlite3.DatabaseError as exc:
                if not self._db.recover(exc):
                    raise
                by_model, times = {}, []  # the new store is empty
            return {
                "path": str(self.path),
                "bytes": size,
                "entries": sum(by_model.values()),
                "by_model": by_model,
                "oldest": min(times) if times else None,
                "newest": max(times) if times else None,
            }

    def clear(self, *, model: str | None = None, older_than: float | None = None) -> int:
        """Delete entries (of one ``model``, or stored more than ``older_than`` seconds ago,
        or all); the number deleted. Blocks of vectors go whole (a block is as old as its
        newest vector), and so do blocks whose every key was stored again later. Freed pages
        go back to the file system.
        """
        self._check_writable()
        if older_than is not None and older_than < 0:
            raise ConfigurationError(f"older_than must be >= 0 seconds, got {older_than}")
        cutoff = None if older_than is None else self._wall_clock() - older_than
        where, args = [], []
        if model is not None:
            where.append("model = ?")
            args.append(model)
        if cutoff is not None:
            where.append("created < ?")
            args.append(cutoff)
        sql = "DELETE FROM entries" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            self._check_open()
            self.flush()
            try:
                with self._db.writing() as conn:
                    deleted = conn.execute(sql, args).rowcount
                    deleted += self._clear_vectors(conn, model, cutoff)
                    self._compact_vectors(conn)
            except sqlite3.DatabaseError as exc:
                if not self._db.recover(exc):
                    raise
                return 0  # the damaged store was set aside: the new one is empty
            conn = self._db.conn
            if conn is not None:
                # executescript steps the pragma to the end; execute() frees a single page.
                conn.executescript("PRAGMA incremental_vacuum;")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            return deleted

    @staticmethod
    def _clear_vectors(conn: sqlite3.Connection, model: str | None, cutoff: float | None) -> int:
        """Delete the blocks selected, and those holding nothing live; the keys gone."""
        stored = StoredKeys.read(conn)
        if not stored.ids:
            # Nothing readable; blocks with damaged headers go when everything is cleared.
            if model is None and cutoff is None:
                conn.execute("DELETE FROM vector_blocks")
            return 0
        before = stored.live()
        doomed = np.array(
            [
                (model is None or m == model) and (cutoff is None or c < cutoff)
                for m, c in zip(stored.models, stored.created, strict=True)
            ]
        )
        after = stored.live(keep=~doomed)
        doomed |= after == 0
        gone = [(stored.ids[b],) for b in np.flatnonzero(doomed).tolist()]
        conn.executemany("DELETE FROM vector_blocks WHERE id = ?", gone)
        if model is None and cutoff is None:
            conn.execute("DELETE FROM vector_blocks")  # damaged ones too
        return int(before.sum() - after.sum())

    def _compact_vectors(self, conn: sqlite3.Connection) -> None:
        """Give the space of deleted blocks back: empty the vectors file when no block is left,
        rewrite it when less than half of it is still used."""
        vectors = self._db.vectors
        blocks = [
            (block_id, offset, dims * count * 4)
            for block_id, offset, dims, count in conn.execute(
                "SELECT id, offset, dims, count FROM vector_blocks ORDER BY offset"
            )
            if isinstance(offset, int) and isinstance(dims, int) and isinstance(count, int)
        ]
        if not blocks:
            vectors.truncate()
            return
        if 2 * sum(size for _, _, size in blocks) >= vectors.size():
            return
        moved = vectors.compact(blocks)
        if moved is not None:
            conn.executemany(
                "UPDATE vector_blocks SET offset = ? WHERE id = ?",
                [(offset, block_id) for block_id, offset in moved.items()],
            )

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
                entries = str(self._count())
            except sqlite3.Error:
                entries = "?"
        return f"<ResponseCache {str(self.path)!r} entries={entries}>"

    def _count(self) -> int:
        """Entries stored or buffered, each key once."""
        keys = list(self._pending)
        stored_json = {row[0] for row in self._db.select_json(keys)} if keys else set()
        vector_keys: set[bytes] = set(self._vectors.where())
        count = len(keys) - len(stored_json)
        with self._db.reading() as conn:
            if conn is not None:
                count += conn.execute("SELECT count(*) FROM entries").fetchone()[0]
                stored = StoredKeys.read(conn)
                joined = b"".join(stored.keys)
                vector_keys.update(joined[i : i + 32] for i in range(0, len(joined), 32))
        return count + len(vector_keys)

"""Embeddings in the response cache: stored in blocks, found by their keys' digests.

An embedding response brings 2,048 vectors at once; they are buffered and stored as they came,
one ``vector_blocks`` row per block: ``keys`` (the raw 32-byte digest of each row's key, in row
order), the ``offset`` of its vectors (``count x dims`` little-endian float32) in the vectors
file (:mod:`dfbatch.cache.vector_file`), and a crc32 over keys and vectors. Storing 100,000 x
1,536 float32 took 6.5 s of CPU as 100,000 SQLite rows, 1.25-1.4 s as 49 SQLite blobs, ~0.45 s
now (the crc is half of it).

There is no index row per key. A lookup reads the ``keys`` column of every block (32 bytes per
stored vector, 3 MB for 100,000; never the vectors), searches it with numpy (the requested
digests sorted once, each stored digest's first 8 bytes looked up among them), then reads each
block that holds a hit once, checks its crc once and copies the rows out (100,000 vectors into
one matrix: 0.85 s of CPU, a third of it the crc). A per-key SQL index cost 0.3-0.9 s more to
write 100,000 vectors and 0.3-0.5 s more to look them up; scanning the keys costs O(stored
vectors) per lookup instead: 0.1 s with a million vectors (6 GB) stored.

A key stored again lands in a newer block; the newest block (highest id) wins, so a re-put
replaces the answer. A block whose every row was stored again later is deleted by
:meth:`ResponseCache.clear <dfbatch.ResponseCache.clear>`.

Never a wrong answer: a hit's block is read only if its checksum (over dims, count, keys and
data) holds, and a row answers only for the key stored beside it in that block, byte for byte.
A damaged block is a miss for its rows only; the next put of those keys stores them anew.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from hashlib import sha256

import numpy as np

try:  # the same crc32 with SIMD: 0.07 s instead of 0.21 s for 600 MB of vectors
    from zlib_ng.zlib_ng import crc32
except ImportError:  # no wheel for this platform
    from zlib import crc32

from .vector_file import VectorFile

KEY_BYTES = 32  # a stored key: the raw sha256 digest
_KEY_SALT = b"dfbatch-key\0"  # keys that are not digests are hashed with this first

#: (dims, positions in the request, rows of the block, load): ``load()`` gives the block's
#: ``count x dims`` float32 array, or None when it is damaged.
Group = tuple[int, np.ndarray, np.ndarray, Callable[[], "np.ndarray | None"]]


def raw_key(key: str | bytes) -> bytes:
    """The 32 bytes a vector is stored under: a key from :func:`~dfbatch.cache.store.embedding_key`
    (64 hex digits) as its digest, 32 bytes as they are, any other key hashed.

    >>> raw_key("00" * 32) == bytes(32)
    True
    """
    if isinstance(key, bytes):
        if len(key) == KEY_BYTES:
            return key
        data = key
    else:
        if len(key) == 2 * KEY_BYTES:
            try:
                raw = bytes.fromhex(key)
            except ValueError:
                raw = b""
            if len(raw) == KEY_BYTES:
                return raw
        data = key.encode("utf-8", "surrogatepass")
    return sha256(_KEY_SALT + data).digest()


def raw_keys(keys: Sequence[str | bytes]) -> list[bytes]:
    # The embed front end's digests pass through as they are (checked at C speed).
    if set(map(type, keys)) <= {bytes} and set(map(len, keys)) <= {KEY_BYTES}:
        return list(keys)  # type: ignore[arg-type]
    return [raw_key(k) for k in keys]


def key_matrix(raw: Sequence[bytes] | bytes) -> np.ndarray:
    """Digests as an ``n x 4`` uint64 array (one row per key), for vectorized comparisons."""
    joined = raw if isinstance(raw, bytes) else b"".join(raw)
    return np.frombuffer(joined, "<u8").reshape(-1, 4)


def block_crc(dims: int, count: int, keys: bytes, data: object) -> int:
    """The checksum of a block: its shape, keys and vectors (a row never answers for a key
    stored elsewhere, nor a block for another shape)."""
    head = crc32(f"{dims}:{count}".encode())
    return crc32(data, crc32(keys, head))  # type: ignore[arg-type]


def as_block(block: object) -> np.ndarray:
    """A C-contiguous little-endian float32 matrix, copied only if it is not one already."""
    return np.ascontiguousarray(block, dtype="<f4")


# -- the buffer ---------------------------------------------------------------------------------


@dataclass(eq=False)
class PendingBlock:
    """A block not written yet: one ``put_vectors`` call, or consecutive ``put_vector`` calls
    of one model and length (``loose``), stacked when written."""

    model: str | None
    dims: int
    created: float
    keys: list[bytes]
    array: np.ndarray | None = None  # count x dims; None while loose
    rows: list[np.ndarray] = field(default_factory=list)  # the loose vectors
    crc: int | None = None  # of a put_vectors block, taken when it was put

    def matrix(self) -> np.ndarray:
        if self.array is None:
            return np.stack(self.rows) if self.rows else np.zeros((0, self.dims), "<f4")
        return self.array

    def row(self, r: int) -> np.ndarray:
        return self.rows[r] if self.array is None else self.array[r]


class PendingVectors:
    """Vectors put but not written, in put order; ``where()`` finds each key's latest row."""

    def __init__(self) -> None:
        self.blocks: list[PendingBlock] = []
        self._where: dict[bytes, tuple[PendingBlock, int]] | None = None
        self.count = 0
        self.nbytes = 0

    def __bool__(self) -> bool:
        return bool(self.blocks)

    def where(self) -> dict[bytes, tuple[PendingBlock, int]]:
        """Key -> (block, row) of its latest put; built when a lookup needs it, not per put
        (a lookup between a put and its flush is rare; the puts are 100,000s)."""
        if self._where is None:
            where: dict[bytes, tuple[PendingBlock, int]] = {}
            for block in self.blocks:
                where.update(
                    zip(block.keys, ((block, r) for r in range(len(block.keys))), strict=True)
                )
            self._where = where
        return self._where

    def add_block(
        self, keys: list[bytes], array: np.ndarray, model: str | None, now: float
    ) -> None:
        count, dims = array.shape
        keys_blob = b"".join(keys)
        crc = block_crc(dims, count, keys_blob, array)
        block = PendingBlock(model, dims, now, keys, array=array, crc=crc)
        self.blocks.append(block)
        self._where = None
        self.count += count
        self.nbytes += array.nbytes

    def add_one(self, key: bytes, vector: np.ndarray, model: str | None, now: float) -> None:
        last = self.blocks[-1] if self.blocks else None
        if (
            last is None
            or last.array is not None
            or (last.model, last.dims) != (model, len(vector))
        ):
            last = PendingBlock(model, len(vector), now, [])
            self.blocks.append(last)
        last.created = now  # a block is as old as its newest vector
        if self._where is not None:
            self._where[key] = (last, len(last.keys))
        last.keys.append(key)
        last.rows.append(vector)
        self.count += 1
        self.nbytes += vector.nbytes

    def clear(self) -> None:
        self.blocks.clear()
        self._where = None
        self.count = self.nbytes = 0

    def groups(
        self, raw: Sequence[bytes], positions: Sequence[int]
    ) -> tuple[list[Group], list[int]]:
        """The requested ``positions`` answered by the buffer, grouped by block; the rest."""
        found: dict[int, tuple[PendingBlock, list[int], list[int]]] = {}
        rest = []
        where = self.where()
        for i in positions:
            hit = where.get(raw[i])
            if hit is None:
                rest.append(i)
                continue
            block, r = hit
            entry = found.get(id(block))
            if entry is None:
                entry = found[id(block)] = (block, [], [])
            entry[1].append(i)
            entry[2].append(r)
        groups: list[Group] = [
            (block.dims, np.array(pos, np.intp), np.array(rows, np.intp), block.matrix)
            for block, pos, rows in found.values()
        ]
        return groups, rest


def write_blocks(
    conn: sqlite3.Connection, vectors: VectorFile, blocks: Sequence[PendingBlock]
) -> None:
    """Append the blocks' vectors to the vectors file and insert their rows in put order (later
    puts get higher ids, so they win), inside the caller's write transaction."""
    blocks = [block for block in blocks if block.keys]
    if not blocks:
        return  # a store of JSON answers only has no vectors file
    arrays = [as_block(block.matrix()) for block in blocks]
    offsets = vectors.append(memoryview(array) for array in arrays)
    rows = []
    for block, array, offset in zip(blocks, arrays, offsets, strict=True):
        keys = b"".join(block.keys)
        count, dims = array.shape
        crc = block.crc if block.crc is not None else block_crc(dims, count, keys, array)
        rows.append((block.model, dims, count, block.created, crc, offset, keys))
    conn.executemany(
        "INSERT INTO vector_blocks (model, dims, count, created, crc, offset, keys) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


# -- reading --------------------------------------------------------------------------------------


@dataclass
class StoredKeys:
    """Every stored block's keys, in block order: the whole index, read in one query."""

    ids: list[int]
    dims: list[int]
    counts: list[int]
    crcs: list[int]
    offsets_in_file: list[int]
    keys: list[bytes]
    models: list[str | None]
    created: list[float]
    offsets: np.ndarray  # first entry of each block in ``matrix``
    matrix: np.ndarray  # entries x 4 uint64: every stored digest, block by block

    @classmethod
    def read(cls, conn: sqlite3.Connection) -> StoredKeys:
        ids: list[int] = []
        dims: list[int] = []
        counts: list[int] = []
        crcs: list[int] = []
        places: list[int] = []
        keys: list[bytes] = []
        models: list[str | None] = []
        created: list[float] = []
        rows = conn.execute(
            "SELECT id, dims, count, crc, offset, keys, model, created FROM vector_blocks "
            "ORDER BY id"
        )
        for block_id, d, n, crc, place, k, model, when in rows:
            # A block whose header or keys do not fit is damaged: it holds nothing we can find.
            if not (isinstance(k, bytes) and isinstance(d, int) and isinstance(n, int)):
                continue
            if d <= 0 or n <= 0 or len(k) != n * KEY_BYTES or not isinstance(place, int):
                continue
            ids.append(block_id)
            dims.append(d)
            counts.append(n)
            crcs.append(crc)
            places.append(place)
            keys.append(k)
            models.append(model)
            created.append(when)
        offsets = np.zeros(len(ids) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(
            ids,
            dims,
            counts,
            crcs,
            places,
            keys,
            models,
            created,
            offsets,
            key_matrix(b"".join(keys)),
        )

    def block_of(self, entries: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, entries, side="right") - 1

    def find(self, wanted: np.ndarray) -> np.ndarray:
        """For each wanted digest (``n x 4``), its newest stored entry, or -1."""
        n = len(wanted)
        stored = self.matrix
        if not n or not len(stored):
            return np.full(n, -1, np.int64)
        # Sort the wanted prefixes once, then look each stored prefix up among them: O((stored
        # + wanted) log wanted), no sort of the whole store.
        prefixes, inverse = np.unique(wanted[:, 0], return_inverse=True)
        spot = np.searchsorted(prefixes, stored[:, 0])
        np.minimum(spot, len(prefixes) - 1, out=spot)
        entries = np.flatnonzero(prefixes[spot] == stored[:, 0])
        newest = np.full(len(prefixes), -1, np.int64)
        np.maximum.at(newest, spot[entries], entries)  # later entries are newer
        found = newest[inverse.reshape(-1)]
        hit = found >= 0
        # The full 32 bytes must match: two keys that share a prefix never answer for each other.
        hit[hit] = (stored[found[hit]] == wanted[hit]).all(axis=1)
        found[~hit] = -1
        return found

    def groups(self, vectors: VectorFile, wanted: np.ndarray, positions: np.ndarray) -> list[Group]:
        """The hits among ``wanted`` (the digests at ``positions`` of the request), by block."""
        found = self.find(wanted)
        hit = found >= 0
        entries, positions = found[hit], positions[hit]
        if not len(entries):
            return []
        blocks = self.block_of(entries)
        order = np.argsort(blocks, kind="stable")
        blocks, entries, positions = blocks[order], entries[order], positions[order]
        starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
        out: list[Group] = []
        for start, stop in zip(starts, [*starts[1:], len(blocks)], strict=True):
            b = int(blocks[start])
            rows = entries[start:stop] - self.offsets[b]
            out.append((self.dims[b], positions[start:stop], rows, self._loader(vectors, b)))
        return out

    def _loader(self, vectors: VectorFile, b: int) -> Callable[[], np.ndarray | None]:
        def load() -> np.ndarray | None:
            dims, count = self.dims[b], self.counts[b]
            data = vectors.read(self.offsets_in_file[b], dims * count * 4)
            if data is None or block_crc(dims, count, self.keys[b], data) != self.crcs[b]:
                return None
            block = np.frombuffer(data, "<f4").reshape(count, dims)
            block.flags.writeable = False  # the cache hands out views of it
            return block

        return load

    # -- for info and clear ------------------------------------------------------------------

    def live(self, keep: np.ndarray | None = None) -> np.ndarray:
        """Per block, how many of its rows are the newest entry of their key (among the blocks
        in ``keep``, a boolean mask; all by default)."""
        stored, block = self.matrix, np.repeat(np.arange(len(self.ids)), self.counts)
        if keep is not None:
            mine = keep[block]
            stored, block = stored[mine], block[mine]
        out = np.zeros(len(self.ids), np.int64)
        if len(stored):
            # Sort by key, ties in entry order (lexsort is stable): the last of each run of equal
            # keys is the newest entry.
            order = np.lexsort(stored.T[::-1])
            ordered = stored[order]
            last = np.ones(len(order), bool)
            last[:-1] = (ordered[1:] != ordered[:-1]).any(axis=1)
            out += np.bincount(block[order[last]], minlength=len(self.ids))
        return out


def vector_groups(
    conn: sqlite3.Connection | None,
    vectors: VectorFile,
    pending: PendingVectors,
    raw: Sequence[bytes],
) -> Iterator[Group]:
    """The hits of ``raw`` (digests), buffer first, then the store, one group per block."""
    rest: Sequence[int] = range(len(raw))
    if pending:
        groups, rest = pending.groups(raw, rest)
        yield from groups
    if conn is None or not rest:
        return
    stored = StoredKeys.read(conn)
    positions = np.asarray(rest, np.intp)
    wanted = key_matrix([raw[i] for i in rest]) if len(rest) < len(raw) else key_matrix(raw)
    yield from stored.groups(vectors, wanted, positions)

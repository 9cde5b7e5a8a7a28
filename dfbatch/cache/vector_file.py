"""The response cache's vectors file: embeddings appended one block after another.

SQLite keeps each block's keys, shape, checksum and ``offset`` here (``vector_blocks``); the
vectors themselves live in ``<cache>-vectors`` beside the database. In SQLite they were written
twice (to the log, then into the database at each checkpoint) with a checksum per log frame:
100,000 x 1,536 float32 cost ~0.9 s of CPU to store that way, ~0.2 s appended here.

Rules that keep it safe with several processes and a kill -9 at any point:

- Appending happens only inside the store's write transaction (``BEGIN IMMEDIATE``), so one
  writer at a time: a block goes at the file's current end, then its row is inserted. A crash
  between the two leaves unreferenced bytes at the end, which the next writer appends after.
- Reading checks each block's crc; a short read (a truncated or replaced file) is a miss,
  never a wrong vector.
- ``compact`` (after a clear) writes the live blocks to a new file and renames it over the old
  one inside the write transaction; a process holding the old file keeps reading it until it
  notices the rename (by inode) and reopens.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = "-vectors"

_Identity = tuple[int, int]


def vectors_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + SUFFIX)


def _identity(st: os.stat_result) -> _Identity:
    return (st.st_dev, st.st_ino)


class VectorFile:
    """The open vectors file of one store; calls are serialized by the cache's lock."""

    def __init__(self, path: Path, *, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        self._file: io.FileIO | None = None
        self._id: _Identity | None = None

    def _current(self, *, create: bool = False) -> io.FileIO | None:
        """The file, reopened when it was replaced (a compaction elsewhere) or deleted; None
        when there is none (a store of JSON answers only), unless ``create``."""
        try:
            now: _Identity | None = _identity(os.stat(self.path))
        except FileNotFoundError:
            now = None
        if self._file is not None and now == self._id:
            return self._file
        self.close()
        if now is None and not create:
            return None
        if now is None:  # create it, then open it "r+" ("a" would force every write to the end)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        self._file = io.FileIO(self.path, "r" if self.readonly else "r+")
        self._id = _identity(os.fstat(self._file.fileno()))
        return self._file

    def size(self) -> int:
        f = self._current()
        return os.fstat(f.fileno()).st_size if f is not None else 0

    def append(self, chunks: Iterable[memoryview]) -> list[int]:
        """Write ``chunks`` at the end, one after another; their offsets. Call it only inside
        the store's write transaction."""
        f = self._current(create=True)
        assert f is not None
        end = os.fstat(f.fileno()).st_size
        offsets = []
        for chunk in chunks:
            offsets.append(end)
            f.seek(end)
            view = chunk.cast("B") if chunk.format != "B" else chunk
            written = 0
            while written < len(view):  # a regular file may take a write in parts
                written += f.write(view[written:]) or 0
            end += len(view)
        return offsets

    def read(self, offset: int, size: int) -> bytearray | None:
        """``size`` bytes at ``offset``, or None when the file does not hold them all (or
        cannot be read: a miss, like a damaged block)."""
        try:
            f = self._current()
            if f is None or offset < 0:
                return None
            out = bytearray(size)
            view = memoryview(out)
            f.seek(offset)
            got = 0
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    return None
                got += n
        except OSError as exc:
            log.warning("response cache %s: cannot read its vectors (%s)", self.path, exc)
            return None
        return out

    def truncate(self) -> None:
        """Empty the file (every block was deleted); inside the write transaction."""
        f = self._current()
        if f is not None:
            f.truncate(0)

    def compact(self, blocks: list[tuple[int, int, int]]) -> dict[int, int] | None:
        """Copy ``blocks`` (id, offset, size) into a new file, in order, and rename it over this
        one; the new offset of each id, or None when the file could not be replaced (another
        process holds it open on Windows, a full disk): the old file then stays as it was.
        Inside the write transaction; the caller stores the new offsets before committing."""
        f = self._current()
        if f is None:
            return None
        tmp = self.path.with_name(self.path.name + ".compact")
        moved: dict[int, int] = {}
        try:
            with io.FileIO(tmp, "w") as out:
                end = 0
                for block_id, offset, size in blocks:
                    data = self.read(offset, size) or b""  # a damaged block stays damaged
                    moved[block_id] = end
                    view = memoryview(data)
                    written = 0
                    while written < len(view):
                        written += out.write(view[written:]) or 0
                    end += len(view)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("response cache %s: could not compact its vectors (%s)", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return None
        self.close()
        return moved

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._id = None

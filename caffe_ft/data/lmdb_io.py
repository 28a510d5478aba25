"""LMDB databases as Caffe uses them: one unnamed database of (key, serialized
Datum) pairs, read in LMDB's byte-wise key order."""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from types import TracebackType

import lmdb

from caffe_ft.data.db_cursor import damaged, read_errors, shared_env
from caffe_ft.data.workers import Payload
from caffe_ft.errors import CaffeError

# A small first map keeps tiny databases cheap on systems that reserve the
# whole map; the writer doubles it whenever a put might not fit.
INITIAL_MAP_SIZE = 64 << 20
# Caffe commits every 1000 puts. The byte limit bounds the dirty pages LMDB
# holds in memory for one transaction.
COMMIT_EVERY = 1000
COMMIT_BYTES = 16 << 20
# Pages one transaction may take beyond its puts' own: the copied path to the
# rightmost leaf, the free-page list and the meta page.
_TXN_PAGES = 64


class LMDBWriter:
    """Puts (key, value) pairs into a new LMDB at `path`, committing in batches
    and growing the map (doubling it) ahead of any put that might not fit.
    With `ordered`, the caller promises keys in increasing byte order
    (convert_imageset's keys start with the record's index), and each put
    appends at the end of the B-tree without searching it.

    Each value goes straight into the open transaction, which copies it: a
    caller may pass a view of a buffer it reuses, and no copy is kept to
    replay a transaction, so the map is grown before a put could fill it
    (MapFullError would lose the transaction)."""

    def __init__(self, path: str | os.PathLike[str], map_size: int = INITIAL_MAP_SIZE,
                 commit_every: int = COMMIT_EVERY, commit_bytes: int = COMMIT_BYTES,
                 ordered: bool = False) -> None:
        self.path = os.fspath(path)
        self.ordered = ordered
        self.commit_every = commit_every
        self.commit_bytes = commit_bytes
        self.resizes = 0
        self._txn: lmdb.Transaction | None = None
        self._puts = 0
        self._bytes = 0
        # At most how many pages the open transaction's puts add to those
        # the committed database uses.
        self._txn_pages = 0
        # A Payload is written here to be put: one reused buffer, not fresh
        # memory for each 200 KB value.
        self._scratch = bytearray()
        try:
            # Commits only hand pages to the OS; close() flushes them to disk
            # once. Callers build in a temporary folder renamed after close(),
            # so per-commit fsyncs (which stall the build) would buy nothing.
            self._env = lmdb.open(self.path, map_size=map_size, subdir=True, sync=False,
                                  metasync=False, readahead=False)
        except lmdb.Error as err:
            raise CaffeError(f"Cannot create LMDB {self.path}: {err}") from None
        info, stat = self._env.info(), self._env.stat()
        self._map_size = int(info["map_size"])
        self._page = int(stat["psize"])
        self._used_pages = int(info["last_pgno"]) + 1
        self._depth = int(stat["depth"])
        self._flusher = _BackgroundFlush(os.path.join(self.path, "data.mdb"))

    @property
    def map_size(self) -> int:
        return self._map_size

    def put(self, key: bytes, value: bytes | memoryview | Payload) -> None:
        """Put a pair into the open transaction, which copies the value (a
        Payload writes itself into a reused buffer first)."""
        size = len(value)
        if self._txn is not None and (self._puts >= self.commit_every
                                      or self._bytes + len(key) + size > self.commit_bytes):
            self.commit()
        if not isinstance(value, (bytes, bytearray, memoryview)):
            if len(self._scratch) < size:
                self._scratch = bytearray(size)
            stored = memoryview(self._scratch)[:size]
            value.write_into(stored)
            value = stored
        # At most: the value's overflow pages (or a share of a leaf), a new
        # leaf and a new branch page; unless appending, also a copy of the
        # path to the key's leaf, whose depth may grow while the transaction
        # is open (hence two levels over the last commit's).
        pages = -(-(len(key) + size + 64) // self._page) + 2
        if not self.ordered:
            pages += self._depth + 2
        self._make_room(pages)
        if self._txn is None:
            self._txn = self._env.begin(write=True)
        try:
            self._txn.put(key, value, append=self.ordered)
        except lmdb.MapFullError:
            raise CaffeError(f"Cannot write LMDB {self.path}: the map filled although "
                             f"{self._map_size} bytes were reserved for it") from None
        except lmdb.Error as err:
            raise CaffeError(f"Cannot write LMDB {self.path}: {err}") from None
        self._puts += 1
        self._bytes += len(key) + size
        self._txn_pages += pages

    def _make_room(self, pages: int) -> None:
        """Double the map until the open transaction and `pages` more fit;
        LMDB resizes only between transactions, so the open one commits first."""
        needed = (self._used_pages + _TXN_PAGES + self._txn_pages + pages) * self._page
        size = self._map_size
        if needed <= size:
            return
        self.commit()
        needed = (self._used_pages + _TXN_PAGES + pages) * self._page
        while size < needed:
            size *= 2
        self._env.set_mapsize(size)
        self._map_size = size
        self.resizes += 1

    def commit(self) -> None:
        """Commit the open transaction, if any."""
        if self._txn is None:
            return
        txn, self._txn = self._txn, None
        try:
            txn.commit()
        except lmdb.Error as err:
            raise CaffeError(f"Cannot write LMDB {self.path}: {err}") from None
        self._used_pages = int(self._env.info()["last_pgno"]) + 1
        self._depth = int(self._env.stat()["depth"])
        self._puts = self._bytes = self._txn_pages = 0
        self._flusher.start()

    def close(self) -> None:
        """Commit what is pending, flush everything to disk and close."""
        self.commit()
        self._flusher.close()
        self._env.sync(True)
        self._env.close()

    def __enter__(self) -> LMDBWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            if self._txn is not None:
                self._txn.abort()
            self._flusher.close(check=False)
            self._env.close()


class _BackgroundFlush:
    """Writes committed pages to disk in a thread while the next batch is
    built, so the flush at close() finds little left: disk and CPU work
    overlap instead of the build ending with one long fdatasync."""

    def __init__(self, data_file: str) -> None:
        self._path = data_file
        self._fd = os.open(data_file, os.O_RDONLY)
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None

    def start(self) -> None:
        """Flush what is committed, unless a flush is still running (the
        next one, or close(), takes the rest)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._flush, daemon=True)
            self._thread.start()

    def _flush(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as err:
            self._error = err

    def close(self, check: bool = True) -> None:
        if self._thread is not None:
            self._thread.join()
        os.close(self._fd)
        if check and self._error is not None:
            raise CaffeError(f"Cannot write {self._path} to disk: {self._error}")


class LMDBReader:
    """Reads an existing LMDB; iterating yields (key, value) in key order, the
    order Caffe's Data layer and tools see."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        # py-lmdb refuses a second environment on one database in a process,
        # so share the one a Data layer may already hold.
        self._env: lmdb.Environment | None = shared_env(self.path)

    def __len__(self) -> int:
        with read_errors(self.path, "its record count"):
            return int(self._env.stat()["entries"])

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        record, key = 0, b""
        with read_errors(self.path, "opening a read transaction"):
            txn = self._env.begin(buffers=False)
        try:
            records = txn.cursor().iternext(keys=True, values=True)
            while True:
                try:
                    pair = next(records, None)
                except lmdb.Error as err:
                    after = key.decode("utf-8", "backslashreplace")
                    where = f"record {record}, after key {after}" if record else "its first record"
                    raise damaged(self.path, where, err) from None
                if pair is None:
                    return
                key = pair[0]
                yield pair
                record += 1
        finally:
            txn.abort()

    def close(self) -> None:
        # Drop our reference; the shared environment closes with its last user.
        self._env = None

    def __enter__(self) -> LMDBReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


def check_backend(backend: str) -> None:
    """Caffe's tools take -backend lmdb|leveldb; only LMDB is implemented."""
    if backend.lower() == "leveldb":
        raise CaffeError("-backend=leveldb is not supported: caffe_ft reads and writes LMDB "
                         "only; use -backend=lmdb (and backend: LMDB in the Data layer)")
    if backend.lower() != "lmdb":
        raise CaffeError(f"Unknown database backend '{backend}'; expected lmdb")

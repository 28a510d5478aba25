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
# whole map; the writer doubles it whenever LMDB reports the map full.
INITIAL_MAP_SIZE = 64 << 20
# Caffe commits every 1000 puts. The byte limit bounds the memory held for a
# transaction that may have to be replayed after a map resize.
COMMIT_EVERY = 1000
COMMIT_BYTES = 16 << 20


class LMDBWriter:
    """Puts (key, value) pairs into a new LMDB at `path`, committing in batches
    and growing the map (doubling it) when it is full. With `ordered`, the
    caller promises keys in increasing byte order (convert_imageset's keys
    start with the record's index), and each put appends at the end of the
    B-tree without searching it."""

    def __init__(self, path: str | os.PathLike[str], map_size: int = INITIAL_MAP_SIZE,
                 commit_every: int = COMMIT_EVERY, commit_bytes: int = COMMIT_BYTES,
                 ordered: bool = False) -> None:
        self.path = os.fspath(path)
        self.ordered = ordered
        self.commit_every = commit_every
        self.commit_bytes = commit_bytes
        self.resizes = 0
        self._pending: list[tuple[bytes, memoryview]] = []
        self._pending_bytes = 0
        # Pending values are copied into one reused buffer: fresh memory for
        # each 200 KB value costs more in page faults than the copy itself.
        self._pool = bytearray(commit_bytes)
        self._pool_used = 0
        try:
            # Commits only hand pages to the OS; close() flushes them to disk
            # once. Callers build in a temporary folder renamed after close(),
            # so per-commit fsyncs (which stall the build) would buy nothing.
            self._env = lmdb.open(self.path, map_size=map_size, subdir=True, sync=False,
                                  metasync=False, readahead=False)
        except lmdb.Error as err:
            raise CaffeError(f"Cannot create LMDB {self.path}: {err}") from None
        self._flusher = _BackgroundFlush(os.path.join(self.path, "data.mdb"))

    @property
    def map_size(self) -> int:
        return int(self._env.info()["map_size"])

    def put(self, key: bytes, value: bytes | memoryview | Payload) -> None:
        """Queue a pair for the next commit. The value is copied (a Payload
        writes itself), so it may live in a buffer the caller reuses."""
        size = len(value)
        if self._pool_used + size > len(self._pool):
            self.commit()
        if size <= len(self._pool):
            start, self._pool_used = self._pool_used, self._pool_used + size
            stored = memoryview(self._pool)[start:self._pool_used]
            if isinstance(value, (bytes, bytearray, memoryview)):
                stored[:] = value
            else:
                value.write_into(stored)
        else:
            stored = memoryview(bytes(value))
        self._pending.append((key, stored))
        self._pending_bytes += len(key) + size
        if len(self._pending) >= self.commit_every or self._pending_bytes >= self.commit_bytes:
            self.commit()

    def commit(self) -> None:
        """Write the pending pairs in one transaction; a full map aborts it,
        doubles the map and replays the transaction."""
        if not self._pending:
            return
        self._reserve()
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in self._pending:
                        txn.put(key, value, append=self.ordered)
                break
            except lmdb.MapFullError:
                self._env.set_mapsize(self.map_size * 2)
                self.resizes += 1
            except lmdb.Error as err:
                raise CaffeError(f"Cannot write LMDB {self.path}: {err}") from None
        self._pending.clear()
        self._pending_bytes = 0
        self._pool_used = 0
        self._flusher.start()

    def _reserve(self) -> None:
        """Grow the map before a commit that would likely fill it: replaying
        a large transaction after MapFullError costs as much as writing it."""
        info, stat = self._env.info(), self._env.stat()
        used = (info["last_pgno"] + 1) * stat["psize"]
        # Values spill into whole overflow pages and keys need leaf pages:
        # leave a quarter of headroom over the raw byte count.
        needed = used + self._pending_bytes + self._pending_bytes // 4
        size = info["map_size"]
        if needed > size:
            while size < needed:
                size *= 2
            self._env.set_mapsize(size)
            self.resizes += 1

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

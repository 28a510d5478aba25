"""Caffe's db::Cursor over an LMDB as the Data layer moves it: records in
key order, the first again after the last.

Records are addressed by their index in key order, so a prefetch worker can
jump to the records of the batch it serves. Moving the cursor touches only
LMDB's tree pages, never the values it passes over, so workers that skip the
other workers' records do not read those images from disk.

py-lmdb refuses to open one database twice in a process and forbids using an
environment in a process forked after it was opened. So environments are
shared per process (a train and a test net on one database, or a net built
twice) and opened lazily, in the process that reads.
"""
from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb

from caffe_ft.errors import CaffeError

# (process id, real path) → the environment open for it in that process.
# Weak, so a database closes when its last cursor goes.
_OPEN: dict[tuple[int, str], weakref.ref[lmdb.Environment]] = {}


@contextlib.contextmanager
def read_errors(path: str, where: str) -> Iterator[None]:
    """lmdb.Error (a corrupt page, a truncated file) as a CaffeError naming the
    database and the record being read: raised in a prefetch worker, a
    CaffeError travels to the user as one line, where any other exception is
    reported as a bug with its traceback."""
    try:
        yield
    except lmdb.Error as err:
        raise damaged(path, where, err) from None


def damaged(path: str, where: str, err: lmdb.Error) -> CaffeError:
    return CaffeError(f"Cannot read LMDB {path} ({where}): {err}; the database is damaged, "
                      f"rebuild it (convert_imageset)")


def shared_env(path: str) -> lmdb.Environment:
    """This process's read-only environment for the LMDB at `path`."""
    key = (os.getpid(), os.path.realpath(path))
    env = _OPEN[key]() if key in _OPEN else None
    if env is None:
        env = _open(path)
        _OPEN[key] = weakref.ref(env)
    return env


def _open(path: str) -> lmdb.Environment:
    folder = Path(path)
    if not (folder / "data.mdb").is_file():
        if (folder / "CURRENT").is_file():
            hint = "it looks like a LevelDB; rebuild it with convert_imageset -backend lmdb"
        elif not folder.exists():
            hint = "the folder does not exist"
        else:
            hint = "the folder holds no data.mdb"
        raise CaffeError(f"{path}: not an LMDB ({hint})")
    try:
        # No lock: readers that take LMDB's lock create lock.mdb beside the
        # data, writing into folders (a source tree's fixtures, a shared
        # dataset) that are only read. Databases are built in a hidden folder
        # and renamed when complete, so no writer works on a database a
        # reader sees.
        return lmdb.open(path, readonly=True, lock=False, create=False, subdir=True)
    except lmdb.Error as err:
        raise CaffeError(f"Cannot open LMDB {path}: {err}") from None


def first_record(path: str) -> tuple[int, bytes, bytes]:
    """(record count, first key, first value): what a Data layer reads at setup."""
    env = shared_env(path)
    with read_errors(path, "its first record"), env.begin(buffers=False) as txn:
        cursor = txn.cursor()
        if not cursor.first():
            raise CaffeError(f"LMDB {path} holds no records")
        return int(txn.stat()["entries"]), cursor.key(), cursor.value()


class DatumCursor:
    def __init__(self, path: str | os.PathLike[str], count: int) -> None:
        self.path = os.fspath(path)
        self.count = count  # records in the database, known from the layer's setup
        self._cursor: lmdb.Cursor | None = None
        self.record = -1  # index of the record under the cursor; -1 before the first read

    def seek(self, record: int) -> None:
        """Put the cursor on record `record` (0 ≤ record < count), moving
        forward from where it is, or from the first record when that is shorter."""
        if self._cursor is None:
            # One read transaction for the cursor's life, as Caffe's LMDBCursor holds.
            with read_errors(self.path, "opening a read transaction"):
                self._cursor = shared_env(self.path).begin(buffers=False).cursor()
        if record == self.record:
            return
        try:
            self._move(self._cursor, record)
        except lmdb.Error as err:
            failed, self.record = self.record, -1  # the cursor's position is undefined now
            raise damaged(self.path, f"moving from record {failed} to record {record} of "
                                     f"{self.count} in key order", err) from None

    def _move(self, cursor: lmdb.Cursor, record: int) -> None:
        if self.record < 0 or record < self.record:
            if not cursor.first():
                raise CaffeError(f"LMDB {self.path} is empty")
            self.record = 0
        while self.record < record:
            if not cursor.next():
                raise CaffeError(f"LMDB {self.path} holds {self.record + 1} records, fewer than "
                                 f"the {self.count} it held when the layer was set up; was it "
                                 f"rewritten while training?")
            self.record += 1

    def key(self) -> bytes:
        assert self._cursor is not None, "seek() first"
        with read_errors(self.path, f"the key of record {self.record}"):
            return self._cursor.key()

    def value(self) -> bytes:
        assert self._cursor is not None, "seek() first"
        with read_errors(self.path, f"the value of record {self.record}"):
            return self._cursor.value()

    def __getstate__(self) -> dict[str, Any]:
        # A worker started by spawn gets the cursor unopened and opens its own.
        state = self.__dict__.copy()
        state.update(_cursor=None, record=-1)
        return state

"""A snapshot's files (the model and its solver state) written as one: each
to a temporary file beside its target, then all renamed onto their targets
in order, the solver state last. A failure (a full disk, a vanished folder)
keeps no file of the snapshot, so a model never stands without the state
that resumes it; Caffe would die there, and so does training.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from types import TracebackType

from caffe_ft.errors import CaffeError


class SnapshotFiles:
    """`with SnapshotFiles(n) as files: write(files.temp(target))...`: the
    temps are renamed onto their targets when the block ends normally; on
    any failure all are removed, and an OSError becomes a CaffeError naming
    the file being written."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration
        self._pairs: list[tuple[str, str]] = []  # (temp, target), in rename order
        self._current = ""

    def temp(self, target: str) -> str:
        """A new empty temporary file beside `target`, for writing it."""
        self._current = target
        parent = Path(target).parent
        # The temp ends with the target's name: writers pick the format by it
        # (a .solverstate.h5 is HDF5).
        fd, temp = tempfile.mkstemp(prefix=".snapshot.", suffix=f".{Path(target).name}",
                                    dir=parent if str(parent) else ".")
        os.close(fd)
        self._pairs.append((temp, target))
        return temp

    def __enter__(self) -> SnapshotFiles:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        renamed: list[str] = []
        if kind is None:
            try:
                for temp, target in self._pairs:
                    self._current = target
                    os.replace(temp, target)
                    renamed.append(target)
                return
            except OSError as err:
                error = err
        # Files of this snapshot already renamed go too: a model whose solver
        # state could not be written cannot be resumed.
        for path in [temp for temp, _ in self._pairs] + renamed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if isinstance(error, OSError):
            why = error.strerror or str(error)
            raise CaffeError(f"Snapshot at iteration {self.iteration} failed: {self._current}: "
                             f"{why}; no file of this snapshot was kept") from None

"""The hidden folder a database is built in before it is renamed into place,
named after the process that owns it, and the removal of such folders left
by a process that was killed (SIGKILL, the OOM killer) before it could clean up.

The owner is its pid, its start time (a pid can be reused) and the boot it
ran in (pids restart at every boot), all in the folder's name, so a folder
is claimed from the moment it exists and never holds a file that is not
part of the database.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from caffe_ft.glog import logger

_SUFFIX = ".partial"


@dataclass(frozen=True)
class Owner:
    pid: int
    start: str  # clock ticks after boot at which the process started; "0" where unknown
    boot: str   # this boot's id (first 8 hex digits); "0" where unknown

    @property
    def tag(self) -> str:
        return f"{self.pid}-{self.start}-{self.boot}"

    def alive(self) -> bool:
        """Whether the owner still runs; unknown parts count as a match, so a
        folder is kept whenever it could be a live run's."""
        if self.boot not in ("0", _boot_id()):
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's live process
        start = _start_time(self.pid)
        return "0" in (self.start, start) or start == self.start


def this_process() -> Owner:
    return Owner(os.getpid(), _start_time(os.getpid()), _boot_id())


def make_partial(target: Path) -> Path:
    """A new hidden folder beside `target`, owned by this process."""
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{this_process().tag}.", suffix=_SUFFIX,
                                 dir=target.parent))


def remove_stale_partials(target: Path) -> list[Path]:
    """Remove the partial folders of `target` whose owner has died; a live
    run's folder is left alone. Returns the folders removed."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)-(\d+)-([0-9a-f]+)\.[^/]+"
                         rf"{re.escape(_SUFFIX)}")
    parent = target.parent if str(target.parent) else Path(".")
    removed = []
    for folder in sorted(parent.glob(f".{glob.escape(target.name)}.*{_SUFFIX}")):
        match = pattern.fullmatch(folder.name)
        if match is None or not folder.is_dir():
            continue
        owner = Owner(int(match[1]), match[2], match[3])
        if owner.alive():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            logger.info("Removed stale partial database %s left by process %d (no longer "
                        "running)", folder, owner.pid)
            removed.append(folder)
    return removed


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip().replace("-", "")[:8] or "0"
    except OSError:
        return "0"


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (after the parenthesized command name,
    which may itself hold spaces and parentheses)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return "0"
    fields = stat[stat.rfind(b")") + 2:].split()
    return fields[19].decode() if len(fields) > 19 else "0"

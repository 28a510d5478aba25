"""convert_imageset: a list of images (or a folder of class folders) to an
LMDB of Datums, exactly as Caffe's tools/convert_imageset.cpp writes it.

Images are decoded and resized by worker processes; the main process only
writes LMDB, in list order, so the database does not depend on the number of
workers. The database is built in a hidden folder beside DB_NAME and renamed
to DB_NAME only when complete, so an interrupted build never leaves a
database that looks finished; the folder a killed build left is removed by
the next build of DB_NAME.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

import cv2

from caffe_ft.data.datum import ImageReadError, RawDatum, file_extension, read_image_to_datum
from caffe_ft.data.image_list import (
    ListEntry,
    parse_list_file,
    path_bytes,
    scan_class_folders,
    shuffle_entries,
    write_labels_file,
    write_list_file,
)
from caffe_ft.data.lmdb_io import LMDBWriter, check_backend
from caffe_ft.data.partial_db import make_partial, remove_stale_partials
from caffe_ft.data.progress import Progress
from caffe_ft.data.workers import Arena, OrderedWorkers, Region, WorkerDied
from caffe_ft.errors import CaffeError
from caffe_ft.glog import logger

# How many skipped images the final summary names (each was warned about).
_SUMMARY_NAMES = 10
# Shared memory per chunk in flight: 8 raw 256×256 Datums fit; larger Datums
# (images stored unresized) overflow into the worker's pipe.
_ARENA_BYTES = 4 << 20


@dataclass(frozen=True)
class ConvertOptions:
    """Caffe's convert_imageset flags, plus the shuffle seed and worker count."""
    gray: bool = False
    shuffle: bool = False
    backend: str = "lmdb"
    resize_width: int = 0
    resize_height: int = 0
    check_size: bool = False
    encoded: bool = False
    encode_type: str = ""
    seed: int | None = None  # None: a fresh random seed, logged
    workers: int = 0  # 0: one per available CPU


@dataclass
class ConvertSummary:
    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, why)
    map_size: int = 0
    map_resizes: int = 0


@dataclass(frozen=True)
class _Job:
    """What every image needs, sent once to each worker."""
    root: str
    height: int
    width: int
    is_color: bool
    encoded: bool
    encode_type: str


def convert_imageset(root: str, list_file: str | os.PathLike[str], db_name: str | os.PathLike[str],
                     options: ConvertOptions = ConvertOptions(),
                     stream: TextIO | None = None) -> ConvertSummary:
    """Build DB_NAME from the images in LISTFILE, read as ROOTFOLDER + path."""
    entries = parse_list_file(list_file)
    if not entries:
        raise CaffeError(f"{os.fspath(list_file)}: the list file holds no images")
    return build_database(root, entries, db_name, options, stream)


def convert_class_folders(root: str, db_name: str | os.PathLike[str],
                          options: ConvertOptions = ConvertOptions(),
                          stream: TextIO | None = None) -> ConvertSummary:
    """Build DB_NAME from ROOTFOLDER/<class>/<image> files. The list used is
    written to DB_NAME_list.txt and the class names, one per line in label
    order (sorted folder names), to DB_NAME_labels.txt."""
    target = Path(db_name)
    _check_options(options)
    _check_target(target)
    classes, entries = scan_class_folders(root)
    list_path = target.with_name(target.name + "_list.txt")
    labels_path = target.with_name(target.name + "_labels.txt")
    write_list_file(list_path, entries)
    write_labels_file(labels_path, classes)
    logger.info("Found %d images in %d class folders; wrote %s and %s", len(entries),
                len(classes), list_path, labels_path)
    return build_database(os.path.join(root, ""), entries, target, options, stream)


def build_database(root: str, entries: list[ListEntry], db_name: str | os.PathLike[str],
                   options: ConvertOptions, stream: TextIO | None = None) -> ConvertSummary:
    """Build DB_NAME from `entries` (list order, or shuffled with -shuffle)."""
    target = Path(db_name)
    _check_options(options)
    _check_target(target)
    if not entries:
        raise CaffeError(f"No images to convert into {target}")
    if options.shuffle:
        seed = secrets.randbits(32) if options.seed is None else options.seed
        logger.info("Shuffling data (seed %d)", seed)
        entries = shuffle_entries(entries, seed)
    logger.info("A total of %d images.", len(entries))
    if options.encode_type and not options.encoded:
        logger.info("encode_type specified, assuming encoded=true.")
    height, width = max(0, options.resize_height), max(0, options.resize_width)
    if bool(height) != bool(width):
        logger.warning("Only one of -resize_height and -resize_width is set: images are not "
                       "resized (Caffe resizes only when both are > 0)")
    job = _Job(root, height, width, not options.gray, options.encoded, options.encode_type)
    workers = options.workers if options.workers > 0 else _available_cpus()

    remove_stale_partials(target)
    partial = make_partial(target)
    try:
        # mkdtemp makes the folder private (0700); a database is as readable
        # as the folder Caffe's mkdir would have made.
        os.chmod(partial, 0o755)
        with _DeferredInterrupts() as interrupts:
            summary = _write(job, entries, partial, workers, options.check_size, stream,
                             interrupts)
            if summary.written == 0:
                raise CaffeError(_nothing_read_message(root, entries, summary))
            _check_target(target)  # it may have appeared while we were building
            interrupts.check()
            os.rename(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _log_summary(target, len(entries), summary)
    return summary


def _write(job: _Job, entries: list[ListEntry], folder: Path, workers: int, check_size: bool,
           stream: TextIO | None, interrupts: _DeferredInterrupts) -> ConvertSummary:
    summary = ConvertSummary()
    data_size: int | None = None
    # The pool forks before LMDB opens: a forked child must not inherit an
    # open LMDB environment.
    # Keys start with the record's index padded to 8 digits: in byte order
    # up to 10^8 records.
    with _encoded_records(job, entries, workers) as records, \
            LMDBWriter(folder, ordered=len(entries) <= 10**8) as writer, \
            Progress(len(entries), stream) as progress:
        for index, (entry, (value, size, why)) in enumerate(zip(entries, records)):
            interrupts.check()
            if value is None:
                logger.warning("Skipping line %d (%s): %s", entry.line, entry.path, why)
                summary.skipped.append((entry.path, why))
            else:
                if check_size:
                    data_size = size if data_size is None else data_size
                    if size != data_size:
                        raise CaffeError(
                            f"{job.root + entry.path}: incorrect data field size {size}; "
                            f"-check_size expects {data_size} as in the first image")
                writer.put(b"%08d_" % index + path_bytes(entry.path), value)
                summary.written += 1
            progress.advance(value is not None)
        progress.finish()
        writer.commit()
        summary.map_size, summary.map_resizes = writer.map_size, writer.resizes
    return summary


# (serialized Datum, its data size, why skipped). encode_entry gives a raw
# Datum as a RawDatum, which workers write straight into shared memory; from
# them it comes back as a view of that memory, valid until the next record
# is taken.
Encoded = tuple[RawDatum | bytes | None, int, str]
Record = tuple[RawDatum | bytes | memoryview | None, int, str]
# A record as a worker sends it: the Datum's place in its chunk's arena, or
# its bytes when it does not fit there.
_Sent = tuple[Region | bytes | None, int, str]


def encode_entry(job: _Job, task: tuple[str, int]) -> Encoded:
    """One list line (path, label) as a serialized Datum, or None and the
    reason it is skipped."""
    path, label = task
    if not path:
        return None, 0, "empty line"
    encoding = job.encode_type or (file_extension(path) if job.encoded else "")
    try:
        datum = read_image_to_datum(job.root + path, label, job.height, job.width,
                                    job.is_color, encoding)
    except ImageReadError as err:
        return None, 0, str(err)
    if isinstance(datum, RawDatum):
        return datum, datum.data_size, ""
    return datum.SerializeToString(), len(datum.data), ""


def _encode_in_worker(job: _Job, task: tuple[str, int], arena: Arena) -> _Sent:
    value, size, why = encode_entry(job, task)
    return (None if value is None else arena.put(value)), size, why


@contextlib.contextmanager
def _encoded_records(job: _Job, entries: list[ListEntry], workers: int) -> Iterator[Iterator[Record]]:
    """Records for `entries`, in order: made here with one worker, else by
    worker processes."""
    tasks = ((entry.path, entry.label) for entry in entries)
    if workers <= 1:
        yield (encode_entry(job, task) for task in tasks)
        return
    # Small chunks keep the arenas small (a raw 256×256 Datum is 192 KiB)
    # while still amortizing the round trip.
    chunk = max(1, min(8, len(entries) // (workers * 8)))
    pool: OrderedWorkers[_Job, tuple[str, int], _Sent] = OrderedWorkers(
        _encode_in_worker, job, workers, "convert_imageset", arena_bytes=_ARENA_BYTES)
    try:
        yield _received(pool.map(tasks, chunk))
    finally:
        pool.close()


def _received(sent: Iterator[tuple[_Sent, memoryview]]) -> Iterator[Record]:
    """The workers' records with each Datum read in place from shared memory."""
    try:
        for (value, size, why), memory in sent:
            yield (value.of(memory) if isinstance(value, Region) else value), size, why
    except WorkerDied as died:
        raise CaffeError(f"{died} while decoding images; one of the images in flight may "
                         f"crash OpenCV (run with -workers=1 to find it)") from None


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _DeferredInterrupts:
    """Turns Ctrl-C and SIGTERM into a request that the build loop honours
    between records (raising KeyboardInterrupt there), so the partial
    database is removed. Raised at an arbitrary point, an interrupt could
    land in one of Python's at-fork hooks while workers start, which swallow
    it, and the build would go on. A second signal interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _DeferredInterrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._request)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _request(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


def _check_options(options: ConvertOptions) -> None:
    check_backend(options.backend)
    if options.encode_type and not cv2.haveImageWriter("." + options.encode_type):
        raise CaffeError(f"-encode_type={options.encode_type}: OpenCV has no encoder for it; "
                         f"expected jpg, png or another image format")
    if options.check_size and (options.encoded or options.encode_type):
        # Caffe compares data sizes against channels×height×width, which an
        # encoded Datum leaves at 0, so it aborts on the second image.
        raise CaffeError("-check_size compares raw Datums and cannot be used with -encoded "
                         "or -encode_type")


def _check_target(target: Path) -> None:
    if target.exists():
        raise CaffeError(f"{target} already exists; convert_imageset creates a new database "
                         f"and never overwrites one (remove it or pick another DB_NAME)")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise CaffeError(f"Cannot create {target}: folder {parent} does not exist")


def _nothing_read_message(root: str, entries: list[ListEntry], summary: ConvertSummary) -> str:
    first_path, why = summary.skipped[0]
    hint = ""
    if os.path.isdir(root) and not root.endswith(("/", os.sep)):
        hint = (f"; image paths are ROOTFOLDER + path, so ROOTFOLDER '{root}' probably "
                f"needs a trailing '/'")
    return (f"None of the {len(entries)} images could be read, so no database was written "
            f"(first: {first_path}: {why}){hint}")


def _log_summary(target: Path, total: int, summary: ConvertSummary) -> None:
    if not summary.skipped:
        logger.info("Wrote %d Datums to %s", summary.written, target)
        return
    names = ", ".join(path or "<empty line>" for path, _ in summary.skipped[:_SUMMARY_NAMES])
    more = len(summary.skipped) - _SUMMARY_NAMES
    logger.warning("Wrote %d Datums to %s; skipped %d of %d images that could not be read: "
                   "%s%s", summary.written, target, len(summary.skipped), total, names,
                   f" and {more} more" if more > 0 else "")

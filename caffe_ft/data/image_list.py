"""Image list files (`relative/path label` per line), as convert_imageset and
the ImageData layer read them, and lists made from a folder of class folders."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from caffe_ft.errors import CaffeError
from caffe_ft.protofile import atomic_write

# List files hold raw file names: bytes that are not UTF-8 survive the round
# trip to paths and LMDB keys unchanged.
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"

# Extensions of the image formats OpenCV decodes, for folder scans.
IMAGE_EXTENSIONS = frozenset({
    "bmp", "dib", "jpeg", "jpg", "jpe", "jp2", "png", "webp", "pbm", "pgm", "ppm", "pxm",
    "pnm", "sr", "ras", "tiff", "tif", "exr", "hdr", "pic", "avif",
})


@dataclass(frozen=True)
class ListEntry:
    path: str
    label: int
    line: int  # 1-based line in the list file, for messages

    @property
    def is_blank(self) -> bool:
        return not self.path


def parse_list_file(list_file: str | os.PathLike[str]) -> list[ListEntry]:
    """One entry per line, split at the last space: the path may hold spaces.

    A blank line still takes a line index (and so shifts later keys), as in
    Caffe, where it becomes an unreadable image; the builder skips it. A
    label that is not an integer is an error here, where Caffe's atoi would
    quietly make it 0.
    """
    try:
        raw = Path(list_file).read_bytes()
    except OSError as err:
        raise CaffeError(f"Cannot read list file {os.fspath(list_file)}: "
                         f"{err.strerror or err}") from None
    text = raw.decode(_ENCODING, _ERRORS)
    entries = []
    # Only '\n' ends a line (std::getline); a '\r' of a CRLF file trails the label.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line.strip():
            entries.append(ListEntry("", 0, number))
            continue
        path, space, label = line.rpartition(" ")
        try:
            value = int(label)
        except ValueError:
            value = None
        if not space or not path or value is None or not -2**31 <= value < 2**31:
            raise CaffeError(f"{os.fspath(list_file)}:{number}: expected 'PATH LABEL' with an "
                             f"integer label after the last space, got '{line}'")
        entries.append(ListEntry(path, value, number))
    return entries


def shuffle_entries(entries: list[ListEntry], seed: int) -> list[ListEntry]:
    """The entries in a random order that depends only on `seed` (Caffe's own
    shuffle is unseeded, so its order cannot be reproduced anyway)."""
    shuffled = list(entries)
    random.Random(seed).shuffle(shuffled)
    return shuffled


def path_bytes(path: str) -> bytes:
    """A list path as the bytes it had in the list file (LMDB keys hold them)."""
    return path.encode(_ENCODING, _ERRORS)


def scan_class_folders(root: str | os.PathLike[str]) -> tuple[list[str], list[ListEntry]]:
    """Class names (sorted sub-folder names of `root`) and one entry per image
    below them; an image's label is its class folder's index in that order."""
    base = Path(root)
    if not base.is_dir():
        raise CaffeError(f"{os.fspath(root)}: not a folder; -from_folders expects a folder "
                         f"holding one sub-folder of images per class")
    classes = sorted(entry.name for entry in os.scandir(base)
                     if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise CaffeError(f"{os.fspath(root)}: no class sub-folders; -from_folders expects "
                         f"one sub-folder of images per class")
    entries: list[ListEntry] = []
    for label, name in enumerate(classes):
        images = sorted(
            path.relative_to(base).as_posix()
            for path in (base / name).rglob("*")
            if path.is_file() and not path.name.startswith(".")
            and path.suffix[1:].lower() in IMAGE_EXTENSIONS)
        if not images:
            raise CaffeError(f"{base / name}: class folder holds no images (expected files "
                             f"ending in .jpg, .png or another image extension)")
        for image in images:
            if "\n" in image:
                raise CaffeError(f"{base / image}: a file name with a line break cannot be "
                                 f"written to a list file; rename it")
            entries.append(ListEntry(image, label, len(entries) + 1))
    return classes, entries


def write_list_file(path: str | os.PathLike[str], entries: list[ListEntry]) -> None:
    with atomic_write(path) as handle:
        handle.write(b"".join(path_bytes(f"{e.path} {e.label}\n") for e in entries))


def write_labels_file(path: str | os.PathLike[str], classes: list[str]) -> None:
    """One class name per line; line i (from 0) names label i."""
    with atomic_write(path) as handle:
        handle.write(b"".join(path_bytes(f"{name}\n") for name in classes))

"""R-CNN's window data (Caffe's WindowDataLayer): a window file lists images
and candidate boxes with their overlap with an object; each batch samples
background boxes, then foreground boxes, warps each (with context padding)
to crop_size × crop_size and subtracts the mean.

Window file, repeated per image (whitespace-separated, as C++ >> reads it):

    # image_index
    image_path
    channels height width
    num_windows
    class_index overlap x1 y1 x2 y2      (num_windows lines, corners inclusive)

Boxes with overlap ≥ fg_threshold are foreground (their class must be > 0);
boxes with overlap < bg_threshold are background (label 0); others are
dropped. The box geometry is computed in float32 with C's round(), as Caffe's
Dtype arithmetic does, so the warped pixels land where Caffe puts them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import cv2
import numpy as np

from caffe_ft.rng.engine import CaffeRNG
from caffe_ft.data.sources import Allocator, new_arrays
from caffe_ft.errors import CaffeError

f32 = np.float32


@dataclass(frozen=True)
class Window:
    image: int  # index into the image list
    label: int
    x1: int
    y1: int
    x2: int
    y2: int


class WindowList(Sequence[Window]):
    """Windows kept as one int32 row each (image, label, x1, y1, x2, y2): an
    R-CNN window file holds millions of them (about 2000 per image)."""

    def __init__(self, rows: np.ndarray) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Window: ...

    @overload
    def __getitem__(self, index: slice) -> list[Window]: ...

    def __getitem__(self, index: int | slice) -> Window | list[Window]:
        if isinstance(index, slice):
            return [Window(*map(int, row)) for row in self._rows[index]]
        return Window(*map(int, self._rows[index]))


@dataclass
class WindowFile:
    """A parsed window file: its images, foreground and background windows,
    and the number of windows per class (class 0: background)."""
    path: str
    images: list[str]
    channels: int  # of the last image, as Caffe sizes the data top
    foreground: WindowList
    background: WindowList
    class_counts: dict[int, int]
    # (image index, path, channels, height, width, windows) per image
    headers: list[tuple[int, str, int, int, int, int]]


class _Tokens:
    """The file's whitespace-separated tokens (C++ >> reads it so), read line
    by line, with the line each token came from."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._file = open(path, encoding="utf-8", errors="surrogateescape")
        except OSError as err:
            raise CaffeError(f"Failed to open window file {path} "
                             f"({err.strerror or err})") from None
        self._lines = enumerate(self._file, 1)
        self._pending: list[str] = []
        self._next = 0
        self.line = 1

    def close(self) -> None:
        self._file.close()

    def _next_line(self) -> list[str] | None:
        entry = next(self._lines, None)
        if entry is None:
            return None
        self.line = entry[0]
        return entry[1].split()

    def more(self) -> bool:
        while self._next == len(self._pending):
            tokens = self._next_line()
            if tokens is None:
                return False
            self._pending, self._next = tokens, 0
        return True

    def take(self, what: str) -> str:
        if not self.more():
            raise CaffeError(f"{self.path}:{self.line}: file ends where {what} was expected")
        token = self._pending[self._next]
        self._next += 1
        return token

    def number(self, kind: type, what: str) -> int | float:
        token = self.take(what)
        try:
            return kind(token)
        except ValueError:
            raise CaffeError(f"{self.path}:{self.line}: expected {what} ({kind.__name__}), "
                             f"got '{token}'") from None

    def rows(self, count: int) -> tuple[list[list[str]], list[int]]:
        """`count` windows of 6 tokens, and the line each ends on. Whole
        lines of 6 tokens are taken at once (the usual layout); anything
        else is read token by token."""
        rows: list[list[str]] = []
        lines: list[int] = []
        while len(rows) < count:
            if self._next == len(self._pending):
                tokens = self._next_line()
                if tokens is None:
                    raise CaffeError(f"{self.path}:{self.line}: file ends where a window's "
                                     f"class index was expected")
                if len(tokens) == 6:
                    rows.append(tokens)
                    lines.append(self.line)
                    continue
                self._pending, self._next = tokens, 0
                if not tokens:
                    continue
            rows.append([self.take(what) for what in _WINDOW_FIELDS])
            lines.append(self.line)
        return rows, lines


_WINDOW_FIELDS = ("a window's class index", "a window's overlap", "x1", "y1", "x2", "y2")


def _window_values(tokens: _Tokens, rows: list[list[str]], lines: list[int]) -> np.ndarray:
    """The rows as float64 (label, overlap, x1, y1, x2, y2); a bad value is
    reported with its line."""
    try:
        values = np.array(rows, dtype=np.float64).reshape(len(rows), 6)
    except ValueError:
        values = None
    integral = [0, 2, 3, 4, 5]
    if values is not None:
        whole = values[:, integral]
        if np.all(np.isfinite(whole) & (whole == np.trunc(whole))):
            return values
    for row, line in zip(rows, lines):
        for field, token in zip(_WINDOW_FIELDS, row):
            kind = float if field == "a window's overlap" else int
            try:
                kind(token)
            except ValueError:
                raise CaffeError(f"{tokens.path}:{line}: expected {field} "
                                 f"({kind.__name__}), got '{token}'") from None
    raise AssertionError("unreachable: every token parsed")


def read_window_file(path: str, root_folder: str, fg_threshold: float,
                     bg_threshold: float) -> WindowFile:
    tokens = _Tokens(path)
    try:
        return _read_windows(tokens, root_folder, f32(fg_threshold), f32(bg_threshold))
    finally:
        tokens.close()


def _read_windows(tokens: _Tokens, root_folder: str, fg: np.float32,
                  bg: np.float32) -> WindowFile:
    path = tokens.path
    if not tokens.more():
        raise CaffeError(f"{path}: Window file is empty")
    images: list[str] = []
    headers: list[tuple[int, str, int, int, int, int]] = []
    foreground: list[np.ndarray] = []
    background: list[np.ndarray] = []
    class_counts = {0: 0}
    channels = 0
    while tokens.more():
        hashtag = tokens.take("'#'")
        if hashtag != "#":
            raise CaffeError(f"{path}:{tokens.line}: expected '# image_index', got '{hashtag}'")
        index = int(tokens.number(int, "the image index"))
        if index != len(images):
            raise CaffeError(f"{path}:{tokens.line}: image index {index}, expected "
                             f"{len(images)} (images are numbered 0, 1, ... in order)")
        image = root_folder + tokens.take("the image path")
        channels, height, width = (int(tokens.number(int, name))
                                   for name in ("channels", "height", "width"))
        count = int(tokens.number(int, "the number of windows"))
        images.append(image)
        headers.append((index, image, channels, height, width, count))
        rows, lines = tokens.rows(count)
        if not rows:
            continue
        values = _window_values(tokens, rows, lines)
        labels, overlaps = values[:, 0].astype(np.int64), values[:, 1].astype(f32)
        is_fg = overlaps >= fg
        is_bg = ~is_fg & (overlaps < bg)
        bad = np.flatnonzero(is_fg & (labels <= 0))
        if bad.size:
            first = int(bad[0])
            raise CaffeError(f"{path}:{lines[first]}: a foreground window (overlap "
                             f"{overlaps[first]:g} ≥ fg_threshold) needs a class index > 0, "
                             f"got {labels[first]}")
        block = np.empty((count, 6), np.int32)
        block[:, 0] = index
        block[:, 1] = np.where(is_fg, labels, 0)
        block[:, 2:] = values[:, 2:]
        foreground.append(block[is_fg])
        background.append(block[is_bg])
        for label, number in zip(*np.unique(labels[is_fg], return_counts=True)):
            class_counts[int(label)] = class_counts.get(int(label), 0) + int(number)
        class_counts[0] += int(is_bg.sum())
    empty = np.zeros((0, 6), np.int32)
    return WindowFile(path, images, channels,
                      WindowList(np.concatenate(foreground) if foreground else empty),
                      WindowList(np.concatenate(background) if background else empty),
                      class_counts, headers)


def _round(value: np.float32) -> int:
    """C's round() of a float: halves away from zero."""
    return int(math.copysign(math.floor(abs(float(value)) + 0.5), float(value)))


@dataclass(frozen=True)
class Warp:
    """Where a window's pixels come from and go to: the (clipped) source box
    x1, y1, x2, y2 (inclusive), the size it is resized to, and its offset in
    the crop_size × crop_size output."""
    x1: int
    y1: int
    x2: int
    y2: int
    width: int
    height: int
    pad_w: int
    pad_h: int


def warp_geometry(window: Window, rows: int, cols: int, crop_size: int, context_pad: int,
                  square: bool, mirror: bool) -> Warp:
    """Caffe's box arithmetic: grow the box so that, warped to crop_size,
    context_pad pixels of context surround it (and make it square in
    'square' mode), clip it to the image, and keep the clipped part where
    it would lie in the unclipped warp."""
    x1, y1, x2, y2 = window.x1, window.y1, window.x2, window.y2
    if not (context_pad > 0 or square):
        return Warp(x1, y1, x2, y2, crop_size, crop_size, 0, 0)
    context_scale = f32(crop_size) / f32(crop_size - 2 * context_pad)
    half_height = f32((y2 - y1 + 1) / 2.0)
    half_width = f32((x2 - x1 + 1) / 2.0)
    center_x = f32(x1) + half_width
    center_y = f32(y1) + half_height
    if square:
        half_width = half_height = max(half_width, half_height)
    x1 = _round(center_x - half_width * context_scale)
    x2 = _round(center_x + half_width * context_scale)
    y1 = _round(center_y - half_height * context_scale)
    y2 = _round(center_y + half_height * context_scale)
    unclipped_height, unclipped_width = y2 - y1 + 1, x2 - x1 + 1
    pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
    pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
    x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
    scale_x = f32(crop_size) / f32(unclipped_width)
    scale_y = f32(crop_size) / f32(unclipped_height)
    width = _round(f32(x2 - x1 + 1) * scale_x)
    height = _round(f32(y2 - y1 + 1) * scale_y)
    pad_x1, pad_x2 = _round(f32(pad_x1) * scale_x), _round(f32(pad_x2) * scale_x)
    pad_h = _round(f32(pad_y1) * scale_y)
    # A mirrored window has its padding mirrored too.
    pad_w = pad_x2 if mirror else pad_x1
    # Rounding may push the warp past the output's edge.
    height = min(height, crop_size - pad_h)
    width = min(width, crop_size - pad_w)
    return Warp(x1, y1, x2, y2, width, height, pad_w, pad_h)


class WindowSource:
    """Batch k of the sampler: each item draws a window (PrefetchRand() %
    count) and, with mirror, a coin; batch k starts at draw k × batch_size ×
    draws per item of one boost::mt19937 stream, so any process can make any
    batch."""

    def __init__(self, windows: WindowFile, batch_size: int, crop_size: int, mirror: bool,
                 context_pad: int, square: bool, fg_fraction: float, scale: float,
                 mean: np.ndarray | None, mean_values: np.ndarray, seed: int,
                 labels: bool, cached: dict[int, bytes] | None) -> None:
        self.windows = windows
        self.batch_size = batch_size
        self.crop_size = crop_size
        self.mirror = mirror
        self.context_pad = context_pad
        self.square = square
        self.num_fg = int(f32(batch_size) * f32(fg_fraction))
        self.scale = f32(scale)
        self.mean = mean
        self.mean_values = mean_values
        self.rng = CaffeRNG(seed)
        self.labels = labels
        self.cached = cached
        self.draws_per_item = 2 if mirror else 1

    def load_batch(self, index: int, allocate: Allocator = new_arrays) -> list[np.ndarray]:
        size, crop = self.batch_size, self.crop_size
        shapes = [(size, self.windows.channels, crop, crop)] + ([(size,)] if self.labels else [])
        arrays = allocate(shapes)
        data = arrays[0]
        data.fill(0)
        self.rng.seek(index * size * self.draws_per_item)
        item = 0
        for pool, count in ((self.windows.background, size - self.num_fg),
                            (self.windows.foreground, self.num_fg)):
            for _ in range(count):
                window = pool[self.rng.raw() % len(pool)]
                do_mirror = self.mirror and self.rng.raw() % 2 == 1
                self._warp_into(data[item], window, do_mirror)
                if self.labels:
                    arrays[1][item] = window.label
                item += 1
        return arrays

    def _image(self, window: Window) -> np.ndarray:
        path = self.windows.images[window.image]
        if self.cached is not None:
            image = cv2.imdecode(np.frombuffer(self.cached[window.image], np.uint8),
                                 cv2.IMREAD_COLOR)
        else:
            image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise CaffeError(f"{self.windows.path}: Could not open or find file {path}")
        return image

    def _warp_into(self, out: np.ndarray, window: Window, do_mirror: bool) -> None:
        image = self._image(window)
        rows, cols = image.shape[:2]
        warp = warp_geometry(window, rows, cols, self.crop_size, self.context_pad, self.square,
                             do_mirror)
        box = f"({window.x1}, {window.y1}, {window.x2}, {window.y2})"
        if not (0 <= warp.x1 <= warp.x2 < cols and 0 <= warp.y1 <= warp.y2 < rows):
            raise CaffeError(f"{self.windows.path}: window {box} of "
                             f"{self.windows.images[window.image]} lies outside the "
                             f"{cols}×{rows} image")
        if warp.width <= 0 or warp.height <= 0:
            raise CaffeError(f"{self.windows.path}: window {box} of "
                             f"{self.windows.images[window.image]} warps to "
                             f"{warp.width}×{warp.height} pixels")
        patch = cv2.resize(image[warp.y1:warp.y2 + 1, warp.x1:warp.x2 + 1],
                           (warp.width, warp.height), interpolation=cv2.INTER_LINEAR)
        if do_mirror:
            patch = patch[:, ::-1]
        pixels = patch.transpose(2, 0, 1).astype(f32)
        rows_out = slice(warp.pad_h, warp.pad_h + warp.height)
        cols_out = slice(warp.pad_w, warp.pad_w + warp.width)
        if self.mean is not None:
            # Caffe centres the crop in the mean with the width's offset on both axes.
            offset = (self.mean.shape[2] - self.crop_size) // 2
            mean = self.mean[:, offset + warp.pad_h:offset + warp.pad_h + warp.height,
                             offset + warp.pad_w:offset + warp.pad_w + warp.width]
            out[:, rows_out, cols_out] = (pixels - mean) * self.scale
        elif self.mean_values.size:
            out[:, rows_out, cols_out] = (pixels - self.mean_values[:, None, None]) * self.scale
        else:
            out[:, rows_out, cols_out] = pixels * self.scale

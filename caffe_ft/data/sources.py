"""What the prefetching data layers read: batch `b` of a Data layer's LMDB or
of an ImageData layer's list file, computed from `b` alone.

A source is a picklable recipe (paths, parameters, seeds) that opens its
files lazily in the process that reads. Any process can serve any batch: item
j of the layer's stream takes its random draws from position
j × draws_per_item of the transformer's stream and its record from Caffe's
cursor rule, so batches come out the same whether one process reads them in
order or several workers share them.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol
from dataclasses import dataclass

import cv2
import numpy as np

from caffe_ft.data.datum import datum_where, decode_image, parse_datum
from caffe_ft.data.db_cursor import DatumCursor
from caffe_ft.data.image_list import ListEntry
from caffe_ft.rng.engine import CaffeRNG
from caffe_ft.data.transformer import DataTransformer
from caffe_ft.errors import CaffeError
from caffe_ft.glog import logger


# Makes the float32 arrays of a batch, given their shapes.
Allocator = Callable[[list[tuple[int, ...]]], list[np.ndarray]]


def new_arrays(shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    return [np.empty(shape, np.float32) for shape in shapes]


class BatchStream(Protocol):
    """What a Prefetcher reads: any batch, by index alone, in given arrays."""
    batch_size: int

    def load_batch(self, index: int, allocate: Allocator = new_arrays) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Shard:
    """This process's part of a TRAIN stream under data parallelism: Caffe's
    Skip() keeps item k of the cursor on rank k % size."""
    rank: int = 0
    size: int = 1


class BatchSource(ABC):
    def __init__(self, batch_size: int, transformer: DataTransformer, seed: int,
                 labels: bool) -> None:
        self.batch_size = batch_size
        self.transformer = transformer
        self.labels = labels
        self.rng = CaffeRNG(seed) if transformer.needs_rng else None

    @abstractmethod
    def read_item(self, item: int) -> tuple[np.ndarray, float, str]:
        """Item `item` of the stream: its C×H×W pixels, label, and a 'where'
        (database and key, or list file and line) for messages."""

    def load_batch(self, index: int, allocate: Allocator = new_arrays) -> list[np.ndarray]:
        """Batch `index`: data (N×C×H×W float32) and, if wanted, labels (N,),
        in arrays from `allocate` (a prefetch worker builds it in its shared arena).
        The batch takes its shape from its first image (Caffe's load_batch),
        so batch_size 1 allows images of varying size."""
        size = self.batch_size
        arrays: list[np.ndarray] = []
        for i in range(size):
            item = index * size + i
            pixels, label, where = self.read_item(item)
            shape = self.transformer.output_shape(pixels, where)
            if i == 0:
                arrays = allocate([(size, *shape)] + ([(size,)] if self.labels else []))
            elif shape != arrays[0].shape[1:]:
                raise CaffeError(f"{where}: transforms to {'×'.join(map(str, shape))}, but "
                                 f"this batch is {'×'.join(map(str, arrays[0].shape[1:]))} "
                                 f"(from its first image); a batch needs images of one size "
                                 f"(or a crop_size)")
            if self.rng is not None:
                self.rng.seek(item * self.transformer.draws_per_item)
            self.transformer.transform(pixels, arrays[0][i], self.rng, where)
            if self.labels:
                arrays[1][i] = label
        return arrays


class DatumSource(BatchSource):
    """The Data layer's stream: Datums in key order, wrapping around; under a
    shard, every size-th record from the rank's own offset."""

    def __init__(self, path: str | os.PathLike[str], count: int, batch_size: int,
                 transformer: DataTransformer, seed: int, labels: bool,
                 shard: Shard = Shard()) -> None:
        super().__init__(batch_size, transformer, seed, labels)
        self.path = os.fspath(path)
        self.shard = shard
        self.cursor = DatumCursor(self.path, count)

    def read_item(self, item: int) -> tuple[np.ndarray, float, str]:
        # Caffe's offset_ counts every record the cursor passes, kept or skipped.
        offset = self.shard.rank + item * self.shard.size
        self.cursor.seek(offset % self.cursor.count)
        where = datum_where(self.path, self.cursor.key())
        datum = parse_datum(self.cursor.value(), where)
        if (offset + self.shard.size) // self.cursor.count > offset // self.cursor.count:
            # Caffe's cursor passes the last record on its way to this rank's
            # next one (data_layer.cpp Next()).
            logger.info("Restarting data prefetching from start.")
        return self.transformer.datum_pixels(datum, where), float(datum.label), where


class ImageListSource(BatchSource):
    """The ImageData layer's stream: the list's images from `skip` on, the list
    reshuffled (when `shuffle_seed` is given) each time it wraps, as Caffe
    shuffles at setup and at every wrap with its own generator."""

    def __init__(self, list_file: str, entries: list[ListEntry], root_folder: str,
                 new_height: int, new_width: int, is_color: bool, batch_size: int,
                 transformer: DataTransformer, seed: int, shuffle_seed: int | None,
                 skip: int) -> None:
        super().__init__(batch_size, transformer, seed, labels=True)
        self.list_file = list_file
        self.entries = entries
        self.root_folder = root_folder
        self.new_height = new_height
        self.new_width = new_width
        self.is_color = is_color
        self.skip = skip
        self.shuffle_rng = CaffeRNG(shuffle_seed) if shuffle_seed is not None else None
        self._epoch = -1
        self._order: list[ListEntry] = []

    def _order_of(self, epoch: int) -> list[ListEntry]:
        """The list as epoch `epoch` reads it: shuffled epoch + 1 times in a row."""
        if self.shuffle_rng is None:
            return self.entries
        if epoch < self._epoch or self._epoch < 0:
            self.shuffle_rng.reset()
            self._order = list(self.entries)
            self.shuffle_rng.shuffle(self._order)
            self._epoch = 0
        while self._epoch < epoch:
            self.shuffle_rng.shuffle(self._order)
            self._epoch += 1
        return self._order

    def entry(self, item: int) -> ListEntry:
        epoch, line = divmod(self.skip + item, len(self.entries))
        return self._order_of(epoch)[line]

    def read_item(self, item: int) -> tuple[np.ndarray, float, str]:
        entry = self.entry(item)
        filename = self.root_folder + entry.path
        where = f"{self.list_file}:{entry.line}: {filename}"
        pixels = self.transformer.image_pixels(self.read_image(filename, where), where)
        return pixels, float(entry.label), where

    def read_image(self, filename: str, where: str) -> np.ndarray:
        """Caffe's ReadImageToCVMat: imread in color or gray, then a bilinear
        resize to new_width × new_height when both are set."""
        try:
            with open(filename, "rb") as handle:
                raw = handle.read()
        except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
            raise CaffeError(f"{where}: Could not load image "
                             f"({getattr(err, 'strerror', None) or err})") from None
        image = decode_image(raw, self.is_color, where)
        if self.new_height > 0 and self.new_width > 0:
            image = cv2.resize(image, (self.new_width, self.new_height),
                               interpolation=cv2.INTER_LINEAR)
        return image

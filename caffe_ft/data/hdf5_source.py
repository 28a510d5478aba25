"""The HDF5Data layer's rows (src/caffe/layers/hdf5_data_layer.cpp).

The source is a text file of HDF5 paths (whitespace-separated). Each file
holds one dataset per top, named after the top, with the same number of rows;
rows are served in order, file after file, wrapping to the first file. With
`shuffle`, Caffe reorders the files at setup and at each wrap, and the rows
each time a file is loaded and each time it is finished, with
std::random_shuffle on C's rand(): the same shuffles are made here on the
process's glibc rand() stream (caffe_ft.rng.c_rand), so the order is Caffe's.
Rows are read whole into memory at each file change, as Caffe does, so the
layer reads in its own process.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from caffe_ft.data.sources import Shard
from caffe_ft.errors import CaffeError
from caffe_ft.rng.c_rand import GlibcRand


def read_file_list(source: str) -> list[str]:
    try:
        with open(source, encoding="utf-8", errors="surrogateescape") as handle:
            names = handle.read().split()
    except OSError as err:
        raise CaffeError(f"Failed to open source file {source}: {err.strerror or err}") from None
    if not names:
        raise CaffeError(f"{source}: must have at least 1 HDF5 filename listed")
    return names


def load_datasets(h5py: Any, filename: str, names: list[str]) -> list[np.ndarray]:
    """The datasets `names` of one file as float32 arrays with equal row counts.
    Float and integer data are converted as H5LTread_dataset_float converts them."""
    try:
        handle = h5py.File(filename, "r")
    except OSError as err:
        # Relative names are opened from the current folder, as Caffe opens them.
        hint = "" if os.path.isabs(filename) else f" (relative to the current folder {os.getcwd()})"
        raise CaffeError(f"Failed opening HDF5 file {filename}{hint}: {err}") from None
    arrays = []
    with handle:
        for name in names:
            dataset = handle.get(name)
            if not isinstance(dataset, h5py.Dataset):
                raise CaffeError(f"{filename}: Failed to find HDF5 dataset {name} (the "
                                 f"HDF5Data layer reads one dataset per top, named after it)")
            if dataset.dtype.kind not in "fiu":
                raise CaffeError(f"{filename}: dataset {name} has type {dataset.dtype}; "
                                 f"HDF5Data reads float or integer data only")
            if dataset.ndim < 1:
                raise CaffeError(f"{filename}: dataset {name} is a scalar; it needs a row axis")
            arrays.append(np.asarray(dataset[()], dtype=np.float32))
    rows = arrays[0].shape[0]
    for name, array in zip(names, arrays):
        if array.shape[0] != rows:
            raise CaffeError(f"{filename}: dataset {name} has {array.shape[0]} rows but "
                             f"{names[0]} has {rows}")
    if rows == 0:
        raise CaffeError(f"{filename}: datasets hold no rows")
    return arrays


class HDF5Rows:
    def __init__(self, h5py: Any, source: str, tops: list[str], batch_size: int,
                 shuffle: GlibcRand | None, shard: Shard) -> None:
        self.h5py = h5py
        self.source = source
        self.tops = tops
        self.batch_size = batch_size
        self.shard = shard
        self.files = read_file_list(source)
        self.rng = shuffle
        self.file_order = list(range(len(self.files)))
        if self.rng is not None:
            self.rng.random_shuffle(self.file_order)
        self.current_file = 0
        self.row_shapes: list[tuple[int, ...]] | None = None
        self._load()
        self.row_shapes = [array.shape[1:] for array in self.arrays]
        self.row = 0
        self.offset = 0  # Caffe's offset_: rows passed, kept by this rank or not

    @property
    def filename(self) -> str:
        return self.files[self.file_order[self.current_file]]

    def _load(self) -> None:
        self.arrays = load_datasets(self.h5py, self.filename, self.tops)
        self.row_order = list(range(self.arrays[0].shape[0]))
        if self.rng is not None:
            self.rng.random_shuffle(self.row_order)
        for name, array, shape in zip(self.tops, self.arrays, self.row_shapes or ()):
            if array.shape[1:] != shape:
                raise CaffeError(f"{self.filename}: dataset {name} rows are "
                                 f"{list(array.shape[1:])}, but the first file's are "
                                 f"{list(shape)}; every file must hold rows of one shape")

    def top_shapes(self) -> list[tuple[int, ...]]:
        assert self.row_shapes is not None
        return [(self.batch_size, *shape) for shape in self.row_shapes]

    def _next(self) -> None:
        self.row += 1
        if self.row == len(self.row_order):
            if len(self.files) > 1:
                self.current_file += 1
                if self.current_file == len(self.files):
                    self.current_file = 0
                    if self.rng is not None:
                        self.rng.random_shuffle(self.file_order)
                self._load()
            self.row = 0
            if self.rng is not None:
                self.rng.random_shuffle(self.row_order)
        self.offset += 1

    def next_batch(self) -> list[np.ndarray]:
        batch = [np.empty(shape, np.float32) for shape in self.top_shapes()]
        for i in range(self.batch_size):
            while self.offset % self.shard.size != self.shard.rank:
                self._next()
            row = self.row_order[self.row]
            for out, array in zip(batch, self.arrays):
                out[i] = array[row]
            self._next()
        return batch

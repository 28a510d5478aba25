"""HDF5 caffemodels (Caffe's snapshot_format: HDF5): /data/<layer>/<i>
datasets, and /diff/<layer>/<i> when diffs are saved.

Reading yields each layer's blobs as sources for the one copy-by-name loop
of caffe_ft.net.weights; writing walks the net's layers."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from caffe_ft.blobs import shape_string
from caffe_ft.errors import CaffeError
from caffe_ft.net.net import Net
from caffe_ft.protofile import atomic_write

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass
class HDF5Blob:
    """One /data/<layer>/<i> dataset, read into memory."""
    values: np.ndarray

    def matches(self, target: tuple[int, ...]) -> bool:
        return self.values.shape == target

    def mismatch(self, path: str, layer: str, index: int, target: tuple[int, ...]) -> str:
        return (f"{path}: Cannot load blob from hdf5; shape mismatch. Source shape is "
                f"{shape_string(self.values.shape)} target shape is {shape_string(target)} "
                f"(layer '{layer}', param {index})")

    def array(self) -> np.ndarray:
        return self.values


def read_hdf5_layers(path: str, wanted: dict[str, int]) -> Iterator[tuple[str, list[HDF5Blob]]]:
    """(layer name, its blobs) for every layer in the file; `wanted` gives
    how many blobs each net layer has (Caffe reads that many datasets, and a
    missing one is allowed only for a shared param, which we refuse)."""
    import h5py  # on first use: the tools that never touch HDF5 start faster
    with h5py.File(path, "r") as handle:
        data = handle["data"]
        for name in data:
            group = data[name]
            count = wanted.get(name)
            if count is None:
                yield name, []
                continue
            if len(group) > count:
                raise CaffeError(f"{path}: Incompatible number of blobs for layer {name} "
                                 f"(file has {len(group)}, net expects {count})")
            blobs = []
            for j in range(count):
                if str(j) not in group:
                    raise CaffeError(f"{path}: layer {name} lacks param {j}")
                blobs.append(HDF5Blob(np.asarray(group[str(j)], dtype=np.float32)))
            yield name, blobs


def save_hdf5_weights(net: Net, path: str | os.PathLike[str], write_diff: bool = False) -> None:
    import h5py  # on first use: the tools that never touch HDF5 start faster
    net.mirrors.push()
    with atomic_write(path) as handle:
        with h5py.File(handle, "w") as out:
            data = out.create_group("data")
            diff = out.create_group("diff") if write_diff else None
            for layer in net.layers:
                if not len(layer.blobs):
                    continue
                group = data.create_group(layer.name)
                for j in range(len(layer.blobs)):
                    group.create_dataset(str(j), data=layer.blob(j).detach().cpu().numpy())
                    if diff is not None:
                        grad = layer.blobs[j].grad
                        value = (grad.view(layer.blob(j).shape) if grad is not None
                                 else torch.zeros_like(layer.blob(j)))
                        diff.require_group(layer.name).create_dataset(
                            str(j), data=value.detach().cpu().numpy())

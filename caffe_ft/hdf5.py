"""HDF5 caffemodels (Caffe's snapshot_format: HDF5): /data/<layer>/<i> datasets,
and /diff/<layer>/<i> when diffs are saved. Needs the optional h5py."""
from __future__ import annotations

import os

import numpy as np
import torch

from caffe_ft.blobs import shape_string
from caffe_ft.errors import CaffeError
from caffe_ft.net.net import Net
from caffe_ft.net.weights import LoadReport
from caffe_ft.protofile import atomic_write


def h5py_module():
    try:
        import h5py
    except ImportError:
        raise CaffeError("HDF5 files need h5py: pip install 'caffe_ft[hdf5]'") from None
    return h5py


def read_hdf5_weights(net: Net, path: str) -> LoadReport:
    h5py = h5py_module()
    report = LoadReport(path)
    targets = {layer.name: layer for layer in net.layers}
    with h5py.File(path, "r") as handle:
        data = handle["data"]
        for name in data:
            target = targets.get(name)
            if target is None:
                report.ignored.append(name)
                continue
            group = data[name]
            if len(group) > len(target.blobs):
                raise CaffeError(f"{path}: Incompatible number of blobs for layer {name} "
                                 f"(file has {len(group)}, net expects {len(target.blobs)})")
            for j in range(len(target.blobs)):
                if str(j) not in group:
                    # Caffe allows a missing dataset only for a shared (non-owner) param.
                    raise CaffeError(f"{path}: layer {name} lacks param {j}")
                values = np.asarray(group[str(j)], dtype=np.float32)
                wanted = tuple(target.blob(j).shape)
                if values.shape != wanted:
                    raise CaffeError(f"{path}: Cannot load blob from hdf5; shape mismatch. "
                                     f"Source shape is {shape_string(values.shape)} target shape "
                                     f"is {shape_string(wanted)} (layer '{name}', param {j})")
                with torch.no_grad():
                    target.blobs[j].copy_(torch.from_numpy(values).reshape(target.blobs[j].shape))
            report.copied.append(name)
    report.note_fresh(net)
    return report


def save_hdf5_weights(net: Net, path: str | os.PathLike[str], write_diff: bool = False) -> None:
    h5py = h5py_module()
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

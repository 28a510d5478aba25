"""Copying trained weights into a net by layer name, and saving a net as a
V2 .caffemodel (Caffe's CopyTrainedLayersFrom and ToProto).

Layers the file lacks keep their filler init; that is what makes renamed
classifier heads train from scratch while the rest is fine-tuned. The load
report logs which layers were copied, freshly initialized or ignored;
layers without parameters (ReLU, data, loss) have nothing to copy, so they
are only counted.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from caffe_ft.blobs import array_to_blob_proto, legacy_shape, shape_string
from caffe_ft.errors import CaffeError
from caffe_ft.glog import logger
from caffe_ft.net.hdf5_weights import HDF5_SIGNATURE, read_hdf5_layers
from caffe_ft.net.net import Net
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import write_binary


@dataclass
class LoadReport:
    source: str
    copied: list[str] = field(default_factory=list)    # layers whose blobs were copied
    without_params: list[str] = field(default_factory=list)  # namesakes with no blobs to copy
    ignored: list[str] = field(default_factory=list)   # source layers with no target
    fresh: list[str] = field(default_factory=list)     # target layers with params left at filler init

    def note_fresh(self, net: Net) -> None:
        """Record the net's layers with params that nothing was copied into."""
        loaded = set(self.copied)
        self.fresh = [layer.name for layer in net.layers
                      if len(layer.blobs) and layer.name not in loaded]

    def table(self) -> str:
        rows = ([("copied", name) for name in self.copied] +
                [("filler init (not in file)", name) for name in self.fresh] +
                [("ignored (not in net)", name) for name in self.ignored])
        width = max((len(status) for status, _ in rows), default=6)
        lines = [f"Weights from {self.source}: {len(self.copied)} copied, "
                 f"{len(self.fresh)} freshly initialized, {len(self.ignored)} ignored, "
                 f"{len(self.without_params)} layers without parameters",
                 f"  {'status'.ljust(width)}  layer"]
        lines += [f"  {status.ljust(width)}  {name}" for status, name in rows]
        return "\n".join(lines)


@dataclass
class ProtoBlob:
    """One BlobProto of a binary caffemodel, V1 legacy dims included."""
    blob: caffe_pb2.BlobProto

    def matches(self, target: tuple[int, ...]) -> bool:
        legacy = legacy_shape(self.blob)
        if legacy is not None:
            # Old files store N×K as 1×1×N×K: compare with the target padded by 1s.
            return len(target) <= 4 and tuple(legacy) == (1,) * (4 - len(target)) + target
        return tuple(int(d) for d in self.blob.shape.dim) == target

    def mismatch(self, path: str, layer: str, index: int, target: tuple[int, ...]) -> str:
        legacy = legacy_shape(self.blob)
        source = legacy if legacy is not None else tuple(int(d) for d in self.blob.shape.dim)
        return (f"Cannot copy param {index} weights from layer '{layer}'; shape mismatch.  "
                f"Source param shape is {shape_string(source)}; target param shape is "
                f"{shape_string(target)}. To learn this layer's parameters from scratch "
                f"rather than copying from a saved net, rename the layer.")

    def array(self) -> np.ndarray:
        blob = self.blob
        return np.asarray(blob.double_data if len(blob.double_data) else blob.data,
                          dtype=np.float32)


class SourceBlob(Protocol):
    """A saved param blob, from either file format."""

    def matches(self, target: tuple[int, ...]) -> bool: ...

    def mismatch(self, path: str, layer: str, index: int, target: tuple[int, ...]) -> str: ...

    def array(self) -> np.ndarray: ...


def proto_layers(source: caffe_pb2.NetParameter, path: str, wanted: dict[str, int]
                 ) -> Iterator[tuple[str, list[ProtoBlob]]]:
    """(layer name, its blobs) for every layer of a binary caffemodel."""
    for src in source.layer:
        count = wanted.get(src.name)
        if count is not None and len(src.blobs) != count:
            raise CaffeError(f"{path}: Incompatible number of blobs for layer {src.name} "
                             f"(file has {len(src.blobs)}, net expects {count})")
        yield src.name, [ProtoBlob(blob) for blob in src.blobs]


def copy_layers(net: Net, layers: Iterable[tuple[str, Sequence[SourceBlob]]],
                path: str) -> LoadReport:
    """Caffe's CopyTrainedLayersFrom: copy each saved layer's blobs into the
    net layer of the same name; layers the net lacks are ignored."""
    net.mirrors.push()
    report = LoadReport(path)
    targets = {layer.name: layer for layer in net.layers}
    for name, blobs in layers:
        target = targets.get(name)
        if target is None:
            logger.info("Ignoring source layer %s", name)
            report.ignored.append(name)
            continue
        logger.info("Copying source layer %s", name)
        for j, blob in enumerate(blobs):
            wanted = tuple(target.blob(j).shape)
            if not blob.matches(wanted):
                raise CaffeError(blob.mismatch(path, name, j, wanted))
            with torch.no_grad():
                target.blobs[j].copy_(torch.from_numpy(blob.array()).reshape(
                    target.blobs[j].shape))
        (report.copied if blobs else report.without_params).append(name)
    report.note_fresh(net)
    net.mirrors.pull()
    return report


def copy_trained_layers(net: Net, source: caffe_pb2.NetParameter, path: str) -> LoadReport:
    """Copy every layer of a (parsed) binary caffemodel into the net."""
    return copy_layers(net, proto_layers(source, path, _blob_counts(net)), path)


def copy_trained_layers_from(net: Net, path: str) -> LoadReport:
    """Load a .caffemodel (binary, any proto version; or HDF5) into `net`."""
    if _is_hdf5(path):
        report = copy_layers(net, read_hdf5_layers(path, _blob_counts(net)), path)
    else:
        from caffe_ft.upgrade import read_net_binary
        report = copy_trained_layers(net, read_net_binary(path), path)
    logger.info("%s", report.table())
    return report


def _blob_counts(net: Net) -> dict[str, int]:
    return {layer.name: len(layer.blobs) for layer in net.layers}


def _is_hdf5(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == HDF5_SIGNATURE
    except FileNotFoundError:
        raise CaffeError(f"Weights file not found: {path}") from None


def net_to_proto(net: Net, write_diff: bool = False) -> caffe_pb2.NetParameter:
    """The net as Caffe's ToProto writes it: every layer (with inserted
    Splits, inherited phase and default loss weights) and its blobs."""
    net.mirrors.push()
    out = caffe_pb2.NetParameter()
    out.name = net.name
    for lp, layer in zip(net.layer_params.layer, net.layers):
        saved = out.layer.add()
        saved.CopyFrom(lp)
        del saved.blobs[:]
        for j in range(len(layer.blobs)):
            value = layer.blob(j)
            diff = None
            if write_diff:
                grad = layer.blobs[j].grad
                diff = (grad.view(value.shape) if grad is not None else torch.zeros_like(value))
            saved.blobs.append(array_to_blob_proto(value, diff))
    return out


def save_caffemodel(net: Net, path: str | os.PathLike[str], write_diff: bool = False) -> None:
    write_binary(path, net_to_proto(net, write_diff))

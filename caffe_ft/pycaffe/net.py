"""pycaffe's Python API over caffe_ft's Net, so legacy scripts (net surgery,
feature extraction, classification) run with `import caffe_ft as caffe`.

Blob `.data`/`.diff` are persistent host arrays kept in step with the
tensors the net computes with, on the CPU or a GPU (caffe_ft.net.store), so
`net.blobs['data'].data[...] = x` writes the input and
`net.params['fc8'][0].data[...] = w` edits the weights in place.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from caffe_ft.errors import CaffeError
from caffe_ft.layers.families import known_types
from caffe_ft.net.net import Net as CoreNet
from caffe_ft.net.weights import copy_trained_layers_from, save_caffemodel
from caffe_ft.proto import caffe_pb2
from caffe_ft.pycaffe import mode

def layer_type_list() -> list[str]:
    """Every layer type caffe_ft builds (Caffe's LayerRegistry::LayerTypeList)."""
    return known_types()


class Blob:
    """pycaffe's Blob: a named net blob whose data and diff are persistent
    host arrays that stay in step with the device (caffe_ft.net.store)."""

    def __init__(self, net: CoreNet, name: str) -> None:
        self._net = net
        self._name = name

    @property
    def data(self) -> np.ndarray:
        return self._net.host_blob(self._name)

    @data.setter
    def data(self, value: Any) -> None:
        self.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        return self._net.host_blob(self._name, diff=True)

    @diff.setter
    def diff(self, value: Any) -> None:
        self.diff[...] = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._net.blob_data(self._name).shape)

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def _legacy(self, axis: int) -> int:
        shape = self.shape
        return shape[axis] if axis < len(shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def reshape(self, *shape: int) -> None:
        """Reshape an input blob; net.reshape() then propagates the shapes."""
        self._net.reshape_input(self._name, tuple(int(d) for d in shape))


class ParamBlob(Blob):
    """A layer's parameter blob, with the same host arrays as a net blob."""

    def __init__(self, net: CoreNet, layer_index: int, index: int) -> None:
        self._net = net
        self._layer_index = layer_index
        self._index = index

    @property
    def data(self) -> np.ndarray:
        return self._net.host_param(self._layer_index, self._index)

    @data.setter
    def data(self, value: Any) -> None:
        self.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        return self._net.host_param(self._layer_index, self._index, diff=True)

    @diff.setter
    def diff(self, value: Any) -> None:
        self.diff[...] = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._net.layers[self._layer_index].blob(self._index).shape)

    def reshape(self, *shape: int) -> None:
        blob = self._net.layers[self._layer_index].blobs[self._index]
        with torch.no_grad():
            blob.data = torch.zeros(shape, dtype=blob.dtype, device=blob.device)


class Net:
    """caffe.Net(prototxt, phase[, weights=...]) and the old
    caffe.Net(prototxt, weights, phase) form."""

    def __init__(self, network_file: str | os.PathLike[str], *args: Any,
                 weights: str | None = None, phase: int | None = None, level: int = 0,
                 stages: Sequence[str] = ()) -> None:
        positional = list(args)
        if positional and isinstance(positional[0], (str, os.PathLike)):
            weights = os.fspath(positional.pop(0))
        if positional:
            phase = positional.pop(0)
        if positional or phase not in (caffe_pb2.TRAIN, caffe_pb2.TEST):
            raise CaffeError("usage: caffe.Net(network_file, phase[, weights=file]) or "
                             "caffe.Net(network_file, weights_file, phase)")
        from caffe_ft.upgrade import read_net_text
        param = read_net_text(os.fspath(network_file))
        self._net = CoreNet(param, phase, level, stages, source=os.fspath(network_file))
        self._net.to(mode.device())
        # pycaffe reads every blob's diff and may run a range of layers backward.
        self._net.keep_blob_diffs = True
        # Wiring never changes, so the views are made once.
        self._blobs = OrderedDict((name, Blob(self._net, name)) for name in self._net.blob_names)
        if weights:
            self.copy_from(weights)

    # -- pycaffe's collections -----------------------------------------
    @property
    def blobs(self) -> OrderedDict[str, Blob]:
        return self._blobs

    @property
    def params(self) -> OrderedDict[str, list[ParamBlob]]:
        return OrderedDict((layer.name, [ParamBlob(self._net, i, j)
                                         for j in range(len(layer.blobs))])
                           for i, layer in enumerate(self._net.layers) if len(layer.blobs))

    @property
    def layers(self) -> list[Any]:
        return list(self._net.layers)

    @property
    def _layer_names(self) -> list[str]:
        return self._net.layer_names

    @property
    def layer_dict(self) -> OrderedDict[str, Any]:
        return OrderedDict((layer.name, layer) for layer in self._net.layers)

    @property
    def inputs(self) -> list[str]:
        return [name for i, tops in enumerate(self._net.top_names)
                if not self._net.bottom_names[i] and self._net.layers[i].param.type == "Input"
                for name in tops]

    @property
    def outputs(self) -> list[str]:
        return list(self._net.output_names)

    @property
    def top_names(self) -> OrderedDict[str, list[str]]:
        return OrderedDict(zip(self._net.layer_names, self._net.top_names))

    @property
    def bottom_names(self) -> OrderedDict[str, list[str]]:
        return OrderedDict(zip(self._net.layer_names, self._net.bottom_names))

    # -- running -------------------------------------------------------
    def forward(self, blobs: Iterable[str] | None = None, start: str | None = None,
                end: str | None = None, **kwargs: Any) -> dict[str, np.ndarray]:
        """pycaffe's forward: inputs given as arrays are written first; returns
        the outputs' (or `end`'s tops' and `blobs`') host arrays."""
        for name, value in kwargs.items():
            self._write(name, value, "data")
        first = self._net.layer_index(start) if start else 0
        last = self._net.layer_index(end) if end else len(self._net.layers) - 1
        self._net.forward(first, last)
        outs = set(blobs or ()) | set(self._net.top_names[last] if end else self.outputs)
        return {name: self.blobs[name].data for name in outs}

    def backward(self, diffs: Iterable[str] | None = None, start: str | None = None,
                 end: str | None = None, **kwargs: Any) -> dict[str, np.ndarray]:
        """pycaffe's backward (Caffe's BackwardFromTo from `start` down to
        `end`): output diffs given as arrays are written first; returns the
        diffs of the inputs (or `end`'s bottoms) and of `diffs`."""
        for name, value in kwargs.items():
            if name not in self.outputs:
                raise CaffeError(f"Top diff arguments do not match net outputs: '{name}' is "
                                 f"not one of {self.outputs}")
            self._write(name, value, "diff")
        first = self._net.layer_index(start) if start else len(self._net.layers) - 1
        last = self._net.layer_index(end) if end else 0
        self._net.backward(start=first, end=last)
        outs = set(diffs or ()) | set(self._net.bottom_names[last] if end else self.inputs)
        return {name: self.blobs[name].diff for name in outs}

    def reshape(self) -> None:
        self._net.reshape()

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Feed a MemoryData first layer, as pycaffe's Net.set_input_arrays."""
        first = self._net.layers[0]
        if first.param.type != "MemoryData":
            raise CaffeError("set_input_arrays needs a net whose first layer is MemoryData, "
                             f"got {first.param.type} layer '{first.name}'")
        first.set_input_arrays(data, labels)

    def _write(self, name: str, value: Any, side: str) -> None:
        if name not in self.blobs:
            raise CaffeError(f"Net has no blob named '{name}'")
        target = getattr(self.blobs[name], side)
        array = np.asarray(value, dtype=np.float32)
        if array.shape != target.shape:
            raise CaffeError(f"Blob '{name}' has shape {target.shape}; the array given has "
                             f"shape {array.shape} (reshape the blob first)")
        target[...] = array

    # -- weights -------------------------------------------------------
    def copy_from(self, filename: str) -> None:
        copy_trained_layers_from(self._net, filename)

    def save(self, filename: str) -> None:
        save_caffemodel(self._net, filename)

    def save_hdf5(self, filename: str) -> None:
        from caffe_ft.net.hdf5_weights import save_hdf5_weights
        save_hdf5_weights(self._net, filename)

    def share_with(self, other: Net) -> None:
        """Use `other`'s parameter tensors (Caffe's ShareTrainedLayersWith)."""
        self._net.share_trained_layers_with(other._net)

    @property
    def torch_module(self) -> CoreNet:
        """The underlying torch module, for torch users (export, custom loops)."""
        return self._net

"""pycaffe's Python API over caffe_ft's Net, so legacy scripts (net surgery,
feature extraction, classification) run with `import caffe_ft as caffe`.

Blob `.data`/`.diff` are numpy views of the tensors the net computes with on
CPU, so `net.blobs['data'].data[...] = x` writes the input and
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
from caffe_ft.net.net import AUTO_TOP
from caffe_ft.net.net import Net as CoreNet
from caffe_ft.net.weights import copy_trained_layers_from, save_caffemodel
from caffe_ft.proto import caffe_pb2

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

_device = torch.device("cpu")


def set_mode_cpu() -> None:
    global _device
    _device = torch.device("cpu")


def set_mode_gpu() -> None:
    global _device
    if not torch.cuda.is_available():
        raise CaffeError("set_mode_gpu: no CUDA device is available to torch")
    _device = torch.device("cuda", torch.cuda.current_device())


def set_device(device_id: int) -> None:
    global _device
    if torch.cuda.is_available():
        torch.cuda.set_device(device_id)
        if _device.type == "cuda":
            _device = torch.device("cuda", device_id)


def set_random_seed(seed: int) -> None:
    torch.manual_seed(seed)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach()
    return array.numpy() if array.device.type == "cpu" else array.cpu().numpy()


class Blob:
    """pycaffe's Blob: a named net blob with data and diff."""

    def __init__(self, net: CoreNet, name: str) -> None:
        self._net = net
        self._name = name

    @property
    def data(self) -> np.ndarray:
        return _numpy(self._net.blob(self._name))

    @data.setter
    def data(self, value: Any) -> None:
        self.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        diff = self._net.blob_diff(self._name)
        if diff is None:
            return np.zeros(self._net.blob_shapes[self._name], dtype=np.float32)
        return _numpy(diff)

    @diff.setter
    def diff(self, value: Any) -> None:
        self.diff[...] = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._net.blob(self._name).shape)

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


class ParamBlob:
    def __init__(self, layer: Any, index: int) -> None:
        self._layer = layer
        self._index = index

    @property
    def data(self) -> np.ndarray:
        return _numpy(self._layer.blob(self._index))

    @data.setter
    def data(self, value: Any) -> None:
        self.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        grad = self._layer.blobs[self._index].grad
        if grad is None:
            return np.zeros(tuple(self._layer.blob(self._index).shape), dtype=np.float32)
        return _numpy(grad.view(self._layer.blob(self._index).shape))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._layer.blob(self._index).shape)

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def reshape(self, *shape: int) -> None:
        with torch.no_grad():
            blob = self._layer.blobs[self._index]
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
        if positional or phase not in (TRAIN, TEST):
            raise CaffeError("usage: caffe.Net(network_file, phase[, weights=file]) or "
                             "caffe.Net(network_file, weights_file, phase)")
        from caffe_ft.upgrade import read_net_text
        param = read_net_text(os.fspath(network_file))
        self._net = CoreNet(param, phase, level, stages, source=os.fspath(network_file))
        self._net.to(_device)
        self._net.retain_blob_diffs = True
        # Blob order is Caffe's: first appearance as a top. Wiring never changes,
        # so the views are made once.
        self._blobs = OrderedDict(
            (name, Blob(self._net, name)) for tops in self._net.top_names for name in tops
            if not name.startswith(AUTO_TOP))
        if weights:
            self.copy_from(weights)

    # -- pycaffe's collections -----------------------------------------
    @property
    def blobs(self) -> OrderedDict[str, Blob]:
        return self._blobs

    @property
    def params(self) -> OrderedDict[str, list[ParamBlob]]:
        return OrderedDict((layer.name, [ParamBlob(layer, i) for i in range(len(layer.blobs))])
                           for layer in self._net.layers if len(layer.blobs))

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
        for name, value in kwargs.items():
            self._set_input(name, value)
        first = self._net.layer_index(start) if start else 0
        last = self._net.layer_index(end) if end else len(self._net.layers) - 1
        self._net.forward(first, last)
        outs = set(blobs or ()) | set(self._net.top_names[last] if end else self.outputs)
        return {name: self.blobs[name].data for name in outs}

    def backward(self, diffs: Iterable[str] | None = None, start: str | None = None,
                 end: str | None = None, **kwargs: Any) -> dict[str, np.ndarray]:
        seeds = {name: torch.as_tensor(np.asarray(value, dtype=np.float32))
                 for name, value in kwargs.items()}
        self._net.backward(seeds)
        outs = set(diffs or ()) | set(self.inputs)
        return {name: self.blobs[name].diff for name in outs}

    def reshape(self) -> None:
        self._net.reshape_all()

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Feed a MemoryData first layer, as pycaffe's Net.set_input_arrays."""
        first = self._net.layers[0]
        if first.param.type != "MemoryData":
            raise CaffeError("set_input_arrays needs a net whose first layer is MemoryData, "
                             f"got {first.param.type} layer '{first.name}'")
        first.set_input_arrays(data, labels)

    def _set_input(self, name: str, value: Any) -> None:
        array = np.asarray(value, dtype=np.float32)
        blob = self._net.blob(name)
        if tuple(array.shape) != tuple(blob.shape):
            raise CaffeError(f"Input blob '{name}' has shape {tuple(blob.shape)}; the array "
                             f"given has shape {array.shape} (reshape the blob first)")
        blob.detach().copy_(torch.from_numpy(array))

    # -- weights -------------------------------------------------------
    def copy_from(self, filename: str) -> None:
        copy_trained_layers_from(self._net, filename)

    def save(self, filename: str) -> None:
        save_caffemodel(self._net, filename)

    def save_hdf5(self, filename: str) -> None:
        from caffe_ft.hdf5 import save_hdf5_weights
        save_hdf5_weights(self._net, filename)

    def share_with(self, other: Net) -> None:
        """Use `other`'s parameter tensors (Caffe's ShareTrainedLayersWith)."""
        self._net.share_trained_layers_with(other._net)

    @property
    def torch_module(self) -> CoreNet:
        """The underlying torch module, for torch users (export, custom loops)."""
        return self._net

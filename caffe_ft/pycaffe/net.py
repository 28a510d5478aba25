"""pycaffe's Python API over caffe_ft's Net, so legacy scripts (net surgery,
feature extraction, classification) run with `import caffe_ft as caffe`.

Blob `.data`/`.diff` are persistent host arrays kept in step with the
tensors the net computes with, on the CPU or a GPU (caffe_ft.net.store), so
`net.blobs['data'].data[...] = x` writes the input and
`net.params['fc8'][0].data[...] = w` edits the weights in place.
"""
from __future__ import annotations

import contextlib
import itertools
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from caffe_ft.blob_view import BlobView
from caffe_ft.errors import CaffeError
from caffe_ft.layers.families import known_types
from caffe_ft.net.hdf5_weights import save_hdf5_weights
from caffe_ft.net.net import Net as CoreNet
from caffe_ft.net.weights import copy_trained_layers_from, save_caffemodel
from caffe_ft.proto import caffe_pb2
from caffe_ft.pycaffe import mode

def layer_type_list() -> list[str]:
    """Every layer type caffe_ft builds (Caffe's LayerRegistry::LayerTypeList)."""
    return known_types()


class Blob(BlobView):
    """pycaffe's Blob: a named net blob whose data and diff are persistent
    host arrays that stay in step with the device (caffe_ft.net.store)."""

    def __init__(self, net: CoreNet, name: str) -> None:
        self._net = net
        self._name = name

    def _host(self, diff: bool) -> np.ndarray:
        return self._net.host_blob(self._name, diff=diff)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._net.blob_data(self._name).shape)

    def reshape(self, *shape: int) -> None:
        """Reshape an input blob; net.reshape() then propagates the shapes."""
        self._net.reshape_input(self._name, tuple(int(d) for d in shape))


class ParamBlob(BlobView):
    """A layer's parameter blob, with the same host arrays as a net blob."""

    def __init__(self, net: CoreNet, layer_index: int, index: int) -> None:
        self._net = net
        self._layer_index = layer_index
        self._index = index

    def _host(self, diff: bool) -> np.ndarray:
        return self._net.host_param(self._layer_index, self._index, diff=diff)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._net.layers[self._layer_index].blob(self._index).shape)

    def reshape(self, *shape: int) -> None:
        blob = self._net.layers[self._layer_index].blobs[self._index]
        with torch.no_grad():
            blob.data = torch.zeros(shape, dtype=blob.dtype, device=blob.device)


class LayerView:
    """pycaffe's net.layers[i] for a built-in layer: its type and its param blobs."""

    def __init__(self, net: CoreNet, index: int) -> None:
        self._net = net
        self._index = index

    @property
    def type(self) -> str:
        return self._net.layers[self._index].param.type

    @property
    def blobs(self) -> list[ParamBlob]:
        return [ParamBlob(self._net, self._index, j)
                for j in range(len(self._net.layers[self._index].blobs))]

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        """Caffe's Layer::Reshape: the net re-infers every top from its bottoms."""
        self._net.reshape()

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        raise CaffeError(f"Layer '{self._net.layers[self._index].name}' was set up when "
                         f"the net was built; caffe_ft does not set a built layer up again")


Callback = Callable[[int], None]


class Net:
    """caffe.Net(network_file, phase, level=0, stages=None, weights=None) and
    the legacy caffe.Net(network_file, weights_file, phase)."""

    def __init__(self, network_file: str | os.PathLike[str], *args: Any,
                 weights: str | None = None, phase: int | None = None, level: int = 0,
                 stages: Sequence[str] | None = None) -> None:
        positional = list(args)
        if positional and isinstance(positional[0], (str, os.PathLike)):
            weights = os.fspath(positional.pop(0))
        if positional:
            phase = positional.pop(0)
        if positional or phase not in (caffe_pb2.TRAIN, caffe_pb2.TEST):
            raise CaffeError("usage: caffe.Net(network_file, phase[, level=0, stages=None, "
                             "weights=None]) or caffe.Net(network_file, weights_file, phase)")
        from caffe_ft.upgrade import read_net_text
        param = read_net_text(os.fspath(network_file))
        self._attach(CoreNet(param, phase, level, stages or (),
                             source=os.fspath(network_file)).to(mode.device()))
        if weights:
            self.copy_from(weights)

    @classmethod
    def over(cls, core: CoreNet) -> Net:
        """A pycaffe Net over a live core net built elsewhere (a solver's
        nets): reads, writes, surgery and callbacks through it act on that
        net itself, in the solver's passes too."""
        net = cls.__new__(cls)
        net._attach(core)
        return net

    def _attach(self, net: CoreNet) -> None:
        self._net = net
        # pycaffe reads every blob's diff and may run a range of layers backward.
        self._net.keep_blob_diffs = True
        # Wiring never changes, so the views are made once.
        self._blob_dict = OrderedDict((name, Blob(self._net, name))
                                      for name in self._net.blob_names)
        self._callbacks: dict[str, list[Callback]] = {
            "before_forward": [], "after_forward": [], "before_backward": [],
            "after_backward": []}

    # -- pycaffe's collections -----------------------------------------
    @property
    def blobs(self) -> OrderedDict[str, Blob]:
        return self._blob_dict

    @property
    def _blobs(self) -> list[Blob]:
        return list(self._blob_dict.values())

    @property
    def _blob_names(self) -> list[str]:
        return list(self._blob_dict)

    @property
    def blob_loss_weights(self) -> OrderedDict[str, float]:
        return OrderedDict((name, float(self._net.loss_weight.get(name, 0.0)))
                           for name in self._blob_dict)

    @property
    def _blob_loss_weights(self) -> list[float]:
        return list(self.blob_loss_weights.values())

    @property
    def params(self) -> OrderedDict[str, list[ParamBlob]]:
        return OrderedDict((name, layer.blobs) for name, layer in zip(self._layer_names,
                                                                       self.layers)
                           if len(layer.blobs))

    @property
    def layers(self) -> list[Any]:
        """Each layer: a Python layer is the user's own object, as in pycaffe."""
        return [getattr(layer, "instance", None) or LayerView(self._net, i)
                for i, layer in enumerate(self._net.layers)]

    @property
    def _layer_names(self) -> list[str]:
        return self._net.layer_names

    @property
    def layer_dict(self) -> OrderedDict[str, Any]:
        return OrderedDict(zip(self._layer_names, self.layers))

    @property
    def inputs(self) -> list[str]:
        """The tops of Input layers (Caffe's net input blobs)."""
        return [name for i, tops in enumerate(self._net.top_names)
                if self._net.layers[i].param.type == "Input" for name in tops]

    @property
    def outputs(self) -> list[str]:
        return list(self._net.output_names)

    @property
    def _inputs(self) -> list[int]:
        return [self._blob_names.index(name) for name in self.inputs]

    @property
    def _outputs(self) -> list[int]:
        return [self._blob_names.index(name) for name in self.outputs]

    def _top_ids(self, index: int) -> list[int]:
        return [self._blob_names.index(name) for name in self._net.top_names[index]
                if name in self._blob_dict]

    def _bottom_ids(self, index: int) -> list[int]:
        return [self._blob_names.index(name) for name in self._net.bottom_names[index]]

    @property
    def top_names(self) -> OrderedDict[str, list[str]]:
        return OrderedDict((layer, [name for name in tops if name in self._blob_dict])
                           for layer, tops in zip(self._layer_names, self._net.top_names))

    @property
    def bottom_names(self) -> OrderedDict[str, list[str]]:
        return OrderedDict(zip(self._layer_names, self._net.bottom_names))

    # -- running -------------------------------------------------------
    def _forward(self, start: int, end: int) -> float:
        """Caffe's ForwardFromTo: layers start..end; returns the loss."""
        return float(self._net.forward(start, end).item())

    def _backward(self, start: int, end: int) -> None:
        """Caffe's BackwardFromTo: layers start down to end."""
        self._net.backward(start=start, end=end)

    def forward(self, blobs: Sequence[str] | None = None, start: str | None = None,
                end: str | None = None, **kwargs: Any) -> dict[str, np.ndarray]:
        """pycaffe's forward: the inputs given (all of them) are written first;
        returns the host arrays of the outputs (or `end`'s tops) and of `blobs`."""
        blobs = list(blobs or [])
        first = self._layer_names.index(start) if start is not None else 0
        if end is not None:
            last = self._layer_names.index(end)
            outputs = set(self.top_names[end] + blobs)
        else:
            last = len(self._layer_names) - 1
            outputs = set(self.outputs + blobs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise CaffeError("Input blob arguments do not match net inputs.")
            for name, value in kwargs.items():
                self._write(name, value, "data", "Input is not batch sized")
        self._forward(first, last)
        return {name: self.blobs[name].data for name in outputs}

    def backward(self, diffs: Sequence[str] | None = None, start: str | None = None,
                 end: str | None = None, **kwargs: Any) -> dict[str, np.ndarray]:
        """pycaffe's backward (Caffe's BackwardFromTo from `start` down to
        `end`): the output diffs given (all of them) are written first;
        returns the diffs of the inputs (or `end`'s bottoms) and of `diffs`."""
        diffs = list(diffs or [])
        first = self._layer_names.index(start) if start is not None else \
            len(self._layer_names) - 1
        if end is not None:
            last = self._layer_names.index(end)
            outputs = set(self.bottom_names[end] + diffs)
        else:
            last = 0
            outputs = set(self.inputs + diffs)
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise CaffeError("Top diff arguments do not match net outputs.")
            for name, value in kwargs.items():
                self._write(name, value, "diff", "Diff is not batch sized")
        self._backward(first, last)
        return {name: self.blobs[name].diff for name in outputs}

    def forward_all(self, blobs: Sequence[str] | None = None,
                    **kwargs: Any) -> dict[str, np.ndarray]:
        """forward over inputs of any length, in batches of the net's batch
        size (the last one padded with zeros, its padding dropped)."""
        outs: dict[str, list[np.ndarray]] = {name: [] for name in
                                              set(self.outputs + list(blobs or []))}
        for batch in self._batch(kwargs):
            for name, value in self.forward(blobs=blobs, **batch).items():
                outs[name].extend(value.copy())
        return _unpad(outs, kwargs)

    def forward_backward_all(self, blobs: Sequence[str] | None = None,
                             diffs: Sequence[str] | None = None, **kwargs: Any
                             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """forward then backward per batch; inputs and output diffs are both in kwargs."""
        outs: dict[str, list[np.ndarray]] = {name: [] for name in
                                              set(self.outputs + list(blobs or []))}
        grads: dict[str, list[np.ndarray]] = {name: [] for name in
                                               set(self.inputs + list(diffs or []))}
        forward_batches = self._batch({k: kwargs[k] for k in self.inputs if k in kwargs})
        backward_batches = self._batch({k: kwargs[k] for k in self.outputs if k in kwargs})
        for fb, bb in itertools.zip_longest(forward_batches, backward_batches, fillvalue={}):
            for name, value in self.forward(blobs=blobs, **fb).items():
                outs[name].extend(value.copy())
            for name, value in self.backward(diffs=diffs, **bb).items():
                grads[name].extend(value.copy())
        return _unpad(outs, kwargs), _unpad(grads, kwargs)

    def _batch(self, arrays: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
        """pycaffe's _batch: full batches of the first blob's batch size, then
        the remainder padded with zeros."""
        if not arrays:
            return
        count = len(next(iter(arrays.values())))
        size = next(iter(self.blobs.values())).shape[0]
        for start in range(0, count - count % size, size):
            yield {name: value[start:start + size] for name, value in arrays.items()}
        remainder = count % size
        if remainder:
            yield {name: np.concatenate([np.asarray(value)[-remainder:], np.zeros(
                (size - remainder,) + np.asarray(value).shape[1:])])
                for name, value in arrays.items()}

    def reshape(self) -> None:
        self._net.reshape()

    def clear_param_diffs(self) -> None:
        self._net.clear_param_diffs()

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Feed a MemoryData first layer, as pycaffe's Net.set_input_arrays."""
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, None, None, None])
        self._set_input_arrays(data, labels)

    def _set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        first = self._net.layers[0]
        if first.param.type != "MemoryData":
            raise CaffeError("set_input_arrays needs a net whose first layer is MemoryData, "
                             f"got {first.param.type} layer '{first.name}'")
        first.set_input_arrays(data, labels)

    def _write(self, name: str, value: Any, side: str, batch_error: str) -> None:
        target = getattr(self.blobs[name], side)
        array = np.asarray(value)
        if array.shape[:1] != target.shape[:1]:
            raise CaffeError(batch_error)
        target[...] = array

    # -- per-layer callbacks (Caffe's Net::Callback) ----------------------
    # They run around each layer in every pass of the net, a solver's too.
    def before_forward(self, callback: Callback) -> None:
        self._add_callback("before_forward", callback)

    def after_forward(self, callback: Callback) -> None:
        self._add_callback("after_forward", callback)

    def before_backward(self, callback: Callback) -> None:
        self._add_callback("before_backward", callback)

    def after_backward(self, callback: Callback) -> None:
        self._add_callback("after_backward", callback)

    def _add_callback(self, when: str, callback: Callback) -> None:
        self._callbacks[when].append(callback)
        # Installed with the first one: a net without callbacks runs no hook.
        self._net.layer_hook = self._around

    @contextlib.contextmanager
    def _around(self, index: int, direction: str) -> Iterator[None]:
        for callback in self._callbacks[f"before_{direction}"]:
            callback(index)
        yield
        for callback in self._callbacks[f"after_{direction}"]:
            callback(index)

    # -- weights -------------------------------------------------------
    def copy_from(self, filename: str) -> None:
        copy_trained_layers_from(self._net, filename)

    def save(self, filename: str) -> None:
        save_caffemodel(self._net, filename)

    def save_hdf5(self, filename: str) -> None:
        save_hdf5_weights(self._net, filename)

    def load_hdf5(self, filename: str) -> None:
        copy_trained_layers_from(self._net, filename)

    def share_with(self, other: Net) -> None:
        """Use `other`'s parameter tensors (Caffe's ShareTrainedLayersWith)."""
        self._net.share_trained_layers_with(other._net)

    @property
    def torch_module(self) -> CoreNet:
        """The underlying torch module, for torch users (export, custom loops)."""
        return self._net


def _unpad(collected: dict[str, list[np.ndarray]], inputs: dict[str, Any]
           ) -> dict[str, np.ndarray]:
    """The batches' rows as arrays, without the zero rows that padded the last batch."""
    arrays = {name: np.asarray(rows) for name, rows in collected.items()}
    if not arrays or not inputs:
        return arrays
    pad = len(next(iter(arrays.values()))) - len(next(iter(inputs.values())))
    return {name: value[:-pad] for name, value in arrays.items()} if pad > 0 else arrays

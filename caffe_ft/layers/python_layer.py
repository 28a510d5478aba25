"""The Python layer: user layers written against pycaffe's caffe.Layer.

`python_param { module: "m" layer: "Cls" param_str: "..." }` imports `m`
(from sys.path as it is) and builds `m.Cls(layer_param)`. As Caffe's
PythonLayer does, it sets the `param_str` and `phase` (0 TRAIN, 1 TEST)
attributes, calls `setup(bottom, top)` once, `reshape(bottom, top)` before
every forward, `forward(bottom, top)`, and `backward(top, propagate_down,
bottom)`. bottom and top are lists of blobs with numpy `.data` / `.diff`
(float32, on the CPU as pycaffe gives them) and `.reshape(*shape)`; as in
Caffe, every call gets the same blob objects.

Backward is bridged to autograd by a torch.autograd.Function that hands the
top gradients to the user's backward as top diffs and returns the bottom
diffs it wrote. Blobs the layer adds with `self.blobs.add_blob(*shape)` in
setup become learnable parameters of the net, as in Caffe. Like any layer
that is not a LossLayer, its tops have loss_weight 0 unless the prototxt
gives one.
"""
from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np
import torch

from caffe_ft.blob_view import BlobView
from caffe_ft.blobs import blob_proto_to_array
from caffe_ft.layers.base import Layer, Shape
from caffe_ft.layers.registry import register
from caffe_ft.proto import caffe_pb2

Ctx = torch.autograd.function.FunctionCtx


class LayerBlob(BlobView):
    """A Python layer's own blob (its bottoms, tops and `self.blobs`), with
    float32 data and diff arrays of one shape."""

    def __init__(self, shape: Sequence[int] = (0,), data: np.ndarray | None = None) -> None:
        # A top starts empty (count 0), as Caffe creates it, until reshaped.
        self._data = np.zeros(tuple(shape), dtype=np.float32) if data is None else data
        self._diff = np.zeros_like(self._data)

    def _host(self, diff: bool) -> np.ndarray:
        return self._diff if diff else self._data

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    def take(self, data: np.ndarray) -> None:
        """Hold a pass's bottom values (a diff of another shape starts at 0)."""
        if data.shape != self._diff.shape:
            self._diff = np.zeros_like(data)
        self._data = data

    def alias(self, param: torch.Tensor) -> None:
        """Make the data a view of `param` where it lives on the CPU."""
        if param.device.type == "cpu" and param.dtype == torch.float32:
            self._data = param.detach().numpy().reshape(self._data.shape)

    def aliases(self, param: torch.Tensor) -> bool:
        return (param.device.type == "cpu" and param.numel() > 0 and
                np.shares_memory(self._data, param.detach().numpy()))

    def reshape(self, *shape: int) -> None:
        """Give the blob a new shape; values survive only if the count is
        unchanged (Caffe keeps its memory, whose contents are then stale)."""
        dims = tuple(int(d) for d in shape)
        if any(d < 0 for d in dims):
            raise ValueError(f"blob dimensions must be non-negative, got {list(dims)}")
        if int(np.prod(dims, dtype=np.int64)) == self.count:
            self._data = self._data.reshape(dims)
            self._diff = self._diff.reshape(dims)
        else:
            self._data = np.zeros(dims, dtype=np.float32)
            self._diff = np.zeros(dims, dtype=np.float32)


class BlobVec(list):
    """pycaffe's layer.blobs: a list of LayerBlob with add_blob(*shape)."""

    def add_blob(self, *shape: int) -> None:
        self.append(LayerBlob(tuple(int(d) for d in shape)))


class PythonLayerBase:
    """pycaffe's caffe.Layer, the base class of Python layers
    (`import caffe_ft as caffe; class MyLayer(caffe.Layer)`). Subclasses
    override setup, reshape, forward and, if they need gradients, backward."""

    def __init__(self, param: caffe_pb2.LayerParameter | None = None) -> None:
        self.param_str = param.python_param.param_str if param is not None else ""
        self.phase = param.phase if param is not None else caffe_pb2.TRAIN

    @property
    def blobs(self) -> BlobVec:
        # Created on first use so subclasses that define __init__ without
        # calling ours still have blobs, as pycaffe's C++ base guarantees.
        if "_blobs" not in self.__dict__:
            self.__dict__["_blobs"] = BlobVec()
        return self.__dict__["_blobs"]

    @property
    def type(self) -> str:
        return "Python"

    def setup(self, bottom: list[LayerBlob], top: list[LayerBlob]) -> None:
        """Check the configuration and shape the tops (Caffe's LayerSetUp)."""

    def reshape(self, bottom: list[LayerBlob], top: list[LayerBlob]) -> None:
        """Shape the tops for the current bottoms; called before every forward."""

    def forward(self, bottom: list[LayerBlob], top: list[LayerBlob]) -> None:
        raise NotImplementedError(f"Python layer {type(self).__name__} defines no forward")

    def backward(self, top: list[LayerBlob], propagate_down: list[bool],
                 bottom: list[LayerBlob]) -> None:
        raise NotImplementedError(f"Python layer {type(self).__name__} defines no backward")


def _cpu_array(tensor: torch.Tensor) -> np.ndarray:
    """A float32 numpy copy the user may write into without touching autograd's tensors."""
    return tensor.detach().to("cpu", torch.float32).numpy().copy()


class _PythonFunction(torch.autograd.Function):
    """Runs the user's reshape + forward on the bottoms (and parameter blobs);
    backward passes the top gradients to the user's backward as top diffs and
    returns the bottom and parameter diffs it wrote."""

    @staticmethod
    def forward(ctx: Ctx, layer: PythonLayer, num_bottoms: int, *tensors: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        # The same bottom blobs in every call, as Caffe passes its net's blobs.
        bottoms = layer.bottom_blobs
        for blob, tensor in zip(bottoms, tensors[:num_bottoms]):
            blob.take(_cpu_array(tensor))
        tops = layer.run_forward(bottoms, tensors[num_bottoms:])
        device = layer.device_marker.device
        ctx.layer, ctx.bottoms, ctx.device = layer, bottoms, device
        return tuple(torch.from_numpy(top.data.copy()).to(device) for top in tops)

    @staticmethod
    def backward(ctx: Ctx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        layer: PythonLayer = ctx.layer
        bottoms: list[LayerBlob] = ctx.bottoms
        for top, grad in zip(layer.top_blobs, grads):
            top.diff = _cpu_array(grad).reshape(top.shape)
        # Each pass's diffs start at zero and are returned as that pass's
        # gradients; autograd accumulates them into the parameters' grads.
        for blob in [*bottoms, *layer.instance.blobs]:
            blob.diff = 0
        needs = ctx.needs_input_grad[2:]
        propagate_down = [bool(n) for n in needs[:len(bottoms)]]
        layer.instance.backward(layer.top_blobs, propagate_down, bottoms)
        diffs = [blob.diff for blob in [*bottoms, *layer.instance.blobs]]
        return (None, None, *(torch.from_numpy(d.copy()).to(ctx.device) if need else None
                              for d, need in zip(diffs, needs)))


@register("Python")
class PythonLayer(Layer):
    bottoms = (0, None)
    tops = (0, None)

    def __init__(self, param: caffe_pb2.LayerParameter, phase: int) -> None:
        super().__init__(param, phase)
        p = param.python_param
        if not p.module or not p.layer:
            raise self.error("python_param needs both `module` and `layer`")
        try:
            module = importlib.import_module(p.module)
        except Exception as exc:
            raise self.error(f"cannot import python_param module '{p.module}' (searched "
                             f"sys.path; set PYTHONPATH to the module's folder): "
                             f"{type(exc).__name__}: {exc}") from exc
        cls = getattr(module, p.layer, None)
        if cls is None:
            raise self.error(f"python_param module '{p.module}' has no layer class '{p.layer}'")
        self.instance = cls(param)
        # Tracks the device the net is moved to, for tops of layers without bottoms.
        self.register_buffer("device_marker", torch.zeros(0), persistent=False)
        self.bottom_blobs = [LayerBlob() for _ in param.bottom]
        self.top_blobs = [LayerBlob() for _ in param.top]

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        instance = self.instance
        instance.param_str = self.param.python_param.param_str
        instance.phase = int(self.phase)
        # Caffe's Layer constructor loads inline prototxt blobs before LayerSetUp.
        for proto in self.param.blobs:
            instance.blobs.append(LayerBlob(data=blob_proto_to_array(proto).copy()))
        self._shape_bottoms(bottom_shapes)
        instance.setup(self.bottom_blobs, self.top_blobs)
        for blob in instance.blobs:
            with torch.no_grad():
                param = self.add_blob(blob.shape).copy_(torch.from_numpy(blob.data))
            # The layer's blob IS the net's param on the CPU (a view), as in
            # Caffe: net surgery, copy_from and save see the same values.
            blob.alias(param)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self._shape_bottoms(bottom_shapes)
        self.instance.reshape(self.bottom_blobs, self.top_blobs)
        return [top.shape for top in self.top_blobs]

    def _shape_bottoms(self, shapes: Sequence[Shape]) -> None:
        for blob, shape in zip(self.bottom_blobs, shapes):
            if blob.shape != tuple(shape):
                blob.reshape(*shape)

    def run_forward(self, bottoms: list[LayerBlob], params: Sequence[torch.Tensor]
                    ) -> list[LayerBlob]:
        """The user's reshape + forward, with the parameter blobs holding the
        net's current values; values the forward writes into them are kept."""
        blobs = self.instance.blobs
        # Off the CPU, or after a share replaced the param, the layer's blob
        # is a copy: bring it in step before, and back after, the forward.
        copies = [(blob, param) for blob, param in zip(blobs, params)
                  if not blob.aliases(param)]
        for blob, param in copies:
            blob.data = _cpu_array(param).reshape(blob.shape)
        before = [blob.data.copy() for blob, _ in copies]
        self.instance.reshape(bottoms, self.top_blobs)
        self.instance.forward(bottoms, self.top_blobs)
        with torch.no_grad():
            for (blob, param), old in zip(copies, before):
                if not np.array_equal(blob.data, old):
                    param.copy_(torch.from_numpy(blob.data).reshape(param.shape))
        return self.top_blobs

    def forward(self, *bottoms: torch.Tensor) -> list[torch.Tensor]:
        return list(_PythonFunction.apply(self, len(bottoms), *bottoms, *self.blobs))

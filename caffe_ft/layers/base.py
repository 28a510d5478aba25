"""The base class every Caffe layer derives from.

A layer mirrors Caffe's Layer: it is built from its LayerParameter and the
net's phase, `setup` creates its parameter blobs from the bottom shapes
(LayerSetUp), `reshape` returns its top shapes (Reshape) so the net can log
and check shapes exactly as Caffe does, and `forward` computes the tops with
torch ops. Backward is autograd; a layer whose Caffe gradient is not the exact
derivative of its forward uses a torch.autograd.Function for it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from google.protobuf.message import Message
from torch import nn

from caffe_ft.errors import CaffeError
from caffe_ft.fillers import fill
from caffe_ft.proto import caffe_pb2

Shape = tuple[int, ...]
TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST
# Caffe's Blob holds its count in an int: Blob::Reshape refuses more values
# ("blob size exceeds INT_MAX").
BLOB_MAX_COUNT = 2**31 - 1


class BlobList(nn.ParameterList):
    """A layer's parameter blobs. A pass reads every layer's blobs by index,
    and ParameterList's general indexing (slices, negative indices) costs
    more than the rest of a small layer's Python: a plain index goes
    straight to the parameter."""

    def __getitem__(self, idx: int | slice) -> Any:
        if type(idx) is int and idx >= 0:
            parameter = self._parameters.get(str(idx))
            if parameter is not None:
                return parameter
        return super().__getitem__(idx)  # slices, negative indices, IndexError


class Layer(nn.Module):
    # Loss layers get a default loss_weight of 1 on top 0 and cannot
    # backpropagate to their label bottom (Caffe's LossLayer).
    is_loss: bool = False
    # (min, max) bottom and top counts; None means unbounded.
    bottoms: tuple[int, int | None] = (1, 1)
    tops: tuple[int, int | None] = (1, 1)

    def __init__(self, param: caffe_pb2.LayerParameter, phase: int) -> None:
        super().__init__()
        self.param = param
        self.phase = phase
        self.blobs = BlobList()
        # Shapes a PERMISSIVE param share asks for (blob index → shape).
        self.blob_views: dict[int, Shape] = {}
        self._check_counts()

    # -- to override ---------------------------------------------------
    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        """Create the parameter blobs (Caffe's LayerSetUp). Default: none."""

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        """Return the top shapes for these bottom shapes (Caffe's Reshape).
        Default: one top shaped like bottom 0."""
        return [tuple(bottom_shapes[0])]

    def forward(self, *bottoms: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def allow_force_backward(self, bottom_index: int) -> bool:
        """Whether force_backward may make this bottom get a gradient."""
        return not (self.is_loss and bottom_index == 1)

    def num_auto_tops(self) -> int:
        """How many tops the layer needs even if the prototxt names fewer
        (Caffe's AutoTopBlobs: a loss layer always outputs its loss)."""
        return 1 if self.is_loss else 0

    def persistent_top(self, index: int) -> torch.Tensor | None:
        """The tensor a source layer (Input, MemoryData) returns for top
        `index` on every forward, so users can write it beforehand; None for
        layers that compute their tops."""
        return None

    def reshape_persistent_top(self, index: int, shape: Shape) -> None:
        raise self.error(f"top {index} is computed by the layer and cannot be reshaped "
                         f"directly; reshape the net's input blobs instead")

    # -- helpers for subclasses ----------------------------------------
    @property
    def name(self) -> str:
        return self.param.name

    @property
    def num_tops(self) -> int:
        return max(len(self.param.top), self.num_auto_tops())

    def blob(self, index: int) -> torch.Tensor:
        """Parameter blob `index` in this layer's own shape (use in forward)."""
        shape = self.blob_views.get(index)
        tensor = self.blobs[index]
        return tensor if shape is None else tensor.view(shape)

    def add_blob(self, shape: Sequence[int], filler: caffe_pb2.FillerParameter | None = None,
                 trainable: bool = True) -> nn.Parameter:
        """Append a parameter blob, filled by Caffe's filler (default constant 0).
        A blob given inline in the prototxt (`blobs {}`) replaces the fill."""
        index = len(self.blobs)
        data = self.zeros(shape, f"parameter blob {index}")
        if index < len(self.param.blobs):
            from caffe_ft.blobs import blob_proto_to_tensor
            inline = blob_proto_to_tensor(self.param.blobs[index])
            if inline.numel() != data.numel():
                raise self.error(f"inline blob {index} has {inline.numel()} values, "
                                 f"expected shape {list(data.shape)}")
            data.copy_(inline.reshape(data.shape))
        else:
            fill(data, filler if filler is not None else caffe_pb2.FillerParameter())
        blob = nn.Parameter(data, requires_grad=trainable)
        self.blobs.append(blob)
        return blob

    def zeros(self, shape: Sequence[int], what: str, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A zero float blob of `shape`, checked as Caffe's Blob::Reshape checks
        it; a failed allocation names this layer, the blob, its bytes and the
        device instead of surfacing as torch's allocator error."""
        dims = self.check_shape(shape, what)
        count = math.prod(dims)
        try:
            return torch.zeros(dims, dtype=dtype, device=device)
        except RuntimeError as err:  # torch.OutOfMemoryError is one too
            if "alloc" not in str(err).lower():
                raise
            raise self.error(f"cannot allocate {what} of shape {list(dims)}: "
                             f"{count * dtype.itemsize} bytes on {torch.device(device)} "
                             f"(out of memory)") from None

    def check_shape(self, shape: Sequence[int], what: str) -> Shape:
        """`shape` as Caffe's Blob::Reshape accepts it: no negative dimension
        and at most INT_MAX values (Caffe counts them in an int)."""
        dims = tuple(int(d) for d in shape)
        if any(d < 0 for d in dims):
            raise self.error(f"{what} has a negative dimension: shape {list(dims)}")
        count = math.prod(dims)
        if count > BLOB_MAX_COUNT:
            raise self.error(f"{what} of shape {list(dims)} has {count} values: blob size "
                             f"exceeds INT_MAX")
        return dims

    def error(self, message: str) -> CaffeError:
        return CaffeError(f"Layer '{self.name}' ({self.param.type}): {message}")

    def check_values(self, ok: torch.Tensor, message: str,
                     detail: Callable[[], str] | None = None) -> None:
        """Check a data-dependent condition (`ok`, a bool scalar tensor) where
        the data is, without waiting for the device: on the CPU a failure is
        this layer's error now, with `detail()` (which may read values) when
        given; on a GPU it fails the next sync with `message`."""
        try:
            torch._assert_async(ok, str(self.error(message)))
        except RuntimeError:
            raise self.error(detail() if detail else message) from None

    def canonical_axis(self, axis: int, num_axes: int) -> int:
        """Caffe's CanonicalAxisIndex: negative axes count from the end."""
        if not -num_axes <= axis < max(num_axes, 1):
            raise self.error(f"axis {axis} out of range for a {num_axes}-D blob")
        return axis + num_axes if axis < 0 else axis

    def check_axis_or_legacy_dim(self, param: Message, legacy: str) -> None:
        """Caffe's LayerSetUp check: `axis` or the legacy `concat_dim`/`slice_dim`, not both."""
        if param.HasField("axis") and param.HasField(legacy):
            raise self.error(f"Either axis or {legacy} should be specified; not both.")

    def axis_or_legacy_dim(self, param: Message, legacy: str, num_axes: int) -> int:
        """`param.axis`, or the legacy `concat_dim`/`slice_dim` when set (taken
        as it is, as Caffe does)."""
        if param.HasField(legacy):
            dim = getattr(param, legacy)
            if dim >= num_axes:
                raise self.error(f"{legacy} {dim} out of range for a {num_axes}-D bottom")
            return dim
        return self.canonical_axis(param.axis, num_axes)

    def _check_counts(self) -> None:
        for what, given, (low, high) in (("bottom", len(self.param.bottom), self.bottoms),
                                         ("top", len(self.param.top), self.tops)):
            if what == "top" and given < low and self.num_auto_tops() >= low:
                continue
            if given < low or (high is not None and given > high):
                want = f"{low}" if low == high else f"{low}..{high if high is not None else 'n'}"
                raise self.error(f"takes {want} {what} blob(s), got {given}")

"""Caffe's Net::AppendParam: each layer's parameter blobs become learnable
params (with lr_mult and decay_mult), or point at the owner's blob when a
ParamSpec name is shared, under Caffe's STRICT/PERMISSIVE shape rules and its
rules for which sharer's multipliers count."""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from caffe_ft.blobs import shape_string
from caffe_ft.errors import CaffeError
from caffe_ft.layers.base import Layer
from caffe_ft.proto import caffe_pb2


@dataclass
class LearnableParam:
    """A parameter blob the solver updates (owners only; sharers point here)."""
    layer: str
    index: int
    blob: nn.Parameter
    lr_mult: float
    decay_mult: float
    # Whether lr_mult / decay_mult were given explicitly (by the owner or a sharer).
    explicit_lr: bool = False
    explicit_decay: bool = False

    @property
    def display_name(self) -> str:
        return f"{self.layer}/{self.index}"


class ParamTable:
    """The learnable params in Caffe's order and the owners of shared names."""

    def __init__(self, force_backward: bool) -> None:
        self.force_backward = force_backward
        self.learnable: list[LearnableParam] = []
        self._owner_of: dict[str, tuple[Layer, int]] = {}

    def append(self, layer: Layer) -> bool:
        """Set up sharing and gradients of the layer's blobs; return whether
        any of them is learned (lr_mult != 0), which makes the layer need backward."""
        learned = False
        lp = layer.param
        for p, blob in enumerate(layer.blobs):
            spec = lp.param[p] if p < len(lp.param) else caffe_pb2.ParamSpec()
            learned = learned or (spec.lr_mult != 0 and blob.requires_grad)
            propagate = spec.lr_mult != 0 or self.force_backward
            if spec.name and spec.name in self._owner_of:
                self._share(layer, p, spec, propagate)
                continue
            if spec.name:
                self._owner_of[spec.name] = (layer, p)
            blob.requires_grad_(propagate)
            self.learnable.append(LearnableParam(
                lp.name, p, blob, spec.lr_mult, spec.decay_mult,
                spec.HasField("lr_mult"), spec.HasField("decay_mult")))
        return learned

    def _share(self, layer: Layer, p: int, spec: caffe_pb2.ParamSpec, propagate: bool) -> None:
        owner_layer, owner_index = self._owner_of[spec.name]
        owner = owner_layer.blobs[owner_index]
        mine = tuple(layer.blobs[p].shape)
        if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
            ok = owner.numel() == math.prod(mine)
        else:
            ok = tuple(owner.shape) == mine
        if not ok:
            raise CaffeError(
                f"Cannot share param '{spec.name}' owned by layer '{owner_layer.name}' with "
                f"layer '{layer.name}'; {'count' if spec.share_mode else 'shape'} mismatch.  "
                f"Owner layer param shape is {shape_string(owner.shape)}; sharing layer "
                f"expects shape {shape_string(mine)}")
        layer.blobs[p] = owner
        if tuple(owner.shape) != mine:
            layer.blob_views[p] = mine
        if propagate:
            owner.requires_grad_(True)
        learnable = next(entry for entry in self.learnable if entry.blob is owner)
        # The owner's explicit lr_mult/decay_mult wins; else the first sharer that sets one.
        for field, flag in (("lr_mult", "explicit_lr"), ("decay_mult", "explicit_decay")):
            if not spec.HasField(field):
                continue
            value = getattr(spec, field)
            if getattr(learnable, flag):
                if getattr(learnable, field) != value:
                    raise CaffeError(f"Shared param '{spec.name}' has mismatched {field}.")
            else:
                setattr(learnable, field, value)
                setattr(learnable, flag, True)

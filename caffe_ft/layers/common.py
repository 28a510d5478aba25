"""Common layers: shape plumbing, inner products, element-wise combinations."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from caffe_ft.layers.base import Layer, Shape
from caffe_ft.layers.registry import register


@register("Split")
class Split(Layer):
    """One blob to several consumers. Each top is a distinct view so each gets
    its own diff; autograd sums them into the bottom, as Caffe's Split does."""
    tops = (1, None)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])] * len(self.param.top)

    def forward(self, bottom: torch.Tensor) -> list[torch.Tensor]:
        return [bottom.view_as(bottom) for _ in self.param.top]

"""Input: the net's input blobs, written by the user (or pycaffe scripts)
before each forward."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from caffe_ft.layers.base import Layer, Shape
from caffe_ft.layers.registry import register


@register("Input")
class Input(Layer):
    bottoms = (0, 0)
    tops = (1, None)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        shapes = self.param.input_param.shape
        num_tops = len(self.param.top)
        if len(shapes) not in (0, 1, num_tops):
            raise self.error(f"input_param needs 1 shape or one per top ({num_tops}), "
                             f"got {len(shapes)}")
        for j in range(num_tops):
            dims = shapes[0 if len(shapes) == 1 else j].dim if shapes else ()
            self.register_buffer(f"top{j}", self.zeros(dims, f"top {j}"))

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(self.top_buffer(j).shape) for j in range(len(self.param.top))]

    def top_buffer(self, index: int) -> torch.Tensor:
        return getattr(self, f"top{index}")

    def persistent_top(self, index: int) -> torch.Tensor:
        return self.top_buffer(index)

    def reshape_persistent_top(self, index: int, shape: Shape) -> None:
        old = self.top_buffer(index)
        setattr(self, f"top{index}", self.zeros(shape, f"top {index}", old.device, old.dtype))

    def forward(self) -> list[torch.Tensor]:
        return [self.top_buffer(j) for j in range(len(self.param.top))]

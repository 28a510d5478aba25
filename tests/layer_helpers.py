"""Building single layers and running them forward and backward, for the
layer family tests."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from caffe_ft.layers.base import Layer
from caffe_ft.layers.families import layer_class
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text


def make(text: str, shapes: Sequence[tuple[int, ...]], phase: int = caffe_pb2.TRAIN) -> Layer:
    param = parse_text(text, caffe_pb2.LayerParameter())
    layer = layer_class(param.type)(param, phase)
    layer.setup(shapes)
    return layer


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def forward_backward(layer: Layer, inputs: Sequence[np.ndarray],
                     seeds: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Tops, and the bottoms' diffs for the given top diffs (zeros where no
    gradient reaches a bottom)."""
    xs = [torch.tensor(x, requires_grad=True) for x in inputs]
    tops = layer(*xs)
    pairs = [(t, torch.tensor(s)) for t, s in zip(tops, seeds) if t.requires_grad]
    if pairs:
        torch.autograd.backward([t for t, _ in pairs], [s for _, s in pairs])
    grads = [(x.grad if x.grad is not None else torch.zeros_like(x)).numpy() for x in xs]
    return [t.detach().numpy() for t in tops], grads

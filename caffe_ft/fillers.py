"""Caffe's weight fillers (include/caffe/filler.hpp), draw for draw.

They sample Caffe's boost distributions in float from Caffe's global
generator (caffe_ft.rng), so after `torch.manual_seed(s)` (Caffe's
set_random_seed) a net's random weights are the ones Caffe draws with seed
s, and the layers set up after them get Caffe's seeds too.

Each filler is a function registered by @filler under Caffe's type name, as
GetFiller dispatches on FillerParameter.type; FILLERS is that registry.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import numpy as np
import torch

from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2
from caffe_ft.rng import boost
from caffe_ft.rng.global_rng import caffe_rng

FillerParameter = caffe_pb2.FillerParameter
f32 = np.float32
FillFunction = Callable[[torch.Tensor, FillerParameter], None]

_REGISTRY: dict[str, FillFunction] = {}
# Read-only: names are added only by @filler, below.
FILLERS: Mapping[str, FillFunction] = MappingProxyType(_REGISTRY)


def filler(type_name: str) -> Callable[[FillFunction], FillFunction]:
    """Decorator: make the function fill blobs for Caffe's filler `type_name`."""
    def wrap(function: FillFunction) -> FillFunction:
        if type_name in _REGISTRY:
            raise RuntimeError(f"Filler type {type_name} registered twice")
        _REGISTRY[type_name] = function
        return function
    return wrap


@torch.no_grad()
def fill(blob: torch.Tensor, param: FillerParameter) -> torch.Tensor:
    """Fill `blob` in place as Caffe's filler of `param.type` would."""
    kind = param.type
    if kind not in _REGISTRY:
        raise CaffeError(f"Unknown filler type: {kind} (known: {', '.join(_REGISTRY)})")
    if param.sparse != -1 and kind != "gaussian":
        raise CaffeError(f"Filler '{kind}' does not support sparse (only gaussian does)")
    if blob.numel() == 0:
        return blob
    _REGISTRY[kind](blob, param)
    return blob


def _legacy_dim(blob: torch.Tensor, axis: int) -> int:
    """Blob::num() / channels(): the axis, or 1 where the blob has fewer."""
    return int(blob.shape[axis]) if blob.dim() > axis else 1


def _scale_n(blob: torch.Tensor, param: FillerParameter) -> np.float32:
    """Xavier's and MSRA's n, as Caffe computes it: integer fans over the
    legacy num and channels, averaged in float."""
    count = blob.numel()
    fan_in = count // _legacy_dim(blob, 0) if _legacy_dim(blob, 0) else count
    fan_out = count // _legacy_dim(blob, 1) if _legacy_dim(blob, 1) else count
    if param.variance_norm == FillerParameter.FAN_OUT:
        return f32(fan_out)
    if param.variance_norm == FillerParameter.AVERAGE:
        return f32(fan_in + fan_out) / f32(2)
    return f32(fan_in)


@filler("constant")
def _constant(blob: torch.Tensor, param: FillerParameter) -> None:
    blob.fill_(param.value)


def _put(blob: torch.Tensor, values: np.ndarray) -> None:
    blob.copy_(torch.from_numpy(values.reshape(tuple(blob.shape))))


@filler("uniform")
def _uniform(blob: torch.Tensor, param: FillerParameter) -> None:
    if not (math.isfinite(param.min) and math.isfinite(param.max) and param.min <= param.max):
        raise CaffeError(f"uniform filler needs finite min <= max, got min {param.min}, "
                         f"max {param.max}")
    _put(blob, _caffe_uniform(blob.numel(), param.min, param.max))


def _caffe_uniform(count: int, low: float, high: float) -> np.ndarray:
    """caffe_rng_uniform: [low, high] is boost's [low, nextafter(high))."""
    high = np.nextafter(f32(high), f32(np.inf))
    with caffe_rng() as stream:
        return boost.uniform_real(stream, count, low, high)


def _caffe_gaussian(count: int, mean: float, std: float) -> np.ndarray:
    with caffe_rng() as stream:
        return boost.normal(stream, count, mean, std)


@filler("gaussian")
def _gaussian(blob: torch.Tensor, param: FillerParameter) -> None:
    if not param.std > 0 or not math.isfinite(param.std) or not math.isfinite(param.mean):
        raise CaffeError(f"gaussian filler needs a finite mean and std > 0, got mean "
                         f"{param.mean}, std {param.std}")
    if param.sparse < -1:
        raise CaffeError(f"gaussian filler needs sparse >= -1, got {param.sparse}")
    values = _caffe_gaussian(blob.numel(), param.mean, param.std)
    if param.sparse >= 0:
        # Keep each weight with probability sparse / num_outputs, as Caffe does
        # to give every output about `sparse` non-zero inputs.
        if blob.dim() < 1:
            raise CaffeError("sparse gaussian filler needs a blob with at least 1 axis")
        keep = f32(param.sparse) / f32(blob.shape[0])
        if keep > 1:
            # Caffe's Bernoulli draw refuses a probability over 1.
            raise CaffeError(f"sparse gaussian filler: sparse ({param.sparse}) exceeds "
                             f"the blob's {blob.shape[0]} outputs (shape(0))")
        with caffe_rng() as stream:
            values *= boost.bernoulli(stream, values.size, keep)
    _put(blob, values)


@filler("positive_unitball")
def _positive_unitball(blob: torch.Tensor, param: FillerParameter) -> None:
    values = _caffe_uniform(blob.numel(), 0.0, 1.0)
    rows = values.reshape(_legacy_dim(blob, 0), -1)
    # Caffe sums each row in order, in float.
    rows /= np.add.accumulate(rows, axis=1, dtype=np.float32)[:, -1:]
    _put(blob, values)


@filler("xavier")
def _xavier(blob: torch.Tensor, param: FillerParameter) -> None:
    scale = np.sqrt(f32(3) / _scale_n(blob, param))
    _put(blob, _caffe_uniform(blob.numel(), -scale, scale))


@filler("msra")
def _msra(blob: torch.Tensor, param: FillerParameter) -> None:
    _put(blob, _caffe_gaussian(blob.numel(), 0.0, np.sqrt(f32(2) / _scale_n(blob, param))))


@filler("bilinear")
def _bilinear(blob: torch.Tensor, param: FillerParameter) -> None:
    if blob.dim() != 4 or blob.shape[2] != blob.shape[3]:
        raise CaffeError(f"bilinear filler needs a 4-D blob with a square kernel, "
                         f"got {list(blob.shape)}")
    size = blob.shape[3]
    f = math.ceil(size / 2.0)
    # The centre as in filler.hpp since Caffe's 2017 fix (888597e, in the
    # golden commit 9b89154); the original (2f - 1 - f % 2) / (2f) was
    # off-centre for kernels with K % 4 in (2, 3).
    c = (size - 1) / (2.0 * f)
    axis = 1 - torch.abs(torch.arange(size, dtype=torch.float32) / f - c)
    blob.copy_((axis[:, None] * axis[None, :]).expand_as(blob))

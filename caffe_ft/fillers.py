"""Caffe's weight fillers (include/caffe/filler.hpp), on torch's RNG.

The distributions and their parameters are Caffe's; the random streams are
torch's (Caffe's boost::mt19937 draws cannot be reproduced bit for bit), so
`torch.manual_seed` makes fills repeatable.

Each filler is a function registered by @filler under Caffe's type name, as
GetFiller dispatches on FillerParameter.type; FILLERS is that registry.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch

from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2

FillerParameter = caffe_pb2.FillerParameter
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


def _fans(blob: torch.Tensor) -> tuple[float, float]:
    count = blob.numel()
    fan_in = count / blob.shape[0] if blob.dim() >= 1 and blob.shape[0] else count
    fan_out = count / blob.shape[1] if blob.dim() > 1 and blob.shape[1] else count
    return fan_in, fan_out


def _scale_n(blob: torch.Tensor, param: FillerParameter) -> float:
    fan_in, fan_out = _fans(blob)
    if param.variance_norm == FillerParameter.FAN_OUT:
        return fan_out
    if param.variance_norm == FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2
    return fan_in


@filler("constant")
def _constant(blob: torch.Tensor, param: FillerParameter) -> None:
    blob.fill_(param.value)


@filler("uniform")
def _uniform(blob: torch.Tensor, param: FillerParameter) -> None:
    if param.min > param.max:
        raise CaffeError(f"uniform filler needs min <= max, got min {param.min} "
                         f"> max {param.max}")
    blob.uniform_(param.min, param.max)


@filler("gaussian")
def _gaussian(blob: torch.Tensor, param: FillerParameter) -> None:
    if param.std <= 0:
        raise CaffeError(f"gaussian filler needs std > 0, got {param.std}")
    if param.sparse < -1:
        raise CaffeError(f"gaussian filler needs sparse >= -1, got {param.sparse}")
    blob.normal_(param.mean, param.std)
    if param.sparse >= 0:
        # Keep each weight with probability sparse / num_outputs, as Caffe does
        # to give every output about `sparse` non-zero inputs.
        if blob.dim() < 1:
            raise CaffeError("sparse gaussian filler needs a blob with at least 1 axis")
        keep = param.sparse / blob.shape[0]
        if keep > 1:
            # Caffe's Bernoulli draw refuses a probability over 1.
            raise CaffeError(f"sparse gaussian filler: sparse ({param.sparse}) exceeds "
                             f"the blob's {blob.shape[0]} outputs (shape(0))")
        blob.mul_(torch.bernoulli(torch.full_like(blob, keep)))


@filler("positive_unitball")
def _positive_unitball(blob: torch.Tensor, param: FillerParameter) -> None:
    blob.uniform_(0, 1)
    rows = blob.view(blob.shape[0], -1) if blob.dim() else blob.view(1, -1)
    rows.div_(rows.sum(dim=1, keepdim=True))


@filler("xavier")
def _xavier(blob: torch.Tensor, param: FillerParameter) -> None:
    bound = math.sqrt(3.0 / _scale_n(blob, param))
    blob.uniform_(-bound, bound)


@filler("msra")
def _msra(blob: torch.Tensor, param: FillerParameter) -> None:
    blob.normal_(0.0, math.sqrt(2.0 / _scale_n(blob, param)))


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

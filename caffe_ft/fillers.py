"""Caffe's weight fillers (include/caffe/filler.hpp), on torch's RNG.

The distributions and their parameters are Caffe's; the random streams are
torch's (Caffe's boost::mt19937 draws cannot be reproduced bit for bit), so
`torch.manual_seed` makes fills repeatable.
"""
from __future__ import annotations

import math

import torch

from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2

FillerParameter = caffe_pb2.FillerParameter
KNOWN = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")


def _fans(blob: torch.Tensor) -> tuple[float, float]:
    count = blob.numel()
    fan_in = count / blob.shape[0] if blob.dim() >= 1 and blob.shape[0] else count
    fan_out = count / blob.shape[1] if blob.dim() > 1 and blob.shape[1] else count
    return fan_in, fan_out


def _scale_n(blob: torch.Tensor, filler: FillerParameter) -> float:
    fan_in, fan_out = _fans(blob)
    if filler.variance_norm == FillerParameter.FAN_OUT:
        return fan_out
    if filler.variance_norm == FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2
    return fan_in


@torch.no_grad()
def fill(blob: torch.Tensor, filler: FillerParameter) -> torch.Tensor:
    """Fill `blob` in place as Caffe's filler of `filler.type` would."""
    kind = filler.type
    if kind not in KNOWN:
        raise CaffeError(f"Unknown filler type: {kind} (known: {', '.join(KNOWN)})")
    if filler.sparse != -1 and kind != "gaussian":
        raise CaffeError(f"Filler '{kind}' does not support sparse (only gaussian does)")
    if blob.numel() == 0:
        return blob
    if kind == "constant":
        blob.fill_(filler.value)
    elif kind == "uniform":
        if filler.min > filler.max:
            raise CaffeError(f"uniform filler needs min <= max, got min {filler.min} "
                             f"> max {filler.max}")
        blob.uniform_(filler.min, filler.max)
    elif kind == "gaussian":
        if filler.std <= 0:
            raise CaffeError(f"gaussian filler needs std > 0, got {filler.std}")
        if filler.sparse < -1:
            raise CaffeError(f"gaussian filler needs sparse >= -1, got {filler.sparse}")
        blob.normal_(filler.mean, filler.std)
        if filler.sparse >= 0:
            # Keep each weight with probability sparse / num_outputs, as Caffe does
            # to give every output about `sparse` non-zero inputs.
            if blob.dim() < 1:
                raise CaffeError("sparse gaussian filler needs a blob with at least 1 axis")
            keep = filler.sparse / blob.shape[0]
            if keep > 1:
                # Caffe's Bernoulli draw refuses a probability over 1.
                raise CaffeError(f"sparse gaussian filler: sparse ({filler.sparse}) exceeds "
                                 f"the blob's {blob.shape[0]} outputs (shape(0))")
            blob.mul_(torch.bernoulli(torch.full_like(blob, keep)))
    elif kind == "positive_unitball":
        blob.uniform_(0, 1)
        rows = blob.view(blob.shape[0], -1) if blob.dim() else blob.view(1, -1)
        rows.div_(rows.sum(dim=1, keepdim=True))
    elif kind == "xavier":
        bound = math.sqrt(3.0 / _scale_n(blob, filler))
        blob.uniform_(-bound, bound)
    elif kind == "msra":
        blob.normal_(0.0, math.sqrt(2.0 / _scale_n(blob, filler)))
    elif kind == "bilinear":
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
    return blob

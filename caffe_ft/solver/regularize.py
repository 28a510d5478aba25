"""What Caffe does to the accumulated diffs before the update rule, in its
order: clip the global norm (of the gradient summed over iter_size), then
divide by iter_size, then add weight decay scaled by each param's decay_mult.
Decay goes into the gradient (coupled), so it also enters momentum and the
adaptive histories."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from caffe_ft.errors import CaffeError

f32 = np.float32

REGULARIZATION_TYPES = ("L2", "L1")


def clip_gradients(grads: Sequence[torch.Tensor], clip: float) -> tuple[float, float] | None:
    """Scale every diff by clip/norm when the global L2 norm exceeds `clip`
    (a negative clip disables it). Returns (norm, scale) when it scaled."""
    if clip < 0 or not grads:
        return None
    sumsq = torch.stack([torch.dot(g.reshape(-1), g.reshape(-1)) for g in grads]).sum()
    norm = float(f32(sumsq.sqrt().item()))
    if norm <= clip:
        return None
    scale = float(f32(clip) / f32(norm))
    torch._foreach_mul_(list(grads), scale)
    return norm, scale


def normalize(grad: torch.Tensor, iter_size: int) -> None:
    """Average the diff accumulated over iter_size forward/backward passes."""
    if iter_size != 1:
        grad.mul_(float(f32(1) / f32(iter_size)))


def _unknown_type(regularization_type: str) -> CaffeError:
    return CaffeError(f"Unknown regularization type: {regularization_type} "
                      f"(known types: {', '.join(REGULARIZATION_TYPES)})")


def check_regularization(regularization_type: str) -> None:
    if regularization_type not in REGULARIZATION_TYPES:
        raise _unknown_type(regularization_type)


def regularize(grad: torch.Tensor, weight: torch.Tensor, local_decay: float,
               regularization_type: str) -> None:
    """diff += decay·w (L2) or decay·sign(w) (L1, sign(0) = 0)."""
    if not local_decay:
        return
    if regularization_type == "L2":
        grad.add_(weight, alpha=local_decay)
    elif regularization_type == "L1":
        grad.add_(torch.sign(weight), alpha=local_decay)
    else:
        raise _unknown_type(regularization_type)

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


def clip_gradients(grads: Sequence[torch.Tensor | None], clip: float
                   ) -> tuple[float, float] | None:
    """Scale every diff by clip/norm when the global L2 norm exceeds `clip`
    (a negative clip disables it). Returns (norm, scale) when it scaled.
    `grads` holds every learnable param's diff in net order, None for a
    frozen one (Caffe's diff of 0), so the sum adds the same terms in the
    same order as Caffe's. Reading the norm waits for the device: clipping
    logs it, as Caffe does."""
    present = [g for g in grads if g is not None]
    if clip < 0 or not present:
        return None
    zero = present[0].new_zeros(())
    sumsq = torch.stack([zero if g is None else torch.dot(g.reshape(-1), g.reshape(-1))
                         for g in grads]).sum()
    norm = float(f32(sumsq.sqrt().item()))
    if norm <= clip:
        return None
    scale = float(f32(clip) / f32(norm))
    torch._foreach_mul_(present, scale)
    return norm, scale


def normalize(grads: list[torch.Tensor], iter_size: int) -> None:
    """Average the diffs accumulated over iter_size forward/backward passes."""
    if iter_size != 1:
        torch._foreach_mul_(grads, float(f32(1) / f32(iter_size)))


def _unknown_type(regularization_type: str) -> CaffeError:
    return CaffeError(f"Unknown regularization type: {regularization_type} "
                      f"(known types: {', '.join(REGULARIZATION_TYPES)})")


def check_regularization(regularization_type: str) -> None:
    if regularization_type not in REGULARIZATION_TYPES:
        raise _unknown_type(regularization_type)


def regularize(grads: list[torch.Tensor], weights: list[torch.Tensor], local_decay: float,
               regularization_type: str) -> None:
    """diff += decay·w (L2) or decay·sign(w) (L1, sign(0) = 0), for a group
    of params sharing one local decay."""
    if not local_decay:
        return
    if regularization_type == "L2":
        torch._foreach_add_(grads, weights, alpha=local_decay)
    elif regularization_type == "L1":
        torch._foreach_add_(grads, torch._foreach_sign(weights), alpha=local_decay)
    else:
        raise _unknown_type(regularization_type)

"""Caffe's update rules as pure functions over lists of tensors
(ComputeUpdateValue), in the style of torch.optim's functional API.

Each rule takes the regularized gradients `g` of a group of params sharing
one local rate (rate × lr_mult), their history tensors (one list per history
set, updated in place, in Caffe's layout), and returns the values Caffe
writes into the diffs, which the solver then subtracts from the weights.
The torch._foreach_* ops launch one kernel per op for the whole group on
CUDA; elementwise they are the per-tensor ops, so float32 results are the
same bit for bit. Unlike torch.optim, the learning rate lives
inside SGD's momentum history (h = m·h + lr·g), so a changing rate acts as
it does in Caffe. The step order follows Caffe's BLAS calls so float32
rounding stays close to Caffe's.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2

f32 = np.float32


@dataclass(frozen=True)
class Hyper:
    """The solver's constants, rounded to float32 as Caffe's Dtype holds them."""
    momentum: float
    momentum2: float
    delta: float
    rms_decay: float

    @classmethod
    def from_param(cls, param: caffe_pb2.SolverParameter) -> Hyper:
        return cls(float(f32(param.momentum)), float(f32(param.momentum2)),
                   float(f32(param.delta)), float(f32(param.rms_decay)))


Rule = Callable[[list[torch.Tensor], Sequence[list[torch.Tensor]], float, Hyper, int],
                list[torch.Tensor]]


def sgd(g: list[torch.Tensor], history: Sequence[list[torch.Tensor]], local_rate: float,
        hp: Hyper, iteration: int) -> list[torch.Tensor]:
    """h = momentum·h + lr·g; the update is h itself."""
    (h,) = history
    torch._foreach_mul_(h, hp.momentum)
    torch._foreach_add_(h, g, alpha=local_rate)
    return h


def nesterov(g: list[torch.Tensor], history: Sequence[list[torch.Tensor]], local_rate: float,
             hp: Hyper, iteration: int) -> list[torch.Tensor]:
    """Step back along the old velocity, then over-step along the new one:
    (1+m)·h_new − m·h_old."""
    (h,) = history
    update = torch._foreach_mul(h, -hp.momentum)
    torch._foreach_mul_(h, hp.momentum)
    torch._foreach_add_(h, g, alpha=local_rate)
    torch._foreach_add_(update, h, alpha=float(f32(1) + f32(hp.momentum)))
    return update


def _scaled_by_root(numerator: list[torch.Tensor], h: list[torch.Tensor], delta: float,
                    rate: float) -> list[torch.Tensor]:
    """rate·numerator / (√h + δ), in Caffe's order: root, add, divide, scale."""
    root = torch._foreach_sqrt(h)
    torch._foreach_add_(root, delta)
    update = torch._foreach_div(numerator, root)
    torch._foreach_mul_(update, rate)
    return update


def adagrad(g: list[torch.Tensor], history: Sequence[list[torch.Tensor]], local_rate: float,
            hp: Hyper, iteration: int) -> list[torch.Tensor]:
    """h += g²; update = lr·g / (√h + δ)."""
    (h,) = history
    torch._foreach_add_(h, torch._foreach_mul(g, g))
    return _scaled_by_root(g, h, hp.delta, local_rate)


def rmsprop(g: list[torch.Tensor], history: Sequence[list[torch.Tensor]], local_rate: float,
            hp: Hyper, iteration: int) -> list[torch.Tensor]:
    """h = ρ·h + (1−ρ)·g²; update = lr·g / (√h + δ)."""
    (h,) = history
    torch._foreach_mul_(h, hp.rms_decay)
    torch._foreach_add_(h, torch._foreach_mul(g, g), alpha=float(f32(1) - f32(hp.rms_decay)))
    return _scaled_by_root(g, h, hp.delta, local_rate)


def adadelta(g: list[torch.Tensor], history: Sequence[list[torch.Tensor]], local_rate: float,
             hp: Hyper, iteration: int) -> list[torch.Tensor]:
    """E[g²] and E[dx²] decay with momentum; dx = g·√((E[dx²]+δ)/(E[g²]+δ));
    update = lr·dx. History: the n E[g²] blobs, then the n E[dx²] blobs."""
    grad_sq, update_sq = history
    keep = float(f32(1) - f32(hp.momentum))
    torch._foreach_mul_(grad_sq, hp.momentum)
    torch._foreach_add_(grad_sq, torch._foreach_mul(g, g), alpha=keep)
    dx = torch._foreach_div(torch._foreach_add(update_sq, hp.delta),
                            torch._foreach_add(grad_sq, hp.delta))
    torch._foreach_sqrt_(dx)
    torch._foreach_mul_(dx, g)
    torch._foreach_mul_(update_sq, hp.momentum)
    torch._foreach_add_(update_sq, torch._foreach_mul(dx, dx), alpha=keep)
    torch._foreach_mul_(dx, local_rate)
    return dx


def adam(g: list[torch.Tensor], history: Sequence[list[torch.Tensor]], local_rate: float,
         hp: Hyper, iteration: int) -> list[torch.Tensor]:
    """m and v as in Kingma & Ba with t = iteration + 1; the bias correction
    multiplies the rate and δ is not corrected (Caffe's form, not torch's).
    History: the n m blobs, then the n v blobs."""
    m, v = history
    beta1, beta2 = hp.momentum, hp.momentum2
    t = iteration + 1
    # pow(float, int) promotes to double in C++; the result is stored as float.
    correction = float(f32(np.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)))
    torch._foreach_mul_(m, beta1)
    torch._foreach_add_(m, g, alpha=float(f32(1) - f32(beta1)))
    torch._foreach_mul_(v, beta2)
    torch._foreach_add_(v, torch._foreach_mul(g, g), alpha=float(f32(1) - f32(beta2)))
    return _scaled_by_root(m, v, hp.delta, float(f32(local_rate) * f32(correction)))


@dataclass(frozen=True)
class UpdateRule:
    compute: Rule
    # How many history blobs each learnable param has (Caffe appends the
    # second set after the first, so the solverstate lists all m, then all v).
    history_sets: int
    # Whether a zero history stays zero at rate 0 whatever the diff (SGD's
    # h = m·0 + 0·g): then a frozen param (lr_mult 0) can skip the rule.
    rate_scales_history: bool


RULES: dict[str, UpdateRule] = {
    "SGD": UpdateRule(sgd, 1, True),
    "Nesterov": UpdateRule(nesterov, 1, True),
    "AdaGrad": UpdateRule(adagrad, 1, False),
    "RMSProp": UpdateRule(rmsprop, 1, False),
    "AdaDelta": UpdateRule(adadelta, 2, False),
    "Adam": UpdateRule(adam, 2, False),
}


def rule_for(param: caffe_pb2.SolverParameter, solver_type: str = "") -> UpdateRule:
    """The rule of `solver_type` (default `param.type`), after Caffe's
    per-solver sanity checks. pycaffe's SGDSolver(file), AdamSolver(file), ...
    are their class's type whatever the file's `type` says."""
    kind = solver_type or param.type
    rule = RULES.get(kind)
    if rule is None:
        raise CaffeError(f"Unknown solver type: {kind} (known types: "
                         f"{', '.join(sorted(RULES))})")
    if kind in ("AdaGrad", "RMSProp") and param.momentum != 0:
        raise CaffeError(f"Momentum cannot be used with {kind}.")
    if kind == "RMSProp" and not 0 <= param.rms_decay < 1:
        raise CaffeError("rms_decay should lie between 0 and 1.")
    return rule

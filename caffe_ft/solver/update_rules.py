"""Caffe's update rules as pure functions over tensors (ComputeUpdateValue).

Each rule takes the regularized gradient `g`, the parameter's history
tensors (updated in place, in Caffe's layout) and the local rate (rate ×
lr_mult), and returns the value Caffe writes into the diff, which the solver
then subtracts from the weights. Unlike torch.optim, the learning rate lives
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


Rule = Callable[[torch.Tensor, Sequence[torch.Tensor], float, Hyper, int], torch.Tensor]


def sgd(g: torch.Tensor, history: Sequence[torch.Tensor], local_rate: float, hp: Hyper,
        iteration: int) -> torch.Tensor:
    """h = momentum·h + lr·g; the update is h itself."""
    (h,) = history
    return h.mul_(hp.momentum).add_(g, alpha=local_rate)


def nesterov(g: torch.Tensor, history: Sequence[torch.Tensor], local_rate: float, hp: Hyper,
             iteration: int) -> torch.Tensor:
    """Step back along the old velocity, then over-step along the new one:
    (1+m)·h_new − m·h_old."""
    (h,) = history
    update = h.clone()
    h.mul_(hp.momentum).add_(g, alpha=local_rate)
    return update.mul_(-hp.momentum).add_(h, alpha=float(f32(1) + f32(hp.momentum)))


def adagrad(g: torch.Tensor, history: Sequence[torch.Tensor], local_rate: float, hp: Hyper,
            iteration: int) -> torch.Tensor:
    """h += g²; update = lr·g / (√h + δ)."""
    (h,) = history
    h.add_(g * g)
    return torch.div(g, h.sqrt().add_(hp.delta)).mul_(local_rate)


def rmsprop(g: torch.Tensor, history: Sequence[torch.Tensor], local_rate: float, hp: Hyper,
            iteration: int) -> torch.Tensor:
    """h = ρ·h + (1−ρ)·g²; update = lr·g / (√h + δ)."""
    (h,) = history
    h.mul_(hp.rms_decay).add_(g * g, alpha=float(f32(1) - f32(hp.rms_decay)))
    return torch.div(g, h.sqrt().add_(hp.delta)).mul_(local_rate)


def adadelta(g: torch.Tensor, history: Sequence[torch.Tensor], local_rate: float, hp: Hyper,
             iteration: int) -> torch.Tensor:
    """E[g²] and E[dx²] decay with momentum; dx = g·√((E[dx²]+δ)/(E[g²]+δ));
    update = lr·dx. History: the n E[g²] blobs, then the n E[dx²] blobs."""
    grad_sq, update_sq = history
    keep = float(f32(1) - f32(hp.momentum))
    grad_sq.mul_(hp.momentum).add_(g * g, alpha=keep)
    ratio = torch.div(update_sq + hp.delta, grad_sq + hp.delta).sqrt_()
    dx = ratio.mul_(g)
    update_sq.mul_(hp.momentum).add_(dx * dx, alpha=keep)
    return dx.mul_(local_rate)


def adam(g: torch.Tensor, history: Sequence[torch.Tensor], local_rate: float, hp: Hyper,
         iteration: int) -> torch.Tensor:
    """m and v as in Kingma & Ba with t = iteration + 1; the bias correction
    multiplies the rate and δ is not corrected (Caffe's form, not torch's).
    History: the n m blobs, then the n v blobs."""
    m, v = history
    beta1, beta2 = hp.momentum, hp.momentum2
    t = iteration + 1
    # pow(float, int) promotes to double in C++; the result is stored as float.
    correction = float(f32(np.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)))
    m.mul_(beta1).add_(g, alpha=float(f32(1) - f32(beta1)))
    v.mul_(beta2).add_(g * g, alpha=float(f32(1) - f32(beta2)))
    step = float(f32(local_rate) * f32(correction))
    return torch.div(m, v.sqrt().add_(hp.delta)).mul_(step)


@dataclass(frozen=True)
class UpdateRule:
    compute: Rule
    # How many history blobs each learnable param has (Caffe appends the
    # second set after the first, so the solverstate lists all m, then all v).
    history_sets: int


RULES: dict[str, UpdateRule] = {
    "SGD": UpdateRule(sgd, 1),
    "Nesterov": UpdateRule(nesterov, 1),
    "AdaGrad": UpdateRule(adagrad, 1),
    "RMSProp": UpdateRule(rmsprop, 1),
    "AdaDelta": UpdateRule(adadelta, 2),
    "Adam": UpdateRule(adam, 2),
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

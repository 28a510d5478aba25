"""Caffe's learning-rate policies (SGDSolver::GetLearningRate).

The rate is a float in Caffe, and each policy mixes float and double maths
in a particular way (`pow(float, int)` promotes to double, `pow(float,
float)` stays float). We repeat that mix with numpy float32 so the logged
"lr = " values agree with Caffe's to the last printed digit.

Each policy is a pure function registered by @policy under its lr_policy
name, with the parameter checks Caffe would fail on at iteration 0.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2

f32 = np.float32
SolverParameter = caffe_pb2.SolverParameter
# (param, iteration, current_step) -> (rate before Caffe's float cast, current_step)
PolicyRate = Callable[[SolverParameter, int, int], tuple[float | np.floating, int]]
Check = Callable[[SolverParameter], None]


class Rate(NamedTuple):
    value: float
    # Caffe's current_step_: set by "step", advanced by "multistep", saved in
    # the solverstate; other policies leave it as it was.
    current_step: int


class _Policy(NamedTuple):
    rate: PolicyRate
    checks: tuple[Check, ...]


_REGISTRY: dict[str, _Policy] = {}


def policy(name: str, *checks: Check) -> Callable[[PolicyRate], PolicyRate]:
    """Decorator: the rate function of lr_policy `name`, and its parameter checks."""
    def wrap(rate: PolicyRate) -> PolicyRate:
        if name in _REGISTRY:
            raise RuntimeError(f"lr_policy {name} registered twice")
        _REGISTRY[name] = _Policy(rate, checks)
        return rate
    return wrap


def check_policy(param: SolverParameter) -> None:
    """Fail before training starts on what Caffe would reject at iteration 0."""
    for check in _policy(param.lr_policy).checks:
        check(param)


def learning_rate(param: SolverParameter, iteration: int, current_step: int) -> Rate:
    """The rate for the update that follows iteration `iteration` (Caffe's iter_)."""
    rate, current_step = _policy(param.lr_policy).rate(param, iteration, current_step)
    return Rate(float(f32(rate)), current_step)


def _policy(name: str) -> _Policy:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CaffeError(f"Unknown learning rate policy: {name} (known policies: "
                         f"{', '.join(_REGISTRY)})") from None


def _stepsize_positive(param: SolverParameter) -> None:
    if param.stepsize <= 0:
        raise CaffeError(f"lr_policy \"{param.lr_policy}\" needs stepsize > 0, "
                         f"got {param.stepsize}")


def _gamma_non_negative(param: SolverParameter) -> None:
    if param.gamma < 0:
        raise CaffeError(f"lr_policy \"{param.lr_policy}\" needs gamma >= 0, "
                         f"got {param.gamma:g}")


def _max_iter_positive(param: SolverParameter) -> None:
    if param.max_iter <= 0:
        raise CaffeError(f"lr_policy \"{param.lr_policy}\" needs max_iter > 0, "
                         f"got {param.max_iter}")


@policy("fixed")
def _fixed(param: SolverParameter, iteration: int, current_step: int) -> tuple[np.float32, int]:
    return f32(param.base_lr), current_step


@policy("step", _stepsize_positive, _gamma_non_negative)
def _step(param: SolverParameter, iteration: int, current_step: int) -> tuple[float, int]:
    current_step = iteration // param.stepsize
    return float(f32(param.base_lr)) * float(param.gamma) ** current_step, current_step


@policy("exp", _gamma_non_negative)
def _exp(param: SolverParameter, iteration: int, current_step: int) -> tuple[float, int]:
    return float(f32(param.base_lr)) * float(param.gamma) ** iteration, current_step


@policy("inv", _gamma_non_negative)
def _inv(param: SolverParameter, iteration: int, current_step: int) -> tuple[np.float32, int]:
    return (f32(param.base_lr) * (f32(1) + f32(param.gamma) * f32(iteration))
            ** -f32(param.power)), current_step


@policy("multistep", _gamma_non_negative)
def _multistep(param: SolverParameter, iteration: int, current_step: int) -> tuple[float, int]:
    # At most one step per call, as in Caffe: a resumed run that jumps past
    # two step values catches up one iteration at a time.
    if current_step < len(param.stepvalue) and iteration >= param.stepvalue[current_step]:
        current_step += 1
    return float(f32(param.base_lr)) * float(param.gamma) ** current_step, current_step


@policy("poly", _max_iter_positive)
def _poly(param: SolverParameter, iteration: int, current_step: int) -> tuple[np.float32, int]:
    return (f32(param.base_lr) * (f32(1) - f32(iteration) / f32(param.max_iter))
            ** f32(param.power)), current_step


@policy("sigmoid", _stepsize_positive, _gamma_non_negative)
def _sigmoid(param: SolverParameter, iteration: int, current_step: int) -> tuple[np.float32, int]:
    return f32(param.base_lr) * (f32(1) / (f32(1) + np.exp(
        -f32(param.gamma) * (f32(iteration) - f32(param.stepsize))))), current_step

"""Caffe's learning-rate policies (SGDSolver::GetLearningRate).

The rate is a float in Caffe, and each policy mixes float and double maths
in a particular way (`pow(float, int)` promotes to double, `pow(float,
float)` stays float). We repeat that mix with numpy float32 so the logged
"lr = " values agree with Caffe's to the last printed digit.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2

f32 = np.float32

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


class Rate(NamedTuple):
    value: float
    # Caffe's current_step_: set by "step", advanced by "multistep", saved in
    # the solverstate; other policies leave it as it was.
    current_step: int


def check_policy(param: caffe_pb2.SolverParameter) -> None:
    """Fail before training starts on what Caffe would reject at iteration 0."""
    policy = param.lr_policy
    if policy not in POLICIES:
        raise CaffeError(f"Unknown learning rate policy: {policy} (known policies: "
                         f"{', '.join(POLICIES)})")
    if policy in ("step", "sigmoid") and param.stepsize <= 0:
        raise CaffeError(f"lr_policy \"{policy}\" needs stepsize > 0, got {param.stepsize}")
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and param.gamma < 0:
        raise CaffeError(f"lr_policy \"{policy}\" needs gamma >= 0, got {param.gamma:g}")
    if policy == "poly" and param.max_iter <= 0:
        raise CaffeError(f"lr_policy \"poly\" needs max_iter > 0, got {param.max_iter}")


def learning_rate(param: caffe_pb2.SolverParameter, iteration: int, current_step: int) -> Rate:
    """The rate for the update that follows iteration `iteration` (Caffe's iter_)."""
    policy = param.lr_policy
    base = f32(param.base_lr)
    if policy == "fixed":
        rate = base
    elif policy == "step":
        current_step = iteration // param.stepsize
        rate = float(base) * float(param.gamma) ** current_step
    elif policy == "exp":
        rate = float(base) * float(param.gamma) ** iteration
    elif policy == "inv":
        rate = base * (f32(1) + f32(param.gamma) * f32(iteration)) ** -f32(param.power)
    elif policy == "multistep":
        # At most one step per call, as in Caffe: a resumed run that jumps past
        # two step values catches up one iteration at a time.
        if current_step < len(param.stepvalue) and iteration >= param.stepvalue[current_step]:
            current_step += 1
        rate = float(base) * float(param.gamma) ** current_step
    elif policy == "poly":
        rate = base * (f32(1) - f32(iteration) / f32(param.max_iter)) ** f32(param.power)
    elif policy == "sigmoid":
        rate = base * (f32(1) / (f32(1) + np.exp(-f32(param.gamma) *
                                                 (f32(iteration) - f32(param.stepsize)))))
    else:
        raise CaffeError(f"Unknown learning rate policy: {policy}")
    return Rate(float(f32(rate)), current_step)

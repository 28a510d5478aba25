"""Learning-rate policies, update rules and gradient preprocessing against
Caffe's formulas, written out here independently in float64."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text
from caffe_ft.solver.lr_policy import check_policy, learning_rate
from caffe_ft.solver.regularize import clip_gradients, normalize, regularize
from caffe_ft.solver.update_rules import RULES, Hyper, rule_for


def solver(text: str) -> caffe_pb2.SolverParameter:
    return parse_text(text, caffe_pb2.SolverParameter())


# -- learning-rate policies ----------------------------------------------------
# Formulas in float64 over the solver's (float32) fields.
POLICIES = {
    "fixed": ('lr_policy: "fixed" base_lr: 0.01', lambda p, it: p.base_lr),
    "step": ('lr_policy: "step" base_lr: 0.01 gamma: 0.1 stepsize: 7',
             lambda p, it: p.base_lr * p.gamma ** (it // p.stepsize)),
    "exp": ('lr_policy: "exp" base_lr: 0.01 gamma: 0.97', lambda p, it: p.base_lr * p.gamma ** it),
    "inv": ('lr_policy: "inv" base_lr: 0.01 gamma: 0.0001 power: 0.75',
            lambda p, it: p.base_lr * (1 + p.gamma * it) ** -p.power),
    "poly": ('lr_policy: "poly" base_lr: 0.01 power: 1.5 max_iter: 40',
             lambda p, it: p.base_lr * (1 - it / p.max_iter) ** p.power),
    "sigmoid": ('lr_policy: "sigmoid" base_lr: 0.01 gamma: 0.2 stepsize: 20',
                lambda p, it: p.base_lr / (1 + math.exp(-p.gamma * (it - p.stepsize)))),
}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_policies_follow_caffes_formulas(policy: str) -> None:
    text, formula = POLICIES[policy]
    param = solver(text)
    check_policy(param)
    for it in range(40):
        rate = learning_rate(param, it, 0).value
        # Caffe evaluates inv, poly and sigmoid in float32.
        assert math.isclose(rate, formula(param, it), rel_tol=1e-5), (it, rate)


def test_step_policy_records_current_step() -> None:
    param = solver('lr_policy: "step" base_lr: 1 gamma: 0.5 stepsize: 10')
    assert learning_rate(param, 25, 0).current_step == 2


def test_multistep_advances_at_most_one_step_per_call() -> None:
    param = solver('lr_policy: "multistep" base_lr: 1 gamma: 0.5 stepvalue: 5 stepvalue: 6')
    step = 0
    seen = []
    for it in range(9):
        rate, step = learning_rate(param, it, step)
        seen.append((rate, step))
    assert seen[4] == (1.0, 0) and seen[5] == (0.5, 1) and seen[6] == (0.25, 2)
    # A run resumed at iteration 8 with current_step 0 catches up one step per call.
    assert learning_rate(param, 8, 0) == (0.5, 1)


@pytest.mark.parametrize("text, message", [
    ('lr_policy: "cosine"', "Unknown learning rate policy: cosine"),
    ('lr_policy: ""', "Unknown learning rate policy"),
    ('lr_policy: "step" gamma: 0.1', "stepsize > 0"),
    ('lr_policy: "exp" gamma: -1', "gamma >= 0"),
    ('lr_policy: "sigmoid" gamma: 0.1', 'lr_policy "sigmoid" needs stepsize > 0'),
    ('lr_policy: "multistep" gamma: -0.5', 'lr_policy "multistep" needs gamma >= 0'),
    ('lr_policy: "poly" power: 1', 'lr_policy "poly" needs max_iter > 0'),
    # Caffe's GetLearningRate knows exactly these (no "none": it has no such branch).
    ('lr_policy: "none"', "known policies: fixed, step, exp, inv, multistep, poly, sigmoid\\)"),
])
def test_bad_policies_fail_before_training(text: str, message: str) -> None:
    with pytest.raises(CaffeError, match=message):
        check_policy(solver(text))


# -- update rules ----------------------------------------------------------------
def reference_step(kind: str, g: np.ndarray, hist: list[np.ndarray], lr: float, hp: dict,
                   it: int) -> np.ndarray:
    """Caffe's ComputeUpdateValue, float64, from sgd_solvers' documentation."""
    m, d = hp["momentum"], hp["delta"]
    if kind == "SGD":
        hist[0] = m * hist[0] + lr * g
        return hist[0].copy()
    if kind == "Nesterov":
        old = hist[0].copy()
        hist[0] = m * hist[0] + lr * g
        return (1 + m) * hist[0] - m * old
    if kind == "AdaGrad":
        hist[0] = hist[0] + g * g
        return lr * g / (np.sqrt(hist[0]) + d)
    if kind == "RMSProp":
        r = hp["rms_decay"]
        hist[0] = r * hist[0] + (1 - r) * g * g
        return lr * g / (np.sqrt(hist[0]) + d)
    if kind == "AdaDelta":
        hist[0] = m * hist[0] + (1 - m) * g * g
        dx = g * np.sqrt((hist[1] + d) / (hist[0] + d))
        hist[1] = m * hist[1] + (1 - m) * dx * dx
        return lr * dx
    b1, b2, t = m, hp["momentum2"], it + 1
    hist[0] = b1 * hist[0] + (1 - b1) * g
    hist[1] = b2 * hist[1] + (1 - b2) * g * g
    return lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * hist[0] / (np.sqrt(hist[1]) + d)


HYPER = {"SGD": {"momentum": 0.9}, "Nesterov": {"momentum": 0.95}, "AdaGrad": {},
         "RMSProp": {"rms_decay": 0.98}, "AdaDelta": {"momentum": 0.95},
         "Adam": {"momentum": 0.9, "momentum2": 0.999}}


@pytest.mark.parametrize("kind", sorted(RULES))
def test_update_rules_match_caffes_formulas(kind: str) -> None:
    values = {"momentum": 0.0, "momentum2": 0.999, "delta": 1e-6, "rms_decay": 0.99,
              **HYPER[kind]}
    hp = Hyper(**{k: float(np.float32(v)) for k, v in values.items()})
    rule = RULES[kind]
    history = [torch.zeros(6) for _ in range(rule.history_sets)]
    expected_history = [np.zeros(6) for _ in range(rule.history_sets)]
    generator = torch.Generator().manual_seed(1)
    # A changing rate: Caffe keeps lr inside SGD's history, so this matters.
    for it, lr in enumerate([0.1, 0.1, 0.05, 0.01, 0.01]):
        g = torch.randn(6, generator=generator)
        update = rule.compute([g.clone()], [[h] for h in history], lr, hp, it)[0]
        expected = reference_step(kind, g.double().numpy(), expected_history, lr, values, it)
        np.testing.assert_allclose(update.numpy(), expected, rtol=2e-5, atol=1e-9)
        for ours, theirs in zip(history, expected_history):
            np.testing.assert_allclose(ours.numpy(), theirs, rtol=2e-5, atol=1e-9)


def test_sgd_momentum_holds_lr_unlike_torch() -> None:
    """After a rate drop Caffe's velocity still carries the old rate
    (h = m·h + lr·g); torch.optim.SGD multiplies the whole velocity by the
    new rate. The two steps differ, and ours is Caffe's."""
    hp = Hyper(0.9, 0.999, 1e-8, 0.99)
    g = torch.tensor([1.0, -2.0])
    history = [torch.zeros(2)]
    RULES["SGD"].compute([g], [history], 0.1, hp, 0)
    step = RULES["SGD"].compute([g], [history], 0.01, hp, 1)[0].clone()
    torch.testing.assert_close(step, 0.9 * 0.1 * g + 0.01 * g)

    w = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    for lr in (0.1, 0.01):
        optimizer.param_groups[0]["lr"] = lr
        before = w.detach().clone()
        w.grad = g.clone()
        optimizer.step()
    torch_step = before - w.detach()
    assert not torch.allclose(torch_step, step)


@pytest.mark.parametrize("text, message", [
    ('type: "AdaGrad" momentum: 0.9', "Momentum cannot be used with AdaGrad."),
    ('type: "RMSProp" momentum: 0.9', "Momentum cannot be used with RMSProp."),
    ('type: "RMSProp" rms_decay: 1.0', "rms_decay should lie between 0 and 1."),
    ('type: "LBFGS"', "Unknown solver type: LBFGS"),
])
def test_solver_sanity_checks(text: str, message: str) -> None:
    with pytest.raises(CaffeError, match=message):
        rule_for(solver(text))


# -- clipping, normalization, decay ---------------------------------------------
def test_clip_scales_by_the_global_norm() -> None:
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    clipped = clip_gradients(grads, 1.0)
    assert clipped == pytest.approx((5.0, 0.2))
    torch.testing.assert_close(grads[0], torch.tensor([0.6, 0.0]))
    torch.testing.assert_close(grads[1], torch.tensor([[0.8]]))


def test_clip_leaves_small_or_disabled_gradients() -> None:
    grads = [torch.tensor([0.3, 0.4])]
    assert clip_gradients(grads, 0.5) is None
    assert clip_gradients(grads, -1) is None
    torch.testing.assert_close(grads[0], torch.tensor([0.3, 0.4]))


def test_normalize_averages_iter_size_passes() -> None:
    grad = torch.tensor([2.0, 4.0])
    normalize([grad], 4)
    torch.testing.assert_close(grad, torch.tensor([0.5, 1.0]))


def test_l2_and_l1_decay() -> None:
    w = torch.tensor([2.0, -1.0, 0.0])
    grad = torch.zeros(3)
    regularize([grad], [w], 0.5, "L2")
    torch.testing.assert_close(grad, 0.5 * w)
    grad = torch.zeros(3)
    regularize([grad], [w], 0.5, "L1")
    # sign(0) = 0: a zero weight gets no L1 pull.
    torch.testing.assert_close(grad, torch.tensor([0.5, -0.5, 0.0]))


def test_unknown_regularization_type() -> None:
    with pytest.raises(CaffeError, match="Unknown regularization type: L3"):
        regularize([torch.zeros(1)], [torch.ones(1)], 0.1, "L3")

"""Neuron-layer rules the golden cases do not reach: Power's constant case and
its zero-base gradient, gradients at ties, BNLL's clamp, Threshold's missing
backward, and the parameter checks Caffe makes. Expected values restate
Caffe's formulas in numpy."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from caffe_ft.errors import CaffeError
from caffe_ft.layers.base import Layer
from caffe_ft.proto import caffe_pb2
import layer_helpers


def make(text: str, shapes: Sequence[tuple[int, ...]], phase: int = caffe_pb2.TRAIN) -> Layer:
    """A neuron layer, set up; its top has its bottom's shape."""
    layer = layer_helpers.make(text, shapes, phase)
    assert layer.reshape(shapes) == [tuple(shapes[0])]
    return layer


def run(layer: Layer, x: np.ndarray, dy: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top and bottom diff for top diff `dy` (ones by default)."""
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    (y,) = layer(xt)
    seed = torch.ones_like(y) if dy is None else torch.tensor(dy, dtype=torch.float32)
    if y.requires_grad:
        y.backward(seed)
    grad = xt.grad if xt.grad is not None else torch.zeros_like(xt)
    return y.detach().numpy(), grad.numpy()


def neuron(type_and_params: str) -> str:
    return f'name: "n" type: {type_and_params} bottom: "x" top: "y"'


X = np.array([-2.0, -0.5, 0.0, 0.25, 1.5, 3.0], dtype=np.float32)


@pytest.mark.parametrize("power, scale, shift", [(0.0, 2.0, 1.5), (3.0, 0.0, 2.0), (2.5, 0.0, 1.7)])
def test_power_constant_case_ignores_input_and_has_zero_gradient(
        power: float, scale: float, shift: float) -> None:
    layer = make(neuron(f'"Power" power_param {{ power: {power} scale: {scale} shift: {shift} }}'),
                 [X.shape])
    y, dx = run(layer, X)
    expected = 1.0 if power == 0 else np.float32(shift) ** np.float32(power)
    np.testing.assert_array_equal(y, np.full_like(X, expected))
    np.testing.assert_array_equal(dx, np.zeros_like(X))


def _caffe_power_grad(x: np.ndarray, power: float, scale: float, shift: float) -> np.ndarray:
    # power_layer.cpp Backward_cpu for power not in {0, 1}.
    diff_scale = np.float32(power * scale)
    y = (x * np.float32(scale) + np.float32(shift)) ** np.float32(power)
    if power == 2:
        return x * np.float32(diff_scale * scale) + np.float32(diff_scale * shift)
    with np.errstate(divide="ignore", invalid="ignore"):
        if shift == 0:
            return y / x * np.float32(power)
        return y / (x * np.float32(scale) + np.float32(shift)) * diff_scale


@pytest.mark.parametrize("power, scale, shift", [(0.5, 1.0, 0.0), (3.0, 2.0, 0.0),
                                                  (3.0, -1.0, 1.0), (2.0, 0.5, 3.0),
                                                  (1.5, 0.5, 1.0)])
def test_power_backward_is_caffes_quotient_form(power: float, scale: float, shift: float) -> None:
    x = np.array([0.0, 0.5, 1.0, 2.0, 4.0], dtype=np.float32)  # includes a zero base
    layer = make(neuron(f'"Power" power_param {{ power: {power} scale: {scale} shift: {shift} }}'),
                 [x.shape])
    y, dx = run(layer, x)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(y, (x * scale + shift) ** power, rtol=1e-6)
    # Where the base is 0 Caffe's y / base is NaN (not autograd's 0 or inf).
    np.testing.assert_allclose(dx, _caffe_power_grad(x, power, scale, shift), rtol=1e-6)


def test_power_identity_exponent_gradient_is_scale() -> None:
    layer = make(neuron('"Power" power_param { scale: -1.5 shift: 2 }'), [X.shape])
    y, dx = run(layer, X)
    np.testing.assert_allclose(y, X * -1.5 + 2, rtol=1e-6)
    np.testing.assert_array_equal(dx, np.full_like(X, -1.5))


@pytest.mark.parametrize("text, grad_at_zero", [
    ('"ReLU"', 0.0),
    ('"ReLU" relu_param { negative_slope: 0.2 }', 0.2),
    ('"ELU" elu_param { alpha: 0.7 }', 0.7),
    ('"AbsVal"', 0.0),
])
def test_gradient_at_zero_takes_caffes_branch(text: str, grad_at_zero: float) -> None:
    _, dx = run(make(neuron(text), [X.shape]), X)
    assert dx[X == 0] == pytest.approx(grad_at_zero)


def test_prelu_slope_branch_at_zero_and_slope_gradient() -> None:
    x = np.array([[[-1.0, 0.0], [2.0, -3.0]], [[0.5, -2.0], [0.0, 1.0]]], dtype=np.float32)
    layer = make('name: "p" type: "PReLU" bottom: "x" top: "y"', [x.shape])
    slope = layer.blob(0).detach().numpy()
    np.testing.assert_array_equal(slope, [0.25, 0.25])  # Caffe's default filler
    xt = torch.tensor(x, requires_grad=True)
    (y,) = layer(xt)
    y.backward(torch.ones_like(y))
    a = slope[None, :, None]
    np.testing.assert_allclose(y.detach().numpy(), np.maximum(x, 0) + a * np.minimum(x, 0))
    np.testing.assert_allclose(xt.grad.numpy(), np.where(x > 0, 1.0, np.broadcast_to(a, x.shape)))
    np.testing.assert_allclose(layer.blobs[0].grad.numpy(), np.where(x <= 0, x, 0).sum(axis=(0, 2)))


def test_prelu_needs_two_axes() -> None:
    with pytest.raises(CaffeError, match="axes"):
        make('name: "p" type: "PReLU" bottom: "x" top: "y"', [(5,)])


def test_clip_gradient_is_one_on_the_closed_interval() -> None:
    x = np.array([-1.0, -0.5, 0.0, 0.7, 1.0], dtype=np.float32)
    y, dx = run(make(neuron('"Clip" clip_param { min: -0.5 max: 0.7 }'), [x.shape]), x)
    np.testing.assert_allclose(y, [-0.5, -0.5, 0.0, 0.7, 0.7])
    np.testing.assert_array_equal(dx, [0, 1, 1, 1, 0])


def test_clip_with_min_above_max_is_constant_min() -> None:
    y, dx = run(make(neuron('"Clip" clip_param { min: 1 max: -1 }'), [X.shape]), X)
    np.testing.assert_array_equal(y, np.ones_like(X))  # Caffe's max(min, min(x, max))
    np.testing.assert_array_equal(dx, np.zeros_like(X))


def test_bnll_matches_caffes_forward_and_clamped_backward() -> None:
    x = np.array([-80.0, -3.0, 0.0, 2.0, 30.0, 60.0, 200.0], dtype=np.float32)
    y, dx = run(make(neuron('"BNLL"'), [x.shape]), x)
    xd = x.astype(np.float64)
    expected = np.where(xd > 0, xd + np.log1p(np.exp(-np.abs(xd))),
                        np.log1p(np.exp(np.minimum(xd, 0))))
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    e = np.exp(np.minimum(xd, 50.0))
    np.testing.assert_allclose(dx, e / (e + 1), rtol=1e-6)
    assert np.isfinite(dx).all()


@pytest.mark.parametrize("beta", [1.0, 1.5])
def test_swish_matches_caffes_backward(beta: float) -> None:
    y, dx = run(make(neuron(f'"Swish" swish_param {{ beta: {beta} }}'), [X.shape]), X)
    sig = 1 / (1 + np.exp(-beta * X.astype(np.float64)))
    np.testing.assert_allclose(y, X * sig, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, beta * y + sig * (1 - beta * y), rtol=1e-5, atol=1e-7)


def test_threshold_is_strict_and_has_no_backward() -> None:
    layer = make(neuron('"Threshold" threshold_param { threshold: 0.25 }'), [X.shape])
    xt = torch.tensor(X, requires_grad=True)
    (y,) = layer(xt)
    np.testing.assert_array_equal(y.detach().numpy(), (X > 0.25).astype(np.float32))
    with pytest.raises(CaffeError, match="Threshold has no backward"):
        y.sum().backward()


def test_exp_and_log_bases() -> None:
    x = np.array([0.5, 1.0, 2.0], dtype=np.float32)
    y, dx = run(make(neuron('"Exp" exp_param { base: 3 scale: 2 shift: -1 }'), [x.shape]), x)
    np.testing.assert_allclose(y, 3.0 ** (2 * x - 1), rtol=1e-6)
    np.testing.assert_allclose(dx, y * 2 * np.log(3.0), rtol=1e-6)
    y, dx = run(make(neuron('"Log" log_param { scale: 3 shift: 1 }'), [x.shape]), x)
    np.testing.assert_allclose(y, np.log(3 * x + 1), rtol=1e-6)
    np.testing.assert_allclose(dx, 3 / (3 * x + 1), rtol=1e-6)


@pytest.mark.parametrize("text, message", [
    ('"Exp" exp_param { base: -2 }', "strictly positive"),
    ('"Log" log_param { base: 0 }', "strictly positive"),
    ('"Log" log_param { base: 1 }', "infinite"),
])
def test_bad_bases_are_rejected(text: str, message: str) -> None:
    with pytest.raises(CaffeError, match=message):
        make(neuron(text), [X.shape])


def test_absval_refuses_in_place() -> None:
    with pytest.raises(CaffeError, match="in-place"):
        make('name: "a" type: "AbsVal" bottom: "x" top: "x"', [X.shape])


def _normal(seed: int) -> np.ndarray:
    return layer_helpers.rand(2, 3, 4, seed=seed)


# Caffe's backward of each layer as a function of (bottom data, top data);
# run in place, Caffe evaluates it with the bottom's data overwritten by the top.
def _bnll_caffe(bottom: np.ndarray, top: np.ndarray) -> np.ndarray:
    e = np.exp(np.minimum(bottom, 50.0))
    return e / (e + 1)


IN_PLACE_CASES = [
    ('type: "ReLU" relu_param { negative_slope: -0.5 }',
     lambda b, t: (b > 0) + np.float32(-0.5) * (b <= 0)),
    ('type: "ELU" elu_param { alpha: -0.5 }',
     lambda b, t: (b > 0) + (np.float32(-0.5) + t) * (b <= 0)),
    ('type: "BNLL"', _bnll_caffe),
    ('type: "Power" power_param { power: 3 scale: 0.5 shift: 1.5 }',
     lambda b, t: t / (np.float32(0.5) * b + np.float32(1.5)) * np.float32(1.5)),
    ('type: "Power" power_param { power: 2 scale: 0.5 }',
     lambda b, t: b * np.float32(0.5)),
    ('type: "Log" log_param { scale: 0.5 shift: 3 base: 2 }',
     lambda b, t: np.float32(0.5) / np.log(np.float32(2)) / (np.float32(0.5) * b + 3)),
    ('type: "Clip" clip_param { min: -0.5 max: 0.5 }',
     lambda b, t: ((b >= -0.5) & (b <= 0.5)).astype(np.float32)),
]


@pytest.mark.parametrize("text, caffe_gradient", IN_PLACE_CASES)
def test_in_place_backward_reads_the_overwritten_bottom_as_caffe(text: str,
                                                                 caffe_gradient) -> None:
    x, seed = _normal(5), _normal(6)
    if "Log" in text or "power: 3" in text:
        x = np.abs(x) + 0.1  # keep the base positive
    top, apart_grad = run(make(f'name: "n" bottom: "x" top: "y" {text}', [x.shape]), x, seed)
    np.testing.assert_allclose(apart_grad, seed * caffe_gradient(x, top), rtol=1e-5, atol=1e-6)
    same_top, in_place_grad = run(make(f'name: "n" bottom: "x" top: "x" {text}', [x.shape]),
                                  x, seed)
    np.testing.assert_array_equal(same_top, top)
    np.testing.assert_allclose(in_place_grad, seed * caffe_gradient(top, top), rtol=1e-5,
                               atol=1e-6)
    assert not np.allclose(in_place_grad, apart_grad)  # the case does exercise the quirk


@pytest.mark.parametrize("text", ['type: "ReLU"', 'type: "ELU"',
                                  'type: "ReLU" relu_param { negative_slope: 0.1 }'])
def test_common_in_place_layers_keep_the_exact_gradient(text: str) -> None:
    x, seed = _normal(7), _normal(8)
    _, apart = run(make(f'name: "n" bottom: "x" top: "y" {text}', [x.shape]), x, seed)
    _, in_place = run(make(f'name: "n" bottom: "x" top: "x" {text}', [x.shape]), x, seed)
    np.testing.assert_array_equal(in_place, apart)

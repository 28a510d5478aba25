"""BatchNorm's running statistics over several forwards and its ParamSpec
rules, Scale/Bias broadcasting for every num_axes form, MVN's shapes and
constant-row gradient, Softmax's negative axis. Expected values restate
Caffe's rules in numpy."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from caffe_ft.errors import CaffeError
from caffe_ft.net import Net
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text
from layer_helpers import make, rand

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


BN = 'name: "bn" type: "BatchNorm" bottom: "x" top: "y" {}'


def test_batchnorm_accumulates_bias_corrected_running_stats() -> None:
    maf, eps = 0.9, 1e-5
    layer = make(BN.format(f"batch_norm_param {{ moving_average_fraction: {maf} }}"),
                 [(4, 3, 2, 5)])
    blobs = [np.zeros(3), np.zeros(3), np.zeros(1)]
    for step in range(3):
        x = rand(4, 3, 2, 5, seed=step) * (step + 1) + step
        (y,) = layer(torch.tensor(x))
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))
        m = x.size // 3
        np.testing.assert_allclose(
            y.numpy(), (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + eps),
            rtol=1e-4, atol=1e-5)
        blobs = [maf * blobs[0] + mean, maf * blobs[1] + m / (m - 1) * var, maf * blobs[2] + 1]
        for i in range(3):
            np.testing.assert_allclose(layer.blob(i).detach().numpy(), blobs[i], rtol=1e-5)
    # TEST phase normalizes with the accumulators divided by the scale factor.
    test = make(BN.format(""), [(4, 3, 2, 5)], TEST)
    for i in range(3):
        test.blobs[i].data.copy_(layer.blobs[i].data)
    x = rand(4, 3, 2, 5, seed=9)
    (y,) = test(torch.tensor(x))
    mean, var = blobs[0] / blobs[2], blobs[1] / blobs[2]
    np.testing.assert_allclose(
        y.numpy(), (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + eps),
        rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(test.blob(2).numpy(), blobs[2])  # no update under global stats


def test_batchnorm_global_stats_with_zero_scale_factor_uses_zero_stats() -> None:
    layer = make(BN.format("batch_norm_param { use_global_stats: true }"), [(2, 3)])
    layer.blobs[0].data.fill_(5.0)  # ignored: factor 0 means mean = var = 0
    x = rand(2, 3)
    (y,) = layer(torch.tensor(x))
    np.testing.assert_allclose(y.numpy(), x / np.sqrt(1e-5), rtol=1e-5)


def test_batchnorm_single_value_per_channel() -> None:
    layer = make(BN.format(""), [(1, 3)])
    xt = torch.tensor(rand(1, 3), requires_grad=True)
    (y,) = layer(xt)
    y.backward(torch.ones_like(y))
    np.testing.assert_array_equal(y.detach().numpy(), np.zeros((1, 3)))
    np.testing.assert_array_equal(xt.grad.numpy(), np.zeros((1, 3)))
    np.testing.assert_allclose(layer.blob(0).detach().numpy(), xt.detach().numpy()[0])
    np.testing.assert_array_equal(layer.blob(1).detach().numpy(), np.zeros(3))  # m/(m-1) -> 1


def test_batchnorm_needs_two_axes() -> None:
    with pytest.raises(CaffeError, match="at least 2 axes"):
        make(BN.format(""), [(6,)])


NET = '''
force_backward: true
layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 4 dim: 2 }} }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "x" top: "y" {} }}
'''


def test_batchnorm_param_specs_are_forced_to_lr_mult_zero() -> None:
    net = Net(parse_text(NET.format("param { lr_mult: 0 decay_mult: 3 }"),
                         caffe_pb2.NetParameter()), TRAIN)
    assert [p.lr_mult for p in net.learnable_params] == [0, 0, 0]
    assert [p.decay_mult for p in net.learnable_params] == [3, 1, 1]
    net.set_blob_data("x", torch.tensor(rand(4, 2)))
    net.forward()
    net.backward({"y": torch.ones(4, 2)})
    assert all(p.grad is None for p in net.params_of("bn"))  # Caffe computes no stat diffs


def test_batchnorm_rejects_a_learning_rate() -> None:
    text = NET.format("param { lr_mult: 0 } param { lr_mult: 1 }")
    with pytest.raises(CaffeError, match="Cannot configure batch normalization statistics"):
        Net(parse_text(text, caffe_pb2.NetParameter()), TRAIN)


@pytest.mark.parametrize("axis, num_axes, blob_shape, view", [
    (1, -1, (3, 4, 5), (1, 3, 4, 5)),   # through the last axis
    (2, 0, (), (1, 1, 1, 1)),           # a scalar
    (-2, 1, (4,), (1, 1, 4, 1)),
])
def test_scale_blob_spans_num_axes(axis: int, num_axes: int, blob_shape: tuple[int, ...],
                                   view: tuple[int, ...]) -> None:
    layer = make(f'''name: "s" type: "Scale" bottom: "x" top: "y" scale_param {{
                     axis: {axis} num_axes: {num_axes} bias_term: true
                     filler {{ type: "uniform" }} bias_filler {{ type: "uniform" }} }}''',
                 [(2, 3, 4, 5)])
    assert [tuple(b.shape) for b in layer.blobs] == [blob_shape, blob_shape]
    assert layer.reshape([(2, 3, 4, 5)]) == [(2, 3, 4, 5)]
    x = rand(2, 3, 4, 5)
    xt = torch.tensor(x, requires_grad=True)
    (y,) = layer(xt)
    dy = rand(2, 3, 4, 5, seed=1)
    y.backward(torch.tensor(dy))
    s, b = (blob.detach().numpy().reshape(view) for blob in layer.blobs)
    reduce = tuple(i for i, n in enumerate(view) if n == 1)
    np.testing.assert_allclose(y.detach().numpy(), x * s + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xt.grad.numpy(), dy * s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.blobs[0].grad.numpy(),
                               (dy * x).sum(axis=reduce).reshape(blob_shape), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.blobs[1].grad.numpy(),
                               dy.sum(axis=reduce).reshape(blob_shape), rtol=1e-4, atol=1e-5)


def test_scale_from_bottom_with_bias_has_only_the_bias_blob() -> None:
    layer = make('''name: "s" type: "Scale" bottom: "x" bottom: "s" top: "y"
                    scale_param { axis: 1 bias_term: true
                                  bias_filler { type: "constant" value: 0.5 } }''',
                 [(2, 3, 4), (3, 4)])
    assert [tuple(b.shape) for b in layer.blobs] == [(3, 4)]
    x, s = rand(2, 3, 4), rand(3, 4, seed=1)
    (y,) = layer(torch.tensor(x), torch.tensor(s))
    np.testing.assert_allclose(y.detach().numpy(), x * s + 0.5, rtol=1e-6, atol=1e-6)


def test_bias_from_bottom_broadcasts_at_axis() -> None:
    layer = make('name: "b" type: "Bias" bottom: "x" bottom: "b" top: "y" bias_param { axis: 0 }',
                 [(2, 3, 4), (2, 3)])
    assert len(layer.blobs) == 0
    x, b = rand(2, 3, 4), rand(2, 3, seed=1)
    (y,) = layer(torch.tensor(x), torch.tensor(b))
    np.testing.assert_allclose(y.numpy(), x + b[:, :, None])


@pytest.mark.parametrize("text, shapes", [
    ('type: "Scale" bottom: "x" bottom: "s" top: "y"', [(2, 3, 4), (4,)]),
    ('type: "Scale" bottom: "x" top: "y" scale_param { axis: 2 num_axes: 2 }', [(2, 3, 4)]),
    ('type: "Bias" bottom: "x" top: "y" bias_param { num_axes: -2 }', [(2, 3, 4)]),
])
def test_scale_and_bias_shape_errors(text: str, shapes: list[tuple[int, ...]]) -> None:
    with pytest.raises(CaffeError):
        layer = make(f'name: "l" {text}', shapes)
        layer.reshape(shapes)


def test_mvn_top_is_four_d_and_constant_rows_get_caffes_finite_gradient() -> None:
    x = np.concatenate([np.full((1, 1, 6), 2.0, np.float32), rand(1, 1, 6)], axis=1)
    layer = make('name: "m" type: "MVN" bottom: "x" top: "y"', [x.shape])
    assert layer.reshape([x.shape]) == [(1, 2, 6, 1)]
    xt = torch.tensor(x, requires_grad=True)
    (y,) = layer(xt)
    dy = rand(1, 2, 6, 1, seed=1)
    y.backward(torch.tensor(dy))
    rows, d = x.reshape(2, 6).astype(np.float64), dy.reshape(2, 6).astype(np.float64)
    centered = rows - rows.mean(axis=1, keepdims=True)
    std = np.sqrt((centered ** 2).mean(axis=1, keepdims=True)) + 1e-9
    top = centered / std
    dx = (d - d.mean(axis=1, keepdims=True) - top * (top * d).mean(axis=1, keepdims=True)) / std
    np.testing.assert_allclose(y.detach().numpy().reshape(2, 6), top, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(xt.grad.numpy().reshape(2, 6), dx, rtol=1e-3, atol=1e-5)


def test_mvn_rejects_more_than_four_axes() -> None:
    with pytest.raises(CaffeError, match="at most 4"):
        make('name: "m" type: "MVN" bottom: "x" top: "y"', [(1, 2, 3, 4, 5)])


def test_softmax_negative_axis() -> None:
    layer = make('name: "s" type: "Softmax" bottom: "x" top: "y" softmax_param { axis: -1 }',
                 [(2, 3, 4)])
    x = rand(2, 3, 4)
    (y,) = layer(torch.tensor(x))
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(y.numpy(), e / e.sum(axis=-1, keepdims=True), rtol=1e-5)
    too_far = make('name: "s" type: "Softmax" bottom: "x" top: "y" softmax_param { axis: 3 }',
                   [(2, 3, 4)])
    with pytest.raises(CaffeError, match="out of range"):
        too_far.reshape([(2, 3, 4)])

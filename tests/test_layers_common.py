"""Common-layer rules the golden cases do not reach: Caffe's shape and
parameter checks (Concat, Slice, Reshape, Flatten, InnerProduct, Eltwise,
Tile, ArgMax), legacy concat_dim/slice_dim, Dropout's TRAIN mask and its reuse
in backward, Eltwise MAX tie routing and PROD's two gradients, ArgMax ties,
and the backward of BatchReindex, Filter and Embed (their golden nets run no
backward). Expected values restate Caffe's loops in numpy."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from caffe_ft.errors import CaffeError
from caffe_ft.net import Net
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text
from layer_helpers import forward_backward, make, rand

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def layer_text(kind: str, bottoms: Sequence[str], tops: Sequence[str], params: str = "") -> str:
    wiring = " ".join([f'bottom: "{b}"' for b in bottoms] + [f'top: "{t}"' for t in tops])
    return f'name: "l" type: "{kind}" {wiring} {params}'


# -- Concat ----------------------------------------------------------------

def test_concat_legacy_concat_dim_joins_that_axis() -> None:
    a, b = rand(2, 3, 4), rand(2, 3, 2, seed=1)
    layer = make(layer_text("Concat", "ab", "y", "concat_param { concat_dim: 2 }"),
                 [a.shape, b.shape])
    assert layer.reshape([a.shape, b.shape]) == [(2, 3, 6)]
    (y,), (da, db) = forward_backward(layer, [a, b], [rand(2, 3, 6, seed=2)])
    np.testing.assert_array_equal(y, np.concatenate([a, b], axis=2))
    np.testing.assert_array_equal(da, rand(2, 3, 6, seed=2)[:, :, :4])
    np.testing.assert_array_equal(db, rand(2, 3, 6, seed=2)[:, :, 4:])


def test_concat_rejects_axis_and_concat_dim_together() -> None:
    with pytest.raises(CaffeError, match="Either axis or concat_dim"):
        make(layer_text("Concat", "ab", "y", "concat_param { axis: 1 concat_dim: 1 }"),
             [(2, 3), (2, 3)])


def test_concat_legacy_concat_dim_out_of_range() -> None:
    layer = make(layer_text("Concat", "ab", "y", "concat_param { concat_dim: 2 }"),
                 [(2, 3), (2, 3)])
    with pytest.raises(CaffeError, match="concat_dim 2 out of range"):
        layer.reshape([(2, 3), (2, 3)])


@pytest.mark.parametrize("shapes, message", [
    ([(2, 3, 4), (2, 5, 5)], "same shape, except at concat_axis"),
    ([(2, 3, 4), (2, 3)], "same #axes"),
])
def test_concat_shape_mismatch(shapes: list[tuple[int, ...]], message: str) -> None:
    layer = make(layer_text("Concat", "ab", "y"), shapes)
    with pytest.raises(CaffeError, match=message):
        layer.reshape(shapes)


# -- Slice -----------------------------------------------------------------

def test_slice_legacy_slice_dim_and_points() -> None:
    x = rand(2, 3, 7)
    layer = make(layer_text("Slice", "x", ["p", "q", "r"],
                            "slice_param { slice_dim: 2 slice_point: 1 slice_point: 5 }"),
                 [x.shape])
    assert layer.reshape([x.shape]) == [(2, 3, 1), (2, 3, 4), (2, 3, 2)]
    seeds = [rand(2, 3, n, seed=n) for n in (1, 4, 2)]
    tops, (dx,) = forward_backward(layer, [x], seeds)
    for top, expected in zip(tops, np.split(x, [1, 5], axis=2)):
        np.testing.assert_array_equal(top, expected)
    np.testing.assert_array_equal(dx, np.concatenate(seeds, axis=2))


@pytest.mark.parametrize("params, tops, message", [
    ("slice_point: 3", ["p", "q", "r"], "1 slice_point.* for 3 tops"),
    ("slice_point: 3 slice_point: 3", ["p", "q", "r"], "strictly increasing"),
    ("slice_point: 0", ["p", "q"], "strictly increasing"),
    ("slice_point: 2 slice_point: 9", ["p", "q", "r"], "past the end"),
    ("", ["p", "q", "r", "s"], "evenly divide"),
    ("axis: 1 slice_dim: 1", ["p", "q"], "Either axis or slice_dim"),
])
def test_slice_point_errors(params: str, tops: list[str], message: str) -> None:
    text = layer_text("Slice", "x", tops, f"slice_param {{ {params} }}")
    with pytest.raises(CaffeError, match=message):
        make(text, [(2, 6)]).reshape([(2, 6)])


def test_slice_more_tops_than_the_axis_holds() -> None:
    text = layer_text("Slice", "x", ["p", "q", "r"], "slice_param { slice_point: 1 slice_point: 2 }")
    with pytest.raises(CaffeError, match="3 tops exceed"):
        make(text, [(4, 2)]).reshape([(4, 2)])


# -- Reshape / Flatten -----------------------------------------------------

@pytest.mark.parametrize("shape, params, expected", [
    ((2, 3, 4), "shape { dim: 0 dim: -1 } axis: 0", (2, 12)),
    ((2, 3, 4), "shape { dim: 1 } axis: -1 num_axes: 0", (2, 3, 4, 1)),   # -1: append
    ((2, 3, 4), "shape { dim: 2 dim: 2 } axis: -2 num_axes: 1", (2, 3, 2, 2)),
    ((2, 3, 4), "shape { dim: 1 } axis: 0 num_axes: 0", (1, 2, 3, 4)),
    ((2, 3, 4), "shape { dim: 0 dim: -1 dim: 2 } axis: 1", (2, 3, 2, 2)),
])
def test_reshape_axis_rules(shape: tuple[int, ...], params: str,
                            expected: tuple[int, ...]) -> None:
    layer = make(layer_text("Reshape", "x", "y", f"reshape_param {{ {params} }}"), [shape])
    assert layer.reshape([shape]) == [expected]
    x = rand(*shape)
    (y,), _ = forward_backward(layer, [x], [rand(*expected)])
    np.testing.assert_array_equal(y, x.reshape(expected))


@pytest.mark.parametrize("params, message", [
    ("shape { dim: -1 dim: -1 }", "multiple -1"),
    ("shape { dim: 0 dim: 0 dim: 0 dim: 0 }", "no corresponding bottom axis"),
    ("shape { dim: 5 dim: -1 }", "must be divisible"),
    ("shape { dim: 5 }", "output count must match"),
    ("shape { dim: 2 } axis: 4", "out of range"),
    ("shape { dim: 2 } axis: 1 num_axes: 3", "out of range"),
])
def test_reshape_errors(params: str, message: str) -> None:
    with pytest.raises(CaffeError, match=message):
        make(layer_text("Reshape", "x", "y", f"reshape_param {{ {params} }}"),
             [(2, 3, 4)]).reshape([(2, 3, 4)])


@pytest.mark.parametrize("kind", ["Reshape", "Flatten"])
def test_shape_views_refuse_in_place(kind: str) -> None:
    with pytest.raises(CaffeError, match="does not allow in-place"):
        make(layer_text(kind, "x", "x"), [(2, 3)])


def test_flatten_end_axis_before_axis() -> None:
    layer = make(layer_text("Flatten", "x", "y", "flatten_param { axis: 2 end_axis: 1 }"),
                 [(2, 3, 4)])
    with pytest.raises(CaffeError, match="end_axis"):
        layer.reshape([(2, 3, 4)])


# -- InnerProduct ----------------------------------------------------------

def test_inner_product_transpose_and_input_size_check() -> None:
    x = rand(2, 3, 4)
    layer = make(layer_text("InnerProduct", "x", "y", "inner_product_param { num_output: 5 "
                            "transpose: true weight_filler { type: 'gaussian' std: 1 } "
                            "bias_filler { type: 'gaussian' std: 1 } }"), [x.shape])
    w, b = (blob.detach().numpy() for blob in layer.blobs)
    assert w.shape == (12, 5)
    (y,), _ = forward_backward(layer, [x], [np.ones((2, 5), np.float32)])
    np.testing.assert_allclose(y, x.reshape(2, 12) @ w + b, rtol=1e-5, atol=1e-6)
    with pytest.raises(CaffeError, match="Input size incompatible"):
        layer.reshape([(2, 3, 5)])


# -- Eltwise ---------------------------------------------------------------

def caffe_eltwise_max(xs: Sequence[np.ndarray], dy: np.ndarray) -> tuple[np.ndarray, list]:
    """eltwise_layer.cpp's MAX loops: bottom 1 wins ties with bottom 0, later
    bottoms must be strictly greater; the diff goes to the mask's bottom."""
    top = np.where(xs[0] > xs[1], xs[0], xs[1])
    mask = np.where(xs[0] > xs[1], 0, 1)
    for i, x in enumerate(xs[2:], 2):
        mask = np.where(x > top, i, mask)
        top = np.where(x > top, x, top)
    return top, [np.where(mask == i, dy, 0).astype(np.float32) for i in range(len(xs))]


def test_eltwise_max_tie_routing() -> None:
    # Every tie pattern: a == b, a == b == c, a == c > b, b == c > a, all distinct.
    a = np.array([1, 2, 3, 1, 5, 0], np.float32)
    b = np.array([1, 2, 1, 3, 4, 0], np.float32)
    c = np.array([0, 2, 3, 3, 6, -1], np.float32)
    dy = np.array([1, 2, 3, 4, 5, 6], np.float32)
    layer = make(layer_text("Eltwise", "abc", "y", "eltwise_param { operation: MAX }"),
                 [a.shape] * 3)
    (y,), grads = forward_backward(layer, [a, b, c], [dy])
    top, expected = caffe_eltwise_max([a, b, c], dy)
    np.testing.assert_array_equal(y, top)
    for got, want in zip(grads, expected):
        np.testing.assert_array_equal(got, want)
    # The tie at index 0 (a == b) goes to b; at index 1 (all equal) still to b.
    assert grads[1][0] == 1 and grads[1][1] == 2 and grads[0][1] == 0 and grads[2][1] == 0


@pytest.mark.parametrize("stable", [True, False])
def test_eltwise_prod_gradients(stable: bool) -> None:
    a = np.array([2, 0, -1.5, 3], np.float32)
    b = np.array([0.5, 4, 2, 0], np.float32)
    c = np.array([3, 1, -2, 2], np.float32)
    dy = np.array([1, 2, 0.5, -1], np.float32)
    layer = make(layer_text("Eltwise", "abc", "y", f"eltwise_param {{ operation: PROD "
                            f"stable_prod_grad: {str(stable).lower()} }}"), [a.shape] * 3)
    (y,), grads = forward_backward(layer, [a, b, c], [dy])
    np.testing.assert_array_equal(y, a * b * c)
    for x, others, got in zip((a, b, c), ((b, c), (a, c), (a, b)), grads):
        with np.errstate(divide="ignore", invalid="ignore"):
            # Caffe: product of the other bottoms, or top / bottom (NaN at 0 / 0).
            want = (others[0] * others[1] if stable else y / x) * dy
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("params, message", [
    ("operation: SUM coeff: 1", "one coefficient per bottom"),
    ("operation: PROD coeff: 1 coeff: 2", "only takes coefficients for summation"),
])
def test_eltwise_coeff_errors(params: str, message: str) -> None:
    with pytest.raises(CaffeError, match=message):
        make(layer_text("Eltwise", "ab", "y", f"eltwise_param {{ {params} }}"), [(2,), (2,)])


def test_eltwise_shape_mismatch() -> None:
    layer = make(layer_text("Eltwise", "ab", "y"), [(2, 3), (3, 2)])
    with pytest.raises(CaffeError, match="same shape"):
        layer.reshape([(2, 3), (3, 2)])


# -- Dropout ---------------------------------------------------------------

def test_dropout_train_mask_statistics_and_backward_reuses_mask() -> None:
    ratio = 0.3
    x = rand(200, 500) + 5.0  # no zeros, so a zero top marks a dropped unit
    layer = make(layer_text("Dropout", "x", "y", f"dropout_param {{ dropout_ratio: {ratio} }}"),
                 [x.shape])
    dy = rand(200, 500, seed=1)
    (y,), (dx,) = forward_backward(layer, [x], [dy])
    kept = y != 0
    scale = np.float32(1.0 / (1.0 - np.float32(ratio)))
    # 100000 Bernoulli(0.7) draws: the kept fraction is within 5 standard errors.
    assert abs(kept.mean() - (1 - ratio)) < 5 * np.sqrt(ratio * (1 - ratio) / x.size)
    np.testing.assert_allclose(y, np.where(kept, x * scale, 0), rtol=1e-6)
    np.testing.assert_allclose(dx, np.where(kept, dy * scale, 0), rtol=1e-6)
    # A second forward draws a new mask.
    (y2,), _ = forward_backward(layer, [x], [dy])
    assert ((y2 != 0) != kept).any()


def test_dropout_test_phase_is_identity_and_ratio_checked() -> None:
    x = rand(3, 4)
    layer = make(layer_text("Dropout", "x", "y"), [x.shape], TEST)
    (y,), (dx,) = forward_backward(layer, [x], [rand(3, 4, seed=1)])
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, rand(3, 4, seed=1))
    with pytest.raises(CaffeError, match="dropout_ratio"):
        make(layer_text("Dropout", "x", "y", "dropout_param { dropout_ratio: 1 }"), [x.shape])


# -- Tile / ArgMax ---------------------------------------------------------

def test_tile_needs_positive_tiles() -> None:
    with pytest.raises(CaffeError, match="must be specified"):
        make(layer_text("Tile", "x", "y"), [(2, 3)]).reshape([(2, 3)])
    with pytest.raises(CaffeError, match="positive"):
        make(layer_text("Tile", "x", "y", "tile_param { tiles: 0 }"), [(2, 3)]).reshape([(2, 3)])


def caffe_argmax(row: np.ndarray, top_k: int) -> list[tuple[float, int]]:
    """argmax_layer.cpp: (value, index) pairs sorted by std::greater."""
    return sorted(((float(v), j) for j, v in enumerate(row)), reverse=True)[:top_k]


def test_argmax_ties_pick_the_larger_index() -> None:
    x = np.array([[[1, 3, 3, 0], [3, 2, 1, 3]]], np.float32)  # (1, 2, 4)
    layer = make(layer_text("ArgMax", "x", "y", "argmax_param { top_k: 3 out_max_val: true }"),
                 [x.shape])
    assert layer.reshape([x.shape]) == [(1, 2, 3)]
    (y,), _ = forward_backward(layer, [x], [np.zeros((1, 2, 3), np.float32)])
    pairs = caffe_argmax(x.reshape(-1), 3)
    np.testing.assert_array_equal(y[0, 0], [j for _, j in pairs])
    np.testing.assert_array_equal(y[0, 1], [v for v, _ in pairs])
    assert list(y[0, 0]) == [7, 4, 2]

    axis_layer = make(layer_text("ArgMax", "x", "y", "argmax_param { axis: -1 top_k: 2 }"),
                      [x.shape])
    (ya,), _ = forward_backward(axis_layer, [x], [np.zeros((1, 2, 2), np.float32)])
    for r in range(2):
        np.testing.assert_array_equal(ya[0, r], [j for _, j in caffe_argmax(x[0, r], 2)])


def test_argmax_top_shape_pads_to_the_input_axes() -> None:
    layer = make(layer_text("ArgMax", "x", "y"), [(2, 3, 4, 5)])
    assert layer.reshape([(2, 3, 4, 5)]) == [(2, 1, 1, 1)]
    with pytest.raises(CaffeError, match="top_k"):
        make(layer_text("ArgMax", "x", "y", "argmax_param { top_k: 61 }"), [(2, 3, 4, 5)])


# -- BatchReindex / Filter / Embed / Parameter / Silence -----------------

def test_batch_reindex_backward_accumulates_repeated_rows() -> None:
    x, idx = rand(4, 3), np.array([0, 3, 0, 3, 0], np.float32)
    layer = make(layer_text("BatchReindex", ["x", "i"], "y"), [x.shape, idx.shape])
    assert layer.reshape([x.shape, idx.shape]) == [(5, 3)]
    dy = rand(5, 3, seed=1)
    (y,), (dx, didx) = forward_backward(layer, [x, idx], [dy])
    np.testing.assert_array_equal(y, x[[0, 3, 0, 3, 0]])
    expected = np.zeros_like(x)
    for n, i in enumerate(idx.astype(int)):
        expected[i] += dy[n]
    np.testing.assert_allclose(dx, expected, rtol=1e-6)
    np.testing.assert_array_equal(didx, 0)
    with pytest.raises(CaffeError, match=r"out of range \[0, 4\).*indices span \[4, 4\]"):
        forward_backward(layer, [x, np.array([4], np.float32)], [dy[:1]])
    with pytest.raises(CaffeError, match="must be 1-D"):
        layer.reshape([x.shape, (5, 1)])


def test_filter_forward_rows_and_backward_zeroes_the_rest() -> None:
    x, other = rand(4, 3), rand(4, 2, 2, seed=1)
    sel = np.array([[1], [0], [2.5], [0]], np.float32)
    layer = make(layer_text("Filter", ["x", "o", "s"], ["y", "z"]),
                 [x.shape, other.shape, sel.shape])
    assert layer.reshape([x.shape, other.shape, sel.shape]) == [x.shape, other.shape]
    dy, dz = rand(2, 3, seed=2), rand(2, 2, 2, seed=3)
    (y, z), (dx, do, dsel) = forward_backward(layer, [x, other, sel], [dy, dz])
    np.testing.assert_array_equal(y, x[[0, 2]])
    np.testing.assert_array_equal(z, other[[0, 2]])
    np.testing.assert_array_equal(dx, np.stack([dy[0], 0 * dy[0], dy[1], 0 * dy[0]]))
    np.testing.assert_array_equal(do[[1, 3]], 0)
    np.testing.assert_array_equal(do[[0, 2]], dz)
    np.testing.assert_array_equal(dsel, 0)
    with pytest.raises(CaffeError, match="singletons"):
        layer.reshape([x.shape, other.shape, (4, 2)])
    with pytest.raises(CaffeError, match="same 0th dimension"):
        layer.reshape([(3, 3), other.shape, sel.shape])


def test_embed_weight_gradient_accumulates_per_index() -> None:
    x = np.array([[1, 4.7], [1, 0]], np.float32)  # 4.7 truncates to 4
    layer = make(layer_text("Embed", "x", "y", "embed_param { num_output: 3 input_dim: 5 "
                            "weight_filler { type: 'gaussian' std: 1 } "
                            "bias_filler { type: 'gaussian' std: 1 } }"), [x.shape])
    w, b = layer.blobs
    dy = rand(2, 2, 3, seed=1)
    y = layer(torch.tensor(x))[0]
    y.backward(torch.tensor(dy))
    rows = np.array([[1, 4], [1, 0]])
    np.testing.assert_allclose(y.detach().numpy(), w.detach().numpy()[rows] + b.detach().numpy(),
                               rtol=1e-6)
    expected = np.zeros((5, 3), np.float32)
    for n, i in enumerate(rows.reshape(-1)):
        expected[i] += dy.reshape(-1, 3)[n]
    np.testing.assert_allclose(w.grad.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(b.grad.numpy(), dy.reshape(-1, 3).sum(0), rtol=1e-6)
    with pytest.raises(CaffeError, match=r"indices in \[0, 5\).*got values in \[5, 5\]"):
        layer(torch.tensor([[5.0]]))


def test_parameter_top_is_the_blob() -> None:
    layer = make('name: "p" type: "Parameter" top: "y" parameter_param { shape { dim: 2 dim: 3 } }',
                 [])
    assert layer.reshape([]) == [(2, 3)]
    (y,) = layer()
    dy = rand(2, 3)
    y.backward(torch.tensor(dy))
    np.testing.assert_array_equal(layer.blobs[0].grad.numpy(), dy)
    np.testing.assert_array_equal(y.detach().numpy(), 0)


def test_silence_consumes_blobs_so_they_are_not_outputs() -> None:
    net = Net(parse_text("""
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "sl" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { axis: 1 slice_point: 1 } }
        layer { name: "s" type: "Silence" bottom: "a" }
    """, caffe_pb2.NetParameter()), TEST)
    assert net.output_names == ["b"]
    net.set_blob_data("x", torch.tensor(rand(2, 3)))
    net.forward()
    np.testing.assert_array_equal(net.blob_data("b").numpy(), rand(2, 3)[:, 1:])

"""Vision-layer rules the golden cases do not reach: pooling windows past the
input (kernel < stride), pads over half a kernel, FLOOR rounding, ties, the
mask top, STOCHASTIC pooling, N-D and axis convolutions, inputs smaller than a
kernel, Im2col, LRN's k, SPP's levels, Crop's offsets, GoogLeNet's pooling
shapes, and the parameter checks Caffe makes. Expected values come from numpy
loops restating Caffe's CPU code (pooling_layer.cpp, im2col.cpp,
deconv_layer.cpp, lrn_layer.cpp)."""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caffe_ft.errors import CaffeError
from caffe_ft.layers import vision
from caffe_ft.layers.base import Layer
from caffe_ft.net import Net
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text
from layer_helpers import forward_backward, make, rand

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
FLT_MAX = float(np.finfo(np.float32).max)
FORWARD = dict(rtol=1e-4, atol=1e-5)
BACKWARD = dict(rtol=1e-3, atol=1e-5)


# -- numpy restatements of Caffe's loops ---------------------------------

def caffe_pooled_size(n: int, k: int, s: int, p: int, ceil: bool, any_pad: bool) -> int:
    rnd = np.ceil if ceil else np.floor
    out = int(rnd(np.float32(n + 2 * p - k) / np.float32(s))) + 1
    if any_pad and (out - 1) * s >= n + p:
        out -= 1
    return out


def caffe_pool(x: np.ndarray, dy_seed: int, method: str, kernel: tuple[int, int],
               stride: tuple[int, int], pad: tuple[int, int], ceil: bool = True
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PoolingLayer::Forward_cpu / Backward_cpu for MAX or AVE: top, mask
    (MAX), the top diff used (random, from dy_seed) and the bottom diff."""
    num, channels, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    any_pad = bool(ph or pw)
    oh = caffe_pooled_size(height, kh, sh, ph, ceil, any_pad)
    ow = caffe_pooled_size(width, kw, sw, pw, ceil, any_pad)
    y = np.zeros((num, channels, oh, ow), np.float32)
    mask = np.full_like(y, -1)
    dy = rand(num, channels, oh, ow, seed=dy_seed)
    dx = np.zeros_like(x)
    for n, c, i, j in itertools.product(range(num), range(channels), range(oh), range(ow)):
        hstart, wstart = i * sh - ph, j * sw - pw
        if method == "MAX":
            hend, wend = min(hstart + kh, height), min(wstart + kw, width)
            hstart, wstart = max(hstart, 0), max(wstart, 0)
            best = np.float32(-FLT_MAX)
            for h in range(hstart, hend):
                for w in range(wstart, wend):
                    if x[n, c, h, w] > best:
                        best, mask[n, c, i, j] = x[n, c, h, w], h * width + w
            y[n, c, i, j] = best
            if mask[n, c, i, j] >= 0:
                h, w = divmod(int(mask[n, c, i, j]), width)
                dx[n, c, h, w] += dy[n, c, i, j]
        else:
            hend, wend = min(hstart + kh, height + ph), min(wstart + kw, width + pw)
            pool_size = (hend - hstart) * (wend - wstart)
            hstart, wstart = max(hstart, 0), max(wstart, 0)
            hend, wend = min(hend, height), min(wend, width)
            total = np.float32(0)
            for h in range(hstart, hend):
                for w in range(wstart, wend):
                    total += x[n, c, h, w]
                    dx[n, c, h, w] += dy[n, c, i, j] / np.float32(pool_size)
            with np.errstate(invalid="ignore", divide="ignore"):
                y[n, c, i, j] = total / np.float32(pool_size)
    return y, mask, dy, dx


def caffe_im2col(x: np.ndarray, kernel: Sequence[int], stride: Sequence[int],
                 pad: Sequence[int], dilation: Sequence[int]) -> np.ndarray:
    """im2col_nd_cpu for one (C, *spatial) image: rows (c, k...), columns
    the output positions; cells outside the input read 0. Output sizes use
    C++ truncating division."""
    spatial = x.shape[1:]
    out = [int((n + 2 * p - (d * (k - 1) + 1)) / s) + 1
           for n, k, s, p, d in zip(spatial, kernel, stride, pad, dilation)]
    cols = np.zeros((x.shape[0], *kernel, *out), np.float32)
    for c in range(x.shape[0]):
        for offs in itertools.product(*(range(k) for k in kernel)):
            for pos in itertools.product(*(range(o) for o in out)):
                src = [o * s - p + k * d for o, s, p, k, d in zip(pos, stride, pad, offs, dilation)]
                if all(0 <= v < n for v, n in zip(src, spatial)):
                    cols[(c, *offs, *pos)] = x[(c, *src)]
    return cols.reshape(-1, *out)


def caffe_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Sequence[int],
               pad: Sequence[int], dilation: Sequence[int], groups: int) -> np.ndarray:
    """Caffe's forward_cpu_gemm: per image and group, weights x im2col columns."""
    outs = []
    for image in x:
        cols = caffe_im2col(image, w.shape[2:], stride, pad, dilation)
        out_shape = cols.shape[1:]
        cols = cols.reshape(groups, -1, int(np.prod(out_shape)))
        wg = w.reshape(groups, w.shape[0] // groups, -1)
        y = np.einsum("gok,gkl->gol", wg, cols).reshape(w.shape[0], *out_shape)
        outs.append(y if b is None else y + b.reshape(-1, *(1,) * len(out_shape)))
    return np.stack(outs)


def caffe_deconv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Sequence[int],
                 pad: Sequence[int], dilation: Sequence[int], groups: int) -> np.ndarray:
    """DeconvolutionLayer's col2im scatter: each input cell adds its
    weighted kernel into the output at i*stride + k*dilation - pad."""
    num, channels, *spatial = x.shape
    kernel = w.shape[2:]
    per_out = w.shape[1]
    full = [(n - 1) * s + d * (k - 1) + 1 for n, s, k, d in zip(spatial, stride, kernel, dilation)]
    y = np.zeros((num, per_out * groups, *full), np.float32)
    cin = channels // groups
    for g in range(groups):
        for pos in itertools.product(*(range(n) for n in spatial)):
            contrib = np.einsum("nc,co...->no...", x[(slice(None), slice(g * cin, (g + 1) * cin),
                                                      *pos)], w[g * cin:(g + 1) * cin])
            window = tuple(slice(i * s, i * s + d * (k - 1) + 1, d)
                           for i, s, k, d in zip(pos, stride, kernel, dilation))
            y[(slice(None), slice(g * per_out, (g + 1) * per_out), *window)] += contrib
    crop = tuple(slice(p, f - p) for p, f in zip(pad, full))
    y = y[(slice(None), slice(None), *crop)]
    return y if b is None else y + b.reshape(-1, *(1,) * len(spatial))


def pool_text(params: str, tops: str = 'top: "y"') -> str:
    return f'name: "pool" type: "Pooling" bottom: "x" {tops} pooling_param {{ {params} }}'


# -- pooling ------------------------------------------------------------

POOL_CASES = [
    # (H, W, kernel, stride, pad, ceil)
    (7, 9, (3, 3), (2, 2), (0, 0), True),      # CEIL rounding
    (6, 6, (3, 3), (2, 2), (1, 1), True),      # pad: last window clipped
    (8, 8, (3, 3), (3, 3), (0, 0), True),      # overhang not counted by AVE
    (4, 4, (1, 1), (2, 2), (0, 0), True),      # kernel < stride: windows past the input
    (5, 7, (2, 3), (3, 2), (0, 0), True),      # kernel < stride, rectangular
    (7, 7, (3, 3), (2, 2), (2, 2), True),      # pad over half the kernel
    (9, 7, (3, 2), (2, 1), (1, 0), True),      # pad_h only: the clip applies to w too
    (6, 4, (3, 1), (2, 2), (1, 0), True),      # ... and drops w's window past the input
    (7, 8, (3, 3), (2, 2), (1, 1), False),     # FLOOR
    (5, 5, (2, 2), (2, 2), (0, 0), False),     # FLOOR drops the partial window
    (2, 3, (3, 3), (2, 2), (0, 0), True),      # kernel larger than the input
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("height, width, kernel, stride, pad, ceil", POOL_CASES)
def test_pooling_matches_caffe_loops(method: str, height: int, width: int,
                                     kernel: tuple[int, int], stride: tuple[int, int],
                                     pad: tuple[int, int], ceil: bool) -> None:
    # Small integers make ties common, so the first-maximum rule is exercised.
    x = np.random.default_rng(1).integers(-3, 4, (2, 2, height, width)).astype(np.float32)
    y_ref, mask_ref, dy, dx_ref = caffe_pool(x, 7, method, kernel, stride, pad, ceil)
    params = (f"pool: {method} kernel_h: {kernel[0]} kernel_w: {kernel[1]} stride_h: {stride[0]} "
              f"stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]} "
              f"round_mode: {'CEIL' if ceil else 'FLOOR'}")
    for tops in (['y'], ['y', 'mask']) if method == "MAX" else (['y'],):
        layer = make(pool_text(params, " ".join(f'top: "{t}"' for t in tops)), [x.shape])
        assert layer.reshape([x.shape]) == [y_ref.shape] * len(tops)
        outs, (dx,) = forward_backward(layer, [x], [dy, np.zeros_like(dy)])
        np.testing.assert_allclose(outs[0], y_ref, **FORWARD)
        np.testing.assert_allclose(dx, dx_ref, **BACKWARD)
        if len(tops) == 2:
            np.testing.assert_array_equal(outs[1], mask_ref)


def test_pooling_windows_past_the_input_keep_caffes_values() -> None:
    # 4 rows, kernel 1, stride 2: CEIL gives 3 rows; the third window starts at
    # row 4, outside the input. Caffe's MAX leaves it at -FLT_MAX with mask -1,
    # and its AVE divides an empty sum by a pool size of 0.
    x = rand(1, 1, 4, 5)
    layer = make(pool_text("pool: MAX kernel_size: 1 stride: 2"), [x.shape])
    (y,) = layer(torch.tensor(x))
    assert tuple(y.shape) == (1, 1, 3, 3)
    np.testing.assert_array_equal(y[0, 0, 2].numpy(), np.full(3, -FLT_MAX, np.float32))
    np.testing.assert_array_equal(y[0, 0, :2].numpy(), x[0, 0, ::2, ::2][:2])
    ave = make(pool_text("pool: AVE kernel_size: 1 stride: 2"), [x.shape])
    (y,) = ave(torch.tensor(x))
    assert np.isnan(y[0, 0, 2].numpy()).all()


def test_googlenet_pooling_shapes() -> None:
    """GoogLeNet's 3x3 stride-2 max pools take 112 to 56, 28, 14 and 7 only
    with Caffe's CEIL rounding; its auxiliary 5x5 stride-3 AVE pool takes 14
    to 4 and pool5's 7x7 AVE takes 7 to 1."""
    net_text = ('name: "g" layer { name: "x" type: "Input" top: "p0" '
                'input_param { shape { dim: 1 dim: 2 dim: 112 dim: 112 } } }\n')
    for i in range(1, 5):
        net_text += (f'layer {{ name: "pool{i}" type: "Pooling" bottom: "p{i - 1}" top: "p{i}" '
                     f'pooling_param {{ pool: MAX kernel_size: 3 stride: 2 }} }}\n')
    net_text += ('layer { name: "pool5" type: "Pooling" bottom: "p4" top: "p5" '
                 'pooling_param { pool: AVE kernel_size: 7 stride: 1 } }\n'
                 'layer { name: "aux" type: "Pooling" bottom: "p3" top: "aux" '
                 'pooling_param { pool: AVE kernel_size: 5 stride: 3 } }\n')
    net = Net(parse_text(net_text, caffe_pb2.NetParameter()), TEST)
    sizes = [net.blob_shapes[f"p{i}"][2:] for i in range(6)]
    assert sizes == [(112, 112), (56, 56), (28, 28), (14, 14), (7, 7), (1, 1)]
    assert net.blob_shapes["aux"] == (1, 2, 4, 4)
    net.set_blob_data("p0", torch.tensor(rand(1, 2, 112, 112)))
    net.forward()
    np.testing.assert_allclose(net.blob_data("p5").numpy(),
                               net.blob_data("p4").numpy().mean(axis=(2, 3), keepdims=True), **FORWARD)


def test_global_pooling_follows_the_input_size() -> None:
    layer = make(pool_text("pool: MAX global_pooling: true"), [(2, 3, 4, 5)])
    assert layer.reshape([(2, 3, 6, 7)]) == [(2, 3, 1, 1)]
    x = rand(2, 3, 6, 7)
    (y,) = layer(torch.tensor(x))
    np.testing.assert_array_equal(y.numpy(), x.max(axis=(2, 3), keepdims=True))


def stochastic(phase: int, params: str = "kernel_size: 2 stride: 2") -> Layer:
    return make(pool_text(f"pool: STOCHASTIC {params}"), [(1, 1, 4, 4)], phase)


def test_stochastic_pooling_test_phase_is_activation_weighted_mean() -> None:
    x = np.abs(rand(2, 3, 5, 5))
    x[0, 0, :2, :2] = 0          # Σx = 0 gives 0
    x[0, 1, :2, :2] = -1         # and so does Σx < 0
    layer = stochastic(TEST)
    assert layer.reshape([x.shape]) == [(2, 3, 3, 3)]
    (y,) = layer(torch.tensor(x))
    expected = np.zeros((2, 3, 3, 3), np.float32)
    for n, c, i, j in itertools.product(range(2), range(3), range(3), range(3)):
        cells = x[n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
        expected[n, c, i, j] = (cells ** 2).sum() / cells.sum() if cells.sum() > 0 else 0
    np.testing.assert_allclose(y.numpy(), expected, **FORWARD)


def test_stochastic_pooling_train_samples_in_proportion_to_activation() -> None:
    # 4000 copies of one 2x2 window [[0, 1], [2, 5]]: cell probabilities 0, 1/8, 2/8, 5/8.
    window = np.array([[0, 1], [2, 5]], np.float32)
    x = np.tile(window, (4000, 1, 1, 1))
    layer = stochastic(TRAIN)
    xt = torch.tensor(x, requires_grad=True)
    (y,) = layer(xt)
    y.sum().backward()
    grad = xt.grad.numpy()
    # The gradient reaches exactly the sampled cell, which holds the output value.
    assert (grad.reshape(4000, 4).sum(axis=1) == 1).all()
    np.testing.assert_array_equal((grad * x).reshape(4000, 4).sum(axis=1),
                                  y.detach().numpy().ravel())
    counts = grad.reshape(4000, 4).sum(axis=0)
    probs = window.ravel() / window.sum()
    assert counts[0] == 0  # a zero activation is never picked
    spread = np.sqrt(4000 * probs * (1 - probs))
    assert (np.abs(counts - 4000 * probs) <= 5 * spread + 1e-9).all(), counts


def test_stochastic_pooling_rejects_padding() -> None:
    with pytest.raises(CaffeError, match="'pool'.*Padding implemented only"):
        stochastic(TRAIN, "kernel_size: 3 stride: 2 pad: 1")


# -- convolution ----------------------------------------------------------

def conv_text(kind: str, params: str, bottoms: Sequence[str] = ("x",),
              tops: Sequence[str] = ("y",)) -> str:
    wires = " ".join([f'bottom: "{b}"' for b in bottoms] + [f'top: "{t}"' for t in tops])
    return (f'name: "conv" type: "{kind}" {wires} convolution_param {{ {params} '
            f'weight_filler {{ type: "gaussian" std: 0.5 }} '
            f'bias_filler {{ type: "gaussian" std: 0.5 }} }}')


def params_of(layer: Layer) -> tuple[np.ndarray, np.ndarray | None]:
    blobs = [b.detach().numpy() for b in layer.blobs]
    return blobs[0], (blobs[1] if len(blobs) > 1 else None)


CONV_CASES = [
    # (input shape, params, stride, pad, dilation, groups)
    ((2, 4, 7, 6), "num_output: 6 group: 2 kernel_size: 3 stride: 2 pad: 1",
     (2, 2), (1, 1), (1, 1), 2),
    ((1, 3, 9, 8), "num_output: 2 kernel_h: 3 kernel_w: 2 dilation: 2 pad_h: 2 pad_w: 0 "
     "stride_w: 3 stride_h: 1", (1, 3), (2, 0), (2, 2), 1),
    ((2, 2, 9), "num_output: 3 kernel_size: 4 stride: 3 pad: 2", (3,), (2,), (1,), 1),
    ((1, 2, 5, 4, 6), "num_output: 2 kernel_size: 3 kernel_size: 2 kernel_size: 3 stride: 2 "
     "pad: 1 pad: 0 pad: 1", (2, 2, 2), (1, 0, 1), (1, 1, 1), 1),
    # 4 spatial axes: no torch kernel, Caffe's im2col path.
    ((1, 2, 4, 3, 4, 3), "num_output: 2 kernel_size: 2 pad: 1 stride: 2 dilation: 1",
     (2, 2, 2, 2), (1, 1, 1, 1), (1, 1, 1, 1), 1),
    # input 2 wide, kernel 3, stride 2: C++ truncation still gives 1 output.
    ((1, 1, 2, 2), "num_output: 1 kernel_size: 3 stride: 2", (2, 2), (0, 0), (1, 1), 1),
]


@pytest.mark.parametrize("shape, params, stride, pad, dilation, groups", CONV_CASES)
def test_convolution_matches_caffe_im2col(shape: tuple[int, ...], params: str,
                                          stride: tuple[int, ...], pad: tuple[int, ...],
                                          dilation: tuple[int, ...], groups: int) -> None:
    layer = make(conv_text("Convolution", params), [shape])
    w, b = params_of(layer)
    x = rand(*shape)
    expected = caffe_conv(x, w, b, stride, pad, dilation, groups)
    assert layer.reshape([shape]) == [expected.shape]
    (y,) = layer(torch.tensor(x))
    np.testing.assert_allclose(y.detach().numpy(), expected, **FORWARD)


DECONV_CASES = [
    ((2, 4, 3, 4), "num_output: 6 group: 2 kernel_size: 3 stride: 2 pad: 1 dilation: 2",
     (2, 2), (1, 1), (2, 2), 2),
    ((1, 2, 4, 3), "num_output: 3 kernel_h: 4 kernel_w: 3 stride_h: 2 stride_w: 3 pad_h: 3 "
     "pad_w: 0", (2, 3), (3, 0), (1, 1), 1),
    ((1, 2, 3, 2, 2, 3), "num_output: 2 kernel_size: 2 stride: 2 pad: 1 pad: 0 pad: 0 pad: 1",
     (2, 2, 2, 2), (1, 0, 0, 1), (1, 1, 1, 1), 1),
]


@pytest.mark.parametrize("shape, params, stride, pad, dilation, groups", DECONV_CASES)
def test_deconvolution_matches_caffe_col2im(shape: tuple[int, ...], params: str,
                                            stride: tuple[int, ...], pad: tuple[int, ...],
                                            dilation: tuple[int, ...], groups: int) -> None:
    layer = make(conv_text("Deconvolution", params), [shape])
    w, b = params_of(layer)
    assert w.shape[:2] == (shape[1], layer.param.convolution_param.num_output // groups)
    x = rand(*shape)
    expected = caffe_deconv(x, w, b, stride, pad, dilation, groups)
    assert layer.reshape([shape]) == [expected.shape]
    (y,) = layer(torch.tensor(x))
    np.testing.assert_allclose(y.detach().numpy(), expected, **FORWARD)


def test_generic_paths_match_torch_kernels_with_gradients() -> None:
    """The im2col paths used for 0 or >3 spatial axes agree with torch's
    conv2d / conv_transpose2d, gradients included."""
    x0, w0, b0 = rand(2, 4, 7, 6), rand(6, 2, 3, 2, seed=1), rand(6, seed=2)
    geometry = vision.ConvGeometry((3, 2), (2, 2), (1, 0), (2, 1))
    dy = rand(2, 6, *geometry.conv_output((7, 6)), seed=3)
    results = []
    for generic in (False, True):
        x, w, b = (torch.tensor(a, requires_grad=True) for a in (x0, w0, b0))
        if generic:
            right = geometry.right_pad((7, 6))
            y = vision._conv_generic(x, w, b, geometry.stride, geometry.pad, right,
                                     geometry.dilation, 2)
        else:
            y = F.conv2d(x, w, b, geometry.stride, geometry.pad, geometry.dilation, 2)
        y.backward(torch.tensor(dy))
        results.append([t.detach().numpy() for t in (y, x.grad, w.grad, b.grad)])
    for torch_value, generic_value in zip(*results):
        np.testing.assert_allclose(generic_value, torch_value, **BACKWARD)
    xd = torch.tensor(rand(1, 4, 3, 4))
    wd = torch.tensor(rand(4, 3, 4, 3, seed=4))
    geometry = vision.ConvGeometry((4, 3), (3, 2), (2, 1), (1, 2))
    np.testing.assert_allclose(
        vision._deconv_generic(xd, wd, None, geometry, 2).numpy(),
        F.conv_transpose2d(xd, wd, None, (3, 2), (2, 1), 0, 2, (1, 2)).numpy(), **FORWARD)


def test_convolution_axis_and_zero_spatial_axes() -> None:
    # axis 2: axes 0 and 1 are both batch axes.
    layer = make(conv_text("Convolution", "num_output: 3 kernel_size: 2 axis: 2"),
                 [(2, 3, 4, 5, 5)])
    x = rand(2, 3, 4, 5, 5)
    w, b = params_of(layer)
    (y,) = layer(torch.tensor(x))
    expected = caffe_conv(x.reshape(6, 4, 5, 5), w, b, (1, 1), (0, 0), (1, 1), 1)
    np.testing.assert_allclose(y.detach().numpy(), expected.reshape(2, 3, 3, 4, 4), **FORWARD)
    # The last axis as channels: no spatial axes, a product with the weights.
    layer = make(conv_text("Convolution", "num_output: 4 group: 2 kernel_size: 1 axis: -1"),
                 [(3, 2, 6)])
    x = rand(3, 2, 6)
    w, b = params_of(layer)
    assert w.shape == (4, 3)
    (y,) = layer(torch.tensor(x))
    expected = np.concatenate([x[..., :3] @ w[:2].T, x[..., 3:] @ w[2:].T], axis=-1) + b
    np.testing.assert_allclose(y.detach().numpy(), expected, **FORWARD)


def test_convolution_bottoms_share_weights() -> None:
    layer = make(conv_text("Convolution", "num_output: 2 kernel_size: 3", ("a", "b"), ("ya", "yb")),
                 [(1, 2, 5, 5), (1, 2, 5, 5)])
    assert layer.reshape([(1, 2, 5, 5)] * 2) == [(1, 2, 3, 3)] * 2
    a, b = rand(1, 2, 5, 5), rand(1, 2, 5, 5, seed=1)
    ya, yb = layer(torch.tensor(a), torch.tensor(b))
    (ya + yb).sum().backward()
    w, bias = params_of(layer)
    np.testing.assert_allclose(ya.detach().numpy(),
                               caffe_conv(a, w, bias, (1, 1), (0, 0), (1, 1), 1), **FORWARD)
    np.testing.assert_allclose(yb.detach().numpy(),
                               caffe_conv(b, w, bias, (1, 1), (0, 0), (1, 1), 1), **FORWARD)
    np.testing.assert_allclose(layer.blobs[1].grad.numpy(), np.full(2, 18.0), **BACKWARD)
    with pytest.raises(CaffeError, match="'conv'.*shape mismatch"):
        layer.reshape([(1, 2, 5, 5), (1, 2, 5, 6)])


def test_convolution_inline_blobs() -> None:
    weights = rand(2, 1, 2, 2)
    values = " ".join(f"data: {v}" for v in weights.ravel())
    text = ('name: "conv" type: "Convolution" bottom: "x" top: "y" '
            'convolution_param { num_output: 2 kernel_size: 2 bias_term: false } '
            f'blobs {{ shape {{ dim: 2 dim: 1 dim: 2 dim: 2 }} {values} }}')
    layer = make(text, [(1, 1, 3, 3)])
    np.testing.assert_array_equal(layer.blobs[0].detach().numpy(), weights)
    with pytest.raises(CaffeError, match="'conv'.*Incorrect weight shape"):
        make(text.replace("dim: 2 dim: 1 dim: 2 dim: 2", "dim: 2 dim: 1 dim: 4"), [(1, 1, 3, 3)])
    with pytest.raises(CaffeError, match="'conv'.*Incorrect number of weight blobs"):
        make(text.replace("bias_term: false", ""), [(1, 1, 3, 3)])


def test_im2col_matches_caffe() -> None:
    for shape, params, kernel, stride, pad, dilation in [
        ((2, 3, 6, 7), "kernel_h: 3 kernel_w: 2 stride: 2 pad: 1 dilation: 2",
         (3, 2), (2, 2), (1, 1), (2, 2)),
        ((1, 2, 4, 5, 3), "kernel_size: 2 stride: 1 stride: 2 stride: 1 pad: 1",
         (2, 2, 2), (1, 2, 1), (1, 1, 1), (1, 1, 1)),
    ]:
        layer = make(f'name: "im" type: "Im2col" bottom: "x" top: "y" '
                     f'convolution_param {{ {params} }}', [shape])
        x = rand(*shape)
        expected = np.stack([caffe_im2col(image, kernel, stride, pad, dilation) for image in x])
        assert layer.reshape([shape]) == [expected.shape]
        (y,) = layer(torch.tensor(x))
        np.testing.assert_array_equal(y.numpy(), expected)


# -- LRN, SPP, Crop ---------------------------------------------------------

def caffe_lrn(x: np.ndarray, size: int, alpha: float, beta: float, k: float,
              within: bool) -> np.ndarray:
    half = (size - 1) // 2
    squares = np.pad(x.astype(np.float64) ** 2, ((0, 0), (half, half), (0, 0), (0, 0)) if not within
                     else ((0, 0), (0, 0), (half, half), (half, half)))
    scale = np.zeros_like(x, np.float64)
    num, channels, height, width = x.shape
    if within:
        for h, w in itertools.product(range(height), range(width)):
            scale[:, :, h, w] = squares[:, :, h:h + size, w:w + size].sum(axis=(2, 3))
        scale = 1 + alpha / size ** 2 * scale
    else:
        for c in range(channels):
            scale[:, c] = squares[:, c:c + size].sum(axis=1)
        scale = k + alpha / size * scale
    return (x * scale ** -beta).astype(np.float32)


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_matches_caffe(region: str) -> None:
    # k = 3 changes ACROSS_CHANNELS and is ignored by WITHIN_CHANNEL.
    layer = make(f'name: "lrn" type: "LRN" bottom: "x" top: "y" lrn_param {{ local_size: 3 '
                 f'alpha: 0.7 beta: 0.6 k: 3 norm_region: {region} }}', [(2, 5, 4, 6)])
    x = rand(2, 5, 4, 6)
    (y,) = layer(torch.tensor(x))
    np.testing.assert_allclose(y.numpy(), caffe_lrn(x, 3, 0.7, 0.6, 3, region == "WITHIN_CHANNEL"),
                               **FORWARD)


@pytest.mark.parametrize("height, width, levels, method", [(9, 9, 3, "MAX"), (13, 11, 3, "AVE"),
                                                            (6, 7, 1, "MAX")])
def test_spp_pools_each_level(height: int, width: int, levels: int, method: str) -> None:
    x = rand(2, 3, height, width)
    layer = make(f'name: "spp" type: "SPP" bottom: "x" top: "y" '
                 f'spp_param {{ pyramid_height: {levels} pool: {method} }}', [x.shape])
    parts = []
    for level in range(levels):
        bins = 2 ** level
        kernel = (-(-height // bins), -(-width // bins))
        pad = ((kernel[0] * bins - height + 1) // 2, (kernel[1] * bins - width + 1) // 2)
        y, _, _, _ = caffe_pool(x, 0, method, kernel, kernel, pad)
        parts.append(y)
    expected = parts[0] if levels == 1 else np.concatenate([p.reshape(2, -1) for p in parts], 1)
    assert layer.reshape([x.shape]) == [expected.shape]
    (y,) = layer(torch.tensor(x))
    np.testing.assert_allclose(y.numpy(), expected, **FORWARD)


def test_spp_level_that_needs_pad_as_large_as_its_kernel_fails() -> None:
    # 5 rows in 4 bins: kernel 2, pad (2*4 - 5 + 1) / 2 = 2, which Pooling refuses.
    with pytest.raises(CaffeError, match="'spp'.*pad"):
        make('name: "spp" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 }',
             [(1, 1, 5, 5)])


def test_crop_offsets_per_axis_and_gradient() -> None:
    layer = make('name: "crop" type: "Crop" bottom: "x" bottom: "ref" top: "y" '
                 'crop_param { axis: 1 offset: 1 offset: 2 offset: 0 }',
                 [(2, 4, 6, 5), (1, 2, 3, 5)])
    assert layer.reshape([(2, 4, 6, 5), (1, 2, 3, 5)]) == [(2, 2, 3, 5)]
    x, ref = rand(2, 4, 6, 5), rand(1, 2, 3, 5)
    dy = rand(2, 2, 3, 5, seed=1)
    (y,), (dx, dref) = forward_backward(layer, [x, ref], [dy])
    np.testing.assert_array_equal(y, x[:, 1:3, 2:5, 0:5])
    expected = np.zeros_like(x)
    expected[:, 1:3, 2:5, 0:5] = dy
    np.testing.assert_array_equal(dx, expected)
    np.testing.assert_array_equal(dref, np.zeros_like(ref))
    with pytest.raises(CaffeError, match="'crop'.*out-of-bounds"):
        layer.reshape([(2, 4, 6, 5), (1, 2, 5, 5)])


# -- parameter checks -----------------------------------------------------

BAD = [
    (conv_text("Convolution", "num_output: 4 group: 3 kernel_size: 3"), [(1, 6, 5, 5)],
     "Number of output should be multiples of group"),
    (conv_text("Convolution", "num_output: 4 group: 4 kernel_size: 3"), [(1, 6, 5, 5)],
     "multiple of group"),
    (conv_text("Convolution", "num_output: 4"), [(1, 3, 5, 5)], "kernel_size must be specified"),
    (conv_text("Convolution", "num_output: 4 kernel_size: 3 kernel_h: 3"), [(1, 3, 5, 5)],
     "not both"),
    (conv_text("Convolution", "num_output: 4 kernel_h: 3 kernel_w: 3"), [(1, 3, 5, 5, 5)],
     "only be used for 2D"),
    (conv_text("Convolution", "num_output: 4 kernel_size: 3 stride: 0"), [(1, 3, 5, 5)],
     "Stride dimensions must be nonzero"),
    (conv_text("Convolution", "num_output: 4 kernel_size: 3 pad: 1 pad: 1 pad: 1"), [(1, 3, 5, 5)],
     "pad must be specified once"),
    (conv_text("Convolution", "kernel_size: 3"), [(1, 3, 5, 5)], "num_output must be positive"),
    (conv_text("Convolution", "num_output: 2 kernel_size: 3", ("a", "b"), ("y",)),
     [(1, 3, 5, 5)] * 2, "one top per bottom"),
    (conv_text("Convolution", "num_output: 2 kernel_size: 7"), [(1, 3, 4, 5)],
     "output would be empty"),
    (pool_text("pool: MAX"), [(1, 1, 5, 5)], "kernel_size OR kernel_h and kernel_w"),
    (pool_text("pool: MAX kernel_h: 3"), [(1, 1, 5, 5)], "kernel_size OR kernel_h and kernel_w"),
    (pool_text("pool: MAX kernel_size: 3 pad_h: 1"), [(1, 1, 5, 5)],
     "pad is pad OR pad_h and pad_w"),
    (pool_text("pool: MAX kernel_size: 3 pad: 3"), [(1, 1, 5, 5)],
     "must be smaller than the kernel"),
    (pool_text("pool: AVE global_pooling: true kernel_size: 2"), [(1, 1, 5, 5)],
     "Filter size cannot specified"),
    (pool_text("pool: AVE global_pooling: true stride: 2"), [(1, 1, 5, 5)],
     "only pad = 0 and stride = 1"),
    (pool_text("pool: AVE kernel_size: 2", 'top: "y" top: "m"'), [(1, 1, 5, 5)],
     "only MAX pooling has a 2nd"),
    (pool_text("pool: MAX kernel_size: 2"), [(5, 5)], "Input must have 4 axes"),
    ('name: "lrn" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 4 }', [(1, 3, 5, 5)],
     "odd values for local_size"),
    ('name: "spp" type: "SPP" bottom: "x" top: "y" spp_param { pool: MAX }', [(1, 3, 5, 5)],
     "pyramid_height must be at least 1"),
    ('name: "crop" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { offset: 1 offset: 1 '
     'offset: 1 }', [(1, 3, 5, 5), (1, 3, 2, 2)], "number of offset values"),
]


@pytest.mark.parametrize("text, shapes, message", BAD)
def test_bad_params_raise_caffe_error_naming_the_layer(text: str, shapes: list[tuple[int, ...]],
                                                       message: str) -> None:
    name = parse_text(text, caffe_pb2.LayerParameter()).name
    with pytest.raises(CaffeError, match=f"'{name}'.*{message}"):
        layer = make(text, shapes)
        layer.reshape(shapes)

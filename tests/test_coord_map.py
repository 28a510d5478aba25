"""caffe.coord_map (caffe_ft.pycaffe.coord_map): coordinate maps checked
against receptive-field geometry, and crop() checked on a net that runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2
from caffe_ft.pycaffe.coord_map import (AxisMismatchException, compose, coord_map,
                                        coord_map_from_to, crop, inverse)
from caffe_ft.pycaffe.net import Net
from caffe_ft.pycaffe.net_spec import NetSpec, layers as L, params as P


@pytest.mark.parametrize("kernel, stride, pad, dilation", [
    (3, 1, 0, 1), (5, 2, 1, 1), (4, 2, 3, 1), (3, 1, 2, 2), (7, 3, 100, 1)])
def test_conv_map_sends_an_output_to_its_receptive_field_center(
        kernel: int, stride: int, pad: int, dilation: int) -> None:
    fn = L.Convolution(L.Input(), kernel_size=kernel, stride=stride, pad=pad,
                       dilation=dilation, num_output=1).fn
    ax, a, b = inverse(coord_map(fn))  # output → input
    assert ax == 1
    for i in range(5):
        taps = [i * stride - pad + j * dilation for j in range(kernel)]
        assert a * i + b == pytest.approx(np.mean(taps))


def test_pooling_maps_as_a_convolution_and_deconvolution_undoes_it() -> None:
    data = L.Input()
    pool = L.Pooling(data, pool=P.Pooling.MAX, kernel_size=4, stride=2, pad=1)
    conv = L.Convolution(data, kernel_size=4, stride=2, pad=1, num_output=1)
    assert coord_map(pool.fn) == coord_map(conv.fn)
    deconv = L.Deconvolution(conv, convolution_param=dict(kernel_size=4, stride=2, pad=1))
    ax, a, b = compose(coord_map(conv.fn), coord_map(deconv.fn))
    assert (ax, float(a[0]), float(b[0])) == (1, 1.0, 0.0)


def test_pointwise_layers_and_crops_of_crops() -> None:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    n.conv = L.Convolution(n.data, kernel_size=3, pad=5, num_output=1)
    n.relu = L.ReLU(n.conv)
    # pad 5 around a 3x3 kernel: data x is relu x - 4
    _, a, b = coord_map_from_to(n.relu, n.data)
    assert (float(a[0]), float(b[0])) == (1.0, -4.0)
    n.crop = L.Crop(n.relu, n.data, axis=2, offset=3)
    _, a, b = coord_map_from_to(n.crop, n.data)
    assert (float(a[0]), float(b[0])) == (1.0, -1.0)


def test_crop_aligns_a_padded_output_with_its_input(tmp_path: Path) -> None:
    """A 1x1 convolution with pad 3 and weight 1 puts the input at offset 3
    of a larger output; crop() must cut exactly the input back out."""
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 6, 7]))
    n.conv = L.Convolution(n.data, kernel_size=1, pad=3, num_output=1,
                           weight_filler=dict(type="constant", value=1))
    n.score = crop(n.conv, n.data)
    proto = n.to_proto()
    assert proto.layer[-1].crop_param.axis == 2
    assert list(proto.layer[-1].crop_param.offset) == [3]
    path = tmp_path / "crop.prototxt"
    path.write_text(str(proto))
    net = Net(str(path), caffe_pb2.TEST)
    image = np.random.default_rng(0).standard_normal((1, 1, 6, 7)).astype(np.float32)
    net.blobs["data"].data[...] = image
    net.forward()
    np.testing.assert_array_equal(net.blobs["score"].data, image)


def test_crop_refuses_what_no_crop_can_align() -> None:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    n.pool = L.Pooling(n.data, kernel_size=3, stride=3)
    n.up = L.Deconvolution(n.pool, kernel_size=4, stride=2, num_output=1)
    with pytest.raises(AssertionError, match="scale mismatch"):
        crop(n.up, n.data)
    n.small = L.Convolution(n.data, kernel_size=3, num_output=1)
    with pytest.raises(AssertionError, match="negative offset") as err:
        crop(n.small, n.data)
    assert isinstance(err.value, CaffeError)
    n.fc = L.InnerProduct(n.data, num_output=1)
    with pytest.raises(RuntimeError, match="connected by spatial layers"):
        coord_map_from_to(n.fc, n.data)


def test_legacy_h_w_params_and_mismatched_axes_are_errors() -> None:
    legacy = L.Convolution(L.Input(), kernel_h=3, kernel_w=3, num_output=1)
    with pytest.raises(CaffeError, match="legacy _h/_w"):
        coord_map(legacy.fn)
    with pytest.raises(AxisMismatchException):
        compose((1, 1, 0), (2, 1, 0))

"""Caffe's fillers (include/caffe/filler.hpp): each distribution's parameters,
checked statistically on large blobs (5-sigma bounds, torch's seeded RNG),
the fan_in / fan_out / AVERAGE rules of xavier and msra, bilinear's exact
values against a loop restating filler.hpp, and the errors Caffe raises."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from caffe_ft.errors import CaffeError
from caffe_ft.fillers import FILLERS, fill
from caffe_ft.proto import caffe_pb2

FillerParameter = caffe_pb2.FillerParameter


def filled(shape: tuple[int, ...], **fields: object) -> np.ndarray:
    return fill(torch.empty(shape), FillerParameter(**fields)).numpy().astype(np.float64)


def assert_mean_std(values: np.ndarray, mean: float, std: float) -> None:
    """Sample mean and std within 5 standard errors of the distribution's."""
    n = values.size
    assert abs(values.mean() - mean) <= 5 * std / math.sqrt(n), (values.mean(), mean)
    assert abs(values.std() - std) <= 5 * std / math.sqrt(2 * n), (values.std(), std)


def test_constant_default_is_zero_and_value_is_used() -> None:
    np.testing.assert_array_equal(filled((3, 4)), np.zeros((3, 4)))
    np.testing.assert_array_equal(filled((3, 4), type="constant", value=2.5), np.full((3, 4), 2.5))


def test_uniform_covers_min_max() -> None:
    values = filled((200, 500), type="uniform", min=-2.0, max=3.0)
    assert values.min() >= -2.0 and values.max() <= 3.0
    assert values.min() < -1.99 and values.max() > 2.99
    assert_mean_std(values, 0.5, 5.0 / math.sqrt(12))
    # Defaults: U[0, 1].
    default = filled((100, 100), type="uniform")
    assert default.min() >= 0 and default.max() <= 1
    assert_mean_std(default, 0.5, 1 / math.sqrt(12))


def test_gaussian_mean_and_std() -> None:
    assert_mean_std(filled((200, 500), type="gaussian", mean=1.0, std=0.5), 1.0, 0.5)


def test_sparse_gaussian_keeps_sparse_over_num_outputs() -> None:
    values = filled((20, 5000), type="gaussian", std=1.0, sparse=5)
    keep = 5 / 20  # Caffe's non-zero probability: sparse / shape(0)
    nonzero = values != 0
    n = values.size
    assert abs(nonzero.mean() - keep) <= 5 * math.sqrt(keep * (1 - keep) / n)
    assert_mean_std(values[nonzero], 0.0, 1.0)
    # sparse 0 zeroes everything; sparse == shape(0) keeps everything.
    assert not filled((4, 50), type="gaussian", std=1.0, sparse=0).any()
    assert filled((4, 50), type="gaussian", std=1.0, sparse=4).all()


def test_positive_unitball_rows_sum_to_one() -> None:
    values = filled((7, 3, 4, 5), type="positive_unitball")
    assert (values >= 0).all()
    np.testing.assert_allclose(values.reshape(7, -1).sum(axis=1), np.ones(7), rtol=1e-6)


# A conv weight (num_output, channels, kh, kw): fan_in = count / shape(0) and
# fan_out = count / shape(1), restated from filler.hpp.
CONV_SHAPE = (64, 32, 3, 3)
FAN_IN = 32 * 3 * 3
FAN_OUT = 64 * 3 * 3


@pytest.mark.parametrize("norm, n", [("FAN_IN", FAN_IN), ("FAN_OUT", FAN_OUT),
                                     ("AVERAGE", (FAN_IN + FAN_OUT) / 2)])
def test_xavier_is_uniform_within_sqrt_3_over_n(norm: str, n: float) -> None:
    values = filled(CONV_SHAPE, type="xavier", variance_norm=getattr(FillerParameter, norm))
    bound = math.sqrt(3 / n)
    assert np.abs(values).max() <= bound * (1 + 1e-6)
    assert np.abs(values).max() > 0.99 * bound
    assert_mean_std(values, 0.0, bound / math.sqrt(3))


@pytest.mark.parametrize("norm, n", [("FAN_IN", FAN_IN), ("FAN_OUT", FAN_OUT),
                                     ("AVERAGE", (FAN_IN + FAN_OUT) / 2)])
def test_msra_is_gaussian_with_std_sqrt_2_over_n(norm: str, n: float) -> None:
    values = filled(CONV_SHAPE, type="msra", variance_norm=getattr(FillerParameter, norm))
    assert_mean_std(values, 0.0, math.sqrt(2 / n))


def test_fans_of_a_one_axis_blob() -> None:
    # One axis: fan_in = count / shape(0) = 1 and fan_out = count.
    assert_mean_std(filled((20000,), type="msra"), 0.0, math.sqrt(2 / 1))
    values = filled((20000,), type="xavier", variance_norm=FillerParameter.FAN_OUT)
    assert np.abs(values).max() <= math.sqrt(3 / 20000) * (1 + 1e-6)


@pytest.mark.parametrize("size", range(1, 9))
def test_bilinear_values_match_filler_hpp(size: int) -> None:
    shape = (2, 3, size, size)
    values = fill(torch.empty(shape), FillerParameter(type="bilinear")).numpy()
    # BilinearFiller::Fill, element by element in float32.
    f = math.ceil(size / 2.0)
    c = np.float32((size - 1) / (2.0 * f))
    expected = np.empty(int(np.prod(shape)), np.float32)
    for i in range(expected.size):
        x = np.float32(i % size)
        y = np.float32((i // size) % size)
        expected[i] = ((np.float32(1) - abs(x / np.float32(f) - c))
                       * (np.float32(1) - abs(y / np.float32(f) - c)))
    np.testing.assert_allclose(values, expected.reshape(shape), rtol=1e-6, atol=1e-7)


def test_bilinear_kernel_upsamples_by_its_factor() -> None:
    # Factor 2: kernel 4, stride 2, pad 1 interpolates linearly inside the image.
    weight = fill(torch.empty(1, 1, 4, 4), FillerParameter(type="bilinear"))
    ramp = torch.arange(6, dtype=torch.float32).expand(1, 1, 6, 6)
    up = torch.nn.functional.conv_transpose2d(ramp, weight, stride=2, padding=1)
    row = up[0, 0, 5, 1:-1].numpy()
    np.testing.assert_allclose(np.diff(row), np.full(row.size - 1, 0.5), rtol=1e-6)


@pytest.mark.parametrize("fields, message", [
    (dict(type="orthogonal"), "Unknown filler type: orthogonal"),
    (dict(type="xavier", sparse=3), "does not support sparse"),
    (dict(type="constant", sparse=0), "does not support sparse"),
    (dict(type="gaussian", std=0.0), "std > 0"),
    (dict(type="gaussian", std=1.0, sparse=-2), "sparse >= -1"),
    (dict(type="gaussian", std=1.0, sparse=9), "exceeds"),
    (dict(type="uniform", min=1.0, max=0.0), "min <= max"),
    (dict(type="uniform", min=0.0, max=float("nan")), "finite min <= max"),
    (dict(type="uniform", min=float("-inf"), max=0.0), "finite min <= max"),
    (dict(type="gaussian", std=float("inf")), "std > 0"),
    (dict(type="gaussian", std=float("nan")), "std > 0"),
    (dict(type="gaussian", std=1.0, mean=float("inf")), "finite mean"),
])
def test_bad_fillers_raise(fields: dict, message: str) -> None:
    with pytest.raises(CaffeError, match=message):
        fill(torch.empty(4, 3), FillerParameter(**fields))


def test_a_uniform_range_wider_than_float_is_drawn_at_half_scale() -> None:
    # boost halves a range whose width overflows float, then doubles the draw.
    blob = fill(torch.empty(1000), FillerParameter(type="uniform", min=-3e38, max=3e38))
    assert torch.isfinite(blob).all() and blob.min() < -1e38 and blob.max() > 1e38


def test_bilinear_needs_square_4d_blob() -> None:
    with pytest.raises(CaffeError, match="square"):
        fill(torch.empty(1, 1, 3, 4), FillerParameter(type="bilinear"))
    with pytest.raises(CaffeError, match="4-D"):
        fill(torch.empty(3, 3), FillerParameter(type="bilinear"))


def test_registry_holds_caffes_filler_types() -> None:
    # filler.hpp's GetFiller: exactly these type names.
    assert set(FILLERS) == {"constant", "uniform", "gaussian", "positive_unitball", "xavier",
                            "msra", "bilinear"}
    with pytest.raises(CaffeError, match="known: .*gaussian.*bilinear"):
        fill(torch.empty(2), FillerParameter(type="orthogonal"))

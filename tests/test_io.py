"""caffe_ft.io, pycaffe's caffe.io: load_image, resize_image, oversample and
the Transformer against real pycaffe outputs (tests/fixtures/pycaffe/io,
from BVLC Caffe's pycaffe on astronaut.png; see its README), plus the
properties and errors the goldens do not cover, and the BlobProto / Datum
converters' round trips."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from caffe_ft import io
from caffe_ft.errors import CaffeError
from conftest import FIXTURES

GOLDEN = np.load(FIXTURES / "pycaffe" / "io" / "io.npz")
PHOTO = str(FIXTURES / "data" / "images" / "photos" / "astronaut.png")
ATOL = 1e-5


def assert_golden(mine: np.ndarray, key: str) -> None:
    assert mine.dtype == np.float32 and mine.shape == GOLDEN[key].shape
    np.testing.assert_allclose(mine, GOLDEN[key], rtol=0, atol=ATOL)


def golden_transformer() -> io.Transformer:
    """The Transformer the golden preprocess/deprocess came from (README)."""
    transformer = io.Transformer({"data": (1, 3, 50, 60)})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_channel_swap("data", (2, 1, 0))
    transformer.set_raw_scale("data", 255)
    transformer.set_mean("data", np.array([104, 117, 123]))
    transformer.set_input_scale("data", 0.5)
    return transformer


# -- load_image ----------------------------------------------------------------
def test_load_image_color_and_grey_match_pycaffe() -> None:
    assert_golden(io.load_image(PHOTO), "load_image")
    # color=False: skimage's rgb2gray weights, not OpenCV's BT.601 grey.
    assert_golden(io.load_image(PHOTO, color=False), "load_image_gray")


def test_load_image_grey_file_and_alpha(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    scaled = grey.astype(np.float32) / 255
    # A grey file is tiled to RGB for color, kept as one channel otherwise.
    np.testing.assert_allclose(io.load_image(str(tmp_path / "grey.png")),
                               np.dstack([scaled] * 3), atol=1e-7)
    np.testing.assert_allclose(io.load_image(str(tmp_path / "grey.png"), color=False),
                               scaled[:, :, None], atol=1e-7)
    bgra = rng.integers(0, 256, (5, 4, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "alpha.png"), bgra)
    # Alpha is dropped; OpenCV's BGR comes back as RGB.
    np.testing.assert_allclose(io.load_image(str(tmp_path / "alpha.png")),
                               bgra[:, :, 2::-1].astype(np.float32) / 255, atol=1e-7)


def test_load_image_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(CaffeError, match="nope.png"):
        io.load_image(str(tmp_path / "nope.png"))


# -- resize_image ----------------------------------------------------------------
def test_resize_image_matches_pycaffe_linear_and_cubic() -> None:
    image = GOLDEN["load_image"]
    assert_golden(io.resize_image(image, (37, 53)), "resize_image")
    assert_golden(io.resize_image(image, (37, 53), interp_order=3), "resize_image_interp3")


def test_resize_image_keeps_range_and_constant_images() -> None:
    # pycaffe stretches the image's [min, max] to [0, 1] and back, and
    # skimage clips the result to that range.
    image = GOLDEN["load_image"] * 200 - 50
    for order in (0, 1, 3):
        resized = io.resize_image(image, (61, 17), order)
        assert resized.shape == (61, 17, 3)
        assert resized.min() >= image.min() and resized.max() <= image.max()
    constant = np.full((4, 5, 1), 7.5, np.float32)
    np.testing.assert_array_equal(io.resize_image(constant, (9, 2)), np.full((9, 2, 1), 7.5))


def test_resize_image_other_channel_counts_zoom_corner_to_corner() -> None:
    # Neither 1 nor 3 channels: ndimage.zoom, whose grid maps corner to
    # corner, so a linear ramp along an axis stays that exact ramp.
    ramp = np.broadcast_to(np.arange(9, dtype=np.float32)[None, :, None] * 3, (4, 9, 2))
    resized = io.resize_image(ramp, (7, 5))
    np.testing.assert_allclose(resized, np.broadcast_to(np.linspace(0, 24, 5)[None, :, None],
                                                        (7, 5, 2)), atol=1e-5)


def test_resize_image_refuses_orders_it_does_not_have() -> None:
    with pytest.raises(CaffeError, match="interp_order 2 is not supported"):
        io.resize_image(GOLDEN["load_image"], (10, 10), interp_order=2)


# -- oversample ----------------------------------------------------------------
def test_oversample_matches_pycaffe() -> None:
    assert_golden(io.oversample([io.resize_image(GOLDEN["load_image"], (40, 40))], (32, 32)),
                  "oversample")


def test_oversample_corners_center_and_mirrors() -> None:
    image = np.arange(2 * 7 * 9, dtype=np.float32).reshape(7, 9, 2)
    crops = io.oversample([image, image + 1000], (4, 5))
    assert crops.shape == (20, 4, 5, 2)
    np.testing.assert_array_equal(crops[0], image[:4, :5])
    np.testing.assert_array_equal(crops[3], image[3:, 4:])
    # Centre: int(7/2 - 4/2) = 1 and int(9/2 - 5/2) = 2, as pycaffe truncates.
    np.testing.assert_array_equal(crops[4], image[1:5, 2:7])
    np.testing.assert_array_equal(crops[5:10], crops[:5, :, ::-1])
    np.testing.assert_array_equal(crops[10:], crops[:10] + 1000)


# -- Transformer ----------------------------------------------------------------
def test_transformer_preprocess_and_deprocess_match_pycaffe() -> None:
    transformer = golden_transformer()
    image = io.resize_image(GOLDEN["load_image"], (50, 60))
    before = image.copy()
    preprocessed = transformer.preprocess("data", image)
    assert_golden(preprocessed, "preprocess")
    np.testing.assert_array_equal(image, before)  # the caller's image is left alone
    assert_golden(transformer.deprocess("data", preprocessed), "deprocess")


def test_transformer_round_trip_and_resize() -> None:
    transformer = golden_transformer()
    image = GOLDEN["load_image"]  # 50×64: preprocess resizes it to 50×60 first
    blob = transformer.preprocess("data", image)
    assert blob.shape == (3, 50, 60)
    np.testing.assert_allclose(transformer.deprocess("data", blob[None]),
                               io.resize_image(image, (50, 60)), atol=1e-5)
    # An elementwise mean of the input's size is subtracted as it is.
    mean = np.random.default_rng(1).uniform(0, 255, (3, 50, 60)).astype(np.float32)
    transformer.set_mean("data", mean)
    np.testing.assert_allclose(transformer.deprocess("data", transformer.preprocess("data", image)),
                               io.resize_image(image, (50, 60)), atol=1e-5)
    # An H×W mean is taken as 1×H×W: only a one-channel input accepts it.
    grey = io.Transformer({"data": (1, 1, 50, 60)})
    grey.set_transpose("data", (2, 0, 1))
    grey.set_mean("data", mean[0])
    red = io.resize_image(image[:, :, :1], (50, 60)).transpose(2, 0, 1)
    np.testing.assert_allclose(grey.preprocess("data", image[:, :, :1]), red - mean[0], atol=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda t: t.set_mean("data", np.zeros(4)), "Mean channels incompatible"),
    (lambda t: t.set_mean("data", np.zeros((3, 49, 60))), "Mean shape incompatible"),
    (lambda t: t.set_mean("data", np.zeros((1, 3, 50, 60))), "Mean shape invalid"),
    (lambda t: t.set_mean("data", np.zeros((50, 60))), "Mean shape incompatible"),
    (lambda t: t.set_transpose("data", (1, 0)), "Transpose order"),
    (lambda t: t.set_channel_swap("data", (1, 0)), "Channel swap"),
    (lambda t: t.set_raw_scale("image", 255), "image is not one of the net inputs"),
])
def test_transformer_refuses_what_pycaffe_refuses(call, message: str) -> None:
    with pytest.raises(CaffeError, match=message):
        call(io.Transformer({"data": (1, 3, 50, 60)}))


# -- BlobProto and Datum ----------------------------------------------------------
def test_blobproto_round_trip_with_diff() -> None:
    rng = np.random.default_rng(2)
    data = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    diff = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    blob = io.array_to_blobproto(data, diff)
    assert list(blob.shape.dim) == [2, 3, 4, 5]
    np.testing.assert_array_equal(io.blobproto_to_array(blob), data)
    np.testing.assert_array_equal(io.blobproto_to_array(blob, return_diff=True), diff)


def test_datum_round_trip_uint8_and_float() -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    datum = io.array_to_datum(pixels, label=7)
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 4, 5, 7)
    assert datum.data == pixels.tobytes() and not datum.float_data
    back = io.datum_to_array(datum)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, pixels)
    values = pixels.astype(np.float32) / 3
    float_datum = io.array_to_datum(values)
    assert not float_datum.data and not float_datum.HasField("label")
    np.testing.assert_array_equal(io.datum_to_array(float_datum), values)
    with pytest.raises(CaffeError, match="C×H×W"):
        io.array_to_datum(pixels[0])

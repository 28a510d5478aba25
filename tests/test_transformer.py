"""DataTransformer and the data RNG against Caffe's rules (data_transformer.cpp,
rng.hpp): draw order, crop offsets, mirror, mean cropping, subtract-then-scale
in float32, encoded decoding. The reference transform below is a literal
per-pixel transcription of Caffe's loop, independent of the vectorised code."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from caffe_ft.blobs import array_to_blob_proto
from caffe_ft.rng.engine import CaffeRNG
from caffe_ft.data.transformer import DataTransformer
from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import write_binary

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def _param(**fields) -> caffe_pb2.TransformationParameter:
    return caffe_pb2.TransformationParameter(**fields)


def _caffe_loop(pixels: np.ndarray, param: caffe_pb2.TransformationParameter, phase: int,
                mean: np.ndarray | None, rng: CaffeRNG | None) -> np.ndarray:
    """Caffe's Transform(datum, data) loop, element by element, in float32."""
    channels, height, width = pixels.shape
    crop = param.crop_size
    do_mirror = param.mirror and rng.rand(2) != 0
    h_off = w_off = 0
    out_h, out_w = height, width
    if crop:
        out_h = out_w = crop
        if phase == TRAIN:
            h_off, w_off = rng.rand(height - crop + 1), rng.rand(width - crop + 1)
        else:
            h_off, w_off = (height - crop) // 2, (width - crop) // 2
    scale = np.float32(param.scale)
    values = list(param.mean_value) * (channels if len(param.mean_value) == 1 else 1)
    out = np.zeros((channels, out_h, out_w), np.float32)
    for c in range(channels):
        for h in range(out_h):
            for w in range(out_w):
                pixel = np.float32(pixels[c, h + h_off, w + w_off])
                if mean is not None:
                    value = (pixel - mean[c, h + h_off, w + w_off]) * scale
                elif values:
                    value = (pixel - np.float32(values[c])) * scale
                else:
                    value = pixel * scale
                out[c, h, out_w - 1 - w if do_mirror else w] = value
    return out


def _transform(transformer: DataTransformer, pixels: np.ndarray, seed: int) -> np.ndarray:
    out = np.empty(transformer.output_shape(pixels, "test"), np.float32)
    rng = CaffeRNG(seed) if transformer.needs_rng else None
    transformer.transform(pixels, out, rng, "test")
    return out


def test_rng_is_mt19937() -> None:
    # C++ [rand.predef]: the 10000th draw of a default-constructed mt19937
    # (seed 5489, boost's default too) is 4123659995.
    rng = CaffeRNG(5489)
    rng.seek(9999)
    assert rng.raw() == 4123659995


def test_rng_seek_back_and_forth_replays_the_stream() -> None:
    stream = CaffeRNG(7)
    draws = [stream.raw() for _ in range(3000)]
    rng = CaffeRNG(7)
    for position in (2500, 10, 1023, 1024, 0, 2999):
        rng.seek(position)
        assert rng.raw() == draws[position]


def test_shuffle_is_a_seeded_permutation() -> None:
    items = list(range(50))
    first, again, other = list(items), list(items), list(items)
    CaffeRNG(3).shuffle(first)
    CaffeRNG(3).shuffle(again)
    CaffeRNG(4).shuffle(other)
    assert sorted(first) == items and first == again and first != other and first != items


def test_uniform_int_stays_in_range() -> None:
    rng = CaffeRNG(11)
    draws = [rng.uniform_int(0, 6) for _ in range(2000)]
    assert set(draws) == set(range(7))


@pytest.mark.parametrize("phase", [TRAIN, TEST])
@pytest.mark.parametrize("mirror", [False, True])
def test_mean_file_crop_mirror_scale_match_caffe_loop(tmp_path, phase: int,
                                                     mirror: bool) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 9, 11), dtype=np.uint8)
    mean = rng.uniform(0, 255, (3, 9, 11)).astype(np.float32)
    write_binary(tmp_path / "mean.binaryproto", array_to_blob_proto(mean[None]))
    param = _param(crop_size=5, mirror=mirror, scale=0.017,
                   mean_file=str(tmp_path / "mean.binaryproto"))
    transformer = DataTransformer(param, phase, "test")
    expected = _caffe_loop(pixels, param, phase, mean,
                           CaffeRNG(99) if transformer.needs_rng else None)
    np.testing.assert_array_equal(_transform(transformer, pixels, 99), expected)


@pytest.mark.parametrize("values", [[104.0], [104.0, 117.0, 123.0]])
def test_mean_values_replicate_and_subtract_before_scale(values: list[float]) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (3, 6, 7), dtype=np.uint8)
    param = _param(mean_value=values, scale=0.00390625, mirror=True, crop_size=4)
    transformer = DataTransformer(param, TRAIN, "test")
    expected = _caffe_loop(pixels, param, TRAIN, None, CaffeRNG(5))
    np.testing.assert_array_equal(_transform(transformer, pixels, 5), expected)


def test_float_data_pixels_are_used_as_floats() -> None:
    values = np.random.default_rng(2).normal(0, 3, (2, 4, 4)).astype(np.float32)
    datum = caffe_pb2.Datum(channels=2, height=4, width=4, float_data=values.ravel())
    param = _param(scale=0.5, mean_value=[0.25])
    transformer = DataTransformer(param, TEST, "test")
    pixels = transformer.datum_pixels(datum, "test")
    np.testing.assert_array_equal(_transform(transformer, pixels, 0),
                                  _caffe_loop(values, param, TEST, None, None))


def test_draws_per_item_follow_init_rand() -> None:
    # Rand() is called for the mirror coin in any phase, for crops only in TRAIN.
    assert DataTransformer(_param(crop_size=3), TEST, "t").draws_per_item == 0
    assert DataTransformer(_param(crop_size=3), TRAIN, "t").draws_per_item == 2
    assert DataTransformer(_param(mirror=True), TEST, "t").draws_per_item == 1
    assert DataTransformer(_param(mirror=True, crop_size=3), TRAIN, "t").draws_per_item == 3


def test_mean_file_is_loaded_and_must_match_the_image(tmp_path) -> None:
    mean = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    path = tmp_path / "mean.binaryproto"
    write_binary(path, array_to_blob_proto(mean))
    transformer = DataTransformer(_param(mean_file=str(path)), TEST, "test")
    np.testing.assert_array_equal(transformer.mean, mean[0])
    with pytest.raises(CaffeError, match="mean file"):
        _transform(transformer, np.zeros((2, 3, 5), np.uint8), 0)


def test_encoded_datum_force_gray_and_native() -> None:
    image = np.random.default_rng(3).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", image)
    datum = caffe_pb2.Datum(data=png.tobytes(), encoded=True)
    native = DataTransformer(_param(), TEST, "t").datum_pixels(datum, "t")
    gray = DataTransformer(_param(force_gray=True), TEST, "t").datum_pixels(datum, "t")
    np.testing.assert_array_equal(native, image.transpose(2, 0, 1))
    # Caffe's DecodeDatumToCVMat(datum, false) is imdecode with the grayscale flag.
    np.testing.assert_array_equal(gray[0], cv2.imdecode(png, cv2.IMREAD_GRAYSCALE))


@pytest.mark.parametrize("fields, message", [
    (dict(force_color=True, force_gray=True), "force_color and force_gray"),
    (dict(mean_file="m.binaryproto", mean_value=[1.0]), "mean_file and mean_value"),
])
def test_conflicting_fields_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(CaffeError, match=message):
        DataTransformer(_param(**fields), TEST, "test")


def test_mean_value_count_must_be_one_or_channels() -> None:
    transformer = DataTransformer(_param(mean_value=[1.0, 2.0]), TEST, "test")
    with pytest.raises(CaffeError, match="1 mean_value or as many as channels"):
        _transform(transformer, np.zeros((3, 2, 2), np.uint8), 0)


def test_crop_larger_than_image_is_refused() -> None:
    transformer = DataTransformer(_param(crop_size=8), TEST, "img.png")
    with pytest.raises(CaffeError, match="img.png.*smaller than crop_size 8"):
        transformer.output_shape(np.zeros((1, 7, 9), np.uint8), "img.png")

"""pycaffe's caffe.io: image loading, the input Transformer, and BlobProto /
Datum conversions, with pycaffe's conventions (images as H×W×C float RGB in
[0, 1]; nets take C×H×W, usually BGR in [0, 255])."""
from __future__ import annotations

import cv2
import numpy as np

from caffe_ft.blobs import array_to_blob_proto, legacy_shape
from caffe_ft.data.datum import datum_to_array as _datum_to_array
from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2
from caffe_ft.resample import ndimage_zoom, skimage_resize


# skimage.color.rgb2gray's luminance weights (ITU-R 709 primaries), which
# pycaffe's load_image(color=False) gets through imread(as_grey=True).
RGB_TO_GREY = np.array([0.2125, 0.7154, 0.0721])


def load_image(filename: str, color: bool = True) -> np.ndarray:
    """H×W×3 (or H×W×1) float32 RGB in [0, 1], as pycaffe's load_image:
    alpha is dropped, a grey file is tiled to 3 channels for color, and
    color=False turns an RGB file grey by skimage's rgb2gray."""
    image = cv2.imread(filename, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise CaffeError(f"Could not open or find file {filename}")
    if not np.issubdtype(image.dtype, np.integer):
        raise CaffeError(f"{filename}: {image.dtype} pixels; load_image reads 8- and 16-bit "
                         f"images")
    # skimage's img_as_float: integers scaled by their type's maximum, in double.
    pixels = image.astype(np.float64) / np.iinfo(image.dtype).max
    if pixels.ndim == 3:
        rgb = pixels[:, :, 2::-1] if pixels.shape[2] >= 3 else pixels
        pixels = rgb @ RGB_TO_GREY if not color and rgb.shape[2] == 3 else rgb
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
        if color:
            pixels = np.tile(pixels, (1, 1, 3))
    return pixels.astype(np.float32)


def resize_image(image: np.ndarray, new_dims: tuple[int, int], interp_order: int = 1) -> np.ndarray:
    """Resize H×W×K to new_dims=(H', W') as pycaffe does: 1- and 3-channel
    images through skimage's resize on their [min, max] range stretched to
    [0, 1] (a constant image stays constant), others through ndimage.zoom."""
    height, width = int(new_dims[0]), int(new_dims[1])
    image = np.asarray(image)
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    if image.shape[-1] not in (1, 3):
        return ndimage_zoom(image, height, width, interp_order).astype(np.float32)
    low, high = image.min(), image.max()
    if high <= low:
        return np.full((height, width, image.shape[-1]), low, dtype=np.float32)
    stretched = (image - low) / (high - low)
    resized = skimage_resize(stretched, height, width, interp_order)
    return (resized * (high - low) + low).astype(np.float32)


def oversample(images: list[np.ndarray], crop_dims: tuple[int, int]) -> np.ndarray:
    """The 10-crop of each image: 4 corners + center, then their mirrors.
    As in pycaffe, the first image's size places the crops of every image."""
    ch, cw = int(crop_dims[0]), int(crop_dims[1])
    h, w = images[0].shape[:2]
    # pycaffe's centre crop spans centre ± crop / 2, truncated to ints.
    offsets = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw),
               (int(h / 2.0 - ch / 2.0), int(w / 2.0 - cw / 2.0))]
    crops = []
    for image in images:
        five = [image[y:y + ch, x:x + cw] for y, x in offsets]
        crops.extend(five + [c[:, ::-1] for c in five])
    return np.asarray(crops, dtype=np.float32)


class BlobShapeError(CaffeError, ValueError):
    """A BlobProto whose values do not fill its shape (pycaffe raises ValueError)."""


def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """pycaffe's reading: `data` (or `diff`) as float64, in the legacy 4-D
    shape if any of num/channels/height/width is set, else in `shape` (no
    shape at all: a scalar, so more than one value is an error)."""
    values = np.array(blob.diff if return_diff else blob.data)
    legacy = legacy_shape(blob)
    shape = legacy if legacy is not None else tuple(int(d) for d in blob.shape.dim)
    if values.size != int(np.prod(shape, dtype=np.int64)):
        raise BlobShapeError(f"BlobProto holds {values.size} values, which do not fill its "
                             f"shape {list(shape)}")
    return values.reshape(shape)


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None) -> caffe_pb2.BlobProto:
    return array_to_blob_proto(arr, diff)


def array_to_datum(arr: np.ndarray, label: int | None = None) -> caffe_pb2.Datum:
    """A C×H×W array as a Datum: uint8 → raw `data` bytes, else `float_data`."""
    if arr.ndim != 3:
        raise CaffeError(f"array_to_datum needs a C×H×W array, got shape {arr.shape}")
    datum = caffe_pb2.Datum(channels=arr.shape[0], height=arr.shape[1], width=arr.shape[2])
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float32).ravel().tolist())
    if label is not None:
        datum.label = label
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    """C×H×W uint8 (`data`) or float32 (`float_data`); encoded Datums are decoded."""
    return _datum_to_array(datum, "Datum")


class Transformer:
    """pycaffe's Transformer: turn load_image output into net input per input blob.
    preprocess order: resize to the blob size, transpose, channel swap, raw
    scale, mean subtraction, input scale — as pycaffe does."""

    def __init__(self, inputs: dict[str, tuple[int, ...]]) -> None:
        self.inputs = {name: tuple(shape) for name, shape in inputs.items()}
        self.transpose: dict[str, tuple[int, ...]] = {}
        self.channel_swap: dict[str, tuple[int, ...]] = {}
        self.raw_scale: dict[str, float] = {}
        self.mean: dict[str, np.ndarray] = {}
        self.input_scale: dict[str, float] = {}

    def _check(self, name: str) -> None:
        if name not in self.inputs:
            raise CaffeError(f"{name} is not one of the net inputs: {sorted(self.inputs)}")

    def set_transpose(self, in_: str, order: tuple[int, ...]) -> None:
        self._check(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise CaffeError("Transpose order needs to have the same number of dimensions as "
                             "the input.")
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_: str, order: tuple[int, ...]) -> None:
        self._check(in_)
        if len(order) != self.inputs[in_][1]:
            raise CaffeError("Channel swap needs to have the same number of dimensions as the "
                             "input channels.")
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_: str, scale: float) -> None:
        self._check(in_)
        self.raw_scale[in_] = scale

    def set_input_scale(self, in_: str, scale: float) -> None:
        self._check(in_)
        self.input_scale[in_] = scale

    def set_mean(self, in_: str, mean: np.ndarray) -> None:
        """Mean per channel (shape (C,)), or elementwise: C×H×W or H×W, of
        the input's own size (pycaffe refuses to resize a mean)."""
        self._check(in_)
        mean = np.asarray(mean)
        expected = self.inputs[in_][1:]
        if mean.ndim == 1:
            if mean.shape[0] != expected[0]:
                raise CaffeError(f"Mean channels incompatible with input {in_}: "
                                 f"{mean.shape[0]} != {expected[0]}")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            shape = (1, *mean.shape) if mean.ndim == 2 else mean.shape
            if len(shape) != 3:
                raise CaffeError(f"Mean shape invalid for input {in_}: {mean.shape}")
            if shape != expected:
                raise CaffeError(f"Mean shape incompatible with input {in_} shape: "
                                 f"{mean.shape} vs {expected}")
        self.mean[in_] = mean

    def preprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """H×W×K image → the input blob's K×H×W, in pycaffe's order. The
        arithmetic is in place on a float32 copy, as pycaffe's `*=` and `-=`
        keep float32 whatever the type of the scale or mean."""
        self._check(in_)
        image = np.array(data, dtype=np.float32)
        size = self.inputs[in_][2:]
        if image.shape[:2] != size:
            image = resize_image(image, size)
        if in_ in self.transpose:
            image = image.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            image = image[list(self.channel_swap[in_]), :, :]
        if in_ in self.raw_scale:
            image *= self.raw_scale[in_]
        if in_ in self.mean:
            image -= self.mean[in_]
        if in_ in self.input_scale:
            image *= self.input_scale[in_]
        return np.ascontiguousarray(image)

    def deprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """Undo preprocess (not the resize): the blob back to H×W×K."""
        self._check(in_)
        image = np.array(data, dtype=np.float32).squeeze()
        if in_ in self.input_scale:
            image /= self.input_scale[in_]
        if in_ in self.mean:
            image += self.mean[in_]
        if in_ in self.raw_scale:
            image /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            image = image[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            image = image.transpose(np.argsort(self.transpose[in_]))
        return image

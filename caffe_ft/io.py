"""pycaffe's caffe.io: image loading, the input Transformer, and BlobProto /
Datum conversions, with pycaffe's conventions (images as H×W×C float RGB in
[0, 1]; nets take C×H×W, usually BGR in [0, 255])."""
from __future__ import annotations


import cv2
import numpy as np

from caffe_ft.blobs import array_to_blob_proto, blob_proto_to_array
from caffe_ft.data.datum import datum_to_array as _datum_to_array
from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2


def load_image(filename: str, color: bool = True) -> np.ndarray:
    """H×W×3 (or H×W×1) float32 RGB in [0, 1], as pycaffe's load_image."""
    image = cv2.imread(filename, cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise CaffeError(f"Could not open or find file {filename}")
    image = image.astype(np.float32) / 255.0
    if color:
        return image[:, :, ::-1].copy()
    return image[:, :, np.newaxis]


def resize_image(image: np.ndarray, new_dims: tuple[int, int], interp_order: int = 1) -> np.ndarray:
    """Resize H×W×K to new_dims=(H', W') (bilinear for interp_order 1, nearest for 0)."""
    interpolation = cv2.INTER_NEAREST if interp_order == 0 else cv2.INTER_LINEAR
    height, width = int(new_dims[0]), int(new_dims[1])
    resized = cv2.resize(np.ascontiguousarray(image, dtype=np.float32), (width, height),
                         interpolation=interpolation)
    return resized.reshape(height, width, -1)


def oversample(images: list[np.ndarray], crop_dims: tuple[int, int]) -> np.ndarray:
    """The 10-crop of each image: 4 corners + center, and their mirrors."""
    ch, cw = crop_dims
    crops = []
    for image in images:
        h, w = image.shape[:2]
        offsets = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw),
                   ((h - ch) // 2, (w - cw) // 2)]
        five = [image[y:y + ch, x:x + cw] for y, x in offsets]
        crops.extend(five + [c[:, ::-1] for c in five])
    return np.asarray(crops, dtype=np.float32)


def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    return blob_proto_to_array(blob, diff=return_diff)


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
        """Mean per channel (shape (C,)) or a full C×H×W mean image."""
        self._check(in_)
        mean = np.asarray(mean, dtype=np.float32)
        shape = self.inputs[in_][1:]
        if mean.ndim == 1:
            if mean.shape[0] != shape[0]:
                raise CaffeError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        elif mean.shape[0] != shape[0] or mean.shape[1:] != shape[1:]:
            mean = resize_image(mean.transpose(1, 2, 0), shape[1:]).transpose(2, 0, 1)
        self.mean[in_] = mean

    def preprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        self._check(in_)
        image = np.asarray(data, dtype=np.float32)
        size = self.inputs[in_][2:]
        if image.shape[:2] != size:
            image = resize_image(image, size)
        if in_ in self.transpose:
            image = image.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            image = image[list(self.channel_swap[in_]), :, :]
        if in_ in self.raw_scale:
            image = image * self.raw_scale[in_]
        if in_ in self.mean:
            image = image - self.mean[in_]
        if in_ in self.input_scale:
            image = image * self.input_scale[in_]
        return np.ascontiguousarray(image, dtype=np.float32)

    def deprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        self._check(in_)
        image = np.asarray(data, dtype=np.float32).squeeze()
        if in_ in self.input_scale:
            image = image / self.input_scale[in_]
        if in_ in self.mean:
            image = image + self.mean[in_]
        if in_ in self.raw_scale:
            image = image / self.raw_scale[in_]
        if in_ in self.channel_swap:
            image = image[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            image = image.transpose(np.argsort(self.transpose[in_]))
        return image



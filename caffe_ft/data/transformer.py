"""Caffe's DataTransformer (src/caffe/data_transformer.cpp): crop, mirror,
mean subtraction and scaling of one image, with Caffe's exact numbers.

Per image, in Caffe's order: the mirror draw (only when `mirror` is set, in
any phase), then the crop offsets (random in TRAIN, centred in TEST); then
`(pixel - mean) * scale` in float32, subtract before scale, with a mean_file
cropped at the image's offset and never mirrored. Raw Datums, decoded
encoded Datums and ImageData's OpenCV images all go through the same C×H×W
code: Caffe's Datum path and cv::Mat path compute the same values.
"""
from __future__ import annotations

import os

import numpy as np

from caffe_ft.blobs import blob_proto_to_array
from caffe_ft.data.datum import datum_to_array, decode_image, image_to_array
from caffe_ft.rng.engine import CaffeRNG
from caffe_ft.errors import CaffeError
from caffe_ft.glog import logger
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import read_binary

TRAIN = caffe_pb2.TRAIN


def load_mean_file(path: str | os.PathLike[str]) -> np.ndarray:
    """A mean.binaryproto as float32 C×H×W (compute_image_mean writes 1×C×H×W).
    The one reader of mean files: the data layers and `classify` both use it."""
    mean = blob_proto_to_array(read_binary(path, caffe_pb2.BlobProto(), "Mean file"))
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise CaffeError(f"Mean file {os.fspath(path)}: expected a 1×C×H×W blob (as "
                         f"compute_image_mean writes), got shape {list(mean.shape)}")
    return np.ascontiguousarray(mean, dtype=np.float32)


def rand_calls_per_item(mirror: bool, crop_size: int, phase: int) -> int:
    """DataTransformer's Rand() calls per image: the mirror coin, then two
    crop offsets in TRAIN. Caffe's InitRand seeds a generator only when
    there is at least one (`mirror || (TRAIN && crop_size)`)."""
    return int(mirror) + (2 if crop_size and phase == TRAIN else 0)


class DataTransformer:
    """Transforms C×H×W pixels (uint8, or float32 from float_data) into a
    float32 C×crop×crop (or C×H×W) output, drawing from a CaffeRNG."""

    def __init__(self, param: caffe_pb2.TransformationParameter, phase: int,
                 where: str) -> None:
        self.where = where
        self.phase = phase
        self.crop_size = int(param.crop_size)
        self.mirror = bool(param.mirror)
        # Caffe's Dtype is float: the proto's float scale is used as float32.
        self.scale = np.float32(param.scale)
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        if self.force_color and self.force_gray:
            raise CaffeError(f"{where}: cannot set both force_color and force_gray")
        self.mean_file = param.mean_file if param.HasField("mean_file") else ""
        if self.mean_file and len(param.mean_value):
            raise CaffeError(f"{where}: cannot specify mean_file and mean_value at the same time")
        self.mean: np.ndarray | None = None
        if self.mean_file:
            logger.info("Loading mean file from: %s", self.mean_file)
            self.mean = load_mean_file(self.mean_file)
        self.mean_values = np.asarray(param.mean_value, dtype=np.float32)
        self._warned_force = False

    @property
    def draws_per_item(self) -> int:
        return rand_calls_per_item(self.mirror, self.crop_size, self.phase)

    @property
    def needs_rng(self) -> bool:
        """Caffe's InitRand: a generator exists only if `mirror || (TRAIN && crop_size)`."""
        return self.draws_per_item > 0

    # -- pixels --------------------------------------------------------
    def datum_pixels(self, datum: caffe_pb2.Datum, where: str) -> np.ndarray:
        """The Datum's image as C×H×W: encoded Datums are decoded as OpenCV
        decodes them for Caffe (force_color → BGR, force_gray → gray, else the
        file's own channels)."""
        if datum.encoded:
            color = True if self.force_color else False if self.force_gray else None
            return self.image_pixels(decode_image(datum.data, color, where), where)
        if (self.force_color or self.force_gray) and not self._warned_force:
            # Caffe logs this for every Datum; once is enough to be seen.
            logger.error("force_color and force_gray only for encoded datum (%s)", where)
            self._warned_force = True
        return datum_to_array(datum, where)

    @staticmethod
    def image_pixels(image: np.ndarray, where: str) -> np.ndarray:
        """An OpenCV H×W(×C) uint8 image as a C×H×W view, channels in BGR order."""
        return image_to_array(image, where)

    def output_shape(self, pixels: np.ndarray, where: str) -> tuple[int, int, int]:
        """Caffe's InferBlobShape for one image (checking it is large enough)."""
        channels, height, width = pixels.shape
        if height < self.crop_size or width < self.crop_size:
            raise CaffeError(f"{where}: image is {height}×{width}, smaller than "
                             f"crop_size {self.crop_size}")
        if self.crop_size:
            return channels, self.crop_size, self.crop_size
        return channels, height, width

    # -- transform -----------------------------------------------------
    def transform(self, pixels: np.ndarray, out: np.ndarray, rng: CaffeRNG | None,
                  where: str) -> None:
        """Write the transformed image into `out` (float32, output_shape)."""
        channels, height, width = pixels.shape
        if self.needs_rng and rng is None:
            raise ValueError("this transform draws random numbers; pass the transformer's RNG")
        do_mirror = self.mirror and rng.rand(2) == 1
        h_off = w_off = 0
        out_h, out_w = height, width
        if self.crop_size:
            out_h = out_w = self.crop_size
            if self.phase == TRAIN:
                h_off = rng.rand(height - self.crop_size + 1)
                w_off = rng.rand(width - self.crop_size + 1)
            else:
                h_off = (height - self.crop_size) // 2
                w_off = (width - self.crop_size) // 2
        window = (slice(None), slice(h_off, h_off + out_h), slice(w_off, w_off + out_w))
        image = pixels[window]
        if do_mirror:
            image = image[..., ::-1]
        if self.mean is not None:
            if self.mean.shape != pixels.shape:
                raise CaffeError(f"{where}: image is {'×'.join(map(str, pixels.shape))} but the "
                                 f"mean file {self.mean_file} is "
                                 f"{'×'.join(map(str, self.mean.shape))}")
            mean = self.mean[window]  # cropped with the image, at the same offsets
            np.subtract(image, mean[..., ::-1] if do_mirror else mean, out=out)
        elif self.mean_values.size:
            if self.mean_values.size not in (1, channels):
                raise CaffeError(f"{self.where}: specify either 1 mean_value or as many as "
                                 f"channels ({channels}); got {self.mean_values.size}")
            values = np.broadcast_to(self.mean_values, (channels,))
            np.subtract(image, values[:, None, None], out=out)
        else:
            out[...] = image
        if self.scale != 1:  # x * 1.0f == x, so skipping it changes no value
            np.multiply(out, self.scale, out=out)

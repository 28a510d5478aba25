"""pycaffe's caffe.Detector: classify windows of images, each warped to the
net input, optionally with a border of context as in R-CNN (Girshick et
al., "Rich feature hierarchies for accurate object detection and semantic
segmentation", arXiv:1311.2524)."""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from caffe_ft import io
from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2
from caffe_ft.pycaffe.classifier import input_transformer
from caffe_ft.pycaffe.net import Net

SELECTIVE_SEARCH = "selective_search_ijcv_with_python"


def round_half_away(value: float) -> int:
    """Python 2's round(), which pycaffe's context crop was written for
    (Python 3 rounds halves to even)."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


class Detector(Net):
    """caffe.Detector(model_file, pretrained_file, mean=None,
    input_scale=None, raw_scale=None, channel_swap=None, context_pad=None)."""

    def __init__(self, model_file: str | os.PathLike[str], pretrained_file: str,
                 mean: np.ndarray | None = None, input_scale: float | None = None,
                 raw_scale: float | None = None, channel_swap: Sequence[int] | None = None,
                 context_pad: int | None = None) -> None:
        super().__init__(model_file, caffe_pb2.TEST, weights=pretrained_file)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows: Iterable[tuple[str, Sequence[Sequence[int]]]]
                       ) -> list[dict[str, Any]]:
        """Classify each window (ymin, xmin, ymax, xmax) of each image file;
        one {'window', 'prediction', 'filename'} dict per window, in order."""
        images_windows = list(images_windows)
        window_inputs = []
        for filename, windows in images_windows:
            image = io.load_image(filename).astype(np.float32)
            window_inputs.extend(self.crop(image, window) for window in windows)
        if not window_inputs:
            raise CaffeError("Detector.detect_windows was given no windows")
        in_ = self.inputs[0]
        # preprocess warps each window to the input size.
        caffe_in = np.stack([self.transformer.preprocess(in_, window)
                             for window in window_inputs])
        predictions = iter(self.forward_all(**{in_: caffe_in})[self.outputs[0]])
        return [{"window": window, "prediction": next(predictions), "filename": filename}
                for filename, windows in images_windows for window in windows]

    def detect_selective_search(self, image_fnames: Iterable[str]) -> list[dict[str, Any]]:
        """detect_windows over Selective Search's proposals, which come from
        the MATLAB code of the selective_search_ijcv_with_python package."""
        try:
            import selective_search_ijcv_with_python as selective_search  # type: ignore
        except ImportError:
            raise CaffeError(
                f"Detector.detect_selective_search needs the {SELECTIVE_SEARCH} package "
                f"(https://github.com/sergeyk/{SELECTIVE_SEARCH}) and MATLAB, which are not "
                f"installed; compute the windows elsewhere and call detect_windows") from None
        # Absolute paths, so that MATLAB finds the files.
        image_fnames = [os.path.abspath(name) for name in image_fnames]
        windows = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows))

    def crop(self, im: np.ndarray, window: Sequence[int]) -> np.ndarray:
        """The window (ymin, xmin, ymax, xmax) of an H×W×K image; with
        context_pad, the window grown so that context_pad pixels of the
        (square) net input are context, mean-filled where it leaves the image."""
        if not self.context_pad:
            return im[window[0]:window[2], window[1]:window[3]]
        crop_size = self.blobs[self.inputs[0]].width
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        half_h = (window[2] - window[0] + 1) / 2.0
        half_w = (window[3] - window[1] + 1) / 2.0
        center = (window[0] + half_h, window[1] + half_w)
        box = np.round(np.tile(center, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        scale_h = crop_size / (box[2] - box[0] + 1)
        scale_w = crop_size / (box[3] - box[1] + 1)
        # The part of the grown box outside the image, in net input pixels.
        pad_y = round_half_away(max(0, -box[0]) * scale_h)
        pad_x = round_half_away(max(0, -box[1]) * scale_w)
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        crop_h = min(round_half_away((box[2] - box[0] + 1) * scale_h), crop_size - pad_y)
        crop_w = min(round_half_away((box[3] - box[1] + 1) * scale_w), crop_size - pad_x)
        # pycaffe (Python 2 numpy) indexed with the float box, truncated.
        top, left, bottom, right = box.astype(int)
        # (pycaffe's own assert cannot fail: a clipped box is never negative.)
        if bottom <= top or right <= left or crop_h <= 0 or crop_w <= 0:
            raise CaffeError(f"Detector.crop: window {list(window)} with context lies outside "
                             f"the {im_h}x{im_w} image")
        context = io.resize_image(im[top:bottom, left:right], (crop_h, crop_w))
        crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        crop[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return crop

    def configure_crop(self, context_pad: int | None) -> None:
        """Set the crop size (the net input as H×W×K) and the context
        padding; with context, the mean in unprocessed image space fills
        what lies outside the image."""
        in_ = self.inputs[0]
        transpose = self.transformer.transpose[in_]
        # pycaffe composes the transpose with itself: for (2, 0, 1) that is
        # its inverse, K×H×W back to H×W×K.
        back = [transpose[t] for t in transpose]
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[back]
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        # pycaffe divides a copy of the mean in its own float type (float64
        # for an ilsvrc_2012_mean.npy), which then sets the crop's type.
        mean = np.asarray(mean)
        crop_mean = mean.astype(np.result_type(mean, np.float32)).transpose(back)
        channel_swap = self.transformer.channel_swap.get(in_)
        if channel_swap is not None:
            crop_mean = crop_mean[:, :, [list(channel_swap).index(i)
                                         for i in range(crop_mean.shape[2])]]
        raw_scale = self.transformer.raw_scale.get(in_)
        if raw_scale is not None:
            crop_mean /= raw_scale
        self.crop_mean = crop_mean

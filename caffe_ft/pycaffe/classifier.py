"""pycaffe's caffe.Classifier: a deploy Net that classifies H×W×K images
(caffe.io.load_image's) by their center crop or by the average over ten
crops (corners, center and their mirrors)."""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from caffe_ft import io
from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2
from caffe_ft.pycaffe.net import Net


def input_transformer(net: Net, mean: np.ndarray | None, input_scale: float | None,
                      raw_scale: float | None,
                      channel_swap: Sequence[int] | None) -> io.Transformer:
    """The Transformer of the net's first input that Classifier and Detector
    both set up: H×W×K to K×H×W, then pycaffe's optional steps."""
    if not net.inputs:
        raise CaffeError("Classifier and Detector need a deploy net with an Input layer")
    in_ = net.inputs[0]
    transformer = io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """caffe.Classifier(model_file, pretrained_file, image_dims=None,
    mean=None, input_scale=None, raw_scale=None, channel_swap=None).
    Images are resized to image_dims (default: the net input's size) and
    cropped to the net input's size."""

    def __init__(self, model_file: str | os.PathLike[str], pretrained_file: str,
                 image_dims: Sequence[int] | None = None, mean: np.ndarray | None = None,
                 input_scale: float | None = None, raw_scale: float | None = None,
                 channel_swap: Sequence[int] | None = None) -> None:
        super().__init__(model_file, caffe_pb2.TEST, weights=pretrained_file)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[self.inputs[0]].data.shape[2:])
        # pycaffe tests truthiness, so an empty image_dims means the crop size too.
        self.image_dims = self.crop_dims if image_dims is None or len(image_dims) == 0 \
            else image_dims

    def predict(self, inputs: Sequence[np.ndarray], oversample: bool = True) -> np.ndarray:
        """N×C class scores (the first output) for N H×W×K images: the mean
        over the ten crops of each image, or its center crop's scores."""
        if len(inputs) == 0:
            raise CaffeError("Classifier.predict needs at least one image")
        height, width = int(self.image_dims[0]), int(self.image_dims[1])
        resized = np.zeros((len(inputs), height, width, inputs[0].shape[2]), dtype=np.float32)
        for ix, image in enumerate(inputs):
            resized[ix] = io.resize_image(image, (height, width))
        if oversample:
            crops = io.oversample(resized, self.crop_dims)
        else:
            # pycaffe's center crop: center ± crop / 2, truncated to ints.
            center = np.array([height, width]) / 2.0
            top, left = (center - self.crop_dims / 2.0).astype(int)
            bottom, right = (center + self.crop_dims / 2.0).astype(int)
            crops = resized[:, top:bottom, left:right, :]
        in_ = self.inputs[0]
        caffe_in = np.stack([self.transformer.preprocess(in_, crop) for crop in crops])
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape(len(predictions) // 10, 10, -1).mean(1)
        return predictions

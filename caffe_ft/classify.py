"""Classify images with a deploy net and its caffemodel, as Caffe's
classification example and pycaffe's classify.py do.

Preprocessing follows what the Data layer did in training, so a fine-tuned
model sees test images the way it saw its training data: read the image in
the net's channel count (BGR for 3 channels, Caffe's order), resize it, subtract
the mean, scale, center-crop to the net input. A mean image larger than the
input (the usual 256x256 mean for a 224/227 crop) sets the resize size, so the
mean is subtracted at full size before the crop, exactly as in training; any
other mean image is resized to the input, as pycaffe's Transformer does.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from caffe_ft.data.transformer import load_mean_file
from caffe_ft.errors import CaffeError
from caffe_ft.net.net import Net
from caffe_ft.net.weights import copy_trained_layers_from
from caffe_ft.proto import caffe_pb2


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    score: float


def parse_mean_values(text: str, channels: int) -> np.ndarray:
    """`-mean_value b,g,r`: one value per channel, or one for every channel
    (Caffe's transform_param rule)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CaffeError(f"-mean_value '{text}': expected comma-separated numbers") from None
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise CaffeError(f"-mean_value '{text}' gives {len(values)} values; the net input has "
                         f"{channels} channels (give one value, or one per channel)")
    return np.asarray(values, dtype=np.float32)


def read_labels(path: str | os.PathLike[str], count: int) -> list[str]:
    """One label per line (synset_words.txt, or convert_imageset's labels file)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise CaffeError(f"Cannot read labels file {os.fspath(path)}: "
                         f"{err.strerror or err}") from None
    if len(lines) != count:
        raise CaffeError(f"{os.fspath(path)}: Number of labels ({len(lines)}) is different "
                         f"from the output layer dimension ({count})")
    return lines


class Classifier:
    """A deploy net with its weights, its single input blob and the blob of
    scores it reports."""

    def __init__(self, model: str, weights: str, *, mean_file: str = "", mean_value: str = "",
                 scale: float = 1.0, labels_file: str = "", output: str = "",
                 device: torch.device | None = None) -> None:
        from caffe_ft.upgrade import read_net_text
        if mean_file and mean_value:
            raise CaffeError("Cannot specify -mean and -mean_value at the same time")
        self.net = Net(read_net_text(model), caffe_pb2.TEST, source=model)
        copy_trained_layers_from(self.net, weights)
        self.device = device or torch.device("cpu")
        self.net.to(self.device)
        self.input = self._input_blob(model)
        shape = self.net.blob_shapes[self.input]
        if len(shape) != 4 or shape[1] not in (1, 3):
            raise CaffeError(f"{model}: input blob '{self.input}' has shape {list(shape)}; "
                             f"classify needs N×C×H×W images with 1 or 3 channels")
        # The deploy net's batch size is how many images one forward takes.
        self.batch, self.channels, self.crop = max(1, shape[0]), shape[1], (shape[2], shape[3])
        self.mean = self._mean(mean_file, mean_value)
        self.scale = scale
        self.output = output or self._output_blob(model)
        if self.output not in self.net.blob_shapes:
            raise CaffeError(f"{model}: -blob {self.output}: the net has no blob of that name")
        count = int(np.prod(self.net.blob_shapes[self.output][1:], dtype=np.int64))
        self.labels = read_labels(labels_file, count) if labels_file else \
            [str(i) for i in range(count)]

    def _input_blob(self, model: str) -> str:
        inputs = [name for layer, tops in zip(self.net.layers, self.net.top_names)
                  if layer.param.type == "Input" for name in tops]
        if len(inputs) != 1:
            raise CaffeError(f"{model}: classify needs a deploy net with one Input blob; "
                             f"this net has {len(inputs)} ({', '.join(inputs) or 'none'})")
        return inputs[0]

    def _output_blob(self, model: str) -> str:
        outputs = self.net.output_names
        if len(outputs) != 1:
            raise CaffeError(f"{model}: the net has {len(outputs)} output blobs "
                             f"({', '.join(outputs)}); name the one to report with -blob")
        return outputs[0]

    def _mean(self, mean_file: str, mean_value: str) -> np.ndarray | None:
        if mean_value:
            return parse_mean_values(mean_value, self.channels)[:, None, None]
        if not mean_file:
            return None
        mean = load_mean_file(mean_file)
        if mean.shape[0] != self.channels:
            raise CaffeError(f"{mean_file}: the mean has {mean.shape[0]} channels; the net "
                             f"input has {self.channels}")
        return mean

    @property
    def image_dims(self) -> tuple[int, int]:
        """The size images are resized to before the mean and the crop."""
        if self.mean is not None and self.mean.shape[1] >= self.crop[0] and \
                self.mean.shape[2] >= self.crop[1]:
            return self.mean.shape[1], self.mean.shape[2]
        return self.crop

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """An H×W (gray) or H×W×3 (BGR) image in [0, 255] → C×H×W net input."""
        height, width = self.image_dims
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.shape[:2] != (height, width):
            pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)
        pixels = pixels.reshape(height, width, -1).transpose(2, 0, 1)
        if self.mean is not None:
            mean = self.mean
            if mean.shape[1:] not in ((1, 1), (height, width)):
                mean = cv2.resize(mean.transpose(1, 2, 0), (width, height),
                                  interpolation=cv2.INTER_LINEAR).reshape(height, width, -1)
                mean = mean.transpose(2, 0, 1)
            pixels = pixels - mean
        pixels = pixels * np.float32(self.scale)
        # Caffe's TEST-phase crop: the center, offsets rounded down.
        top, left = (height - self.crop[0]) // 2, (width - self.crop[1]) // 2
        return np.ascontiguousarray(pixels[:, top:top + self.crop[0], left:left + self.crop[1]])

    def load(self, path: str) -> np.ndarray:
        flag = cv2.IMREAD_GRAYSCALE if self.channels == 1 else cv2.IMREAD_COLOR
        image = cv2.imread(path, flag)
        if image is None:
            raise CaffeError(f"Could not open or find file {path}")
        return image

    def scores(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The output blob for a batch of images, one row per image."""
        batch = np.stack([self.preprocess(image) for image in images])
        self.net.reshape_input(self.input, tuple(batch.shape))
        self.net.reshape()
        self.net.set_blob_data(self.input, torch.from_numpy(batch))
        with torch.no_grad():
            self.net.forward()
            out = self.net.blob_data(self.output).detach().cpu().numpy()
        return out.reshape(len(images), -1)

    def classify(self, paths: Sequence[str], top_k: int = 5) -> list[list[Prediction]]:
        scores = np.concatenate([self.scores([self.load(path) for path in paths[i:i + self.batch]])
                                 for i in range(0, len(paths), self.batch)])
        results = []
        for row in scores:
            # Stable sort: equal scores keep the lower class index first.
            order = np.argsort(-row, kind="stable")[:max(1, top_k)]
            results.append([Prediction(int(i), self.labels[i], float(row[i])) for i in order])
        return results


def format_predictions(path: str, predictions: Sequence[Prediction]) -> str:
    """Caffe's cpp_classification output for one image."""
    lines = [f"---------- Prediction for {path} ----------"]
    lines += [f'{p.score:.4f} - "{p.label}"' for p in predictions]
    return "\n".join(lines)

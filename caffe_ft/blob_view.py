"""pycaffe's Blob as Python code sees it, written once: float32 `data` and
`diff` host arrays (assigning to either writes into the array in place), the
shape and the legacy num/channels/height/width. Subclasses say where the
arrays live: a net's blob or param (caffe_ft.pycaffe.net, kept in step with
the device), or a Python layer's own blob (caffe_ft.layers.python_layer)."""
from __future__ import annotations

from typing import Any

import numpy as np


class BlobView:
    def _host(self, diff: bool) -> np.ndarray:
        """The persistent host array of the data or the diff."""
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def reshape(self, *shape: int) -> None:
        raise NotImplementedError

    @property
    def data(self) -> np.ndarray:
        return self._host(diff=False)

    @data.setter
    def data(self, value: Any) -> None:
        self.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        return self._host(diff=True)

    @diff.setter
    def diff(self, value: Any) -> None:
        self.diff[...] = value

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def _legacy(self, axis: int) -> int:
        shape = self.shape
        return shape[axis] if axis < len(shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

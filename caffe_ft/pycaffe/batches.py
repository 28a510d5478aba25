"""pycaffe's Net.forward_all: run any number of inputs through a net whose
input blobs hold a fixed batch, a batch at a time (Classifier and Detector
feed their crops this way)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from caffe_ft.errors import CaffeError

if TYPE_CHECKING:
    from caffe_ft.pycaffe.net import Net


def batches(net: Net, arrays: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Split equally long arrays into the net's batches. As pycaffe, the batch
    size is the first blob's num, and a short last batch is filled up with
    zeros (forward_all drops their outputs)."""
    num = len(next(iter(arrays.values())))
    batch_size = next(iter(net.blobs.values())).shape[0]
    for start in range(0, num - num % batch_size, batch_size):
        yield {name: array[start:start + batch_size] for name, array in arrays.items()}
    remainder = num % batch_size
    if remainder:
        yield {name: np.concatenate([array[num - remainder:],
                                     np.zeros((batch_size - remainder, *array.shape[1:]),
                                              dtype=array.dtype)])
               for name, array in arrays.items()}


def forward_all(net: Net, blobs: Iterable[str] | None = None,
                **kwargs: np.ndarray) -> dict[str, np.ndarray]:
    """Forward every row of the input arrays; returns each output's (and each
    of `blobs`') rows, one per input row, as pycaffe's forward_all."""
    if not kwargs:
        raise CaffeError(f"forward_all needs the input arrays by blob name "
                         f"(the net's inputs: {net.inputs})")
    arrays = {name: np.asarray(value) for name, value in kwargs.items()}
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise CaffeError(f"forward_all: the input arrays have different lengths {lengths}")
    wanted = list(blobs or ())
    rows: dict[str, list[np.ndarray]] = {name: [] for name in {*net.outputs, *wanted}}
    for batch in batches(net, arrays):
        # The host arrays are the net's own and the next batch overwrites them.
        for name, array in net.forward(blobs=wanted, **batch).items():
            rows[name].extend(array.copy())
    num = next(iter(lengths.values()))
    return {name: np.asarray(out[:num]) for name, out in rows.items()}

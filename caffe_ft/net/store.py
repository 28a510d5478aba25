"""The net's blobs as pycaffe sees them: Caffe's SyncedMemory over torch tensors.

The net computes with device tensors; a Python user reads and writes host
(numpy) arrays. As in Caffe, each blob side (data or diff) that the user has
touched has one persistent host array:

- a read sees the latest device values (they are copied in after each pass
  that may have changed them), so a view taken before a forward shows the
  values after it, as pycaffe's does;
- a write reaches the device before the next forward, backward, update,
  save or test (`push`), by copying only what changed since the last sync.

Where the device tensor is itself a persistent CPU tensor (parameters, Input
blobs on the CPU), the host array is a view of it and nothing is copied.
`MIRROR_ALWAYS` makes every array a copy even on the CPU, so the GPU's path
is tested on machines without one.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

# Test hook: run the copying (GPU) path on the CPU too.
MIRROR_ALWAYS = False

Read = Callable[[], "torch.Tensor | None"]
Write = Callable[[torch.Tensor], None]


class Mirror:
    """One blob side's host array (Caffe's SyncedMemory with its head).

    `read` gives the device tensor (None: the side holds nothing yet, e.g. a
    diff before any backward) and `write` replaces or fills it; `shape` is the
    side's shape when it holds nothing."""

    def __init__(self, read: Read, write: Write, shape: Callable[[], tuple[int, ...]],
                 persistent: bool) -> None:
        self._read = read
        self._write = write
        self._shape = shape
        # Only a tensor that lives as long as the blob may be aliased.
        self._persistent = persistent
        self._host: np.ndarray | None = None
        self._synced: np.ndarray | None = None  # the host values at the last sync
        self._aliased_to: torch.Tensor | None = None

    def host(self) -> np.ndarray:
        """The persistent host array, holding the latest device values."""
        tensor = self._read()
        if self._can_alias(tensor):
            if self._aliased_to is not tensor:
                self._aliased_to = tensor
                self._host = tensor.detach().numpy()
            return self._host
        self._aliased_to = None
        if not self._written():
            self.pull(tensor)
        return self._host

    def pull(self, tensor: torch.Tensor | None = None) -> None:
        """Copy the device values into the host array (keeping the array
        itself, so views stay valid, unless the shape changed)."""
        if self._aliased_to is not None:
            return
        if tensor is None:
            tensor = self._read()
        if tensor is None:
            values = np.zeros(self._shape(), dtype=np.float32)
        else:
            values = tensor.detach().to("cpu", torch.float32).numpy()
        if self._host is None or self._host.shape != values.shape:
            self._host = np.array(values, dtype=np.float32, copy=True)
        else:
            self._host[...] = values
        self._synced = self._host.copy()

    def push(self) -> None:
        """Send host writes made since the last sync to the device."""
        if self._aliased_to is not None or not self._written():
            return
        tensor = self._read()
        device = tensor.device if tensor is not None else torch.device("cpu")
        self._write(torch.from_numpy(self._host.copy()).to(device))
        self._synced = self._host.copy()

    def _written(self) -> bool:
        """Whether the host array holds writes the device has not seen yet (the
        host is the head: a read must not overwrite them, a pass must push them)."""
        if self._host is None or self._synced is None:
            return False
        return self._synced.shape != self._host.shape or not np.array_equal(
            self._synced, self._host, equal_nan=True)

    def _can_alias(self, tensor: torch.Tensor | None) -> bool:
        return (not MIRROR_ALWAYS and self._persistent and tensor is not None
                and tensor.device.type == "cpu" and tensor.dtype == torch.float32
                and tensor.is_contiguous())


class Mirrors:
    """Every host array the user has taken, so a pass can bring them in step."""

    def __init__(self) -> None:
        self._by_key: dict[tuple, Mirror] = {}

    def get(self, key: tuple, make: Callable[[], Mirror]) -> Mirror:
        mirror = self._by_key.get(key)
        if mirror is None:
            mirror = self._by_key[key] = make()
        return mirror

    def push(self) -> None:
        for mirror in self._by_key.values():
            mirror.push()

    def pull(self) -> None:
        for mirror in self._by_key.values():
            mirror.pull()

"""Prefetching batches in worker processes: Caffe's prefetch thread, scaled out.

The data package's worker pool (caffe_ft.data.workers) computes batches 0, 1,
2, ... of a source (a source computes any batch from its index alone), so the
stream is the one a single process reading in order produces. As in Caffe's
BasePrefetchingDataLayer, a fixed set of batch buffers is reused: each
worker builds a batch in place in one of its shared-memory arenas; a
receiver thread in the main process takes the batches in index order and
copies each out of its arena (into pinned memory when the net is on CUDA,
for a non_blocking copy), which frees the arena. Fresh shared memory per
batch would cost more than decoding it. Each worker opens its database
handles itself, after the fork. This module holds what needs torch.
"""
from __future__ import annotations

import itertools
import math
import os
import queue
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from caffe_ft.data.sources import BatchStream, Shard, new_arrays
from caffe_ft.data.workers import Arena, OrderedWorkers, Region
from caffe_ft.errors import CaffeError

WORKERS_ENV = "CAFFE_FT_DATA_WORKERS"
# More workers than this rarely pay for one net: the decode rate they add is
# beyond what a single GPU consumes.
MAX_DEFAULT_WORKERS = 8
# How often a blocked receiver or consumer looks whether the pool is stopping.
_POLL_S = 1.0


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on `device`. To a GPU it goes through pinned memory with
    a non_blocking copy: a plain copy from pageable memory makes the host
    wait until the device has finished all the work queued before it."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def default_workers() -> int:
    """Workers per prefetching layer: $CAFFE_FT_DATA_WORKERS, else half the
    CPUs this process may use (the rest run the net and the main loop), at
    most MAX_DEFAULT_WORKERS. 0 reads in the calling process, on demand."""
    value = os.environ.get(WORKERS_ENV)
    if value is not None:
        try:
            workers = int(value)
        except ValueError:
            workers = -1
        if workers < 0:
            raise CaffeError(f"${WORKERS_ENV} must be a whole number ≥ 0 (0: no worker "
                             f"processes), got '{value}'")
        return workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(MAX_DEFAULT_WORKERS, max(1, (cpus or 1) // 2))


def train_shard() -> Shard:
    """This process's shard of a TRAIN stream: rank and world size under
    torch.distributed, else the whole stream."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Shard(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return Shard()


@dataclass(frozen=True)
class _Placed:
    """A batch built in its arena: float32 arrays at these regions and shapes."""
    arrays: list[tuple[Region, tuple[int, ...]]]


class _ArenaAllocator:
    """Gives load_batch its arrays inside the arena, so the batch is built
    where the main process reads it; a batch too large for the arena (images
    of varying size) gets new arrays and travels by value."""

    def __init__(self, arena: Arena) -> None:
        self.arena = arena
        self.placed: list[tuple[Region, tuple[int, ...]]] | None = None

    def __call__(self, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        sizes = [4 * math.prod(shape) for shape in shapes]
        taken = self.arena.take(sum(sizes))
        if taken is None:
            self.placed = None
            return new_arrays(shapes)
        block, memory = taken
        arrays, self.placed, offset = [], [], 0
        for shape, size in zip(shapes, sizes):
            arrays.append(np.frombuffer(memory[offset:offset + size], np.float32).reshape(shape))
            self.placed.append((Region(block.offset + offset, size), shape))
            offset += size
        return arrays


def _load_batch(source: BatchStream, index: int, arena: Arena) -> _Placed | list[np.ndarray]:
    """Runs in a worker: batch `index`, in the arena where it fits."""
    allocate = _ArenaAllocator(arena)
    arrays = source.load_batch(index, allocate)
    return arrays if allocate.placed is None else _Placed(allocate.placed)


class _Pool:
    """The worker pool over a source, and the receiver thread that puts its
    batches, in order, as tensors on `ready`."""

    def __init__(self, source: BatchStream, workers: int, arenas_per_worker: int,
                 arena_bytes: int, pin: bool) -> None:
        self.pin = pin
        self.arenas_per_worker = arenas_per_worker
        self.stopped = threading.Event()
        self.ready: queue.Queue[list[torch.Tensor] | Exception] = queue.Queue(maxsize=2)
        self.workers: OrderedWorkers[BatchStream, int, _Placed | list[np.ndarray]] = \
            OrderedWorkers(_load_batch, source, workers, "data prefetch", arena_bytes=arena_bytes,
                           held_per_worker=arenas_per_worker - 1)
        self.processes = self.workers.processes
        self.receiver = threading.Thread(target=self._receive, daemon=True,
                                         name="caffe_ft-data-receiver")
        self.receiver.start()

    def _batch(self, result: _Placed | list[np.ndarray], memory: memoryview) -> list[torch.Tensor]:
        """The batch's tensors, out of the arena: pinned for a non_blocking
        copy to the GPU, else a private copy, so a top never changes under
        its user when the arena is refilled."""
        if not isinstance(result, _Placed):
            tensors = [torch.from_numpy(array) for array in result]
            return [t.pin_memory() for t in tensors] if self.pin else tensors
        views = [np.frombuffer(region.of(memory), np.float32).reshape(shape)
                 for region, shape in result.arrays]
        if self.pin:
            return [torch.from_numpy(view).pin_memory() for view in views]
        # numpy's copy, not torch's clone: clone hands a batch to torch's
        # intra-op threads, which here cost the main process about four times
        # the CPU of one thread's memcpy.
        return [torch.from_numpy(view.copy()) for view in views]

    def _hand_over(self, item: list[torch.Tensor] | Exception) -> None:
        while not self.stopped.is_set():
            try:
                self.ready.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _receive(self) -> None:
        """Runs in the receiver thread: batch after batch in index order."""
        # An arena's batch is copied out before the next is asked for, so
        # every arena but the one being copied may be filling.
        batches = self.workers.map(itertools.count(), chunk=1, ahead=self.arenas_per_worker)
        try:
            for result, memory in batches:
                if self.stopped.is_set():
                    return
                self._hand_over(self._batch(result, memory))
        except Exception as err:  # a worker's failure or death is the consumer's to raise
            if not self.stopped.is_set():
                self._hand_over(err)

    def next(self) -> list[torch.Tensor]:
        while True:
            try:
                batch = self.ready.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self.receiver.is_alive():
                    raise RuntimeError("the data prefetch receiver thread stopped") from None
        if isinstance(batch, Exception):
            raise batch
        return batch

    def close(self) -> None:
        # The workers go first: the receiver, waiting on them, then sees them
        # die and ends, and only then may their pipes and arenas be freed.
        self.stopped.set()
        self.workers.stop()
        self.receiver.join()
        self.workers.close()


class Prefetcher:
    """The batches of `source` in order, from `workers` processes with about
    `depth` batches buffered (0 workers: read in the calling process when
    asked, Caffe's work without its prefetch thread)."""

    def __init__(self, source: BatchStream, workers: int, depth: int,
                 top_shapes: list[tuple[int, ...]]) -> None:
        self.source = source
        self.workers = workers
        self.depth = max(1, depth)
        # An arena holds a batch of the setup shapes; a larger one travels by value.
        self.arena_bytes = 4 * sum(math.prod(shape) for shape in top_shapes)
        self._pool: _Pool | None = None
        self._next_index = 0

    def next(self, device: torch.device) -> list[torch.Tensor]:
        """The next batch as tensors on `device`."""
        if self.workers == 0:
            arrays = self.source.load_batch(self._next_index)
            self._next_index += 1
            return [to_device(torch.from_numpy(array), device) for array in arrays]
        if self._pool is None:
            self._pool = _Pool(self.source, self.workers,
                               max(2, math.ceil(self.depth / self.workers)), self.arena_bytes,
                               pin=device.type == "cuda")
            # Stops the workers when the layer goes, or at exit.
            weakref.finalize(self, self._pool.close)
        return [tensor.to(device, non_blocking=self._pool.pin) for tensor in self._pool.next()]

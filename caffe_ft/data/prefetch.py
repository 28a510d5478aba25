"""Prefetching batches in worker processes: Caffe's prefetch thread, scaled out.

Worker w of W builds batches w, w + W, w + 2W, ... of a source (a source
computes any batch from its index alone), so the stream is the one a single
process reading in order produces. As in Caffe's BasePrefetchingDataLayer, a
fixed set of batch buffers is reused: each worker owns a few slots of shared
memory, fills a free one and hands its number back; a receiver thread in the
main process takes the batches in index order, copies each out of its slot
(into pinned memory when the net is on CUDA, for a non_blocking copy) and
frees the slot. Fresh shared memory per batch would cost more than decoding
it. Each worker opens its database handles itself, after the fork.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import queue
import signal
import sys
import threading
import traceback
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.multiprocessing  # noqa: F401  (lets spawned workers receive shared tensors)

from caffe_ft.data.sources import BatchStream, Shard, new_arrays
from caffe_ft.data.workers import opencv_single_threaded
from caffe_ft.errors import CaffeError

WORKERS_ENV = "CAFFE_FT_DATA_WORKERS"
# More workers than this rarely pay for one net: the decode rate they add is
# beyond what a single GPU consumes.
MAX_DEFAULT_WORKERS = 8
# How often a blocked worker or receiver looks whether its peer is still alive.
_POLL_S = 1.0


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
class _Failure:
    """An error in a worker: a CaffeError's message, or a bug's traceback."""
    message: str
    user_error: bool

    def exception(self) -> Exception:
        if self.user_error:
            return CaffeError(self.message)
        return RuntimeError(f"data prefetch worker failed:\n{self.message}")


@dataclass(frozen=True)
class _Filled:
    """Batch in slot `slot`: float32 arrays at these byte offsets and shapes."""
    slot: int
    arrays: list[tuple[int, tuple[int, ...]]]


@dataclass(frozen=True)
class _Oversized:
    """A batch larger than the slots (images of varying size): sent by value."""
    slot: int
    arrays: list[np.ndarray]


class _SlotAllocator:
    """Gives load_batch its arrays inside a slot, so the batch is built where
    the main process reads it; a batch too large for the slot gets new arrays."""

    def __init__(self, memory: np.ndarray) -> None:
        self.memory = memory
        self.placed: list[tuple[int, tuple[int, ...]]] | None = None

    def __call__(self, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        sizes = [4 * math.prod(shape) for shape in shapes]
        if sum(sizes) > self.memory.nbytes:
            self.placed = None
            return new_arrays(shapes)
        arrays, self.placed, offset = [], [], 0
        for shape, size in zip(shapes, sizes):
            arrays.append(self.memory[offset:offset + size].view(np.float32).reshape(shape))
            self.placed.append((offset, shape))
            offset += size
        return arrays


def _worker_loop(source: BatchStream, worker: int, workers: int, slots: list[torch.Tensor],
                 free: Any, full: Any, parent: int) -> None:
    # Ctrl-C reaches the whole process group; the main process stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    index = worker
    while True:
        try:
            slot = free.get(timeout=_POLL_S)
        except queue.Empty:
            if os.getppid() != parent:  # orphaned: the main process is gone
                return
            continue
        if slot is None:
            return
        allocator = _SlotAllocator(slots[slot].numpy())
        try:
            arrays = source.load_batch(index, allocator)
        except CaffeError as err:
            full.put(_Failure(str(err), user_error=True))
            return
        except Exception:  # a bug: its traceback must reach the main process
            full.put(_Failure(traceback.format_exc(), user_error=False))
            return
        if allocator.placed is None:
            full.put(_Oversized(slot, arrays))
        else:
            full.put(_Filled(slot, allocator.placed))
        index += workers


class _Pool:
    """Worker processes, their slots and queues, and the receiver thread that
    puts finished batches, in order, on `ready`."""

    def __init__(self, source: BatchStream, workers: int, slots_per_worker: int,
                 slot_bytes: int, pin: bool) -> None:
        # fork starts workers in milliseconds with everything imported; other
        # platforms, where fork is unsafe, get spawn (the source is picklable).
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        self.workers = workers
        self.pin = pin
        self.stopped = threading.Event()
        self.ready: queue.Queue[list[torch.Tensor] | _Failure] = queue.Queue(maxsize=2)
        self.slots = [[torch.empty(slot_bytes, dtype=torch.uint8).share_memory_()
                       for _ in range(slots_per_worker)] for _ in range(workers)]
        self.free = [context.Queue() for _ in range(workers)]
        self.full = [context.Queue() for _ in range(workers)]
        for worker in range(workers):
            for slot in range(slots_per_worker):
                self.free[worker].put(slot)
        self.processes = [
            context.Process(target=_worker_loop, daemon=True, name=f"caffe_ft-data-{worker}",
                            args=(source, worker, workers, self.slots[worker],
                                  self.free[worker], self.full[worker], os.getpid()))
            for worker in range(workers)]
        # The workers already fill the CPUs, so OpenCV runs single-threaded in
        # them; the setting is made around the fork because a child changing it
        # waits forever on the parent's OpenCV threads, which it does not have.
        with opencv_single_threaded():
            for process in self.processes:
                process.start()
        self.receiver = threading.Thread(target=self._receive, daemon=True,
                                         name="caffe_ft-data-receiver")
        self.receiver.start()

    def _take(self, worker: int) -> _Filled | _Oversized | _Failure | None:
        """The next message of `worker`; None once the pool is stopping."""
        while not self.stopped.is_set():
            try:
                return self.full[worker].get(timeout=_POLL_S)
            except queue.Empty:
                process = self.processes[worker]
                if not process.is_alive():
                    return _Failure(f"data prefetch worker {worker} (pid {process.pid}) exited "
                                    f"unexpectedly with code {process.exitcode}",
                                    user_error=False)
        return None

    def _batch(self, worker: int, message: _Filled | _Oversized) -> list[torch.Tensor]:
        """The batch's tensors, out of the slot: pinned for a non_blocking copy
        to the GPU, else a private copy, so a top never changes under its user
        when the slot is refilled."""
        if isinstance(message, _Oversized):
            tensors = [torch.from_numpy(array) for array in message.arrays]
            return [t.pin_memory() for t in tensors] if self.pin else tensors
        memory = self.slots[worker][message.slot]
        views = [memory[offset:offset + 4 * math.prod(shape)].view(torch.float32).view(shape)
                 for offset, shape in message.arrays]
        return [v.pin_memory() if self.pin else v.clone() for v in views]

    def _hand_over(self, item: list[torch.Tensor] | _Failure) -> None:
        while not self.stopped.is_set():
            try:
                self.ready.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _receive(self) -> None:
        """Runs in the receiver thread: batch after batch in index order."""
        index = 0
        while (message := self._take(index % self.workers)) is not None:
            if isinstance(message, _Failure):
                self._hand_over(message)
                return
            worker = index % self.workers
            batch = self._batch(worker, message)
            self.free[worker].put(message.slot)
            self._hand_over(batch)
            index += 1

    def next(self) -> list[torch.Tensor]:
        while True:
            try:
                batch = self.ready.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self.receiver.is_alive():
                    raise RuntimeError("the data prefetch receiver thread stopped") from None
        if isinstance(batch, _Failure):
            raise batch.exception()
        return batch

    def close(self) -> None:
        self.stopped.set()
        for free in self.free:
            free.put(None)
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()


class Prefetcher:
    """The batches of `source` in order, from `workers` processes with about
    `depth` batches buffered (0 workers: read in the calling process when
    asked, Caffe's work without its prefetch thread)."""

    def __init__(self, source: BatchStream, workers: int, depth: int,
                 top_shapes: list[tuple[int, ...]]) -> None:
        self.source = source
        self.workers = workers
        self.depth = max(1, depth)
        # Slots hold a batch of the setup shapes; a larger one travels by value.
        self.slot_bytes = 4 * sum(math.prod(shape) for shape in top_shapes)
        self._pool: _Pool | None = None
        self._next_index = 0

    def next(self, device: torch.device) -> list[torch.Tensor]:
        """The next batch as tensors on `device`."""
        if self.workers == 0:
            arrays = self.source.load_batch(self._next_index)
            self._next_index += 1
            return [torch.from_numpy(array).to(device) for array in arrays]
        if self._pool is None:
            self._pool = _Pool(self.source, self.workers,
                               max(2, math.ceil(self.depth / self.workers)), self.slot_bytes,
                               pin=device.type == "cuda")
            # Stops the workers when the layer goes, or at exit.
            weakref.finalize(self, self._pool.close)
        return [tensor.to(device, non_blocking=self._pool.pin) for tensor in self._pool.next()]

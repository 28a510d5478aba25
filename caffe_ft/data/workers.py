"""The data package's one pool of worker processes: an ordered parallel map
for CPU-bound work per item (decoding images for the LMDB builder, building
batches for the prefetching data layers) whose results must come back in
input order.

Items go out in chunks to whichever worker has room (each holds at most
`held_per_worker`, so none waits for a round trip), results are put back in
input order, and at most workers × ahead chunks are out between the oldest
unfinished chunk and the newest sent one, which bounds memory when one item
is slow. The input may be endless (a prefetcher's batch indices). Unlike
multiprocessing.Pool, a worker that dies (say, OpenCV crashing on an image)
is an error here, not a hang, and workers die with the main process.

Large results can skip the pipe: with `arena_bytes`, each worker owns a few
arenas of shared memory, and a chunk's results are written into the arena it
was sent with (a serialized Datum copied in, a batch built in place); the
main process reads them in place and reuses the arena once they are consumed.
Pickling 200 KB and more, pushing it through a 64 KB pipe and unpickling it
costs the main process more than the work it waits for.

This module must not import torch: the builder never loads it.
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import mmap
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Generic, Protocol, TypeVar

import cv2

from caffe_ft.data.heap import keep_freed_memory
from caffe_ft.errors import CaffeError

C = TypeVar("C")
T = TypeVar("T")
R = TypeVar("R")

_JOIN_SECONDS = 5.0
# linux/prctl.h: deliver a signal to this process when its parent thread ends.
_PR_SET_PDEATHSIG = 1
# What a chunk sent without an arena reads its regions from: nothing.
_NO_MEMORY = memoryview(bytearray())
# The main process's ends of every live pool's pipes. A forked worker closes
# them all: one left open in any worker keeps a worker from seeing EOF, and
# so from ending, when the main process dies.
_PARENT_ENDS: set[Connection] = set()


class WorkerDied(RuntimeError):
    """A worker process ended without being told to (killed, or crashed)."""


@dataclass(frozen=True)
class WorkerFailure:
    """An exception in a worker, as it reaches the main process: a
    CaffeError's message (the user's to fix), or a bug's traceback."""
    message: str
    user_error: bool

    def exception(self, name: str) -> Exception:
        if self.user_error:
            return CaffeError(self.message)
        return RuntimeError(f"{name} worker failed:\n{self.message}")


@dataclass(frozen=True)
class Region:
    """Where a result's bytes lie in the arena its chunk was sent with."""
    offset: int
    length: int

    def of(self, memory: memoryview) -> memoryview:
        return memory[self.offset:self.offset + self.length]


class Payload(Protocol):
    """A result's bytes that can write themselves into a buffer, saving a copy."""

    def __len__(self) -> int: ...

    def write_into(self, out: memoryview) -> None: ...

    def __bytes__(self) -> bytes: ...


class Arena:
    """The shared memory one chunk's results may be written into, handed out
    front to back, in a worker. Without shared memory it has no room, and
    every result travels through the pipe."""

    def __init__(self, memory: memoryview) -> None:
        self._memory = memory
        self._used = 0
        self._unwritten: list[tuple[bytes | bytearray | Payload, memoryview]] = []

    def take(self, size: int) -> tuple[Region, memoryview] | None:
        """`size` bytes to build a result in, and their region; None when
        they do not fit."""
        if self._used + size > len(self._memory):
            return None
        region = Region(self._used, size)
        self._used += size
        return region, region.of(self._memory)

    def put(self, payload: bytes | bytearray | Payload) -> Region | bytes:
        """The payload's place in the arena, or its bytes for the pipe when
        it does not fit. It is written there once the whole chunk is done:
        written (and freed) one by one, between image decodes, the payloads
        made glibc shrink and regrow the heap per image, tripling the
        workers' page faults."""
        taken = self.take(len(payload))
        if taken is None:
            return bytes(payload)
        region, out = taken
        self._unwritten.append((payload, out))
        return region

    def write(self) -> None:
        """Writes the payloads put() placed."""
        for payload, out in self._unwritten:
            if isinstance(payload, (bytes, bytearray)):
                out[:] = payload
            else:
                payload.write_into(out)
        self._unwritten.clear()


class OrderedWorkers(Generic[C, T, R]):
    """`count` processes that each compute func(context, item, arena); `func`
    must be a module-level function and `context` picklable. `name` says
    whose workers they are in messages.

    Results may hold Regions of their arena (Arena.take, Arena.put); map()
    yields each result with the memory its regions refer to, valid until the
    next result is taken. Arenas need fork (anonymous shared memory is
    inherited, not passed); elsewhere arenas have no room."""

    def __init__(self, func: Callable[[C, T, Arena], R], context: C, count: int, name: str,
                 arena_bytes: int = 0, held_per_worker: int = 2) -> None:
        ctx = _process_context()
        self.name = name
        self.held_per_worker = held_per_worker
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self._conns: list[Connection] = []
        use_arenas = arena_bytes > 0 and ctx.get_start_method() == "fork"
        # Arenas per worker: the chunks it holds and one received chunk that
        # waits for an earlier chunk or is being consumed.
        self._arenas: list[list[mmap.mmap]] = [
            [mmap.mmap(-1, arena_bytes) for _ in range(held_per_worker + 1)] if use_arenas else []
            for _ in range(count)]
        self._memories = [[memoryview(arena) for arena in arenas] for arenas in self._arenas]
        # Linux sends the death signal when the thread that started a worker
        # ends, not the process: only the main thread's end is the process's.
        death_signal = (sys.platform == "linux"
                        and threading.current_thread() is threading.main_thread())
        try:
            with opencv_single_threaded():
                for worker in range(count):
                    mine, theirs = ctx.Pipe()
                    self._conns.append(mine)
                    _PARENT_ENDS.add(mine)
                    proc = ctx.Process(target=_serve, daemon=True, name=f"caffe_ft-{name}-{worker}",
                                       args=(theirs, func, context, self._arenas[worker],
                                             os.getpid(), death_signal))
                    proc.start()
                    theirs.close()
                    self.processes.append(proc)
        except BaseException:
            self.close()
            raise

    def map(self, items: Iterable[T], chunk: int, ahead: int = 4) -> Iterator[tuple[R, memoryview]]:
        batches = enumerate(_batched(items, chunk))
        count = len(self._conns)
        window = count * ahead
        held = [0] * count  # chunks each worker holds
        free_arenas = [list(range(len(arenas))) for arenas in self._arenas]
        # Replies waiting for an earlier chunk's, with their worker: a failure
        # is raised in its turn, after the results before it.
        finished: dict[int, tuple[int, int | None, list[R] | WorkerFailure]] = {}
        sent = done = 0
        more = True

        def top_up() -> None:
            nonlocal sent, more
            for worker in range(count):
                while (more and held[worker] < self.held_per_worker and sent - done < window
                       and (free_arenas[worker] or not self._arenas[worker])):
                    batch = next(batches, None)
                    if batch is None:
                        more = False
                        break
                    arena = free_arenas[worker].pop() if self._arenas[worker] else None
                    try:
                        self._conns[worker].send((*batch, arena))
                    except ConnectionError:
                        raise self._died(worker) from None
                    held[worker] += 1
                    sent += 1

        top_up()
        while done < sent:
            if done not in finished:
                busy = [self._conns[worker] for worker in range(count) if held[worker]]
                for conn in wait(busy):
                    worker = self._conns.index(conn)  # type: ignore[arg-type]
                    index, arena, results = self._receive(worker)
                    held[worker] -= 1
                    finished[index] = (worker, arena, results)
                top_up()
                continue
            worker, arena, results = finished.pop(done)
            if isinstance(results, WorkerFailure):
                raise results.exception(self.name)
            done += 1
            top_up()
            memory = _NO_MEMORY if arena is None else self._memories[worker][arena]
            for result in results:
                yield result, memory
            if arena is not None:
                # The consumer asked for the next result: it is done with this
                # chunk's regions, so the arena may be refilled.
                free_arenas[worker].append(arena)
                top_up()

    def _receive(self, worker: int) -> tuple[int, int | None, list[R] | WorkerFailure]:
        try:
            return self._conns[worker].recv()  # type: ignore[no-any-return]
        except (EOFError, ConnectionError):
            raise self._died(worker) from None

    def _died(self, worker: int) -> WorkerDied:
        proc = self.processes[worker]
        proc.join(_JOIN_SECONDS)
        return WorkerDied(f"{self.name} worker {worker} (pid {proc.pid}) exited unexpectedly "
                          f"with code {proc.exitcode}")

    def stop(self) -> None:
        """Ends the workers; a thread blocked in map() then sees them die."""
        # SIGKILL, not SIGTERM: a worker holds nothing to clean up, and one
        # still starting may yet run the parent's Python SIGTERM handler,
        # inherited through fork, which would not end it.
        for proc in self.processes:
            proc.kill()
        for proc in self.processes:
            proc.join()

    def close(self) -> None:
        """Ends the workers and frees the pipes and arenas; call it once no
        thread is in map() any more."""
        self.stop()
        for conn in self._conns:
            _PARENT_ENDS.discard(conn)
            conn.close()
        for arenas, memories in zip(self._arenas, self._memories):
            for arena, memory in zip(arenas, memories):
                with contextlib.suppress(BufferError):  # a view the consumer still holds
                    memory.release()
                    arena.close()


def _serve(conn: Connection, func: Callable[[C, T, Arena], R], context: C,
           arenas: list[mmap.mmap], parent: int, death_signal: bool) -> None:
    # The main process's pipe ends, this worker's own among them, came along
    # with the fork.
    for other in _PARENT_ENDS:
        other.close()
    _PARENT_ENDS.clear()
    if death_signal:
        _die_with_parent(parent)
    # Ctrl-C is the main process's to handle; it stops the workers itself.
    # The parent's SIGTERM handler came along with the fork: drop it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A worker's items free and reallocate the same large buffers.
    keep_freed_memory()
    memories = [memoryview(arena) for arena in arenas]
    while True:
        try:
            index, batch, arena = conn.recv()
        except (EOFError, ConnectionError):
            return  # the main process is done, or gone
        try:
            room = Arena(_NO_MEMORY if arena is None else memories[arena])
            reply: tuple[int, int | None, list[R] | WorkerFailure] = (
                index, arena, [func(context, item, room) for item in batch])
            room.write()
        except CaffeError as err:
            reply = (index, arena, WorkerFailure(str(err), user_error=True))
        except Exception:  # a bug: hand its traceback to the main process
            reply = (index, arena, WorkerFailure(traceback.format_exc(), user_error=False))
        try:
            conn.send(reply)
        except ConnectionError:
            return


def _die_with_parent(parent: int) -> None:
    """Have Linux SIGKILL this worker when the main process ends, even by
    SIGKILL, so a worker busy with an item does not run on as an orphan (an
    idle one sees its pipe close). Without libc's prctl the pipe alone ends it."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the main process died before the signal was set
        os._exit(1)


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@contextlib.contextmanager
def opencv_single_threaded() -> Iterator[None]:
    """Fork workers while OpenCV is set to one thread, so each worker runs it
    single-threaded (the workers already use every core). Setting it in the
    worker instead can hang: a forked child inherits the parent's OpenCV
    thread pool without its threads."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def _process_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds, with everything imported; other
    # platforms (where fork is unsafe) get spawn.
    return multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")

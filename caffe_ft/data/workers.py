"""An ordered parallel map over worker processes, for CPU-bound work per item
(decoding images) whose results must come back in input order.

Items go out in chunks to whichever worker has room (each holds at most two,
so none waits for a round trip), results are put back in input order, and
at most workers × ahead chunks are out between the oldest unfinished chunk
and the newest sent one, which bounds memory when one image is slow. Unlike
multiprocessing.Pool, a worker that dies (say, OpenCV crashing on an image)
is an error here, not a hang.

Large byte results (serialized Datums of 200 KB and more) can skip the pipe:
with `arena_bytes`, each worker owns a few arenas of shared memory, and a
chunk's payloads are written into the arena it was sent with; the main
process reads them in place and reuses the arena once they are consumed.
Pickling a payload, pushing it through a 64 KB pipe and unpickling it costs
the main process more CPU than writing it to LMDB.
"""
from __future__ import annotations

import contextlib
import itertools
import mmap
import multiprocessing
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, Protocol, TypeVar

import cv2

from caffe_ft.errors import CaffeError

C = TypeVar("C")
T = TypeVar("T")
R = TypeVar("R")

_JOIN_SECONDS = 5.0
# One chunk being worked on and the next one already queued.
_HELD_PER_WORKER = 2
# Arenas per worker: the two chunks it holds and one received chunk that
# waits for an earlier chunk or is being consumed.
_ARENAS_PER_WORKER = _HELD_PER_WORKER + 1


@dataclass(frozen=True)
class _Region:
    """Where a payload lies in the arena its chunk was sent with."""
    offset: int
    length: int


class OrderedWorkers(Generic[C, T, R]):
    """`count` processes that each compute func(context, item); `func` must be
    a module-level function and `context` picklable.

    With `arena_bytes` > 0, func returns tuples whose first item is the
    payload: None, bytes, or a Payload (which writes itself into the arena,
    saving the copy). Payloads come back as memoryviews of shared memory,
    each valid until the next result is taken from map(). A payload that
    does not fit in its chunk's arena travels through the pipe as bytes.
    Arenas need fork (anonymous shared memory is inherited, not passed);
    elsewhere every payload uses the pipe."""

    def __init__(self, func: Callable[[C, T], R], context: C, count: int,
                 arena_bytes: int = 0) -> None:
        ctx = _process_context()
        self._conns: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        use_arenas = arena_bytes > 0 and ctx.get_start_method() == "fork"
        self._arenas: list[list[mmap.mmap]] = [
            [mmap.mmap(-1, arena_bytes) for _ in range(_ARENAS_PER_WORKER)] if use_arenas else []
            for _ in range(count)]
        try:
            with opencv_single_threaded():
                for worker in range(count):
                    mine, theirs = ctx.Pipe()
                    proc = ctx.Process(target=_serve, daemon=True,
                                       args=(theirs, list(self._conns), func, context,
                                             self._arenas[worker]))
                    proc.start()
                    theirs.close()
                    self._conns.append(mine)
                    self._procs.append(proc)
        except BaseException:
            self.close()
            raise

    def map(self, items: Iterable[T], chunk: int, ahead: int = 4) -> Iterator[R]:
        batches = enumerate(_batched(items, chunk))
        count = len(self._conns)
        window = count * ahead
        held = [0] * count  # chunks each worker holds
        free_arenas = [list(range(len(arenas))) for arenas in self._arenas]
        # Results waiting for an earlier chunk, with their worker and arena.
        finished: dict[int, tuple[int, int | None, list[Any]]] = {}
        sent = done = 0
        more = True

        def top_up() -> None:
            nonlocal sent, more
            for worker in range(count):
                while (more and held[worker] < _HELD_PER_WORKER and sent - done < window
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
            if done in finished:
                worker, arena, results = finished.pop(done)
                done += 1
                if arena is None:
                    top_up()
                    yield from results
                    continue
                view = memoryview(self._arenas[worker][arena])
                for result in results:
                    payload = result[0]
                    if isinstance(payload, _Region):
                        payload = view[payload.offset:payload.offset + payload.length]
                    yield (payload, *result[1:])  # type: ignore[misc]
                view.release()
                # The consumer asked for the next result: it is done with this
                # chunk's payloads, so the arena may be refilled.
                free_arenas[worker].append(arena)
                top_up()
                continue
            busy = [self._conns[worker] for worker in range(count) if held[worker]]
            for conn in wait(busy):
                worker = self._conns.index(conn)  # type: ignore[arg-type]
                index, arena, results = self._receive(worker)
                held[worker] -= 1
                finished[index] = (worker, arena, results)
            top_up()

    def _receive(self, worker: int) -> tuple[int, int | None, list[Any]]:
        try:
            index, arena, ok, payload = self._conns[worker].recv()
        except (EOFError, ConnectionError):
            raise self._died(worker) from None
        if not ok:
            raise payload
        return index, arena, payload

    def _died(self, worker: int) -> CaffeError:
        self._procs[worker].join(_JOIN_SECONDS)
        return CaffeError(f"a worker process died (exit code {self._procs[worker].exitcode}) "
                          f"while decoding images; one of the images in flight may crash "
                          f"OpenCV (run with -workers=1 to find it)")

    def close(self) -> None:
        # SIGKILL, not SIGTERM: a worker holds nothing to clean up, and one
        # still starting may yet run the parent's Python SIGTERM handler,
        # inherited through fork, which would not end it.
        for conn in self._conns:
            conn.close()
        for proc in self._procs:
            proc.kill()
        for proc in self._procs:
            proc.join()
        for arenas in self._arenas:
            for arena in arenas:
                with contextlib.suppress(BufferError):  # a view the consumer still holds
                    arena.close()


def _serve(conn: Connection, inherited: list[Connection], func: Callable[[C, T], R],
           context: C, arenas: list[mmap.mmap]) -> None:
    # The main process's ends of earlier workers' pipes came along with the
    # fork; holding them would keep those workers from seeing EOF if the
    # main process dies.
    for other in inherited:
        other.close()
    # Ctrl-C is the main process's to handle; it stops the workers itself.
    # The parent's SIGTERM handler came along with the fork: drop it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        try:
            index, batch, arena = conn.recv()
        except (EOFError, ConnectionError):
            return  # the main process is done, or gone
        try:
            results: list[Any] = [func(context, item) for item in batch]
            if arena is not None:
                results = _into_arena(results, arenas[arena])
            reply = (index, arena, True, results)
        except CaffeError as err:
            reply = (index, arena, False, err)
        except Exception:  # a bug: hand its traceback to the main process
            reply = (index, arena, False,
                     RuntimeError(f"in a worker process:\n{traceback.format_exc()}"))
        try:
            conn.send(reply)
        except ConnectionError:
            return


class Payload(Protocol):
    """A result's payload that can write its bytes into a buffer itself."""

    def __len__(self) -> int: ...

    def write_into(self, out: memoryview) -> None: ...

    def __bytes__(self) -> bytes: ...


def _into_arena(results: list[Any], arena: mmap.mmap) -> list[Any]:
    """Each result's payload written to the arena and replaced by its region,
    while they fit; the rest go through the pipe as bytes."""
    offset = 0
    packed = []
    with memoryview(arena) as view:
        for result in results:
            payload: bytes | bytearray | Payload | None = result[0]
            if payload is not None and offset + len(payload) <= len(arena):
                if isinstance(payload, (bytes, bytearray)):
                    view[offset:offset + len(payload)] = payload
                else:
                    payload.write_into(view[offset:])
                result = (_Region(offset, len(payload)), *result[1:])
                offset += len(payload)
            elif payload is not None and not isinstance(payload, (bytes, bytearray)):
                result = (bytes(payload), *result[1:])
            packed.append(result)
    return packed


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

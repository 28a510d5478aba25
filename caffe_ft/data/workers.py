"""An ordered parallel map over worker processes, for CPU-bound work per item
(decoding images) whose results must come back in input order.

Items go out in chunks to whichever worker has room (each holds at most two,
so none waits for a round trip), results are put back in input order, and
at most workers × ahead chunks are out between the oldest unfinished chunk
and the newest sent one, which bounds memory when one image is slow. Unlike
multiprocessing.Pool, a worker that dies (say, OpenCV crashing on an image)
is an error here, not a hang.
"""
from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Generic, TypeVar

import cv2

from caffe_ft.errors import CaffeError

C = TypeVar("C")
T = TypeVar("T")
R = TypeVar("R")

_JOIN_SECONDS = 5.0
# One chunk being worked on and the next one already queued.
_HELD_PER_WORKER = 2


class OrderedWorkers(Generic[C, T, R]):
    """`count` processes that each compute func(context, item); `func` must be
    a module-level function and `context` picklable."""

    def __init__(self, func: Callable[[C, T], R], context: C, count: int) -> None:
        ctx = _process_context()
        self._conns: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        try:
            with _opencv_single_threaded():
                for _ in range(count):
                    mine, theirs = ctx.Pipe()
                    proc = ctx.Process(target=_serve, daemon=True,
                                       args=(theirs, list(self._conns), func, context))
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
        finished: dict[int, list[R]] = {}  # results waiting for an earlier chunk
        sent = done = 0
        more = True

        def top_up() -> None:
            nonlocal sent, more
            for worker in range(count):
                while more and held[worker] < _HELD_PER_WORKER and sent - done < window:
                    batch = next(batches, None)
                    if batch is None:
                        more = False
                        break
                    try:
                        self._conns[worker].send(batch)
                    except ConnectionError:
                        raise self._died(worker) from None
                    held[worker] += 1
                    sent += 1

        top_up()
        while done < sent:
            if done in finished:
                results = finished.pop(done)
                done += 1
                top_up()
                yield from results
                continue
            busy = [self._conns[worker] for worker in range(count) if held[worker]]
            for conn in wait(busy):
                worker = self._conns.index(conn)  # type: ignore[arg-type]
                index, results = self._receive(worker)
                held[worker] -= 1
                finished[index] = results
            top_up()

    def _receive(self, worker: int) -> tuple[int, list[R]]:
        try:
            index, ok, payload = self._conns[worker].recv()
        except (EOFError, ConnectionError):
            raise self._died(worker) from None
        if not ok:
            raise payload
        return index, payload

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


def _serve(conn: Connection, inherited: list[Connection], func: Callable[[C, T], R],
           context: C) -> None:
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
            index, batch = conn.recv()
        except (EOFError, ConnectionError):
            return  # the main process is done, or gone
        try:
            reply = (index, True, [func(context, item) for item in batch])
        except CaffeError as err:
            reply = (index, False, err)
        except Exception:  # a bug: hand its traceback to the main process
            reply = (index, False, RuntimeError(f"in a worker process:\n{traceback.format_exc()}"))
        try:
            conn.send(reply)
        except ConnectionError:
            return


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@contextlib.contextmanager
def _opencv_single_threaded() -> Iterator[None]:
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

"""The data package's worker pool (caffe_ft.data.workers): results in input
order, payloads through shared arenas, errors and deaths reported, and no
worker outliving a main process that is SIGKILLed."""
from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from caffe_ft.data import workers
from caffe_ft.data.workers import Arena, OrderedWorkers, Region
from caffe_ft.errors import CaffeError

REPO = Path(__file__).parent.parent


def _square_unless(stop_at: int, item: int, arena: Arena) -> int:
    """Worker function: squares, finishing out of order; dies or fails at `stop_at`."""
    time.sleep((item * 7919 % 13) / 4000)
    if item == stop_at:
        raise CaffeError(f"item {item} is bad")
    if item == -stop_at:
        os.kill(os.getpid(), signal.SIGKILL)
    if item == stop_at + 1:
        raise ValueError("a bug")
    return item * item


@pytest.mark.parametrize("chunk", [1, 3])
def test_workers_return_results_in_input_order(chunk: int) -> None:
    pool = OrderedWorkers(_square_unless, 10_000, 3, "test")
    try:
        got = [result for result, _ in pool.map(range(60), chunk, ahead=2)]
    finally:
        pool.close()
    assert got == [i * i for i in range(60)]


def _sized_payload(_: None, size: int, arena: Arena) -> tuple[Region | bytes, int]:
    return arena.put(bytes([size % 251]) * size), size


def test_payloads_through_shared_arenas_or_the_pipe_when_too_big() -> None:
    # 100-byte arenas: payloads of a chunk fill it in turn, the rest overflow.
    pool = OrderedWorkers(_sized_payload, None, 2, "test", arena_bytes=100)
    sizes = [0, 30, 60, 99, 101, 250, 5, 50, 40, 70] * 3
    got, shared = [], 0
    try:
        for (payload, size), memory in pool.map(sizes, 3, ahead=2):
            if isinstance(payload, Region):
                shared += 1
                payload = payload.of(memory)
            got.append((bytes(payload), size))
    finally:
        pool.close()
    assert got == [(bytes([size % 251]) * size, size) for size in sizes]
    assert 0 < shared < len(sizes)


def test_worker_errors_and_deaths_reach_the_main_process() -> None:
    pool = OrderedWorkers(_square_unless, 17, 2, "test")
    try:
        with pytest.raises(CaffeError, match="item 17 is bad"):
            list(pool.map(range(40), 2))
    finally:
        pool.close()
    pool = OrderedWorkers(_square_unless, 17, 2, "test")
    try:  # a bug's traceback comes along
        with pytest.raises(RuntimeError, match=r"(?s)test worker failed:.*ValueError: a bug"):
            list(pool.map(range(18, 40), 2))
    finally:
        pool.close()
    pool = OrderedWorkers(_square_unless, -9, 2, "test")
    try:
        with pytest.raises(RuntimeError, match=r"test worker \d \(pid \d+\) exited unexpectedly "
                                               r"with code -9"):
            list(pool.map(range(40), 2))
    finally:
        pool.close()


def test_a_failure_comes_after_the_results_before_it() -> None:
    pool = OrderedWorkers(_square_unless, 17, 3, "test")
    got = []
    try:
        with pytest.raises(CaffeError, match="item 17 is bad"):
            for result, _ in pool.map(itertools.count(), 1):
                got.append(result)
    finally:
        pool.close()
    assert got == [i * i for i in range(17)]


def test_without_fork_payloads_travel_through_the_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    # As on platforms other than Linux: spawned workers, arenas without room.
    monkeypatch.setattr(workers, "_process_context", lambda: multiprocessing.get_context("spawn"))
    pool = OrderedWorkers(_sized_payload, None, 2, "test", arena_bytes=100)
    sizes = [0, 30, 60, 99]
    try:
        got = [payload for (payload, _), _ in pool.map(sizes, 2)]
    finally:
        pool.close()
    # Only the empty payload fits.
    assert got == [Region(0, 0)] + [bytes([size % 251]) * size for size in sizes[1:]]


# A main process that starts a pool (from its main thread, or another one),
# prints the workers' pids once they are busy (sleeping) or idle (done), and
# waits to be killed.
_MAIN = textwrap.dedent("""
    import sys, threading, time
    from caffe_ft.data.workers import OrderedWorkers

    def work(seconds, item, arena):
        time.sleep(seconds)
        return item

    def run():
        seconds = 600.0 if sys.argv[2] == "busy" else 0.0
        pool = OrderedWorkers(work, seconds, 2, "test")
        results = pool.map(range(4), 1)
        if seconds:
            threading.Thread(target=list, args=(results,), daemon=True).start()
            time.sleep(0.5)  # the workers have their items
        else:
            list(results)
        print(*(proc.pid for proc in pool.processes), flush=True)
        time.sleep(600)

    if sys.argv[1] == "main":
        run()
    else:
        threading.Thread(target=run).start()
""")


def _running(pid: int) -> bool:
    """Whether `pid` runs: a zombie waiting for init to reap it has ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("thread, state", [("main", "busy"), ("main", "idle"),
                                           ("other", "idle")])
def test_workers_die_with_a_killed_main_process(thread: str, state: str) -> None:
    # Busy workers need Linux's parent-death signal (set for pools the main
    # thread starts); idle ones also see their pipe close.
    main = subprocess.Popen([sys.executable, "-c", _MAIN, thread, state], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, text=True)
    try:
        assert main.stdout is not None
        workers = [int(pid) for pid in main.stdout.readline().split()]
        assert len(workers) == 2 and all(_running(pid) for pid in workers)
    finally:
        main.kill()
        main.wait()
    deadline = time.monotonic() + 5
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in workers if _running(pid)]
    for pid in left:  # not to leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert left == []


# Like LMDB's dirty pages at each commit: many blocks over glibc's first mmap
# threshold, all freed at once, again and again.
_CHURN = textwrap.dedent("""
    import resource, sys
    from caffe_ft.data.heap import keep_freed_memory
    if sys.argv[1] == "keep" and not keep_freed_memory():
        sys.exit(3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        blocks = [bytearray(400_000) for _ in range(40)]
        del blocks
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_keep_freed_memory_stops_refaulting_freed_buffers() -> None:
    def faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        if run.returncode == 3:
            pytest.skip("the C library is not glibc")
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    default, kept = faults("default"), faults("keep")
    # 10 rounds of 16 MB are 40,000 pages; kept, only the first round faults.
    assert kept * 3 < default, (kept, default)

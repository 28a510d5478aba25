"""`caffe_ft train -gpu 0,1` without torchrun: start one process per GPU,
as torchrun would, and wait for them.

Each rank re-runs the same `caffe_ft` command with torch.distributed's
environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so a
rank trains exactly as it would under torchrun. The ranks run in their own
session: a Ctrl-C or SIGHUP reaches this launcher only, which hands it to
rank 0, and rank 0 shares the resulting action with every rank (as Caffe's
root solver does). SIGTERM goes to every rank. When one rank fails the
others are stopped and its exit code is returned.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from caffe_ft.errors import CaffeError
from caffe_ft.glog import logger

_POLL_SECONDS = 0.2
# How long ranks get to leave after SIGTERM before they are killed.
_STOP_SECONDS = 10.0


def free_port() -> int:
    """A TCP port on this host nobody listens on now (the rendezvous port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank_environment(rank: int, world_size: int, port: int) -> dict[str, str]:
    """torchrun's variables for one rank of a single-host run."""
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _die_with_parent() -> None:
    # Linux: a rank whose launcher is killed (SIGKILL gives it no chance to
    # stop them) gets SIGTERM instead of training on unattended.
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def spawn_ranks(argv: Sequence[str], world_size: int) -> int:
    """Run `python -m caffe_ft ARGV` as `world_size` ranks; the first
    non-zero exit code among them, or 0."""
    port = free_port()
    logger.info("Starting %d training processes, one per GPU (rendezvous on 127.0.0.1:%d)",
                world_size, port)
    command = [sys.executable, "-m", "caffe_ft", *argv]
    ranks: list[subprocess.Popen[bytes]] = []
    previous = {signum: signal.getsignal(signum) for signum in _forwarded_signals()}

    def forward(signum: int, frame: FrameType | None) -> None:
        targets = ranks if signum == signal.SIGTERM else ranks[:1]
        for proc in targets:
            if proc.poll() is None:
                proc.send_signal(signum)

    for signum in previous:
        signal.signal(signum, forward)
    try:
        for rank in range(world_size):
            try:
                ranks.append(subprocess.Popen(command, env=rank_environment(rank, world_size, port),
                                              start_new_session=True,
                                              preexec_fn=_die_with_parent))
            except OSError as err:
                raise CaffeError(f"Cannot start training process {rank} ({command[0]}): "
                                 f"{err}") from None
        return _wait(ranks)
    finally:
        _stop(ranks)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _forwarded_signals() -> list[int]:
    names = ("SIGINT", "SIGHUP", "SIGTERM")
    return [getattr(signal, name) for name in names if hasattr(signal, name)]


def _wait(ranks: list[subprocess.Popen[bytes]]) -> int:
    """Wait for every rank; on the first failure, return its exit code (the
    caller stops the rest, which would otherwise wait on it forever)."""
    while True:
        codes = [proc.poll() for proc in ranks]
        for rank, code in enumerate(codes):
            if code:
                logger.error("Training process %d exited with code %d; stopping the others",
                             rank, code)
                # Killed by signal N: the shell's 128 + N.
                return code if code > 0 else 128 - code
        if all(code == 0 for code in codes):
            return 0
        time.sleep(_POLL_SECONDS)


def _stop(ranks: list[subprocess.Popen[bytes]]) -> None:
    running = [proc for proc in ranks if proc.poll() is None]
    for proc in running:
        proc.terminate()
    deadline = time.monotonic() + _STOP_SECONDS
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

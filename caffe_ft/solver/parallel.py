"""Data-parallel training over processes: Caffe's multi-GPU training (NCCL
in parallel.cpp) on torch.distributed (nccl for CUDA, gloo for CPU).

As in Caffe: every rank builds the solver with random_seed + rank; rank 0's
weights are broadcast before training; each TRAIN Data layer serves items
rank, rank + N, ... (so N ranks of batch B see what one process of batch
N·B would); after backward the diffs are summed and scaled by 1/N; every
rank applies the same update. Only rank 0 tests, displays and snapshots.
A stop or snapshot requested on rank 0 (a signal) travels with the diffs'
all-reduce to every rank, so all stop after the same iteration.
"""
from __future__ import annotations

import os
from collections import deque
from datetime import timedelta

import torch
import torch.distributed as dist

from caffe_ft.errors import CaffeError
from caffe_ft.solver.signals import SolverAction
from caffe_ft.solver.solver import Solver

WORLD_SIZE_ENV = "WORLD_SIZE"


def launched_world_size() -> int:
    """How many processes the launcher (torchrun, or -gpu with several ids)
    started for this run; 1 when run alone."""
    try:
        return int(os.environ.get(WORLD_SIZE_ENV, "1"))
    except ValueError:
        raise CaffeError(f"${WORLD_SIZE_ENV} must be a number, got "
                         f"'{os.environ[WORLD_SIZE_ENV]}'") from None


def join_process_group(device: torch.device) -> int:
    """Join the group described by the launcher's environment (RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT); returns this process's rank."""
    if not dist.is_initialized():
        if device.type == "cuda":
            # NCCL builds its communicator on the current device: make it
            # this rank's GPU, not GPU 0 for every rank.
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return dist.get_rank()


def leave_process_group() -> None:
    """Leave the group before the interpreter shuts down. Gloo's worker
    threads still hold the tensors of finished work; freed during
    interpreter teardown they abort the process (SIGABRT) at random."""
    if dist.is_initialized():
        dist.destroy_process_group()


class _Carried:
    """One all-reduced request value, copied to the host without waiting."""

    def __init__(self, value: torch.Tensor) -> None:
        self._event: torch.cuda.Event | None = None
        if value.is_cuda:
            self._host = torch.empty(1, dtype=value.dtype, pin_memory=True)
            self._host.copy_(value, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = value.clone()

    def action(self) -> SolverAction:
        if self._event is not None:
            self._event.synchronize()
        return SolverAction(int(self._host[0]))


class DataParallel:
    """Keeps one solver in step with its peers on the other ranks."""

    def __init__(self, solver: Solver) -> None:
        self.solver = solver
        self.world_size = dist.get_world_size()
        # This process's own requests (the signal handler); only rank 0's count.
        self._signals = solver.action_request
        # A stop rank 0 saw while testing, kept for the next all-reduce.
        self._held = SolverAction.NONE
        # Rank 0's request as each all-reduce delivered it, on its way to the host.
        self._carried: deque[_Carried] = deque()
        if dist.get_rank() == 0:
            solver.action_request = self._request_while_testing
        solver.gradient_hooks.append(self.average_gradients)
        solver.action_sync = self.shared_action
        solver.divergence.agree = self.any_rank

    def broadcast_weights(self) -> None:
        """Rank 0's learnable blobs (and solver history, equal on every rank
        once each has restored the same snapshot) to every rank."""
        with torch.no_grad():
            for p in self.solver.params:
                dist.broadcast(p.blob.data, src=0)

    def average_gradients(self, solver: Solver) -> None:
        """Sum the diffs over ranks and scale by 1/N, in one all-reduce that
        also carries rank 0's stop or snapshot request (the other ranks add
        0), so sharing it costs no collective of its own. A param with no
        diff (frozen, or out of every loss's reach) has a diff of 0 on every
        rank, the same net on each: it is left out."""
        grads = [p.blob.grad for p in solver.params if p.blob.grad is not None]
        dtype = grads[0].dtype if grads else torch.float32
        # torch.full fills on the device: no host copy, so no wait for the stream.
        request = torch.full((1,), float(self._outgoing_request()), dtype=dtype,
                             device=solver.device)
        flat = torch.cat([*(g.reshape(-1) for g in grads), request])
        dist.all_reduce(flat)
        self._carried.append(_Carried(flat[-1:]))
        if not grads:
            return
        flat.mul_(1.0 / self.world_size)
        parts = flat[:-1].split([g.numel() for g in grads])
        torch._foreach_copy_(grads, [part.view_as(g) for part, g in zip(parts, grads)])

    def shared_action(self) -> SolverAction:
        """The action every rank takes after this update: the request the
        previous iteration's all-reduce carried. Reading the value of the
        latest one would wait for the device to finish it; the previous one
        is long done. So a signal acts one iteration later than alone."""
        if len(self._carried) < 2:
            return SolverAction.NONE
        return self._carried.popleft().action()

    def any_rank(self, diverged: bool) -> bool:
        """Whether any rank's loss is not finite (-stop_on_nan asks before
        every update, and reads every loss anyway): all ranks stop before the
        update, rather than one leaving the others in the all-reduce."""
        flag = torch.full((1,), int(diverged), dtype=torch.int32, device=self.solver.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _outgoing_request(self) -> SolverAction:
        if dist.get_rank() != 0:
            return SolverAction.NONE
        request = self._held or self._signals()
        self._held = SolverAction.NONE
        return request

    def _request_while_testing(self) -> SolverAction:
        """Rank 0's request between test batches. A snapshot is rank 0's own
        business; a stop here would leave the other ranks waiting in the next
        all-reduce, so it goes with that all-reduce and the test finishes."""
        request = self._signals()
        if request == SolverAction.STOP:
            self._held = request
            return SolverAction.NONE
        return request

    def train(self) -> None:
        """Rank 0 solves (tests, display, snapshots); the others only step."""
        self.broadcast_weights()
        if dist.get_rank() == 0:
            self.solver.solve()
        else:
            self.solver.step(self.solver.param.max_iter - self.solver.iter)

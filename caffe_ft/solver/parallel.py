"""Data-parallel training over processes: Caffe's multi-GPU training (NCCL
in parallel.cpp) on torch.distributed (nccl for CUDA, gloo for CPU).

As in Caffe: every rank builds the solver with random_seed + rank; rank 0's
weights are broadcast before training; each TRAIN Data layer serves items
rank, rank + N, ... (so N ranks of batch B see what one process of batch
N·B would); after backward the diffs are summed and scaled by 1/N; every
rank applies the same update. Only rank 0 tests, displays and snapshots.
A stop requested on rank 0 is passed to every rank so all leave together.
"""
from __future__ import annotations

import os
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


class DataParallel:
    """Keeps one solver in step with its peers on the other ranks."""

    def __init__(self, solver: Solver) -> None:
        self.solver = solver
        self.world_size = dist.get_world_size()
        # Signals travel between hosts over gloo, so sharing one never waits
        # for a GPU stream (a broadcast over NCCL would, to read its value).
        self._signal_group = (dist.new_group(backend="gloo")
                              if dist.get_backend() != "gloo" else None)
        solver.gradient_hooks.append(self.average_gradients)
        solver.action_sync = self.share_action

    def broadcast_weights(self) -> None:
        """Rank 0's learnable blobs (and solver history, equal on every rank
        once each has restored the same snapshot) to every rank."""
        with torch.no_grad():
            for p in self.solver.params:
                dist.broadcast(p.blob.data, src=0)

    def average_gradients(self, solver: Solver) -> None:
        """Sum the diffs over ranks and scale by 1/N, in one all-reduce. A
        param with no diff (frozen, or out of every loss's reach) has a diff
        of 0 on every rank, the same net on each: it is left out."""
        grads = [p.blob.grad for p in solver.params if p.blob.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.mul_(1.0 / self.world_size)
        parts = flat.split([g.numel() for g in grads])
        torch._foreach_copy_(grads, [part.view_as(g) for part, g in zip(parts, grads)])

    def share_action(self, action: SolverAction) -> SolverAction:
        """Rank 0's signal request, seen by every rank. Each rank learns
        whether one is pending only from rank 0, so this runs every
        iteration, on the host: no rank waits for its device."""
        value = torch.tensor([int(action)], dtype=torch.int64)
        dist.broadcast(value, src=0, group=self._signal_group)
        return SolverAction(int(value[0]))

    def train(self) -> None:
        """Rank 0 solves (tests, display, snapshots); the others only step."""
        self.broadcast_weights()
        if dist.get_rank() == 0:
            self.solver.solve()
        else:
            self.solver.step(self.solver.param.max_iter - self.solver.iter)

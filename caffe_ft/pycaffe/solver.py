"""pycaffe's solvers: caffe.get_solver(file), caffe.SGDSolver(file) and the
other update rules' classes, the multi-process settings (solver_count,
solver_rank, NCCL) and caffe.Timer, over caffe_ft's Solver.

As in _caffe.cpp, `SGDSolver(file)`, `AdamSolver(file)`, ... train with their
own class's update rule whatever the file's `type` says, while
`get_solver(file)` builds the class the file's `type` names.

`.net` and `.test_nets` are pycaffe Nets over the solver's live nets, so
blob writes, net surgery and per-layer callbacks through them act in the
run. After a step every blob's diff is the last iteration's, as Caffe's
layer-by-layer backward leaves it: with per-layer callbacks the backward
goes layer by layer, as Caffe's; without, it is one autograd pass that keeps
each blob's diff (its first producer's gradient), which costs a GPU step
far less host time.
"""
from __future__ import annotations

import atexit
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, ClassVar

import torch
import torch.distributed as dist

from caffe_ft.errors import CaffeError
from caffe_ft.glog import logger
from caffe_ft.proto import caffe_pb2
from caffe_ft.pycaffe import mode
from caffe_ft.pycaffe.net import Net
from caffe_ft.solver.launch import free_port
from caffe_ft.solver.lr_policy import learning_rate
from caffe_ft.solver.parallel import DataParallel, leave_process_group
from caffe_ft.solver.solver import Solver as CoreSolver
from caffe_ft.solver.update_rules import RULES
from caffe_ft.upgrade import read_solver_text

# Caffe's process-wide multi-GPU settings (Caffe::solver_count and friends).
_solver_count = 1
_solver_rank = 0
_multiprocess = False
# Where NCCL.new_uid's rendezvous is published, so the processes a script
# starts after calling it (fork or spawn) find it when they build a solver.
UID_ENV = "CAFFE_FT_NCCL_UID"


def solver_count() -> int:
    return _solver_count


def set_solver_count(count: int) -> None:
    global _solver_count
    if count < 1:
        raise CaffeError(f"set_solver_count: the count must be ≥ 1, got {count}")
    _solver_count = int(count)


def solver_rank() -> int:
    return _solver_rank


def set_solver_rank(rank: int) -> None:
    global _solver_rank
    if rank < 0:
        raise CaffeError(f"set_solver_rank: the rank must be ≥ 0, got {rank}")
    _solver_rank = int(rank)


def set_multiprocess(multiprocess: bool) -> None:
    """Recorded as Caffe records it; every caffe_ft solver process has its
    own memory, so nothing else depends on it."""
    global _multiprocess
    _multiprocess = bool(multiprocess)


def has_nccl() -> bool:
    """Whether caffe.NCCL can join solvers across processes: caffe_ft's NCCL
    runs on torch.distributed (nccl between GPUs, gloo on the CPU)."""
    return dist.is_available()


class Timer:
    """pycaffe's Timer: start(), stop(), and ms, the milliseconds between the
    last start and stop (a running timer is stopped by reading it). On the CPU
    Caffe counts whole milliseconds; on a GPU it times the device's stream."""

    def __init__(self) -> None:
        self._running = False
        self._has_run = False
        self._start = 0.0
        self._stop = 0.0
        self._cuda = mode.device().type == "cuda"

    def start(self) -> None:
        if not self._running:
            self._start = self._now()
            self._running = True
            self._has_run = True

    def stop(self) -> None:
        if self._running:
            self._stop = self._now()
            self._running = False

    @property
    def ms(self) -> float:
        if not self._has_run:
            logger.warning("Timer has never been run before reading time.")
            return 0.0
        self.stop()
        elapsed = (self._stop - self._start) * 1000.0
        return elapsed if self._cuda else float(int(elapsed))

    def _now(self) -> float:
        if self._cuda:
            # Work queued on the device counts up to the moment it is read.
            torch.cuda.synchronize()
        return time.perf_counter()


class Solver:
    """pycaffe's caffe.Solver, the base of the update rules' classes; made by
    get_solver or by one of those classes."""

    # The update rule a class forces; "" takes the file's `type`.
    solver_type: ClassVar[str] = ""

    def __init__(self, filename: str | os.PathLike[str]) -> None:
        path = os.fspath(filename)
        self._start(read_solver_text(path), path)

    def _start(self, param: caffe_pb2.SolverParameter, path: str) -> None:
        if _solver_count > 1:
            _join_group(_solver_count, _solver_rank, os.environ.get(UID_ENV, ""))
        self._solver = CoreSolver(param, path, mode.device(), rank=_solver_rank,
                                  solver_type=self.solver_type)
        # The nets never change, so their pycaffe views are made once.
        self._net = Net.over(self._solver.net)
        self._test_nets = [Net.over(net) for net in self._solver.test_nets]

    # -- pycaffe's members ---------------------------------------------
    @property
    def net(self) -> Net:
        return self._net

    @property
    def test_nets(self) -> list[Net]:
        return list(self._test_nets)

    @property
    def iter(self) -> int:
        return self._solver.iter

    @property
    def param(self) -> caffe_pb2.SolverParameter:
        """The solver's live parameters: a changed base_lr applies from the next update."""
        return self._solver.param

    def step(self, iters: int) -> None:
        self._solver.step(int(iters))

    def solve(self, resume_file: str | None = None) -> None:
        self._solver.solve(resume_file)

    def restore(self, state_file: str) -> None:
        self._solver.restore(os.fspath(state_file))

    def snapshot(self) -> None:
        self._solver.snapshot()

    def apply_update(self) -> None:
        self._solver.apply_update()

    def share_weights(self, net: Net) -> None:
        """Make `net` use this solver's train weights (ShareTrainedLayersWith)."""
        net.torch_module.share_trained_layers_with(self._solver.net)

    def add_callback(self, on_start: Callable[[], Any] | NCCL,
                     on_gradients_ready: Callable[[], Any] | None = None) -> None:
        """add_callback(on_start, on_gradients_ready): on_start runs at each
        iteration's start (after its test, before forward/backward),
        on_gradients_ready once the diffs are complete, before the update.
        add_callback(nccl) makes the update use every process's gradients."""
        if isinstance(on_start, NCCL) and on_gradients_ready is None:
            on_start.reduce_gradients_of(self._solver)
            return
        if not callable(on_start) or not callable(on_gradients_ready):
            raise CaffeError("add_callback takes two callables (on_start, on_gradients_ready) "
                             "or a caffe.NCCL")
        self._solver.start_hooks.append(lambda _: on_start())
        self._solver.gradient_hooks.append(lambda _: on_gradients_ready())

    @property
    def core(self) -> CoreSolver:
        """caffe_ft's Solver underneath, for torch users."""
        return self._solver


class SGDSolver(Solver):
    solver_type = "SGD"

    @property
    def lr(self) -> float:
        """The rate the next update uses (SGDSolver::GetLearningRate)."""
        core = self._solver
        return learning_rate(core.param, core.iter, core.current_step).value


class NesterovSolver(SGDSolver):
    solver_type = "Nesterov"


class AdaGradSolver(SGDSolver):
    solver_type = "AdaGrad"


class RMSPropSolver(SGDSolver):
    solver_type = "RMSProp"


class AdaDeltaSolver(SGDSolver):
    solver_type = "AdaDelta"


class AdamSolver(SGDSolver):
    solver_type = "Adam"


_CLASSES: dict[str, type[SGDSolver]] = {cls.solver_type: cls for cls in (
    SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver, AdamSolver)}


def get_solver(filename: str | os.PathLike[str]) -> SGDSolver:
    """The solver the file's `type` names (Caffe's SolverRegistry)."""
    path = os.fspath(filename)
    param = read_solver_text(path)
    cls = _CLASSES.get(param.type)
    if cls is None:
        raise CaffeError(f"{path}: Unknown solver type: {param.type} (known types: "
                         f"{', '.join(sorted(RULES))})")
    solver = cls.__new__(cls)
    solver._start(param, path)
    return solver


# -- multi-process training --------------------------------------------------
def _join_group(count: int, rank: int, uid: str) -> None:
    """Join the processes' group (nccl between GPUs, gloo on the CPU)."""
    if dist.is_initialized():
        if dist.get_world_size() != count or dist.get_rank() != rank:
            raise CaffeError(f"This process already trains as rank {dist.get_rank()} of "
                             f"{dist.get_world_size()}; solver_count is {count} and "
                             f"solver_rank {rank}")
        return
    if not uid:
        raise CaffeError(f"solver_count is {count}: call caffe.NCCL.new_uid() before "
                         f"starting the solver processes, so they can find each other")
    device = mode.device()
    if device.type == "cuda":
        # NCCL builds its communicator on the current device.
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=uid,
                            world_size=count, rank=rank, timeout=timedelta(minutes=30))
    # A pycaffe script never leaves the group itself: leave it at exit, while
    # the interpreter is still whole.
    atexit.register(leave_process_group)


class NCCL:
    """pycaffe's NCCL(solver, uid) over torch.distributed: bcast() gives every
    process rank 0's weights; solver.add_callback(nccl) sums the diffs of
    every process and scales them by 1/solver_count before each update.

    Each solver process joins the group when its solver is built (when
    solver_count > 1), because its TRAIN data layers take their share of the
    stream (items rank, rank + N, ...) as they are set up."""

    def __init__(self, solver: Solver, uid: bytes | str) -> None:
        _join_group(_solver_count, _solver_rank, uid.decode() if isinstance(uid, bytes)
                    else str(uid))
        self._solver = solver
        self._reducing = False

    @staticmethod
    def new_uid() -> bytes:
        """A rendezvous for one run's processes, also published to the
        processes this one starts afterwards."""
        uid = f"tcp://127.0.0.1:{free_port()}"
        os.environ[UID_ENV] = uid
        return uid.encode()

    def bcast(self) -> None:
        with torch.no_grad():
            for p in self._solver.core.params:
                dist.broadcast(p.blob.data, src=0)

    def reduce_gradients_of(self, solver: CoreSolver) -> None:
        if solver is not self._solver.core:
            raise CaffeError("add_callback(nccl): this NCCL was made for another solver")
        if not self._reducing:
            # Hooks the diffs' averaging in before the update, and shares rank
            # 0's stop or snapshot request with every rank.
            DataParallel(solver)
            self._reducing = True

    def __call__(self, layer_index: int) -> None:
        """As `net.after_backward(nccl)`: Caffe reduces each layer's diffs as
        its backward ends, to overlap; here the diffs of all layers are
        reduced at once before the update (`solver.add_callback(nccl)`), so
        there is nothing to do per layer."""

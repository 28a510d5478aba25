"""Data-parallel training (Caffe's multi-GPU semantics) with gloo: two CPU
processes of batch 16 train as one process of batch 32 does, because rank r
reads items r, r + 2, ... and the diffs are averaged before the update."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from caffe_ft.data.prefetch import WORKERS_ENV
from caffe_ft.solver.launch import spawn_ranks
from caffe_ft.solver.parallel import DataParallel, leave_process_group
from caffe_ft.solver.signals import SolverAction
from caffe_ft.solver.solver import Solver
from caffe_ft.upgrade import read_solver_text
from test_solver_golden import GOLDEN, assert_models_close, stage_case

pytestmark = pytest.mark.slow

CASE = "sgd_step_momentum"
ITERATIONS = 10


def stage(root: Path, batch: int) -> Path:
    folder = stage_case(CASE, root)
    net = folder / "train_val.prototxt"
    net.write_text(net.read_text().replace("batch_size: 16", f"batch_size: {batch}"))
    solver = folder / "solver.prototxt"
    solver.write_text(solver.read_text().replace("max_iter: 40", f"max_iter: {ITERATIONS}"))
    return solver


def train(command: list[str], solver: Path) -> None:
    env = {**os.environ, WORKERS_ENV: "0"}
    done = subprocess.run([*command, "train", "-solver", str(solver), "-weights",
                           str(GOLDEN / CASE / "init.caffemodel")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The snapshot of one process at batch 32."""
    solver = stage(tmp_path_factory.mktemp("single"), 32)
    train([sys.executable, "-m", "caffe_ft"], solver)
    return solver.parent / f"snap_iter_{ITERATIONS}.caffemodel"


def assert_rank0_snapshot_matches(parallel: Path, single: Path) -> None:
    snapshot = f"snap_iter_{ITERATIONS}.caffemodel"
    # Only rank 0 snapshots.
    assert sorted(p.name for p in parallel.parent.glob("*.caffemodel")) == [snapshot]
    assert_models_close(parallel.parent / snapshot, single)


def test_two_gloo_processes_under_torchrun_train_like_one_with_twice_the_batch(
        tmp_path: Path, single_run: Path) -> None:
    parallel = stage(tmp_path, 16)
    train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "caffe_ft"], parallel)
    assert_rank0_snapshot_matches(parallel, single_run)


def test_two_ranks_from_our_launcher_train_like_torchruns(
        tmp_path: Path, single_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What `train -gpu 0,1` runs when no torchrun started it; the ranks here
    # have no -gpu, so they train on the CPU with gloo.
    monkeypatch.setenv(WORKERS_ENV, "0")
    parallel = stage(tmp_path, 16)
    assert spawn_ranks(["train", "-solver", str(parallel), "-weights",
                        str(GOLDEN / CASE / "init.caffemodel")], 2) == 0
    assert_rank0_snapshot_matches(parallel, single_run)


def _signals_on_rank_0(solver: Solver) -> None:
    """Rank 0 is asked, as by signals, to snapshot at iteration 0 and to stop
    while it tests at iteration 2."""
    asked: set[int] = set()

    def signals() -> SolverAction:
        if solver.iter in asked:
            return SolverAction.NONE
        asked.add(solver.iter)
        return {0: SolverAction.SNAPSHOT, 2: SolverAction.STOP}.get(solver.iter,
                                                                     SolverAction.NONE)

    solver.action_request = signals


def _nan_on_rank_1_at_3(solver: Solver) -> None:
    """-stop_on_nan on every rank; rank 1's weights turn NaN at iteration 3."""
    solver.divergence.stop = True

    def poison(solver: Solver) -> None:
        if solver.rank == 1 and solver.iter == 3:
            solver.params[0].blob.data.fill_(float("nan"))

    solver.start_hooks.append(poison)


def _train_rank(rank: int, solver_path: str, rendezvous: str, scenario: str,
                ends: dict[int, int], world_size: int, device: str) -> None:
    os.environ[WORKERS_ENV] = "0"
    dist.init_process_group("nccl" if device == "cuda" else "gloo",
                            init_method=f"file://{rendezvous}", world_size=world_size, rank=rank)
    try:
        solver = Solver(read_solver_text(solver_path), solver_path, torch.device(device),
                        rank=rank)
        {"signals": _signals_on_rank_0, "nan": _nan_on_rank_1_at_3}[scenario](solver)
        DataParallel(solver).train()
        ends[rank] = solver.iter
    finally:
        leave_process_group()


def train_two_ranks(tmp_path: Path, scenario: str, world_size: int = 2,
                    device: str = "cpu") -> tuple[dict[int, int], list[str]]:
    """Each rank's final iteration, and the snapshots written."""
    solver = stage(tmp_path, 16)
    solver.write_text(solver.read_text().replace("test_interval: 1000000", "test_interval: 2"))
    with mp.Manager() as manager:
        ends = manager.dict()
        mp.spawn(_train_rank, args=(str(solver), str(tmp_path / "rendezvous"), scenario, ends,
                                    world_size, device), nprocs=world_size)
        finished = dict(ends)
    return finished, sorted(p.name for p in solver.parent.glob("*.caffemodel"))


def test_rank_0s_requests_reach_every_rank_with_the_all_reduce(tmp_path: Path) -> None:
    ends, snapshots = train_two_ranks(tmp_path, "signals")
    # Each request acts after the update that follows the all-reduce that
    # carried it; the stop seen while testing at 2 waits for iteration 2's
    # all-reduce instead of leaving rank 1 alone in it.
    assert ends == {0: 4, 1: 4}
    assert snapshots == ["snap_iter_2.caffemodel", "snap_iter_4.caffemodel"]


def test_stop_on_nan_on_one_rank_stops_every_rank_before_the_update(tmp_path: Path) -> None:
    ends, snapshots = train_two_ranks(tmp_path, "nan")
    assert ends == {0: 3, 1: 3}
    assert snapshots == ["snap_iter_3.caffemodel"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_requests_ride_an_nccl_all_reduce_on_the_gpu(tmp_path: Path) -> None:
    # One rank over NCCL: the request's copy to pinned memory behind an event.
    ends, snapshots = train_two_ranks(tmp_path, "signals", world_size=1, device="cuda")
    assert ends == {0: 4}
    assert snapshots == ["snap_iter_2.caffemodel", "snap_iter_4.caffemodel"]

"""Data-parallel training (Caffe's multi-GPU semantics) with gloo: two CPU
processes of batch 16 train as one process of batch 32 does, because rank r
reads items r, r + 2, ... and the diffs are averaged before the update."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from caffe_ft.data.prefetch import WORKERS_ENV
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
    subprocess.run([*command, "train", "-solver", str(solver), "-weights",
                    str(GOLDEN / CASE / "init.caffemodel")], check=True, env=env,
                   capture_output=True, timeout=600)


def test_two_gloo_processes_train_like_one_with_twice_the_batch(tmp_path: Path) -> None:
    single = stage(tmp_path / "single", 32)
    train([sys.executable, "-m", "caffe_ft"], single)
    parallel = stage(tmp_path / "parallel", 16)
    train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "caffe_ft"], parallel)
    snapshot = f"snap_iter_{ITERATIONS}.caffemodel"
    # Only rank 0 snapshots.
    assert sorted(p.name for p in parallel.parent.glob("*.caffemodel")) == [snapshot]
    assert_models_close(parallel.parent / snapshot, single.parent / snapshot)

"""The launcher that `train -gpu 0,1` uses when no torchrun started it: each
rank gets torch.distributed's environment, a failing rank stops the others,
and its exit code is the run's."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from caffe_ft.cli import main
from caffe_ft.cli.actions import ACTIONS
from caffe_ft.cli.flags import flag_arguments, parse_flags
from caffe_ft.solver import launch
from solver_helpers import captured_log


def test_rank_environment_is_torchruns() -> None:
    env = launch.rank_environment(1, 2, 29500)
    assert {key: env[key] for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                                      "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_flag_arguments_parse_back_to_the_same_values() -> None:
    act = ACTIONS["train"]
    flags, _ = parse_flags(act, ["-solver", "s p.prototxt", "-weights=a,b", "-level", "2",
                                 "-gpu", "0,1", "-v"])
    assert parse_flags(act, flag_arguments(flags)) == (flags, [])


def test_a_failing_rank_stops_the_others() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    failing = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    start = time.monotonic()
    try:
        assert launch._wait([sleeper, failing]) == 3
    finally:
        launch._stop([sleeper, failing])
    assert sleeper.returncode is not None and time.monotonic() - start < 30


def test_a_rank_killed_by_a_signal_gives_128_plus_it() -> None:
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    victim.terminate()
    victim.wait()
    assert launch._wait([victim]) == 128 + 15


def test_spawned_ranks_report_their_error(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    missing = tmp_path / "missing.prototxt"
    with captured_log() as messages:
        assert launch.spawn_ranks(["train", "-solver", str(missing)], 2) == 1
    assert f"Solver file not found: {missing}" in capfd.readouterr().err
    assert any("exited with code 1; stopping the others" in m for m in messages)


def test_gpu_list_without_cuda_is_an_error(tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    import torch
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs; the slow DDP test covers it")
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 1')
    assert main(["train", "-solver", str(solver), "-gpu", "0,1"]) == 1
    assert "there is no CUDA device" in capsys.readouterr().err

"""`caffe_ft train|test|time|device_query`: Caffe's flags, checks and log lines."""
from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import torch

from caffe_ft.cli import main
from caffe_ft.net.weights import save_caffemodel
from caffe_ft.solver import SignalHandler, SolverAction
from solver_helpers import TINY_NET, captured_log, make_solver

SOLVER = '''net: "net.prototxt"
test_iter: 2
test_interval: 3
base_lr: 0.1
lr_policy: "fixed"
display: 1
max_iter: 3
snapshot_prefix: "snap"
'''


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    # One layer only in stage "extra", to see where -stage applies.
    extra = ('layer { name: "extra" type: "ReLU" bottom: "fc2" top: "extra" '
             'include { stage: "extra" } }')
    (tmp_path / "net.prototxt").write_text(TINY_NET + extra)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    return tmp_path


def weights_file(folder: Path, seed: int) -> Path:
    """A caffemodel of the tiny net with fillers drawn from `seed`."""
    solver = make_solver(f"random_seed: {seed}")
    path = folder / f"w{seed}.caffemodel"
    save_caffemodel(solver.net, path)
    return path


def test_weights_and_snapshot_together_is_an_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "-solver", "s", "-weights", "w", "-snapshot", "x"]) == 2
    assert "Give a snapshot to resume training or weights to finetune but not both." in \
        capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train"], "Need a solver definition to train."),
    (["test", "-weights", "w"], "Need a model definition to score."),
    (["test", "-model", "m"], "Need model weights to score."),
    (["time"], "Need a model definition to time."),
    (["time", "-model", "m", "-phase", "VAL"], 'phase must be "TRAIN" or "TEST"'),
])
def test_missing_flags(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_signal_effect(model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "-solver", str(model_dir / "solver.prototxt"),
                 "-sigint_effect", "pause"]) == 1
    assert 'Invalid signal effect "pause" was specified' in capsys.readouterr().err


def test_train_finetunes_from_each_weights_file(model_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = weights_file(model_dir, 1), weights_file(model_dir, 2)
    monkeypatch.chdir(model_dir)
    with captured_log() as messages:
        assert main(["train", "-solver", "solver.prototxt", "-weights",
                     f"{first}, {second}", "-stage", "extra"]) == 0
    finetuning = [m for m in messages if m.startswith("Finetuning from")]
    # Train net, then the test net, each from both files in order.
    assert finetuning == [f"Finetuning from {first}", f"Finetuning from {second}"] * 2
    # -stage reaches the train net only.
    assert messages.count("Creating Layer extra") == 1
    assert messages[-1] == "Optimization Done."
    assert (model_dir / "snap_iter_3.caffemodel").is_file()


def test_train_resumes_from_a_snapshot(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(model_dir)
    assert main(["train", "-solver", "solver.prototxt"]) == 0
    (model_dir / "solver.prototxt").write_text(SOLVER.replace("max_iter: 3", "max_iter: 5"))
    with captured_log() as messages:
        assert main(["train", "-solver", "solver.prototxt", "-snapshot",
                     "snap_iter_3.solverstate"]) == 0
    order = [messages.index(m) for m in ("Resuming from snap_iter_3.solverstate",
                                         "SGDSolver: restoring history", "Starting Optimization",
                                         "Solving tiny")]
    assert order == sorted(order)
    assert "Iteration 3, Testing net (#0)" in messages
    assert (model_dir / "snap_iter_5.solverstate").is_file()


def test_test_action_prints_batches_and_means(model_dir: Path) -> None:
    weights = weights_file(model_dir, 3)
    with captured_log() as messages:
        assert main(["test", "-model", str(model_dir / "net.prototxt"), "-weights",
                     str(weights), "-iterations", "2"]) == 0
    assert "Running for 2 iterations." in messages
    batches = [m for m in messages if m.startswith("Batch ")]
    assert [b.split(" = ")[0] for b in batches] == \
        ["Batch 0, acc", "Batch 0, loss", "Batch 1, acc", "Batch 1, loss"]
    loss = float(batches[1].split(" = ")[1])
    assert f"Loss: {loss:g}" in messages
    assert f"loss = {loss:g} (* 1 = {loss:g} loss)" in messages


def test_time_action_reports_every_layer(model_dir: Path) -> None:
    with captured_log() as messages:
        assert main(["time", "-model", str(model_dir / "net.prototxt"), "-iterations", "2"]) == 0
    assert messages[messages.index("*** Benchmark begins ***") + 1] == "Testing for 2 iterations."
    for name in ("data", "fc1", "relu", "fc2", "loss"):
        assert any(re.fullmatch(rf" *{name}\tforward: \S+ ms\.", m) for m in messages), name
        assert any(re.fullmatch(rf" *{name}\tbackward: \S+ ms\.", m) for m in messages), name
    assert messages[-1] == "*** Benchmark ends ***"


@pytest.mark.cuda  # checks `device_query -gpu 0` on a GPU, its error without one
def test_device_query(capsys: pytest.CaptureFixture) -> None:
    with captured_log() as messages:
        code = main(["device_query", "-gpu", "0"])
    if torch.cuda.is_available():
        assert code == 0 and "Device id:                     0" in messages
    else:
        assert code == 1
        assert "no CUDA device" in capsys.readouterr().err


def test_signal_handler_reports_each_signal_once() -> None:
    with SignalHandler(SolverAction.STOP, SolverAction.SNAPSHOT) as handler:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGHUP)
        # SIGHUP is answered first, as Caffe's handler does.
        assert [handler.check() for _ in range(3)] == \
            [SolverAction.SNAPSHOT, SolverAction.STOP, SolverAction.NONE]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("message, shown", [
    ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.81 "
     "GiB of which 1.19 GiB is free.", " (tried to allocate 2.00 GiB)"),
    ("out of memory", "")])
def test_a_device_out_of_memory_is_one_line(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture, message: str,
                                            shown: str) -> None:
    """A batch too large for the GPU ends train with one line that says what
    to change (no GPU here: the allocator's error is raised in its place)."""
    from caffe_ft.solver import Solver

    def exhausted(self: Solver, resume_file: str | None = None) -> None:
        raise torch.cuda.OutOfMemoryError(message)
    monkeypatch.setattr(Solver, "solve", exhausted)
    monkeypatch.chdir(model_dir)
    assert main(["train", "-solver", "solver.prototxt"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"caffe_ft train: out of memory on the device{shown}; lower the data "
                       "layers' batch_size (with iter_size to keep the effective batch), or "
                       "train with -precision bf16")
    assert not any("Traceback" in line for line in err)

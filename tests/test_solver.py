"""The training loop on a tiny Input-fed net: what an update does, iter_size,
display and smoothing, tests, snapshots and restore, signals."""
from __future__ import annotations

import io
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from caffe_ft.errors import CaffeError
from caffe_ft.glog import logger, setup_logging
from caffe_ft.net.weights import copy_trained_layers_from
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import read_binary
from caffe_ft.solver import SolverAction
from caffe_ft.solver.state import read_state
from caffe_log_parser import parse_log
from solver_helpers import TINY_NET, captured_log, make_solver, weights


def gradients(solver) -> list[torch.Tensor]:
    """The diffs one forward/backward of the train net leaves (no update)."""
    for p in solver.params:
        p.blob.grad = None
    solver.net.forward()
    solver.net.backward()
    return [p.blob.grad.clone() for p in solver.params]


def test_first_update_is_caffes_sgd() -> None:
    """w -= lr·lr_mult·(g + weight_decay·decay_mult·w): coupled decay, bias
    lr_mult 2 and decay_mult 0 taken from the ParamSpecs."""
    solver = make_solver("max_iter: 1")
    before = weights(solver)
    grads = gradients(solver)
    solver.solve()
    mults = [(1, 1), (2, 0), (1, 1), (1, 1)]
    for w0, g, w1, (lr_mult, decay_mult) in zip(before, grads, weights(solver), mults):
        expected = w0 - 0.1 * lr_mult * (g + 0.01 * decay_mult * w0)
        torch.testing.assert_close(w1, expected, rtol=1e-5, atol=1e-7)


def test_frozen_params_do_not_move() -> None:
    text = TINY_NET.replace(
        "param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }",
        "param { lr_mult: 0 } param { lr_mult: 0 }")
    solver = make_solver("max_iter: 3", net=text)
    before = weights(solver)
    solver.solve()
    after = weights(solver)
    torch.testing.assert_close(after[0], before[0])
    torch.testing.assert_close(after[1], before[1])
    assert not torch.equal(after[2], before[2])


def test_iter_size_averages_the_accumulated_gradient() -> None:
    """Two passes over the same batch, normalized by iter_size, give the
    update of one pass."""
    once = make_solver("max_iter: 3")
    twice = make_solver("max_iter: 3 iter_size: 2")
    once.solve()
    twice.solve()
    for a, b in zip(weights(once), weights(twice)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_clipping_sees_the_summed_gradient() -> None:
    """Caffe clips before dividing by iter_size: with two identical passes
    the clipped step is half the one-pass clipped step."""
    settings = "max_iter: 1 momentum: 0 weight_decay: 0 clip_gradients: 0.01"
    once = make_solver(settings)
    twice = make_solver(settings + " iter_size: 2")
    start = weights(once)
    once.solve()
    twice.solve()
    for w0, a, b in zip(start, weights(once), weights(twice)):
        torch.testing.assert_close(w0 - b, (w0 - a) / 2, rtol=1e-4, atol=1e-7)


def test_smoothed_loss_is_the_mean_of_the_last_average_loss() -> None:
    raw = make_solver("display: 1")
    smooth = make_solver("display: 1 average_loss: 3")
    with captured_log() as raw_log:
        raw.solve()
    with captured_log() as smooth_log:
        smooth.solve()
    pattern = re.compile(r"^Iteration (\d+) \(.*\), loss = (\S+)$")
    losses = [float(m.group(2)) for m in map(pattern.match, raw_log) if m]
    shown = [float(m.group(2)) for m in map(pattern.match, smooth_log) if m]
    for i, value in enumerate(shown):
        window = losses[max(0, i - 2):i + 1]
        assert value == pytest.approx(sum(window) / len(window), rel=1e-5)


def test_log_order_and_parse_log(tmp_path: Path) -> None:
    """Test block, display, train outputs, lr, then the snapshot named for
    the next iteration; and Caffe's parse_log.py reads the log."""
    solver = make_solver("display: 2 test_iter: 2 test_interval: 4 snapshot: 4 max_iter: 8 "
                         "test_compute_loss: true", folder=tmp_path)
    log = tmp_path / "train.log"
    with captured_log(log) as messages:
        solver.solve()
    start = messages.index("Iteration 4, Testing net (#0)")
    assert messages[start + 1].startswith("Test loss: ")
    assert messages[start + 2].startswith("    Test net output #0: acc = ")
    assert re.match(r"    Test net output #1: loss = \S+ \(\* 1 = \S+ loss\)$", messages[start + 3])
    assert re.match(r"Iteration 4 \(\S+ iter/s, \S+s/2 iters\), loss = \S+$", messages[start + 4])
    assert messages[start + 5].startswith("    Train net output #0: loss = ")
    assert messages[start + 6] == "Iteration 4, lr = 0.1"
    assert f"Snapshotting to binary proto file {tmp_path}/tiny_iter_4.caffemodel" in messages
    final = next(i for i, m in enumerate(messages) if m.startswith("Iteration 8, loss = "))
    assert messages[final + 1] == "Iteration 8, Testing net (#0)"
    assert messages[-1] == "Optimization Done."
    train_rows, test_rows = parse_log(log)
    assert [row["NumIters"] for row in train_rows] == [0, 2, 4, 6]
    assert [row["NumIters"] for row in test_rows] == [0, 4, 8]
    assert set(test_rows[0]) == {"NumIters", "Seconds", "LearningRate", "acc", "loss"}
    assert train_rows[-1]["LearningRate"] == 0.1


def test_test_outputs_are_means_over_test_iter() -> None:
    solver = make_solver("test_iter: 3 test_interval: 100 max_iter: 0")
    with captured_log() as messages:
        solver.test_all()
    with torch.no_grad():
        # The batch is the same every time, so the mean is one batch's loss.
        loss = solver.test_nets[0].forward().item()
    line = next(m for m in messages if "Test net output #1" in m)
    # Logged with 6 significant digits, as Caffe prints it.
    assert line == f"    Test net output #1: loss = {loss:g} (* 1 = {loss:g} loss)"


def test_test_initialization_false_skips_the_first_test() -> None:
    solver = make_solver("test_iter: 1 test_interval: 5 test_initialization: false")
    with captured_log() as messages:
        solver.solve()
    tests = [m for m in messages if "Testing net" in m]
    assert tests == ["Iteration 5, Testing net (#0)", "Iteration 10, Testing net (#0)"]


RESUMABLE = [
    ("SGD", "BINARYPROTO", 'lr_policy: "multistep" gamma: 0.5 stepvalue: 3 stepvalue: 7'),
    ("Adam", "HDF5", "momentum2: 0.999"),
    ("AdaDelta", "BINARYPROTO", "base_lr: 1 momentum: 0.95"),
    ("Nesterov", "HDF5", 'lr_policy: "step" gamma: 0.5 stepsize: 4'),
]


@pytest.mark.parametrize("kind, fmt, extra", RESUMABLE)
def test_resume_continues_exactly(kind: str, fmt: str, extra: str, tmp_path: Path) -> None:
    """10 iterations straight equal 5 + snapshot + restore (in another
    folder, so learned_net is found beside the state) + 5."""
    settings = f'type: "{kind}" snapshot_format: {fmt} {extra}'
    straight = make_solver(settings, folder=tmp_path / "a")
    straight.solve()
    (tmp_path / "b").mkdir()
    first = make_solver(settings + " max_iter: 5 snapshot: 5", folder=tmp_path / "b")
    first.solve()
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "b", moved)
    shutil.rmtree(tmp_path / "b")
    suffix = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    state = read_state(str(moved / f"tiny_iter_5{suffix}"))
    assert len(state.history) == len(first.params) * first.rule.history_sets
    (tmp_path / "c").mkdir()
    resumed = make_solver(settings, folder=tmp_path / "c")
    with captured_log() as messages:
        resumed.restore(str(moved / f"tiny_iter_5{suffix}"))
    assert "SGDSolver: restoring history" in messages
    assert (resumed.iter, resumed.current_step) == (state.iter, state.current_step)
    resumed.solve()
    for a, b in zip(weights(straight), weights(resumed)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_restore_checks_the_history_length(tmp_path: Path) -> None:
    make_solver('type: "Adam" max_iter: 1 snapshot: 1', folder=tmp_path).solve()
    sgd = make_solver("", folder=tmp_path)
    with pytest.raises(CaffeError, match="Incorrect length of history blobs"):
        sgd.restore(str(tmp_path / "tiny_iter_1.solverstate"))


def test_restore_names_a_missing_learned_net(tmp_path: Path) -> None:
    make_solver("max_iter: 1 snapshot: 1", folder=tmp_path).solve()
    os.remove(tmp_path / "tiny_iter_1.caffemodel")
    with pytest.raises(CaffeError, match="learned_net .*tiny_iter_1.caffemodel' not found"):
        make_solver("", folder=tmp_path).restore(str(tmp_path / "tiny_iter_1.solverstate"))


def test_snapshot_files_and_snapshot_diff(tmp_path: Path) -> None:
    solver = make_solver("max_iter: 2 snapshot_diff: true snapshot_after_train: true",
                         folder=tmp_path)
    solver.solve()
    model = read_binary(tmp_path / "tiny_iter_2.caffemodel", caffe_pb2.NetParameter())
    fc1 = next(layer for layer in model.layer if layer.name == "fc1")
    # The diff Caffe saves is the last update, which SGD keeps as its history.
    np.testing.assert_allclose(np.asarray(fc1.blobs[0].diff),
                               solver.history[0][0].reshape(-1).numpy(), rtol=1e-6)
    state = read_binary(tmp_path / "tiny_iter_2.solverstate", caffe_pb2.SolverState())
    assert (state.iter, state.learned_net) == (2, str(tmp_path / "tiny_iter_2.caffemodel"))
    net = make_solver("", folder=tmp_path).net
    copy_trained_layers_from(net, str(tmp_path / "tiny_iter_2.caffemodel"))
    torch.testing.assert_close(net.learnable_params[0].blob, solver.params[0].blob)


def test_snapshot_prefix_must_be_writable(tmp_path: Path) -> None:
    with pytest.raises(CaffeError, match="Cannot write to snapshot prefix"):
        make_solver(f'snapshot: 5 snapshot_prefix: "{tmp_path}/missing/x"')


def test_stop_request_snapshots_and_stops(tmp_path: Path) -> None:
    requests = iter([SolverAction.NONE, SolverAction.SNAPSHOT, SolverAction.NONE,
                     SolverAction.STOP])
    solver = make_solver("snapshot_after_train: true", folder=tmp_path,
                         action_request=lambda: next(requests, SolverAction.NONE))
    with captured_log() as messages:
        solver.solve()
    assert solver.iter == 4
    assert messages[-1] == "Optimization stopped early."
    assert sorted(p.name for p in tmp_path.glob("*.caffemodel")) == \
        ["tiny_iter_2.caffemodel", "tiny_iter_4.caffemodel"]


def test_same_random_seed_same_fillers() -> None:
    a, b = make_solver("random_seed: 11"), make_solver("random_seed: 11")
    for x, y in zip(weights(a), weights(b)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    c = make_solver("random_seed: 12")
    assert not torch.equal(weights(a)[0], weights(c)[0])


def test_average_loss_must_be_positive() -> None:
    with pytest.raises(CaffeError, match="average_loss should be non-negative"):
        make_solver("average_loss: 0")


def _screen(text: str) -> list[str]:
    """What a terminal shows after `text`: \\r returns, ESC[K erases to the end."""
    lines, column = [""], 0
    for part in re.split(r"(\r|\n|\x1b\[K)", text):
        if part == "\n":
            lines.append("")
            column = 0
        elif part == "\r":
            column = 0
        elif part == "\x1b[K":
            lines[-1] = lines[-1][:column]
        else:
            line = lines[-1]
            lines[-1] = line[:column] + part + line[column + len(part):]
            column += len(part)
    return lines


def test_progress_line_on_a_terminal_leaves_the_log_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    setup_logging()
    with captured_log() as messages:
        make_solver("max_iter: 5 display: 1").solve()
    assert "Iteration 5/5 [" in terminal.getvalue() and "iter/s, loss" in terminal.getvalue()
    prefix = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [^\]]+\] ")
    shown = [prefix.sub("", line) for line in _screen(terminal.getvalue()) if line]
    # Every log line is on the screen whole, in order, and nothing else is.
    assert shown == [line for message in messages for line in message.split("\n") if line]


def test_no_progress_line_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    setup_logging()
    make_solver("max_iter: 3 display: 1").solve()
    assert "\r" not in stream.getvalue() and "Iteration 3/3" not in stream.getvalue()


def test_a_record_on_a_terminal_erases_another_process_status_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    terminal.write("\rIteration 3/9 [###......]")  # drawn by the main process
    monkeypatch.setattr(sys, "stderr", terminal)
    setup_logging()
    logger.info("Restarting data prefetching from start.")  # logged in a data worker
    assert re.fullmatch(r"I\d{4} .*\] Restarting data prefetching from start\.",
                        _screen(terminal.getvalue())[0])

"""Bad input ends in one CaffeError line naming the layer or file (issue 12):
blobs too big for Caffe's int count, negative dimensions, allocations that
fail, a train net with no layers, a model given where a solver state belongs,
and a loss gone NaN (warned, and with -stop_on_nan the run stops)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from solver_helpers import TINY_NET, captured_log, make_solver, solver_param, weights

from caffe_ft.errors import CaffeError
from caffe_ft.layers.base import BLOB_MAX_COUNT
from caffe_ft.net import Net
from caffe_ft.net.weights import save_caffemodel
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text
from caffe_ft.solver import Solver, SolverAction
from caffe_ft.solver.state import read_state


def _input(*dims: int) -> str:
    shape = " ".join(f"dim: {d}" for d in dims)
    return (f'layer {{ name: "in" type: "Input" top: "data" '
            f'input_param {{ shape {{ {shape} }} }} }}\n')


def _build(text: str) -> Net:
    return Net(parse_text(text, caffe_pb2.NetParameter()), caffe_pb2.TEST, source="net.prototxt")


def test_huge_input_top_names_the_layer() -> None:
    with pytest.raises(CaffeError) as err:
        _build(_input(1000000, 1000000))
    assert str(err.value) == (f"Layer 'in' (Input): top 0 of shape [1000000, 1000000] has "
                              f"{1000000 * 1000000} values: blob size exceeds INT_MAX")


def test_negative_input_dimension_names_the_layer() -> None:
    with pytest.raises(CaffeError, match=r"^Layer 'in' \(Input\): top 0 has a negative "
                                         r"dimension: shape \[1, -3\]$"):
        _build(_input(1, -3))


def test_parameter_blob_over_int_max_names_the_layer() -> None:
    conv = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            'convolution_param { num_output: 2000000000 kernel_size: 5 } }\n')
    with pytest.raises(CaffeError) as err:
        _build(_input(1, 1, 8, 8) + conv)
    count = 2000000000 * 25
    assert count > BLOB_MAX_COUNT
    assert str(err.value) == (f"Layer 'conv' (Convolution): parameter blob 0 of shape "
                              f"[2000000000, 1, 5, 5] has {count} values: blob size exceeds "
                              f"INT_MAX")


def test_failed_allocation_names_layer_bytes_and_device() -> None:
    # Under INT_MAX values but 7.7 GB: with a 3 GiB address-space limit the
    # allocator fails for real, in a child so this process keeps its memory.
    script = textwrap.dedent(f"""
        import resource
        from caffe_ft.errors import CaffeError
        from caffe_ft.net import Net
        from caffe_ft.proto import caffe_pb2
        from caffe_ft.protofile import parse_text
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        text = {_input(1, 1, 8, 8)!r} + (
            'layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
            'inner_product_param {{ num_output: 30000000 }} }}')
        try:
            Net(parse_text(text, caffe_pb2.NetParameter()), caffe_pb2.TEST)
        except CaffeError as err:
            print(err)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    shape = [30000000, 1 * 8 * 8]  # num_output x the flattened input
    assert run.stdout.strip() == (f"Layer 'ip' (InnerProduct): cannot allocate parameter blob 0 "
                                  f"of shape {shape}: {shape[0] * shape[1] * 4} bytes on "
                                  f"cpu (out of memory)")


@pytest.mark.parametrize("net_text, state", [
    ("", "phase TRAIN"),
    ('name: "n"\nlayer { name: "in" type: "Input" top: "data" include { phase: TEST } '
     'input_param { shape { dim: 1 } } }\n', "phase TRAIN"),
])
def test_train_net_without_layers_is_refused_naming_the_file(
        tmp_path: Path, net_text: str, state: str) -> None:
    (tmp_path / "empty.prototxt").write_text(net_text)
    (tmp_path / "old_iter_5.caffemodel").write_bytes(b"earlier weights")
    param = caffe_pb2.SolverParameter(net=str(tmp_path / "empty.prototxt"), base_lr=0.1,
                                      lr_policy="fixed", max_iter=1,
                                      snapshot_prefix=str(tmp_path / "old"))
    with pytest.raises(CaffeError) as err:
        Solver(param)
    assert str(err.value) == (f"{tmp_path / 'empty.prototxt'}: the train net has no layers "
                              f"for its state ({state}): nothing to train")
    # Nothing was trained, so nothing was snapshotted over the earlier model.
    assert sorted(os.listdir(tmp_path)) == ["empty.prototxt", "old_iter_5.caffemodel"]


def test_caffemodel_given_as_solver_state_says_a_solverstate_is_expected(tmp_path: Path) -> None:
    net = Net(parse_text(_input(2, 3) + 'layer { name: "ip" type: "InnerProduct" bottom: "data" '
                         'top: "ip" inner_product_param { num_output: 2 } }',
                         caffe_pb2.NetParameter()), caffe_pb2.TRAIN)
    model = tmp_path / "x.caffemodel"
    save_caffemodel(net, model)
    with pytest.raises(CaffeError) as err:
        read_state(str(model))
    assert str(err.value).startswith(f"{model} is a trained model (a NetParameter with 2 layers), "
                                     f"not a solver state: -snapshot expects the .solverstate")


def _nan_solver(folder: Path, stop: bool) -> Solver:
    solver = make_solver("max_iter: 5\ndisplay: 0", folder=folder)
    solver.divergence.stop = stop
    data = solver.net.blob_data("data").clone()
    data[0, 0] = float("nan")
    solver.net.set_blob_data("data", data)
    return solver


def test_first_non_finite_loss_is_warned_once_and_training_goes_on(tmp_path: Path) -> None:
    solver = _nan_solver(tmp_path, stop=False)
    with captured_log() as messages:
        solver.step(5)
    warnings = [m for m in messages if "not finite" in m]
    assert len(warnings) == 1
    assert warnings[0].startswith("Iteration 0, loss = nan: the loss is not finite")
    assert solver.iter == 5 and not solver.requested_early_exit


def test_stop_on_nan_stops_before_the_non_finite_update(tmp_path: Path) -> None:
    solver = _nan_solver(tmp_path, stop=True)
    before = weights(solver)
    with captured_log() as messages:
        solver.step(5)
    assert any(m.startswith("Iteration 0, loss = nan") and "stopping (-stop_on_nan)" in m
               for m in messages)
    assert solver.iter == 0 and solver.requested_early_exit
    # The update that the NaN loss would have made was not applied.
    assert all(torch.equal(a, b) for a, b in zip(before, weights(solver)))


@pytest.mark.parametrize("argv, stop", [([], False), (["-stop_on_nan"], True)])
def test_train_stop_on_nan_flag_reaches_the_solver(
        tmp_path: Path, argv: list[str], stop: bool) -> None:
    from caffe_ft.cli.actions import ACTIONS
    from caffe_ft.cli.flags import parse_flags
    from caffe_ft.cli.train import _solver
    (tmp_path / "net.prototxt").write_text(TINY_NET)
    param = solver_param(f'net: "{tmp_path / "net.prototxt"}"')
    flags, _ = parse_flags(ACTIONS["train"], ["-solver", str(tmp_path / "s.prototxt"), *argv])
    solver = _solver(param, flags, torch.device("cpu"), lambda: SolverAction.NONE, 0)
    assert solver.divergence.stop is stop

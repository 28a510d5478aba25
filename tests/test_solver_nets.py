"""Which nets a SolverParameter builds, with which NetState, from where."""
from __future__ import annotations

from pathlib import Path

import pytest

from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text
from caffe_ft.solver import nets as solver_nets
from caffe_ft.solver.nets import split_weights, train_net_source
from solver_helpers import TINY_NET


def param(text: str) -> caffe_pb2.SolverParameter:
    return parse_text(text, caffe_pb2.SolverParameter())


def write_net(folder: Path, name: str = "net.prototxt", state: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(TINY_NET + state)
    return path


def test_net_file_is_found_beside_the_solver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    write_net(tmp_path / "models")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    source = train_net_source(param('net: "net.prototxt"'), str(tmp_path / "models"))
    assert source.param.name == "tiny"
    assert source.description == "Creating training net from net file: net.prototxt"


def test_train_state_merges_over_the_nets_own_state(tmp_path: Path) -> None:
    write_net(tmp_path, state='state { level: 3 stage: "from_net" }')
    source = train_net_source(param('net: "net.prototxt" train_state { stage: "from_solver" }'),
                              str(tmp_path))
    state = source.param.state
    assert (state.phase, state.level, list(state.stage)) == \
        (caffe_pb2.TRAIN, 3, ["from_net", "from_solver"])


@pytest.mark.parametrize("text, message", [
    ("base_lr: 0.1", "must specify a train net using one of these fields: net, net_param, "
                     "train_net, train_net_param"),
    ('net: "a" train_net: "b"', "must not contain more than one of these fields"),
])
def test_train_net_field_errors(text: str, message: str) -> None:
    with pytest.raises(CaffeError, match=message):
        train_net_source(param(text), "")


def test_test_nets_from_specific_then_generic_sources(tmp_path: Path) -> None:
    write_net(tmp_path)
    write_net(tmp_path, "other.prototxt")
    text = ('net: "net.prototxt" test_net: "other.prototxt" test_iter: 1 test_iter: 2 '
            'test_iter: 3 test_interval: 10 test_state { stage: "a" } test_state { stage: "b" } '
            'test_state { stage: "c" }')
    sources = solver_nets.test_net_sources(param(text), str(tmp_path))
    assert [s.description for s in sources] == [
        "test_net file: other.prototxt", "net file: net.prototxt", "net file: net.prototxt"]
    assert [(s.param.state.phase, list(s.param.state.stage)) for s in sources] == [
        (caffe_pb2.TEST, ["a"]), (caffe_pb2.TEST, ["b"]), (caffe_pb2.TEST, ["c"])]


@pytest.mark.parametrize("text, message", [
    ('test_net: "x.prototxt" test_interval: 5', "test_iter must be specified for each test"),
    ('net: "net.prototxt" test_iter: 1 test_iter: 1 test_interval: 5 test_state { }',
     "test_state must be unspecified or specified once per test net"),
    ('net: "net.prototxt" test_iter: 1', "test_interval must be > 0"),
])
def test_test_net_errors(text: str, message: str, tmp_path: Path) -> None:
    write_net(tmp_path)
    with pytest.raises(CaffeError, match=message):
        solver_nets.test_net_sources(param(text), str(tmp_path))


def test_weights_entries_split_on_commas() -> None:
    assert split_weights(["a.caffemodel, b.caffemodel", "c.caffemodel"]) == \
        ["a.caffemodel", "b.caffemodel", "c.caffemodel"]

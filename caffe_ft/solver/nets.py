"""The solver's nets, built from a SolverParameter as Caffe's
Solver::InitTrainNet / InitTestNets build them.

Train net: exactly one of net, net_param, train_net, train_net_param; its
state is {phase: TRAIN} merged with the net's own state, then train_state.
Test nets: every test_net_param, then every test_net file, then copies of
net/net_param for the remaining test_iter entries; state {phase: TEST} ⊕
the net's state ⊕ test_state[i]. Net files are read relative to the working
folder as Caffe does, or else relative to the solver file.

One deliberate difference: a train net with no layers (an empty file, or
every layer excluded from TRAIN) is refused, where Caffe trains it as a no-op.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from caffe_ft.errors import CaffeError
from caffe_ft.glog import logger
from caffe_ft.net import Net
from caffe_ft.net.weights import copy_trained_layers_from
from caffe_ft.proto import caffe_pb2
from caffe_ft.upgrade import read_net_text

TRAIN_NET_FIELDS = ("net", "net_param", "train_net", "train_net_param")


def resolve_path(path: str, solver_dir: str) -> str:
    """`path` as Caffe opens it (from the working folder) when that exists,
    else beside the solver file, so a solver runs from any folder."""
    if os.path.isabs(path) or os.path.exists(path) or not solver_dir:
        return path
    beside = os.path.join(solver_dir, path)
    return beside if os.path.exists(beside) else path


@dataclass
class NetSource:
    param: caffe_pb2.NetParameter
    description: str  # Caffe's words for where the net came from, for the log
    path: str         # for error messages


def _read(path: str, solver_dir: str) -> caffe_pb2.NetParameter:
    return read_net_text(resolve_path(path, solver_dir))


def _with_state(param: caffe_pb2.NetParameter, phase: int,
                *overrides: caffe_pb2.NetState) -> caffe_pb2.NetParameter:
    """Caffe's NetState precedence: solver default phase, then the net's own
    state, then the solver's train_state/test_state (MergeFrom: set fields
    win, stages append)."""
    state = caffe_pb2.NetState(phase=phase)
    state.MergeFrom(param.state)
    for override in overrides:
        state.MergeFrom(override)
    param.state.CopyFrom(state)
    return param


def train_net_source(param: caffe_pb2.SolverParameter, solver_dir: str) -> NetSource:
    given = [name for name in TRAIN_NET_FIELDS if param.HasField(name)]
    if not given:
        raise CaffeError("SolverParameter must specify a train net using one of these fields: "
                         + ", ".join(TRAIN_NET_FIELDS))
    if len(given) > 1:
        raise CaffeError("SolverParameter must not contain more than one of these fields "
                         f"specifying a train_net: {', '.join(TRAIN_NET_FIELDS)} "
                         f"(it has {', '.join(given)})")
    field = given[0]
    if field == "train_net_param":
        net = caffe_pb2.NetParameter()
        net.CopyFrom(param.train_net_param)
        source = NetSource(net, "Creating training net specified in train_net_param.",
                           "train_net_param")
    elif field == "train_net":
        source = NetSource(_read(param.train_net, solver_dir),
                           f"Creating training net from train_net file: {param.train_net}",
                           param.train_net)
    elif field == "net_param":
        net = caffe_pb2.NetParameter()
        net.CopyFrom(param.net_param)
        source = NetSource(net, "Creating training net specified in net_param.", "net_param")
    else:
        source = NetSource(_read(param.net, solver_dir),
                           f"Creating training net from net file: {param.net}", param.net)
    _with_state(source.param, caffe_pb2.TRAIN, param.train_state)
    return source


def test_net_sources(param: caffe_pb2.SolverParameter, solver_dir: str) -> list[NetSource]:
    if param.HasField("net") and param.HasField("net_param"):
        raise CaffeError("Both net_param and net_file may not be specified.")
    generic = param.HasField("net") or param.HasField("net_param")
    specific = len(param.test_net_param) + len(param.test_net)
    if (len(param.test_iter) < specific) if generic else (len(param.test_iter) != specific):
        raise CaffeError(f"test_iter must be specified for each test network "
                         f"({len(param.test_iter)} test_iter for {specific} test_net/"
                         f"test_net_param).")
    count = len(param.test_iter) if generic else specific
    if len(param.test_state) and len(param.test_state) != count:
        raise CaffeError(f"test_state must be unspecified or specified once per test net "
                         f"({len(param.test_state)} test_state for {count} test nets).")
    if count and param.test_interval <= 0:
        raise CaffeError(f"test_interval must be > 0 when the solver has test nets "
                         f"(test_iter is given {count} time(s)); got {param.test_interval}")
    sources: list[NetSource] = []
    for net_param in param.test_net_param:
        net = caffe_pb2.NetParameter()
        net.CopyFrom(net_param)
        sources.append(NetSource(net, "test_net_param", "test_net_param"))
    for path in param.test_net:
        sources.append(NetSource(_read(path, solver_dir), f"test_net file: {path}", path))
    for _ in range(count - len(sources)):
        if param.HasField("net_param"):
            net = caffe_pb2.NetParameter()
            net.CopyFrom(param.net_param)
            sources.append(NetSource(net, "net_param", "net_param"))
        else:
            sources.append(NetSource(_read(param.net, solver_dir), f"net file: {param.net}",
                                     param.net))
    for i, source in enumerate(sources):
        overrides = (param.test_state[i],) if len(param.test_state) else ()
        _with_state(source.param, caffe_pb2.TEST, *overrides)
    return sources


def split_weights(weights: Sequence[str]) -> list[str]:
    """Every file of the solver's `weights` entries: each entry is split on ','
    and trimmed, as Caffe's LoadNetWeights does."""
    return [name.strip() for entry in weights for name in entry.split(",")]


def load_weights(net: Net, files: Sequence[str], solver_dir: str = "") -> None:
    for path in files:
        logger.info("Finetuning from %s", path)
        copy_trained_layers_from(net, resolve_path(path, solver_dir))


def build_train_net(param: caffe_pb2.SolverParameter, solver_dir: str) -> Net:
    source = train_net_source(param, solver_dir)
    logger.info("%s", source.description)
    net = Net(source.param, source=source.path)
    if not net.layers:
        # Caffe would run this as a no-op (loss 0, nothing updated) and write
        # a snapshot holding only the net's name over any earlier one; an empty
        # or wholly filtered-out train net is always a mistake, so refuse it.
        raise CaffeError(f"{source.path}: the train net has no layers for its state "
                         f"(phase TRAIN{_stages(net.state)}): nothing to train")
    load_weights(net, split_weights(param.weights), solver_dir)
    return net


def _stages(state: caffe_pb2.NetState) -> str:
    return (f", level {state.level}" if state.level else "") + "".join(
        f", stage '{stage}'" for stage in state.stage)


def build_test_nets(param: caffe_pb2.SolverParameter, solver_dir: str) -> list[Net]:
    nets = []
    for i, source in enumerate(test_net_sources(param, solver_dir)):
        logger.info("Creating test net (#%d) specified by %s", i, source.description)
        net = Net(source.param, source=source.path)
        load_weights(net, split_weights(param.weights), solver_dir)
        nets.append(net)
    return nets

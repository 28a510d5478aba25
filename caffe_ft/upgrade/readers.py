"""Reading nets and solvers as Caffe does: parse, then upgrade
(ReadNetParamsFrom{Text,Binary}FileOrDie, ReadSolverParamsFromTextFileOrDie).
Every part of caffe_ft that opens a net or solver file goes through here, so
a legacy file works wherever a current one does."""
from __future__ import annotations

import os

from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import PathLike, read_binary, read_text
from caffe_ft.upgrade.net import upgrade_net_as_needed
from caffe_ft.upgrade.solver import upgrade_snapshot_prefix, upgrade_solver_as_needed


def read_net_text(path: PathLike) -> caffe_pb2.NetParameter:
    """A .prototxt net, upgraded to the current format."""
    net = read_text(path, caffe_pb2.NetParameter(), "Net file")
    upgrade_net_as_needed(net, os.fspath(path))
    return net


def read_net_binary(path: PathLike) -> caffe_pb2.NetParameter:
    """A .caffemodel (binary NetParameter, any size), upgraded to the current
    format so V0/V1 weights are found under `layer`."""
    net = read_binary(path, caffe_pb2.NetParameter(), "Weights file")
    upgrade_net_as_needed(net, os.fspath(path))
    return net


def read_solver_text(path: PathLike) -> caffe_pb2.SolverParameter:
    """A solver .prototxt, upgraded, with snapshot_prefix defaulted from its path."""
    solver = read_text(path, caffe_pb2.SolverParameter(), "Solver file")
    upgrade_solver_as_needed(solver, os.fspath(path))
    upgrade_snapshot_prefix(solver, os.fspath(path))
    return solver

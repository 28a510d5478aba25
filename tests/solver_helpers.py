"""Small Input-fed nets and solvers for the solver's unit tests, and a way to
read what the solver logs."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from caffe_ft.glog import GlogFormatter, logger
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text
from caffe_ft.solver import Solver

# 8 samples of 5 features, 3 classes; the first InnerProduct's bias has
# lr_mult 2 and decay_mult 0, as Caffe's reference recipes have.
TINY_NET = '''
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 8 dim: 5 } shape { dim: 8 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1"
        param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc2" bottom: "label" top: "acc"
        include { phase: TEST } }
'''

BASE_SOLVER = '''
base_lr: 0.1
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.01
max_iter: 10
display: 0
random_seed: 7
snapshot_after_train: false
'''


def solver_param(text: str = "", net: str = TINY_NET) -> caffe_pb2.SolverParameter:
    param = parse_text(BASE_SOLVER, caffe_pb2.SolverParameter())
    param.MergeFrom(parse_text(text, caffe_pb2.SolverParameter()))
    if not (param.HasField("net") or param.HasField("train_net")):
        param.net_param.CopyFrom(parse_text(net, caffe_pb2.NetParameter()))
    return param


def feed(solver: Solver, seed: int = 0) -> None:
    """The same fixed batch into the train net and every test net."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(8, 5, generator=generator)
    label = torch.randint(0, 3, (8,), generator=generator).float()
    for net in (solver.net, *solver.test_nets):
        net.set_blob_data("data", data)
        net.set_blob_data("label", label)


def make_solver(text: str = "", net: str = TINY_NET, folder: Path | None = None,
                **kwargs) -> Solver:
    param = solver_param(text, net)
    if folder is not None and not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = str(folder / "tiny")
    solver = Solver(param, **kwargs)
    feed(solver)
    return solver


def weights(solver: Solver) -> list[torch.Tensor]:
    return [p.blob.detach().clone() for p in solver.params]


@contextlib.contextmanager
def captured_log(path: Path | None = None) -> Iterator[list[str]]:
    """The messages the solver logs while the block runs (and, with a path,
    the full glog lines written to that file)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handlers: list[logging.Handler] = [Collect()]
    if path is not None:
        handlers.append(logging.FileHandler(path))
        handlers[-1].setFormatter(GlogFormatter())
    level = logger.level
    logger.setLevel(logging.INFO)
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield messages
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(level)

"""The well-formed files every mutant starts from, written into one folder so
mutants find their companions (a solver's net, a solverstate's caffemodel)
beside them, as in a real run.

LeNet (Caffe's examples/mnist net) with Input layers instead of Data, so a
mutant net builds without an LMDB, in the current format and in the V1
format (`layers`, enum types, `input_dim`), so the upgrade paths are fuzzed
too. The binaries are what caffe_ft itself writes for that net and solver.
"""
from __future__ import annotations

from pathlib import Path

from caffe_ft.net import Net
from caffe_ft.net.weights import save_caffemodel
from caffe_ft.proto import caffe_pb2
from caffe_ft.solver.solver import Solver
from caffe_ft.upgrade import read_net_text, read_solver_text

_LENET_BODY = """
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param {
    num_output: 20 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" }
  }
}
layer {
  name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param {
    num_output: 50 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" }
  }
}
layer {
  name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param {
    num_output: 500
    weight_filler { type: "xavier" } bias_filler { type: "constant" }
  }
}
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer {
  name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param {
    num_output: 10
    weight_filler { type: "xavier" } bias_filler { type: "constant" }
  }
}
layer {
  name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include { phase: TEST }
}
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

LENET = """name: "LeNet"
layer {
  name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 4 dim: 1 dim: 28 dim: 28 } shape { dim: 4 } }
}
""" + _LENET_BODY

LENET_V1 = """name: "LeNet"
input: "data"
input_dim: 4
input_dim: 1
input_dim: 28
input_dim: 28
input: "label"
input_dim: 4
input_dim: 1
input_dim: 1
input_dim: 1
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" } }
}
layers {
  name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layers {
  name: "ip1" type: INNER_PRODUCT bottom: "pool1" top: "ip1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  inner_product_param { num_output: 10
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" } }
}
layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" }
layers {
  name: "accuracy" type: ACCURACY bottom: "ip1" bottom: "label" top: "accuracy"
  include { phase: TEST }
}
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip1" bottom: "label" top: "loss" }
"""

SOLVER = """net: "lenet.prototxt"
test_iter: 1
test_interval: 100
base_lr: 0.01
momentum: 0.9
momentum2: 0.999
delta: 1e-8
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 10
max_iter: 100
snapshot: 50
snapshot_prefix: "lenet"
type: "Adam"
random_seed: 1
solver_mode: CPU
"""

TEXT_SEEDS = {"lenet.prototxt": LENET, "lenet_v1.prototxt": LENET_V1,
              "solver.prototxt": SOLVER}
CAFFEMODEL = "lenet.caffemodel"
# What Solver.snapshot names the state of a solver at iteration 0 with prefix "lenet".
SOLVERSTATE = "lenet_iter_0.solverstate"


def write_seeds(folder: Path) -> None:
    """Every seed file (text, then the binaries caffe_ft writes) into `folder`."""
    for name, text in TEXT_SEEDS.items():
        (folder / name).write_text(text)
    net = Net(read_net_text(folder / "lenet.prototxt"), caffe_pb2.TRAIN)
    save_caffemodel(net, folder / CAFFEMODEL)
    solver_path = folder / "solver.prototxt"
    param = read_solver_text(solver_path)
    param.snapshot_prefix = str(folder / "lenet")
    Solver(param, str(solver_path)).snapshot()
    from data_kinds import write_data_seeds  # here: data_kinds imports fuzz_kinds, which imports us
    write_data_seeds(folder)

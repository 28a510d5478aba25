"""The GoogLeNet fine-tuning recipe (examples/googlenet_finetune) on the real
BVLC GoogLeNet: weights saved from the original train_val load into the
renamed one by layer name, the three renamed heads keep their filler init,
frozen layers neither change nor get a gradient, and the solver's loss falls.

Data layers read a tiny LMDB of bundled digits (color, 232x232) built here;
the original-names caffemodel is BVLC's train_val built with caffe_ft's
fillers and saved, standing in for bvlc_googlenet.caffemodel.
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from caffe_ft.data.convert_imageset import ConvertOptions, convert_class_folders
from caffe_ft.net import Net
from caffe_ft.net.weights import copy_trained_layers_from, save_caffemodel
from caffe_ft.proto import caffe_pb2
from caffe_ft.solver import Solver
from caffe_ft.upgrade import read_net_binary, read_net_text, read_solver_text

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
ORIGINAL = Path(__file__).parent / "fixtures" / "corpus" / "bvlc_googlenet" / "train_val.prototxt"
RECIPE = ROOT / "examples" / "googlenet_finetune"
DIGITS = ROOT / "examples" / "lenet_digits" / "data" / "train"
HEADS = ["loss1/classifier", "loss2/classifier", "loss3/classifier"]
BATCH = 5  # one image of each class


def with_data(param: caffe_pb2.NetParameter, lmdb: Path) -> caffe_pb2.NetParameter:
    """The net with both Data layers reading `lmdb`, BATCH images a pass."""
    for layer in param.layer:
        if layer.type == "Data":
            layer.data_param.source = str(lmdb)
            layer.data_param.batch_size = BATCH
    return param


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-class LMDB of BATCH color digits, and the original-names caffemodel."""
    root = tmp_path_factory.mktemp("googlenet")
    classes = root / "images"
    for label in range(5):
        (classes / str(label)).mkdir(parents=True)
    for i in range(BATCH):
        shutil.copy(sorted((DIGITS / str(i % 5)).glob("*.png"))[i], classes / str(i % 5))
    convert_class_folders(f"{classes}/", root / "lmdb",
                          ConvertOptions(resize_width=232, resize_height=232, workers=1))
    torch.manual_seed(1)
    original = Net(with_data(read_net_text(str(ORIGINAL)), root / "lmdb"), caffe_pb2.TRAIN,
                   source=str(ORIGINAL))
    save_caffemodel(original, root / "bvlc_googlenet.caffemodel")
    return root


def recipe_net(work: Path) -> Net:
    path = RECIPE / "train_val.prototxt"
    return Net(with_data(read_net_text(str(path)), work / "lmdb"), caffe_pb2.TRAIN,
               source=str(path))


def test_original_weights_load_by_name_and_renamed_heads_keep_filler_init(work: Path) -> None:
    original = read_net_text(str(ORIGINAL))
    with_blobs = [lp.name for lp in original.layer if lp.type in ("Convolution", "InnerProduct")]
    net = recipe_net(work)
    heads = {f"{name}_ft": [blob.detach().clone() for blob in net.params_of(f"{name}_ft")]
             for name in HEADS}

    report = copy_trained_layers_from(net, str(work / "bvlc_googlenet.caffemodel"))

    # Caffe copies every file layer that has a namesake in the net; the report
    # lists those with blobs and counts the others apart.
    in_file = read_net_binary(str(work / "bvlc_googlenet.caffemodel")).layer
    names = set(net.layer_names)
    assert report.copied == [lp.name for lp in in_file if lp.name in names and lp.blobs]
    assert report.without_params == [lp.name for lp in in_file
                                     if lp.name in names and not lp.blobs]
    assert set(with_blobs) - set(HEADS) <= set(report.copied)
    assert sorted(report.fresh) == sorted(heads)
    ignored = [lp for lp in in_file if lp.name not in names]
    assert report.ignored == [lp.name for lp in ignored]
    assert [lp.name for lp in ignored if lp.blobs] == HEADS
    table = report.table()
    for name in heads:
        assert f"filler init (not in file)  {name}" in table
    # Copied layers hold the file's values; the new heads are untouched by the load.
    saved = Net(with_data(read_net_text(str(ORIGINAL)), work / "lmdb"), caffe_pb2.TRAIN,
                source=str(ORIGINAL))
    copy_trained_layers_from(saved, str(work / "bvlc_googlenet.caffemodel"))
    for name in report.copied:
        for mine, theirs in zip(net.params_of(name), saved.params_of(name)):
            assert torch.equal(mine, theirs), name
    for name, before in heads.items():
        weight, bias = (blob.detach() for blob in net.params_of(name))
        assert torch.equal(weight, before[0]) and torch.equal(bias, before[1])
        assert tuple(weight.shape) == (5, weight.shape[1])
        # xavier: uniform in ±sqrt(3 / fan_in); the bias filler is constant 0.
        bound = math.sqrt(3.0 / weight.shape[1])
        assert 0 < float(weight.abs().max()) <= bound and float(weight.std()) > bound / 4
        assert not bias.any()


def scored_loss(solver: Solver) -> float:
    """The weighted loss of the TEST-phase net (center crop, no dropout), so
    the comparison is free of the training passes' random crops and dropout."""
    solver.test(0)
    net = solver.test_nets[0]
    return sum(weight * float(net.blob_data(name).sum()) for name, weight in net.loss_tops)


def test_solver_freezes_lr_mult_0_layers_and_the_loss_falls(work: Path, capsys) -> None:
    solver_path = RECIPE / "solver.prototxt"
    net_param = with_data(read_net_text(str(RECIPE / "train_val.prototxt")), work / "lmdb")
    for layer in net_param.layer:
        if layer.type == "Data":
            layer.transform_param.mirror = False  # same training batch every iteration
    param = read_solver_text(str(solver_path))
    param.ClearField("net")
    param.net_param.CopyFrom(net_param)
    param.weights.append(str(work / "bvlc_googlenet.caffemodel"))
    del param.test_iter[:]
    param.test_iter.append(1)
    param.test_interval = param.max_iter  # tests run only when asked for below
    param.snapshot = 0
    param.snapshot_after_train = False
    param.random_seed = 1701
    solver = Solver(param, str(solver_path))
    net = solver.net
    spec = {lp.name: [p.lr_mult for p in lp.param] for lp in net.layer_params.layer if lp.param}
    frozen = [name for name, mults in spec.items() if not any(mults)]
    assert frozen == ["conv1/7x7_s2", "conv2/3x3_reduce", "conv2/3x3"]
    learned = [name for name, mults in spec.items() if any(mults)]
    frozen_before = {name: [b.detach().clone() for b in net.params_of(name)] for name in frozen}
    learned_before = {name: [b.detach().clone() for b in net.params_of(name)]
                      for name in learned}

    before = scored_loss(solver)
    seconds = []
    # Dropout (0.7 and 0.4, Caffe's draws) makes a few iterations' progress a
    # matter of the seed: after 9, seeds 1701, 1, 2, 3 left 0.88, 0.79, 1.00
    # and 0.92 of the loss; after 20, 0.73, 0.80, 0.84 and 0.85.
    for _ in range(20):
        start = time.perf_counter()
        solver.step(1)
        seconds.append(time.perf_counter() - start)
    after = scored_loss(solver)

    for name in frozen:
        for blob, value in zip(net.params_of(name), frozen_before[name]):
            assert not blob.requires_grad and blob.grad is None, name
            assert torch.equal(blob, value), name
    for name in learned:
        assert any(not torch.equal(blob, value) for blob, value in
                   zip(net.params_of(name), learned_before[name])), name
    assert after < 0.85 * before, (before, after)
    with capsys.disabled():
        print(f"\nGoogLeNet fine-tune, batch {BATCH} on the CPU: {np.median(seconds):.2f} "
              f"s/iteration (median of {len(seconds)}); TEST loss {before:.3f} -> {after:.3f}")

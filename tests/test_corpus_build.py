"""Every corpus net that uses only BVLC layer types builds (after upgrade),
with Caffe's blob shapes for the reference models; nets with a fork's layer
types fail with one message naming every unsupported type.

Train/val nets read data the corpus does not ship, so their data layers are
replaced by Input layers of the shape those layers would produce."""
from __future__ import annotations

import json

import pytest

from caffe_ft.errors import CaffeError
from caffe_ft.layers import base
from caffe_ft.net import Net
from caffe_ft.proto import caffe_pb2
from caffe_ft.upgrade import read_net_text
from conftest import FIXTURES

CORPUS = FIXTURES / "corpus"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
NETS = [f for f in MANIFEST["files"] if f["kind"] != "solver"]
BVLC_ONLY = [f["file"] for f in NETS if not f["non_bvlc_types"] and not f["non_bvlc_fields"]]
FORK_TYPES = [f for f in NETS if f["non_bvlc_types"] and not f["non_bvlc_fields"]]
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "WindowData", "MemoryData", "Python"}

# Data tops whose shape is not (batch, 3, crop, crop) / (batch,) — the datasets' own shapes.
DATA_SHAPES = {
    "caffe_examples_cifar10": {"data": (2, 3, 32, 32)},
    "caffe_examples_mnist": {"data": (2, 1, 28, 28)},
    "caffe_examples_siamese": {"pair_data": (2, 2, 28, 28)},
    "digits_standard_networks/lenet": {"data": (2, 1, 28, 28)},
    "hdf5_classification": {"data": (2, 4)},
    "nin-cifar10": {"data": (2, 3, 32, 32)},
    # S2VT's HDF5 rows are time steps: batch_size 80 rows of 32 streams.
    "s2vt_lstm": {"cont_sentence": (80, 32), "input_sentence": (80, 32),
                  "target_sentence": (80, 32), "stage_indicator": (80, 32),
                  "frame_fc7": (80, 32, 4096)},
    "voc-fcn8s": {"data": (1, 3, 64, 64), "label": (1, 1, 64, 64)},
}


@pytest.fixture(autouse=True)
def _no_filler_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests check wiring and shapes; drawing ~100M random weights per
    # build (S2VT's vocabulary layers, VGG's fc6) would only cost time.
    monkeypatch.setattr(base, "fill", lambda blob, filler: blob)


def _data_shape(file: str, layer: caffe_pb2.LayerParameter, top_index: int) -> tuple[int, ...]:
    top = layer.top[top_index]
    for key, shapes in DATA_SHAPES.items():
        if key in file and top in shapes:
            return shapes[top]
    if top_index > 0:
        return (2,)  # label
    crop = layer.transform_param.crop_size
    size = crop or layer.image_data_param.new_height or 227
    return (2, 3, size, size)


# DIGITS adds the deploy net's input itself (its "deploy" stage has none).
DIGITS_DEPLOY_INPUT = {"digits_standard_networks/lenet.prototxt": (1, 1, 28, 28),
                       "digits_standard_networks/alexnet.prototxt": (1, 3, 227, 227)}


def _inputs_for_data(file: str, net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    if file in DIGITS_DEPLOY_INPUT:
        first = out.layer.add()
        first.name, first.type = "deploy_input", "Input"
        first.top.append("data")
        first.include.add().stage.append("deploy")
        first.input_param.shape.add().dim.extend(DIGITS_DEPLOY_INPUT[file])
        out.layer.insert(0, first)
        del out.layer[-1]
        for layer in out.layer:  # DIGITS also fills in the classifier's num_output
            if layer.type == "InnerProduct" and not layer.inner_product_param.num_output:
                layer.inner_product_param.num_output = 10
    for layer in out.layer:
        if layer.type not in DATA_TYPES or layer.bottom:
            continue
        shapes = [_data_shape(file, layer, j) for j in range(len(layer.top))]
        keep = (layer.name, list(layer.top), list(layer.include), list(layer.exclude))
        layer.Clear()
        layer.name, layer.type = keep[0], "Input"
        layer.top.extend(keep[1])
        layer.include.extend(keep[2])
        layer.exclude.extend(keep[3])
        for shape in shapes:
            layer.input_param.shape.add().dim.extend(shape)
    return out


def _stages(net: caffe_pb2.NetParameter) -> list[str]:
    rules = [r for layer in net.layer for r in (*layer.include, *layer.exclude)]
    return sorted({stage for rule in rules for stage in (*rule.stage, *rule.not_stage)})


@pytest.mark.parametrize("file", BVLC_ONLY)
def test_bvlc_net_builds(file: str) -> None:
    param = _inputs_for_data(file, read_net_text(str(CORPUS / file)))
    deploy_only = "deploy" in file and "train" not in file
    phases = [caffe_pb2.TEST] if deploy_only else [caffe_pb2.TRAIN, caffe_pb2.TEST]
    stages = _stages(param)
    if not stages:
        for phase in phases:
            assert len(Net(param, phase, source=file).layers) > 1
        return
    # Nets with stage rules (DIGITS' train/val/deploy, S2VT's combinable variants)
    # are built for the stages their solver or tool selects: each stage must build
    # in some phase, alone or together with one other stage.
    configurations = [[stage] for stage in stages] + [
        [a, b] for i, a in enumerate(stages) for b in stages[i + 1:]]
    built: set[str] = set()
    for selected in configurations:
        if built.issuperset(selected):
            continue  # each stage needs to build once, not in every combination
        for phase in phases:
            try:
                Net(param, phase, stages=selected, source=file)
            except CaffeError as err:
                # Stages that are not meant together leave a blob unproduced or produce it twice.
                assert "Unknown bottom blob" in str(err) or "multiple sources" in str(err), err
                continue
            built.update(selected)
    assert built == set(stages), f"stages that build in no configuration: {set(stages) - built}"


# Caffe's published top shapes for the reference models.
CAFFE_SHAPES = {
    "bvlc_googlenet/deploy.prototxt": {"pool1/3x3_s2": (10, 64, 56, 56),
                                       "inception_5b/output": (10, 1024, 7, 7),
                                       "pool5/7x7_s1": (10, 1024, 1, 1), "prob": (10, 1000)},
    "bvlc_alexnet/deploy.prototxt": {"conv1": (10, 96, 55, 55), "pool1": (10, 96, 27, 27),
                                     "pool5": (10, 256, 6, 6), "prob": (10, 1000)},
    "bvlc_reference_caffenet/deploy.prototxt": {"pool2": (10, 256, 13, 13),
                                                "pool5": (10, 256, 6, 6), "fc7": (10, 4096)},
    "resnet_kaiminghe/ResNet-50-deploy.prototxt": {"pool1": (1, 64, 56, 56),
                                                   "res5c": (1, 2048, 7, 7),
                                                   "pool5": (1, 2048, 1, 1), "prob": (1, 1000)},
    "vgg_model_zoo/gist_copies/vgg_ilsvrc_16/VGG_ILSVRC_16_layers_deploy.prototxt": {
        "pool5": (10, 512, 7, 7), "fc7": (10, 4096), "prob": (10, 1000)},
}


@pytest.mark.parametrize("file", sorted(CAFFE_SHAPES))
def test_reference_models_have_caffes_shapes(file: str) -> None:
    net = Net(read_net_text(str(CORPUS / file)), caffe_pb2.TEST, source=file)
    for blob, shape in CAFFE_SHAPES[file].items():
        assert net.blob_shapes[blob] == shape, blob


@pytest.mark.parametrize("entry", FORK_TYPES, ids=lambda e: e["file"])
def test_fork_layer_types_are_named_at_once(entry: dict) -> None:
    param = read_net_text(str(CORPUS / entry["file"]))
    with pytest.raises(CaffeError) as err:
        Net(param, caffe_pb2.TEST, source=entry["file"])
    message = str(err.value)
    assert entry["file"] in message
    for kind in entry["non_bvlc_types"]:
        if kind.startswith("Python"):
            continue
        assert kind in message

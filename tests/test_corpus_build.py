"""Every corpus net that uses only BVLC layer types builds (after upgrade),
with Caffe's blob shapes for the reference models; nets with a fork's layer
types fail with one message naming every unsupported type.

Train/val nets read data the corpus does not ship, so their data layers are
replaced by Input layers of the shape those layers would produce."""
from __future__ import annotations

import json

import pytest

from caffe_ft.errors import CaffeError
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
    "s2vt_lstm": {"cont_sentence": (20, 2), "input_sentence": (20, 2),
                  "target_sentence": (20, 2), "frame_fc7": (20, 2, 4096),
                  "cont_img": (20, 2), "encoder_to_decoder": (20, 2)},
    "voc-fcn8s": {"data": (1, 3, 64, 64), "label": (1, 1, 64, 64)},
}


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


def _inputs_for_data(file: str, net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
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


@pytest.mark.parametrize("file", BVLC_ONLY)
def test_bvlc_net_builds(file: str) -> None:
    param = _inputs_for_data(file, read_net_text(str(CORPUS / file)))
    phases = [caffe_pb2.TEST] if "deploy" in file and "train" not in file else \
        [caffe_pb2.TRAIN, caffe_pb2.TEST]
    for phase in phases:
        net = Net(param, phase, source=file)
        assert net.layers and net.output_names


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

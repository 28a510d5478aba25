"""Net semantics beyond single layers: NetState rules, wiring errors, loss
weights, param sharing, backward skipping, weights by name, save/load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_ft.errors import CaffeError
from caffe_ft.net import Net
from caffe_ft.net.weights import copy_trained_layers, copy_trained_layers_from, net_to_proto, \
    save_caffemodel
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text, read_binary

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST

SMALL = '''
name: "small"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } shape { dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 0 } param { lr_mult: 0 }
        convolution_param { num_output: 5 kernel_size: 3
          weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
        param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc"
        include { phase: TEST } }
'''


def net_of(text: str, phase: int = TRAIN, **kw) -> Net:
    return Net(parse_text(text, caffe_pb2.NetParameter()), phase, source="test.prototxt", **kw)


def test_phase_rules_and_sorted_outputs() -> None:
    assert net_of(SMALL, TRAIN).output_names == ["loss"]
    # Outputs are ordered by name (std::set), not by layer order.
    assert net_of(SMALL, TEST).output_names == ["acc", "loss"]


def test_stage_and_level_rules() -> None:
    text = '''
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 } } }
    layer { name: "a" type: "ReLU" bottom: "x" top: "a" include { stage: "deploy" } }
    layer { name: "b" type: "ReLU" bottom: "x" top: "b" exclude { stage: "deploy" } }
    layer { name: "c" type: "ReLU" bottom: "x" top: "c" include { min_level: 2 } }
    layer { name: "d" type: "ReLU" bottom: "x" top: "d" include { not_stage: "deploy" } }
    '''
    assert net_of(text, TEST, stages=["deploy"]).layer_names == ["x", "a"]
    assert net_of(text, TEST, level=2).layer_names == ["x", "x_x_0_split", "b", "c", "d"]


def test_include_and_exclude_together_is_an_error() -> None:
    text = '''layer { name: "x" type: "Input" top: "x" include { phase: TRAIN }
              exclude { phase: TEST } input_param { shape { dim: 1 } } }'''
    with pytest.raises(CaffeError, match="layer 'x' specifies both include and exclude"):
        net_of(text)


def test_unknown_bottom_and_duplicate_top_are_named() -> None:
    with pytest.raises(CaffeError, match=r"Unknown bottom blob 'nope' \(layer 'r', bottom index 0\)"):
        net_of('layer { name: "r" type: "ReLU" bottom: "nope" top: "y" }')
    with pytest.raises(CaffeError, match="Top blob 'x' produced by multiple sources"):
        net_of('''layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }
                  layer { name: "y" type: "Input" top: "x" input_param { shape { dim: 1 } } }''')


def test_every_unsupported_type_is_named_at_once() -> None:
    text = '''layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }
              layer { name: "p" type: "PriorBox" bottom: "x" top: "p" }
              layer { name: "q" type: "Permute" bottom: "x" top: "q" }
              layer { name: "q2" type: "Permute" bottom: "x" top: "q2" }'''
    with pytest.raises(CaffeError) as err:
        net_of(text)
    message = str(err.value)
    assert "test.prototxt" in message
    assert "PriorBox (layers: p)" in message and "Permute (layers: q, q2)" in message


def test_loss_weight_default_and_count_check() -> None:
    net = net_of(SMALL)
    assert net.loss_tops == [("loss", 1.0)]
    text = SMALL.replace('top: "loss" }', 'top: "loss" top: "prob" }')
    with pytest.raises(CaffeError, match="loss_weight must be unspecified or specified once"):
        net_of(text)


def test_frozen_layers_get_no_gradient_and_no_backward() -> None:
    net = net_of(SMALL)
    conv = net.layers[net.layer_index("conv1")]
    assert not any(p.requires_grad for p in conv.blobs)
    assert not net.layer_need_backward[net.layer_index("conv1")]
    net.set_blob_data("data", torch.randn(4, 3, 8, 8))
    net.set_blob_data("label", torch.tensor([0.0, 1, 2, 1]))
    loss = net.forward()
    loss.backward()
    assert conv.blobs[0].grad is None
    fc = net.layers[net.layer_index("fc")]
    assert fc.blobs[0].grad is not None and fc.blobs[0].grad.abs().sum() > 0


def test_param_sharing_by_name() -> None:
    text = '''
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 } } }
    layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" lr_mult: 3 }
            inner_product_param { num_output: 4 bias_term: false weight_filler { type: "xavier" } } }
    layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" }
            inner_product_param { num_output: 4 bias_term: false } }
    '''
    net = net_of(text)
    a, b = net.layers[1], net.layers[2]
    assert a.blobs[0] is b.blobs[0]
    assert [p.display_name for p in net.learnable_params] == ["a/0"]
    assert net.learnable_params[0].lr_mult == 3
    bad = text.replace('num_output: 4 bias_term: false }', 'num_output: 5 bias_term: false }')
    with pytest.raises(CaffeError, match="Cannot share param 'w' owned by layer 'a' with layer 'b'"):
        net_of(bad)
    mismatch = text.replace('param { name: "w" }', 'param { name: "w" lr_mult: 2 }')
    with pytest.raises(CaffeError, match="Shared param 'w' has mismatched lr_mult"):
        net_of(mismatch)


def _saved(net: Net) -> caffe_pb2.NetParameter:
    return parse_text(str(net_to_proto(net)), caffe_pb2.NetParameter())


def test_copy_by_name_renamed_layer_keeps_filler_init() -> None:
    source = net_of(SMALL)
    weights = _saved(source)
    renamed = SMALL.replace('name: "fc"', 'name: "fc_new"')
    target = net_of(renamed)
    before = target.layers[target.layer_index("fc_new")].blobs[0].detach().clone()
    report = copy_trained_layers(target, weights, "base.caffemodel")
    assert "conv1" in report.copied and "fc" in report.ignored and report.fresh == ["fc_new"]
    conv = target.layers[target.layer_index("conv1")]
    assert torch.equal(conv.blobs[0], source.layers[source.layer_index("conv1")].blobs[0])
    assert torch.equal(target.layers[target.layer_index("fc_new")].blobs[0], before)
    table = report.table()
    # Only conv1 has blobs to copy; the data, ReLU and loss layers are counted apart.
    assert report.copied == ["conv1"] and "1 copied" in table
    assert f"{len(report.without_params)} layers without parameters" in table
    assert all(not target.layers[target.layer_index(name)].blobs
               for name in report.without_params) and report.without_params
    assert "filler init (not in file)  fc_new" in table


def test_shape_mismatch_error_is_caffes() -> None:
    weights = _saved(net_of(SMALL))
    target = net_of(SMALL.replace("num_output: 3", "num_output: 7"))
    with pytest.raises(CaffeError) as err:
        copy_trained_layers(target, weights, "base.caffemodel")
    assert str(err.value) == (
        "Cannot copy param 0 weights from layer 'fc'; shape mismatch.  Source param shape is "
        "3 180 (540); target param shape is 7 180 (1260). To learn this layer's parameters from "
        "scratch rather than copying from a saved net, rename the layer.")


def test_legacy_4d_blob_shapes_match() -> None:
    net = net_of(SMALL)
    weights = _saved(net)
    for layer in weights.layer:
        for blob in layer.blobs:
            dims = list(blob.shape.dim)
            blob.ClearField("shape")
            blob.num, blob.channels, blob.height, blob.width = [1] * (4 - len(dims)) + dims
    fresh = net_of(SMALL)
    copy_trained_layers(fresh, weights, "legacy.caffemodel")
    for a, b in zip(net.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_save_and_load_round_trip(tmp_path) -> None:
    net = net_of(SMALL)
    path = tmp_path / "m.caffemodel"
    save_caffemodel(net, path)
    saved = read_binary(path, caffe_pb2.NetParameter())
    loss = next(layer for layer in saved.layer if layer.name == "loss")
    assert list(loss.loss_weight) == [1.0] and loss.phase == TRAIN
    fresh = net_of(SMALL)
    copy_trained_layers_from(fresh, str(path))
    for a, b in zip(net.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_hdf5_round_trip(tmp_path) -> None:
    pytest.importorskip("h5py")
    from caffe_ft.net.hdf5_weights import save_hdf5_weights
    net = net_of(SMALL)
    path = tmp_path / "m.caffemodel.h5"
    save_hdf5_weights(net, path)
    fresh = net_of(SMALL)
    report = copy_trained_layers_from(fresh, str(path))
    assert report.copied == ["conv1", "fc"]
    for a, b in zip(net.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_missing_weights_file_is_named() -> None:
    with pytest.raises(CaffeError, match="Weights file not found: nowhere/x.caffemodel"):
        copy_trained_layers_from(net_of(SMALL), "nowhere/x.caffemodel")


DEPLOY = '''
name: "deploy"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 stride: 1 pad: 1
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''


def test_opencv_dnn_runs_our_caffemodel(tmp_path) -> None:
    cv2 = pytest.importorskip("cv2")
    net = net_of(DEPLOY, TEST)
    image = torch.rand(1, 3, 12, 12)
    net.set_blob_data("data", image)
    with torch.no_grad():
        net.forward()
    ours = net.blob_data("prob").numpy().copy()
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    save_caffemodel(net, tmp_path / "m.caffemodel")
    cv_net = cv2.dnn.readNetFromCaffe(str(tmp_path / "deploy.prototxt"), str(tmp_path / "m.caffemodel"))
    cv_net.setInput(image.numpy())
    theirs = cv_net.forward()
    np.testing.assert_allclose(theirs.reshape(ours.shape), ours, rtol=1e-4, atol=1e-6)


def test_pycaffe_api(tmp_path) -> None:
    import caffe_ft as caffe
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    first = caffe.Net(str(tmp_path / "deploy.prototxt"), caffe.TEST)
    first.save(str(tmp_path / "m.caffemodel"))
    net = caffe.Net(str(tmp_path / "deploy.prototxt"), str(tmp_path / "m.caffemodel"), caffe.TEST)
    same = caffe.Net(str(tmp_path / "deploy.prototxt"), caffe.TEST,
                     weights=str(tmp_path / "m.caffemodel"))
    assert list(net.blobs) == ["data", "conv1", "pool1", "fc", "prob"]
    assert list(net.params) == ["conv1", "fc"] and net.inputs == ["data"]
    assert net.outputs == ["prob"]
    x = np.random.rand(1, 3, 12, 12).astype(np.float32)
    net.blobs["data"].data[...] = x
    out = net.forward()["prob"].copy()
    np.testing.assert_allclose(same.forward(data=x)["prob"], out, rtol=1e-6)
    # Net surgery: writing params in place changes the output.
    net.params["fc"][1].data[...] += 5.0 * np.arange(5, dtype=np.float32)
    assert not np.allclose(net.forward()["prob"], out)
    # Backward from a seeded output diff reaches the input.
    diffs = net.backward(prob=np.ones((1, 5), dtype=np.float32))
    assert diffs["data"].shape == (1, 3, 12, 12)
    net.blobs["data"].reshape(2, 3, 12, 12)
    net.reshape()
    assert net.blobs["prob"].data.shape == (2, 5)
    assert net.forward(data=np.zeros((2, 3, 12, 12)))["prob"].shape == (2, 5)

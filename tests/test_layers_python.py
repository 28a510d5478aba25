"""The Python layer: pycaffe-style layers from tests/fixtures/python_layers run
inside the net, forward and backward, as losses with an explicit
loss_weight, with learnable blobs, and with Caffe's errors for bad modules."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_ft.errors import CaffeError
from caffe_ft.net import Net
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text
from conftest import FIXTURES

MODULE = "caffe_ft_test_layers"


@pytest.fixture(autouse=True)
def _layer_module_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES / "python_layers"))


def build(text: str, phase: int = caffe_pb2.TRAIN) -> Net:
    net = Net(parse_text(text, caffe_pb2.NetParameter()), phase, source="test.prototxt")
    net.keep_blob_diffs = True
    return net


def set_inputs(net: Net, **inputs: np.ndarray) -> None:
    for name, value in inputs.items():
        net.set_blob_data(name, torch.from_numpy(value))


SCALE = f'''force_backward: true
layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
layer {{ name: "scale" type: "Python" bottom: "x" top: "y"
        python_param {{ module: "{MODULE}" layer: "ScaleLayer" param_str: "2.5" }} }}
'''


def test_forward_and_backward_through_the_net() -> None:
    net = build(SCALE)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    set_inputs(net, x=x)
    net.forward()
    np.testing.assert_allclose(net.blob_data("y").detach().numpy(), 2.5 * x)
    seed = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    net.backward({"y": torch.from_numpy(seed)})
    np.testing.assert_allclose(net.blob_diff("x").numpy(), 2.5 * seed)


def test_param_str_phase_and_reshape_before_every_forward() -> None:
    net = build(SCALE, caffe_pb2.TEST)
    layer = net.layers[net.layer_index("scale")].instance
    assert layer.param_str == "2.5" and layer.phase == caffe_pb2.TEST
    before = layer.reshapes
    net.forward()
    net.forward()
    assert layer.reshapes == before + 2
    net.reshape_input("x", (4, 1))
    set_inputs(net, x=np.ones((4, 1), np.float32))
    net.forward()
    assert tuple(net.blob_data("y").shape) == (4, 1)


PAIR = '''force_backward: true
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 3 dim: 4 } } }
layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 3 dim: 4 } } }
'''


def python_loss(loss_weight: str) -> str:
    return PAIR + (f'layer {{ name: "py" type: "Python" bottom: "a" bottom: "b" top: "py_loss" '
                   f'{loss_weight} python_param {{ module: "{MODULE}" '
                   f'layer: "HalfSquaredDistance" }} }}')


def test_python_loss_with_explicit_loss_weight_matches_euclidean_loss() -> None:
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(3, 4)).astype(np.float32) for _ in range(2))
    results = []
    for text in (python_loss("loss_weight: 3"),
                 PAIR + 'layer { name: "eu" type: "EuclideanLoss" bottom: "a" bottom: "b" '
                        'top: "eu_loss" loss_weight: 3 }'):
        net = build(text)
        set_inputs(net, a=a, b=b)
        loss = net.forward()
        net.backward()
        results.append((loss.item(), net.blob_diff("a").numpy(), net.blob_diff("b").numpy()))
    for mine, builtin in zip(*results):
        np.testing.assert_allclose(mine, builtin, rtol=1e-6)


def test_python_layer_has_no_default_loss_weight() -> None:
    net = build(python_loss(""))
    set_inputs(net, a=np.ones((3, 4), np.float32), b=np.zeros((3, 4), np.float32))
    assert net.loss_tops == []
    assert net.forward().item() == 0
    assert net.blob_data("py_loss").item() > 0


def test_blobs_added_in_setup_are_learnable_parameters() -> None:
    net = build(f'''force_backward: true
    layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
    layer {{ name: "bias" type: "Python" bottom: "x" top: "y"
            python_param {{ module: "{MODULE}" layer: "LearnedBias" }} }}''')
    (param,) = net.params_of("bias")
    assert [p.display_name for p in net.learnable_params] == ["bias/0"]
    np.testing.assert_allclose(param.detach().numpy(), [0, 1, 2])
    with torch.no_grad():
        param.copy_(torch.tensor([10.0, 20.0, 30.0]))  # e.g. weights loaded from a caffemodel
    set_inputs(net, x=np.ones((2, 3), np.float32))
    net.forward()
    np.testing.assert_allclose(net.blob_data("y").detach().numpy(), [[11, 21, 31]] * 2)
    seed = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    net.backward({"y": torch.from_numpy(seed)})
    np.testing.assert_allclose(param.grad.numpy(), seed.sum(axis=0))
    np.testing.assert_allclose(net.blob_diff("x").numpy(), seed)


def test_data_layer_without_bottoms_keeps_its_top_shape() -> None:
    net = build(f'''layer {{ name: "data" type: "Python" top: "count"
                    python_param {{ module: "{MODULE}" layer: "CountingData" }} }}''')
    assert net.blob_shapes["count"] == (2, 1)
    net.forward()
    net.forward()
    np.testing.assert_array_equal(net.blob_data("count").numpy(), [[2], [2]])


def test_import_errors_name_the_layer_and_module() -> None:
    text = '''layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }
    layer { name: "mine" type: "Python" bottom: "x" top: "y"
            python_param { module: "MODULE_NAME" layer: "CLASS_NAME" } }'''
    with pytest.raises(CaffeError, match="Layer 'mine'.*module 'no_such_layer_module'"):
        build(text.replace("MODULE_NAME", "no_such_layer_module").replace("CLASS_NAME", "L"))
    with pytest.raises(CaffeError, match=f"module '{MODULE}' has no layer class 'Missing'"):
        build(text.replace("MODULE_NAME", MODULE).replace("CLASS_NAME", "Missing"))


def test_every_call_gets_the_same_bottom_and_top_blobs() -> None:
    net = build(SCALE.replace("ScaleLayer", "BlobIdentity"))
    layer = net.layers[net.layer_index("scale")].instance
    for value in (1.0, 2.0):
        x = np.full((2, 3), value, dtype=np.float32)
        set_inputs(net, x=x)
        net.forward()
        # A bottom kept from setup holds this pass's values, as in Caffe.
        np.testing.assert_array_equal(net.blob_data("y").detach().numpy(), x)
        net.backward({"y": torch.ones(2, 3)})
    assert [call for call, *_ in layer.seen] == ["setup", "reshape"] + \
        ["reshape", "forward", "backward"] * 2
    assert len({(bottom, top) for _, bottom, top in layer.seen}) == 1
    np.testing.assert_array_equal(net.blob_diff("x").numpy(), np.ones((2, 3)))

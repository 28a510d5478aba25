"""`caffe_ft export`: the exported ONNX / TorchScript graph computes what the
caffe_ft net computes, on inputs other than the ones the trace saw."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_ft as caffe
from caffe_ft.cli import main
from caffe_ft.errors import CaffeError
from caffe_ft.export import export

# torch 2.13 marks torch.jit deprecated; TorchScript is still what -format torchscript writes.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

DEPLOY = '''name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 11 dim: 11 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 3
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "drop1" type: "Dropout" bottom: "pool1" top: "pool1" }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''

# Two inputs, two outputs, and a layer (Power) that computes through a Python
# torch.autograd.Function for Caffe's exact backward.
TWO_IN_TWO_OUT = '''name: "two"
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "a" top: "fc"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "pw" type: "Power" bottom: "b" top: "pw" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "fc" bottom: "pw" top: "sum" }
layer { name: "cat" type: "Concat" bottom: "fc" bottom: "pw" top: "cat" }
'''


def saved(tmp_path: Path, text: str, name: str) -> tuple[str, str]:
    """The prototxt and a caffemodel of its filler-drawn weights."""
    model = tmp_path / f"{name}.prototxt"
    model.write_text(text)
    weights = tmp_path / f"{name}.caffemodel"
    caffe.Net(str(model), caffe.TEST).save(str(weights))
    return str(model), str(weights)


def reference(model: str, weights: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    net = caffe.Net(model, caffe.TEST, weights=weights)
    return {name: value.copy() for name, value in net.forward(**inputs).items()}


def random_inputs(model: str, weights: str) -> dict[str, np.ndarray]:
    net = caffe.Net(model, caffe.TEST, weights=weights)
    rng = np.random.default_rng(7)
    return {name: rng.standard_normal(net.blobs[name].shape).astype(np.float32)
            for name in net.inputs}


def onnx_runtimes() -> list[tuple[str, Callable[[str, dict[str, np.ndarray]], list[np.ndarray]]]]:
    """Every ONNX runtime installed here: onnxruntime where it is, and always
    onnx's own pure-Python reference evaluator (onnx.reference)."""
    runtimes = []
    try:
        import onnxruntime
    except ImportError:
        pass
    else:
        runtimes.append(("onnxruntime", lambda path, feeds: onnxruntime.InferenceSession(
            path, providers=["CPUExecutionProvider"]).run(None, feeds)))
    try:
        from onnx.reference import ReferenceEvaluator
    except ImportError:
        pass
    else:
        runtimes.append(("onnx.reference",
                         lambda path, feeds: ReferenceEvaluator(path).run(None, feeds)))
    return runtimes


def test_torchscript_export_matches_the_net(tmp_path: Path) -> None:
    model, weights = saved(tmp_path, DEPLOY, "small")
    graph = export(model, weights, "torchscript", tmp_path / "small.pt")
    assert graph.input_names == ["data"] and graph.output_names == ["prob"]
    inputs = random_inputs(model, weights)
    loaded = torch.jit.load(str(tmp_path / "small.pt"))
    with torch.no_grad():
        (prob,) = loaded(torch.from_numpy(inputs["data"]))
    np.testing.assert_allclose(prob.numpy(), reference(model, weights, inputs)["prob"],
                               rtol=1e-5, atol=1e-6)


def test_onnx_export_is_a_valid_model_with_the_blob_names(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model, weights = saved(tmp_path, DEPLOY, "small")
    export(model, weights, "onnx", tmp_path / "small.onnx")
    proto = onnx.load(str(tmp_path / "small.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    net = caffe.Net(model, caffe.TEST)
    shapes = {value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
              for value in [*proto.graph.input, *proto.graph.output]}
    assert shapes == {"data": list(net.blobs["data"].shape), "prob": list(net.blobs["prob"].shape)}


@pytest.mark.parametrize("runtime", onnx_runtimes(), ids=lambda r: r[0])
def test_onnx_export_runs_in_an_onnx_runtime(tmp_path: Path, runtime) -> None:
    _, run = runtime
    for text, name in ((DEPLOY, "small"), (TWO_IN_TWO_OUT, "two")):
        model, weights = saved(tmp_path, text, name)
        graph = export(model, weights, "onnx", tmp_path / f"{name}.onnx")
        inputs = random_inputs(model, weights)
        expected = reference(model, weights, inputs)
        outputs = run(str(tmp_path / f"{name}.onnx"), inputs)
        assert len(outputs) == len(graph.output_names) == len(expected)
        for blob, value in zip(graph.output_names, outputs):
            np.testing.assert_allclose(value, expected[blob], rtol=1e-5, atol=1e-5)


def test_two_inputs_two_outputs_in_torchscript_names_the_python_layer(tmp_path: Path) -> None:
    model, weights = saved(tmp_path, TWO_IN_TWO_OUT, "two")
    with pytest.raises(CaffeError, match=r"'pw' \(Power\).*-format onnx"):
        export(model, weights, "torchscript", tmp_path / "two.pt")
    assert not (tmp_path / "two.pt").exists()
    graph = export(model, weights, "onnx", tmp_path / "two.onnx")
    assert graph.input_names == ["a", "b"] and graph.output_names == ["cat", "sum"]


@pytest.mark.parametrize("text, message", [
    ('layer { name: "d" type: "DummyData" top: "d" dummy_data_param { shape { dim: 1 } } }\n'
     'layer { name: "s" type: "Sigmoid" bottom: "d" top: "s" }', r"'d' \(DummyData\)"),
    ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }\n'
     'layer { name: "py" type: "Python" bottom: "x" top: "y" '
     'python_param { module: "no_such_module" layer: "L" } }', r"Python layer\(s\) 'py'"),
])
def test_export_refuses_nets_it_cannot_trace(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "net.prototxt").write_text(text)
    with pytest.raises(CaffeError, match=message):
        export(str(tmp_path / "net.prototxt"), "unused.caffemodel", "onnx", tmp_path / "x.onnx")


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, weights = saved(tmp_path, DEPLOY, "small")
    out = tmp_path / "small.pt"
    assert main(["export", "-model", model, "-weights", weights, "-format", "torchscript",
                 "-output", str(out)]) == 0
    assert out.is_file()
    assert "inputs data; outputs prob" in capsys.readouterr().out
    assert main(["export", "-model", model, "-weights", weights, "-format", "tflite",
                 "-output", str(tmp_path / "x")]) == 1
    assert "-format 'tflite'" in capsys.readouterr().err
    assert main(["export", "-model", model, "-weights", weights]) == 2

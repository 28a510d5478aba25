"""Export a deploy net with its weights to ONNX or TorchScript.

The exported graph is the net caffe_ft builds: a module whose arguments are
the net's Input blobs (in layer order) and whose results are its output blobs
(sorted by name, as the net lists them), traced at the deploy prototxt's input
shapes. ONNX needs the optional `onnx` package: torch's exporter imports it to
write the model proto, and it checks the file written.
"""
from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from caffe_ft.errors import CaffeError
from caffe_ft.net.filter import filter_net
from caffe_ft.net.net import Net
from caffe_ft.net.weights import copy_trained_layers_from
from caffe_ft.optional import optional_module
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import atomic_write

FORMATS = ("onnx", "torchscript")
# Opset 17: read by current onnxruntime and OpenCV dnn releases.
ONNX_OPSET = 17


class BlobGraph(nn.Module):
    """Input blobs in, output blobs out: the net's forward without its Input layers."""

    def __init__(self, net: Net) -> None:
        super().__init__()
        self.net = net
        self.input_names = [name for i, layer in enumerate(net.layers)
                            if layer.param.type == "Input" for name in net.top_names[i]]
        self.output_names = list(net.output_names)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.net.forward(feed=dict(zip(self.input_names, inputs)))
        return tuple(self.net.blob_data(name) for name in self.output_names)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return tuple(torch.zeros(self.net.blob_shapes[name]) for name in self.input_names)


def load_deploy_net(model: str, weights: str) -> Net:
    """A TEST-phase net fed only by Input layers, with the caffemodel's weights.
    The layer types are checked before the net is built, so a net that cannot
    be exported fails on that, not on what building it would need."""
    from caffe_ft.upgrade import read_net_text
    param = read_net_text(model)
    state = caffe_pb2.NetState()
    state.CopyFrom(param.state)
    state.phase, state.level = caffe_pb2.TEST, 0
    layers = filter_net(param, state, model).layer
    sources = [f"'{lp.name}' ({lp.type})" for lp in layers
               if not lp.bottom and lp.type not in ("Input", "Python")]
    if sources:
        raise CaffeError(f"{model}: export needs a deploy net whose inputs are Input layers; "
                         f"it reads data from {', '.join(sources)}")
    python = [f"'{lp.name}'" for lp in layers if lp.type == "Python"]
    if python:
        # A trace sees only a Python layer's result, never its numpy code.
        raise CaffeError(f"{model}: Python layer(s) {', '.join(python)} run arbitrary Python "
                         f"code, which neither ONNX nor TorchScript can hold")
    if not any(lp.type == "Input" for lp in layers):
        raise CaffeError(f"{model}: the net has no Input layer, so the export has no inputs")
    net = Net(param, caffe_pb2.TEST, source=model)
    copy_trained_layers_from(net, weights)
    return net.eval()


def _opaque_layers(graph: BlobGraph, traced: torch.jit.ScriptModule) -> list[str]:
    """The layers whose forward the trace kept as an opaque Python call (a
    torch.autograd.Function). Trace scopes name the layer as `...layers.<i>`."""
    found = []
    for node in traced.inlined_graph.nodes():
        if node.kind() != "prim::PythonOp":
            continue
        scope = node.scopeName().rpartition("layers.")[2].split(".")[0].split("/")[0]
        layer = graph.net.layers[int(scope)] if scope.isdigit() else None
        found.append(f"'{layer.name}' ({layer.param.type})" if layer is not None
                     else node.pyname())
    return sorted(set(found))


def export_torchscript(graph: BlobGraph, output: str | os.PathLike[str]) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer notes that shape arithmetic became constants: by design,
        # the export is at the deploy prototxt's fixed input shapes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(graph, graph.example_inputs(), check_trace=False)
    opaque = _opaque_layers(graph, traced)
    if opaque:
        # These layers compute through a Python torch.autograd.Function (for
        # Caffe's exact backward), which TorchScript cannot serialize.
        raise CaffeError(f"TorchScript cannot hold layer(s) {', '.join(opaque)}: they run "
                         f"Python code; export the net with -format onnx instead")
    with atomic_write(output) as handle:
        torch.jit.save(traced, handle)


def export_onnx(graph: BlobGraph, output: str | os.PathLike[str]) -> None:
    with torch.no_grad(), atomic_write(output) as handle, warnings.catch_warnings():
        # The TorchScript-based exporter is the one that needs no onnxscript;
        # its deprecation notice is torch's, not the user's to act on. Tracer
        # notes are silenced as for TorchScript, and so are notes on
        # constant folding the exporter skipped (the graph is still complete).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)
        torch.onnx.export(graph, graph.example_inputs(), handle, dynamo=False,
                          input_names=graph.input_names, output_names=graph.output_names,
                          opset_version=ONNX_OPSET)
    _check_onnx(output)


def _check_onnx(path: str | os.PathLike[str]) -> None:
    onnx = optional_module("onnx")
    onnx.checker.check_model(onnx.load(os.fspath(path)))


def export(model: str, weights: str, fmt: str, output: str | os.PathLike[str]) -> BlobGraph:
    """Write the net as `fmt` to `output`; return the graph that was exported."""
    if fmt not in FORMATS:
        raise CaffeError(f"-format '{fmt}': expected one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        # torch.onnx.export fails deep in its run without onnx (a chained
        # OnnxExporterError); say so before loading the weights.
        optional_module("onnx")
    graph = BlobGraph(load_deploy_net(model, weights))
    (export_onnx if fmt == "onnx" else export_torchscript)(graph, output)
    return graph


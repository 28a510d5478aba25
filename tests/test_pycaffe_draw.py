"""caffe.draw: the graph BVLC's python/caffe/draw.py makes of a net (nodes,
styles, labels, edges, phases), drawing through Graphviz, and the errors
when pydot or dot is missing."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format

from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2
from caffe_ft.pycaffe import draw

NET = '''name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        data_param { source: "x" batch_size: 16 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 2 } param { lr_mult: 0 }
        convolution_param { num_output: 8 kernel_size: 5 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss"
        exclude { phase: TEST } }
'''
CONV = r'"conv1\n(Convolution)\nkernel size: 5\nstride: 2\npad: 1"'
POOL = r'"pool1\n(Pooling AVE)\nkernel size: 3\nstride: 2\npad: 0"'
DATA, RELU, FC, LOSS = r'"data\n(Data)"', r'"relu1\n(ReLU)"', r'"fc\n(InnerProduct)"', \
    r'"loss\n(SoftmaxWithLoss)"'


def net_param(text: str = NET) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def layer(text: str) -> caffe_pb2.LayerParameter:
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def test_layer_labels() -> None:
    conv = net_param().layer[1]
    assert draw.get_layer_label(conv, "LR") == CONV
    # Vertical graphs put the descriptors on one line.
    assert draw.get_layer_label(conv, "TB") == \
        '"conv1 (Convolution) kernel size: 5 stride: 2 pad: 1"'
    assert draw.get_layer_label(conv, "LR", display_lrm=True) == \
        CONV[:-1] + r'\nlr mult: 2.0, 0.0"'
    assert draw.get_layer_label(net_param().layer[3], "LR") == POOL
    # Unset sizes read as pycaffe's 1, 1 and 0.
    bare = layer('name: "c" type: "Deconvolution" convolution_param { num_output: 2 }')
    assert draw.get_layer_label(bare, "BT") == '"c (Deconvolution) kernel size: 1 stride: 1 pad: 0"'
    frozen = layer('name: "f" type: "InnerProduct" param { lr_mult: 0 } param { lr_mult: 0 }')
    assert draw.get_layer_label(frozen, "LR", display_lrm=True) == r'"f\n(InnerProduct)"'


def test_lr_mults_and_edge_labels() -> None:
    assert draw.get_layer_lr_mult(layer('type: "InnerProduct"')) == (1.0, 1.0)
    assert draw.get_layer_lr_mult(layer('type: "Convolution" param { lr_mult: 3 }')) == (3.0, 1.0)
    with pytest.raises(CaffeError, match="ReLU layers do not have a learning rate multiplier"):
        draw.get_layer_lr_mult(layer('name: "r" type: "ReLU"'))
    with pytest.raises(CaffeError, match="3 param specs"):
        draw.get_layer_lr_mult(layer('type: "Convolution" param {} param {} param {}'))
    labels = [draw.get_edge_label(each) for each in net_param().layer]
    assert labels == ["Batch 16", "8", '""', '""', "10", '""']
    assert draw.get_pooling_types_dict() == {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}
    assert draw.choose_color_by_layertype("Deconvolution") == "#FF5050"
    assert draw.choose_color_by_layertype("Eltwise") == draw.LAYER_STYLE_DEFAULT["fillcolor"]


def graph_parts(graph: object) -> tuple[dict[str, dict[str, str]], list[tuple[str, str, str]]]:
    nodes = {node.get_name(): node.get_attributes() for node in graph.get_nodes()}
    edges = [(edge.get_source(), edge.get_destination(), edge.get("label"))
             for edge in graph.get_edges()]
    return nodes, edges


def test_graph_of_a_net() -> None:
    pytest.importorskip("pydot")
    graph = draw.get_pydot_graph(net_param(), "LR")
    assert graph.get_name() == "tiny" and graph.get("rankdir") == "LR"
    nodes, edges = graph_parts(graph)
    # A node per layer and per blob, in order of first mention.
    assert list(nodes) == [DATA, "data", "label", CONV, "conv1", RELU, POOL, "pool1", FC, "fc",
                           LOSS, "loss"]
    assert nodes[CONV]["fillcolor"] == "#FF5050" and nodes[CONV]["shape"] == "record"
    assert nodes[RELU]["fillcolor"] == "#90EE90"  # in place
    assert nodes[POOL]["fillcolor"] == "#FF9900" and nodes[FC]["fillcolor"] == "#CC33FF"
    assert nodes[LOSS]["fillcolor"] == "#6495ED"
    # Blobs read by a layer are octagons; the output stays a plain node.
    assert all(nodes[blob]["shape"] == "octagon" for blob in ("data", "label", "conv1", "fc"))
    assert nodes["loss"] == {}
    assert edges == [(DATA, "data", "Batch 16"), (DATA, "label", "Batch 16"),
                     ("data", CONV, '""'), (CONV, "conv1", "8"),
                     ("conv1", RELU, '""'), (RELU, "conv1", '""'),
                     ("conv1", POOL, '""'), (POOL, "pool1", '""'),
                     ("pool1", FC, '""'), (FC, "fc", "10"),
                     ("fc", LOSS, '""'), ("label", LOSS, '""'), (LOSS, "loss", '""')]
    unlabelled = draw.get_pydot_graph(net_param(), "LR", label_edges=False)
    assert {label for _, _, label in graph_parts(unlabelled)[1]} == {'""'}


def test_graph_of_a_phase() -> None:
    pytest.importorskip("pydot")
    test_nodes, _ = graph_parts(draw.get_pydot_graph(net_param(), "TB", phase=caffe_pb2.TEST))
    # The TRAIN-only data layer and the loss excluded from TEST are left out;
    # their blobs stay where another layer names them.
    assert DATA not in test_nodes and "label" not in test_nodes
    assert not any(name.startswith('"loss') for name in test_nodes)
    assert '"conv1 (Convolution) kernel size: 5 stride: 2 pad: 1"' in test_nodes
    train_nodes, _ = graph_parts(draw.get_pydot_graph(net_param(), "LR", phase=caffe_pb2.TRAIN))
    assert DATA in train_nodes and LOSS in train_nodes
    both = net_param('layer { name: "x" type: "ReLU" bottom: "a" top: "a" '
                     'include { phase: TRAIN } exclude { phase: TEST } }')
    with pytest.raises(CaffeError, match="layer 'x' has both include and exclude"):
        draw.get_pydot_graph(both, "LR", phase=caffe_pb2.TEST)


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot")
def test_draw_net_to_file(tmp_path: Path) -> None:
    pytest.importorskip("pydot")
    png, svg = tmp_path / "net.png", tmp_path / "net.svg"
    draw.draw_net_to_file(net_param(), str(png))
    assert png.read_bytes().startswith(b"\x89PNG")
    draw.draw_net_to_file(net_param(), str(svg), "TB", caffe_pb2.TEST, display_lrm=True)
    text = svg.read_text()
    assert "lr mult: 2.0, 0.0" in text and "SoftmaxWithLoss" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.png", "net.svg"]


def test_draw_without_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pydot")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CaffeError, match="Graphviz's dot"):
        draw.draw_net(net_param(), "LR")


def test_draw_without_pydot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydot", None)  # import pydot now fails
    with pytest.raises(CaffeError, match=r"pydot: pip install 'caffe_ft\[draw\]'"):
        draw.get_pydot_graph(net_param(), "LR")
    # Labels need no pydot.
    assert draw.get_layer_label(net_param().layer[1], "LR") == CONV


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot")
def test_draw_script_runs_unchanged(tmp_path: Path) -> None:
    """python/draw_net.py's calls, from a script that says `import caffe`."""
    pytest.importorskip("pydot")
    (tmp_path / "net.prototxt").write_text(NET)
    script = tmp_path / "draw_net.py"
    script.write_text(
        "import sys\nfrom google.protobuf import text_format\nimport caffe\nimport caffe.draw\n"
        "from caffe.proto import caffe_pb2\n"
        "net = caffe_pb2.NetParameter()\n"
        "text_format.Merge(open(sys.argv[1]).read(), net)\n"
        "caffe.draw.draw_net_to_file(net, sys.argv[2], 'LR', caffe.TRAIN, False)\n")
    out = tmp_path / "net.dot"
    run = subprocess.run([sys.executable, "-m", "caffe_ft", "python", str(script),
                          str(tmp_path / "net.prototxt"), str(out)], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert r"loss\n(SoftmaxWithLoss)" in out.read_text()

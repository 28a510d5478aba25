"""caffe.NetSpec (caffe_ft.pycaffe.net_spec): the prototxt real pycaffe
writes, byte for byte (goldens and FCN's nets), and pycaffe's rules for
names, keywords and errors."""
from __future__ import annotations

import ast
import importlib
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import text_format

from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2
from caffe_ft.pycaffe import net_spec
from caffe_ft.pycaffe.net_spec import NetSpec, layers as L, params as P, to_proto
from caffe_ft.proto.text import pycaffe_text
from caffe_ft.pycaffe.runner import CaffeFinder

FIXTURES = Path(__file__).parent / "fixtures"
NETSPEC = FIXTURES / "pycaffe" / "netspec"
FCN = FIXTURES / "fcn"


@pytest.fixture
def netspec_scripts() -> Iterator[ModuleType]:
    """The golden script, imported with `import caffe` resolved to caffe_ft."""
    finder = CaffeFinder()
    sys.meta_path.insert(0, finder)
    sys.path.insert(0, str(NETSPEC))
    try:
        yield importlib.import_module("netspec_scripts")
    finally:
        sys.path.remove(str(NETSPEC))
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == "caffe" or n.startswith("caffe.")
                     or n == "netspec_scripts"]:
            del sys.modules[name]


@pytest.mark.parametrize("golden, make", [
    ("caffenet_train", lambda s: str(s.caffenet("/path/to/caffe-train-lmdb"))),
    ("caffenet_test", lambda s: str(s.caffenet("/path/to/caffe-val-lmdb", batch_size=50,
                                               include_acc=True))),
    ("named", lambda s: s.named("train.txt", 50)),
    ("named_learn_all", lambda s: s.named("train.txt", 50, learn_all=True)),
])
def test_golden_text(netspec_scripts: ModuleType, golden: str, make) -> None:
    expected = (NETSPEC / f"{golden}.prototxt").read_text()
    assert make(netspec_scripts) == expected


def _parse(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


@pytest.mark.parametrize("model", ["voc-fcn32s", "voc-fcn16s", "voc-fcn8s"])
def test_fcn_net_py_runs_unchanged(tmp_path: Path, model: str) -> None:
    """FCN's net.py (NetSpec, coord_map.crop) writes the nets FCN committed,
    in pycaffe's text: the committed files differ only in float text and in
    the Python 2 key order of the `param_str` the script builds with str(dict)."""
    work = tmp_path / model
    work.mkdir()
    shutil.copy(FCN / model / "net.py", work / "net.py")
    subprocess.run([sys.executable, "-m", "caffe_ft", "python", "net.py"], cwd=work, check=True)
    for name in ("train.prototxt", "val.prototxt"):
        ours = (work / name).read_text()
        committed = _parse((FCN / model / name).read_text())
        ours_net = _parse(ours)
        for ours_layer, layer in zip(ours_net.layer, committed.layer):
            if layer.type == "Python":
                assert (ast.literal_eval(ours_layer.python_param.param_str)
                        == ast.literal_eval(layer.python_param.param_str))
                layer.python_param.param_str = ours_layer.python_param.param_str
        assert ours == pycaffe_text(committed)


def test_automatic_names_count_per_type_in_pycaffe_order() -> None:
    data, label = L.DummyData(ntop=2)
    conv = L.Convolution(data, kernel_size=3, num_output=4)
    relu = L.ReLU(conv, in_place=True)
    loss = L.SoftmaxWithLoss(L.Convolution(relu, kernel_size=1, num_output=2), label)
    net = to_proto(loss)
    assert [(l.name, list(l.bottom), list(l.top)) for l in net.layer] == [
        ("DummyData1", [], ["DummyData1", "DummyData2"]),
        ("Convolution1", ["DummyData1"], ["Convolution1"]),
        ("ReLU1", ["Convolution1"], ["Convolution1"]),
        ("Convolution2", ["Convolution1"], ["Convolution2"]),
        ("SoftmaxWithLoss1", ["Convolution2", "DummyData2"], ["SoftmaxWithLoss1"]),
    ]


def test_netspec_names_tops_and_layers_and_shares_a_layer_once() -> None:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=2)
    n["relu"] = L.ReLU(n["conv"], in_place=True)
    n.sum = L.Eltwise(n.relu, n.relu)
    n.silence = L.Silence(n.sum, ntop=0)
    net = n.to_proto()
    assert [(l.name, list(l.bottom), list(l.top)) for l in net.layer] == [
        ("data", [], ["data"]), ("conv", ["data"], ["conv"]), ("relu", ["conv"], ["conv"]),
        ("sum", ["conv", "conv"], ["sum"]), ("silence", ["sum"], []),
    ]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]


def test_keywords_go_to_the_type_param_else_to_the_layer() -> None:
    top = L.InnerProduct(L.Input(), num_output=5, name="fc", loss_weight=2,
                         include=dict(phase=caffe_pb2.TEST),
                         param=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)],
                         weight_filler=dict(type="xavier"))
    layer = top.to_proto().layer[1]
    assert layer.name == "fc" and list(layer.top) == ["InnerProduct1"]
    assert layer.inner_product_param.num_output == 5
    assert layer.inner_product_param.weight_filler.type == "xavier"
    assert list(layer.loss_weight) == [2.0]
    assert layer.include[0].phase == caffe_pb2.TEST
    assert [(p.lr_mult, p.decay_mult) for p in layer.param] == [(1.0, 1.0), (2.0, 0.0)]


def test_params_constants_are_the_proto_enums() -> None:
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Data.LMDB == caffe_pb2.DataParameter.LMDB
    with pytest.raises(CaffeError, match="PoolingParameter.BIGGEST"):
        P.Pooling.BIGGEST


def test_an_input_that_is_not_a_top_is_a_type_error() -> None:
    data = L.DummyData(ntop=2)
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(data, ntop=0)


def test_an_unknown_keyword_names_the_layer_and_key() -> None:
    top = L.Convolution(L.Input(), kernel_size=3, num_outputs=4)
    with pytest.raises(AttributeError, match="Convolution layer 'Convolution1': keyword 'num_outputs'") as err:
        top.to_proto()
    assert isinstance(err.value, CaffeError)


def test_netspec_errors_name_the_attribute() -> None:
    n = NetSpec()
    with pytest.raises(KeyError, match="no top 'missing'"):
        n.missing
    n.pair = L.DummyData(ntop=2)
    with pytest.raises(CaffeError, match="attribute 'pair'"):
        n.to_proto()


def test_a_net_deeper_than_the_recursion_limit_builds() -> None:
    top = L.Input()
    for _ in range(sys.getrecursionlimit()):
        top = L.ReLU(top)
    assert len(top.to_proto().layer) == sys.getrecursionlimit() + 1


def test_text_prints_floats_as_pycaffe_and_parses_back() -> None:
    layer = caffe_pb2.LayerParameter(name="a\"b\n\u00e9", type="Python")
    layer.loss_weight.extend([0.1, 1, math.inf])
    layer.pooling_param.pool = caffe_pb2.PoolingParameter.AVE
    layer.transform_param.mirror = True
    text = str(layer)
    assert text.splitlines() == [
        'name: "a\\"b\\n\\303\\251"', 'type: "Python"',
        f"loss_weight: {float(caffe_pb2.LayerParameter(loss_weight=[0.1]).loss_weight[0])}",
        "loss_weight: 1.0", "loss_weight: inf",
        "transform_param {", "  mirror: true", "}",
        "pooling_param {", "  pool: AVE", "}",
    ]
    assert text_format.Parse(text, caffe_pb2.LayerParameter()) == layer


def test_param_names_come_from_the_parameter_messages() -> None:
    names = net_spec.param_name_dict()
    assert names["Convolution"] == "convolution"
    assert names["Transformation"] == "transform"
    assert names["HDF5Data"] == "hdf5_data"

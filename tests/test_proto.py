"""The schema and its generated bindings."""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

from caffe_ft.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent


def test_bindings_are_fresh_against_the_schema() -> None:
    generated = (ROOT / "caffe_ft" / "proto" / "caffe_pb2.py").read_text()
    recorded = generated.splitlines()[0].removeprefix("# schema-sha256: ")
    actual = hashlib.sha256((ROOT / "proto" / "caffe.proto").read_bytes()).hexdigest()
    assert recorded == actual, "proto/caffe.proto changed: run python tools/gen_proto.py"


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None,
                    reason="grpcio-tools (pip install -e .[dev]) regenerates the bindings")
def test_regenerating_gives_the_same_bindings() -> None:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "tools" / "gen_proto.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.generate() == (ROOT / "caffe_ft" / "proto" / "caffe_pb2.py").read_text()


def test_caffe_field_numbers_and_defaults() -> None:
    # Spot checks of wire numbers and defaults that files depend on.
    layer = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert layer["convolution_param"].number == 106 and layer["clip_param"].number == 148
    assert caffe_pb2.V1LayerParameter.DESCRIPTOR.fields_by_name["layer"].number == 1
    assert caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layers"].number == 2
    solver = caffe_pb2.SolverParameter()
    assert solver.solver_mode == caffe_pb2.SolverParameter.GPU
    assert solver.snapshot_format == caffe_pb2.SolverParameter.BINARYPROTO
    assert solver.type == "SGD" and solver.average_loss == 1 and solver.clip_gradients == -1
    assert caffe_pb2.DataParameter().backend == caffe_pb2.DataParameter.LEVELDB
    assert caffe_pb2.PoolingParameter().round_mode == caffe_pb2.PoolingParameter.CEIL
    assert caffe_pb2.FillerParameter().type == "constant"
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST


def test_messages_over_64mb_load(tmp_path) -> None:
    import numpy as np

    from caffe_ft.blobs import array_to_blob_proto, blob_proto_to_array
    from caffe_ft.protofile import read_binary, write_binary

    big = np.arange(17_500_000, dtype=np.float32)  # 70 MB of floats
    net = caffe_pb2.NetParameter(name="big")
    net.layer.add(name="fc", type="InnerProduct").blobs.append(array_to_blob_proto(big))
    write_binary(tmp_path / "big.caffemodel", net)
    loaded = read_binary(tmp_path / "big.caffemodel", caffe_pb2.NetParameter())
    assert np.array_equal(blob_proto_to_array(loaded.layer[0].blobs[0]), big)

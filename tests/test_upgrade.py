"""caffe_ft.upgrade: each of Caffe's upgrade pairs on small hand-written
legacy inputs, the net/solver readers, and the upgrade CLI tools."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from caffe_ft.blobs import array_to_blob_proto, blob_proto_to_array
from caffe_ft.cli import main
from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2
from caffe_ft.upgrade import (
    net_needs_batchnorm_upgrade,
    net_needs_data_upgrade,
    net_needs_input_upgrade,
    net_needs_upgrade,
    net_needs_v0_to_v1_upgrade,
    net_needs_v1_to_v2_upgrade,
    read_net_binary,
    read_net_text,
    read_solver_text,
    solver_needs_type_upgrade,
    upgrade_net_as_needed,
    upgrade_net_batchnorm,
    upgrade_net_data_transformation,
    upgrade_net_input,
    upgrade_snapshot_prefix,
    upgrade_solver_as_needed,
    upgrade_solver_type,
    upgrade_v0_net,
    upgrade_v1_net,
)
from caffe_ft.upgrade.solver import SOLVER_TYPES
from caffe_ft.upgrade.v1 import V1_LAYER_TYPES

V1 = caffe_pb2.V1LayerParameter


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, level: int | None = None) -> list[str]:
        return [r.getMessage() for r in self.records if level is None or r.levelno == level]


@pytest.fixture
def caffe_log() -> Iterator[_Records]:
    """The "caffe_ft" logger's records. Attached to that logger itself, since
    caffe_ft.glog.setup_logging stops propagation to the root (and caplog)."""
    logger = logging.getLogger("caffe_ft")
    handler = _Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def _net(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def _solver(text: str) -> caffe_pb2.SolverParameter:
    return text_format.Parse(text, caffe_pb2.SolverParameter())


# A V0 net: net-level inputs, a padding layer before a conv, and per-type flat fields.
V0_NET = """
name: "v0"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
force_backward: true
debug_info: true
layers {
  layer { name: "pad1" type: "padding" pad: 2 }
  bottom: "data" top: "pad1"
}
layers {
  layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 group: 1
          biasterm: false weight_filler { type: "gaussian" std: 0.01 }
          blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
  bottom: "pad1" top: "conv1"
}
layers {
  layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 }
  bottom: "conv1" top: "pool1"
}
layers {
  layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 k: 2 }
  bottom: "pool1" top: "norm1"
}
layers {
  layer { name: "ip1" type: "innerproduct" num_output: 10 bias_filler { value: 0.5 } }
  bottom: "norm1" top: "ip1"
}
layers {
  layer { name: "drop1" type: "dropout" dropout_ratio: 0.3 }
  bottom: "ip1" top: "ip1"
}
"""


def test_v0_padding_layer_folds_into_the_conv_it_feeds() -> None:
    net = _net(V0_NET)
    assert net_needs_v0_to_v1_upgrade(net)
    assert upgrade_v0_net(net, "v0.prototxt")
    assert not net_needs_v0_to_v1_upgrade(net)
    assert [layer.name for layer in net.layers] == ["conv1", "pool1", "norm1", "ip1", "drop1"]
    conv = net.layers[0]
    assert list(conv.bottom) == ["data"]
    assert list(conv.convolution_param.pad) == [2]


def test_v0_fields_land_in_their_v1_params() -> None:
    net = _net(V0_NET)
    upgrade_v0_net(net, "v0.prototxt")
    conv, pool, norm, ip, drop = net.layers
    assert [layer.type for layer in net.layers] == [
        V1.CONVOLUTION, V1.POOLING, V1.LRN, V1.INNER_PRODUCT, V1.DROPOUT]
    assert conv.convolution_param.num_output == 4
    assert list(conv.convolution_param.kernel_size) == [3]
    assert list(conv.convolution_param.stride) == [2]
    assert conv.convolution_param.HasField("group")
    assert conv.convolution_param.bias_term is False
    assert conv.convolution_param.weight_filler.std == pytest.approx(0.01)
    assert list(conv.blobs_lr) == [1, 2] and list(conv.weight_decay) == [1, 0]
    assert pool.pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert (pool.pooling_param.kernel_size, pool.pooling_param.stride) == (2, 2)
    assert norm.lrn_param.local_size == 3 and norm.lrn_param.k == 2
    assert ip.inner_product_param.num_output == 10
    assert ip.inner_product_param.bias_filler.value == 0.5
    assert drop.dropout_param.dropout_ratio == pytest.approx(0.3)


def test_v0_upgrade_keeps_only_what_caffe_keeps() -> None:
    net = _net(V0_NET)
    upgrade_v0_net(net, "v0.prototxt")
    assert net.name == "v0" and list(net.input) == ["data"]
    assert list(net.input_dim) == [1, 3, 8, 8] and net.force_backward
    assert not net.HasField("debug_info")


def test_v0_data_layer_splits_into_data_and_transform_params() -> None:
    net = _net("""layers { layer { name: "d" type: "data" source: "db" batchsize: 16
                                     meanfile: "mean.binaryproto" cropsize: 7 mirror: true
                                     scale: 0.5 rand_skip: 3 }
                          top: "data" top: "label" }""")
    assert upgrade_v0_net(net, "d.prototxt")
    layer = net.layers[0]
    assert (layer.data_param.source, layer.data_param.batch_size) == ("db", 16)
    assert layer.data_param.rand_skip == 3
    transform = layer.transform_param
    assert (transform.mean_file, transform.crop_size, transform.mirror) == (
        "mean.binaryproto", 7, True)
    assert transform.scale == 0.5
    assert not layer.data_param.HasField("mean_file")


def test_v0_field_without_a_place_is_logged_and_dropped(caffe_log: _Records) -> None:
    net = _net("""input: "x"
                  layers { layer { name: "c" type: "conv" num_output: 2 dropout_ratio: 0.1 }
                           bottom: "x" top: "c" }""")
    assert not upgrade_v0_net(net, "odd.prototxt")
    assert "Unknown parameter dropout_ratio for layer type conv" in caffe_log.lines(logging.ERROR)
    assert not net.layers[0].HasField("dropout_param")
    assert net.layers[0].convolution_param.num_output == 2


def test_v0_unknown_layer_type_is_fatal() -> None:
    net = _net('layers { layer { name: "w" type: "warp" } top: "w" }')
    with pytest.raises(CaffeError) as err:
        upgrade_v0_net(net, "old.prototxt")
    assert str(err.value).startswith("old.prototxt: layer 'w': unknown V0 layer type 'warp'")


def test_v0_padding_feeding_a_relu_is_fatal() -> None:
    net = _net("""input: "x"
                  layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" }
                  layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }""")
    with pytest.raises(CaffeError) as err:
        upgrade_v0_net(net, "pad.prototxt")
    assert str(err.value) == ("pad.prototxt: padding layer 'p' feeds layer 'r' of V0 type 'relu'; "
                              "a padding layer can only feed a 'conv' or 'pool' layer")


def test_v0_unknown_bottom_is_fatal() -> None:
    net = _net('layers { layer { name: "r" type: "relu" } bottom: "ghost" top: "r" }')
    with pytest.raises(CaffeError, match="v0.prototxt: layer 'r' reads blob 'ghost'"):
        upgrade_v0_net(net, "v0.prototxt")


def test_whole_v0_net_upgrades_to_v2_with_an_input_layer(caffe_log: _Records) -> None:
    net = _net(V0_NET)
    assert upgrade_net_as_needed(net, "v0.prototxt")
    assert not net_needs_upgrade(net)
    assert [layer.type for layer in net.layer] == [
        "Input", "Convolution", "Pooling", "LRN", "InnerProduct", "Dropout"]
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[1].param] == [(1, 1), (2, 0)]
    infos = caffe_log.lines(logging.INFO)
    assert ("Attempting to upgrade input file specified using deprecated V0LayerParameter: "
            "v0.prototxt") in infos
    assert ("Attempting to upgrade input file specified using deprecated V1LayerParameter: "
            "v0.prototxt") in infos
    assert ("Attempting to upgrade input file specified using deprecated input fields: "
            "v0.prototxt") in infos


V1_DATA_NET = """
layers { name: "d" type: DATA top: "data" top: "label"
         data_param { source: "db" batch_size: 4 mean_file: "m.binaryproto" crop_size: 5
                      mirror: true scale: 0.25 } }
layers { name: "img" type: IMAGE_DATA top: "i" top: "l"
         image_data_param { source: "list.txt" mirror: false } }
layers { name: "plain" type: DATA top: "p" top: "q" data_param { source: "db2" } }
"""


def test_data_transform_fields_move_to_transform_param() -> None:
    net = _net(V1_DATA_NET)
    assert net_needs_data_upgrade(net)
    upgrade_net_data_transformation(net)
    assert not net_needs_data_upgrade(net)
    data, image, plain = net.layers
    assert text_format.MessageToString(data.transform_param, as_one_line=True) == (
        text_format.MessageToString(caffe_pb2.TransformationParameter(
            scale=0.25, mirror=True, crop_size=5, mean_file="m.binaryproto"), as_one_line=True))
    for field in ("mean_file", "crop_size", "mirror", "scale"):
        assert not data.data_param.HasField(field)
    assert data.data_param.source == "db" and data.data_param.batch_size == 4
    assert image.transform_param.HasField("mirror") and not image.transform_param.mirror
    # Caffe touches transform_param of every data layer of these types, so
    # even a layer with nothing to move comes out with an empty one.
    assert plain.HasField("transform_param") and plain.transform_param.ListFields() == []


def test_data_upgrade_ignores_v2_layers() -> None:
    net = _net('layer { name: "d" type: "Data" data_param { mean_file: "m" } }')
    assert not net_needs_data_upgrade(net)


def test_v1_to_v2_maps_types_and_param_specs() -> None:
    net = _net("""
        name: "v1"
        layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
                 param: "shared_w" blob_share_mode: PERMISSIVE
                 blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 weight_decay: 3
                 convolution_param { num_output: 8 kernel_size: 3 }
                 include { phase: TRAIN } exclude { stage: "deploy" } }
        layers { name: "loss" type: SOFTMAX_LOSS bottom: "conv" bottom: "label" top: "loss"
                 loss_weight: 0.5 loss_param { ignore_label: 255 } }""")
    assert net_needs_v1_to_v2_upgrade(net)
    assert upgrade_v1_net(net, "v1.prototxt")
    assert not net.layers and net.name == "v1"
    conv, loss = net.layer
    assert (conv.type, loss.type) == ("Convolution", "SoftmaxWithLoss")
    specs = [(p.name, p.share_mode, p.lr_mult, p.decay_mult) for p in conv.param]
    assert specs == [("shared_w", caffe_pb2.ParamSpec.PERMISSIVE, 1, 1), ("", 0, 2, 0),
                     ("", 0, 1, 3)]
    assert conv.param[0].HasField("name") and not conv.param[1].HasField("name")
    assert not conv.param[2].HasField("lr_mult")
    assert conv.include[0].phase == caffe_pb2.TRAIN and conv.exclude[0].stage == ["deploy"]
    assert conv.convolution_param.num_output == 8
    assert list(loss.loss_weight) == [0.5] and loss.loss_param.ignore_label == 255


def test_every_v1_layer_type_has_a_v2_name() -> None:
    assert set(V1_LAYER_TYPES) == set(V1.LayerType.keys())


def test_v1_layer_with_leftover_v0_layer_is_reported(caffe_log: _Records) -> None:
    net = _net('layers { name: "a" type: RELU layer { name: "a" } }')
    assert not upgrade_v1_net(net, "mixed.prototxt")
    assert "Input NetParameter has V0 layer -- ignoring." in caffe_log.lines(logging.ERROR)
    assert "Upgrade of input layer 0 failed." in caffe_log.lines(logging.ERROR)



def test_failed_step_is_logged_and_the_upgrade_goes_on(caffe_log: _Records) -> None:
    # UpgradeNetAsNeeded: a step that fails (V0 drops a field) logs Caffe's
    # warning, makes the whole upgrade report false, and the later steps run.
    net = _net("""input: "x" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4
                  layers { layer { name: "c" type: "conv" num_output: 2 dropout_ratio: 0.1 }
                           bottom: "x" top: "c" }""")
    assert not upgrade_net_as_needed(net, "odd.prototxt")
    assert ("Warning: had one or more problems upgrading V0NetParameter to NetParameter (see "
            "above); continuing anyway.") in caffe_log.lines(logging.ERROR)
    infos = caffe_log.lines(logging.INFO)
    assert "Successfully upgraded file specified using deprecated V0LayerParameter" not in infos
    assert "Successfully upgraded file specified using deprecated V1LayerParameter" in infos
    assert [layer.type for layer in net.layer] == ["Input", "Convolution"]


def test_layer_and_layers_together_is_fatal(tmp_path: Path) -> None:
    path = tmp_path / "both.prototxt"
    path.write_text('layer { name: "a" type: "ReLU" }\nlayers { name: "b" type: RELU }\n')
    with pytest.raises(CaffeError) as err:
        read_net_text(path)
    message = str(err.value)
    assert message.startswith(f"{path}: refusing to upgrade a net that has both 'layer' (1) "
                              f"and 'layers' (1) entries")


def test_input_dim_becomes_a_first_input_layer() -> None:
    net = _net("""input: "data" input: "im_info"
                  input_dim: 1 input_dim: 3 input_dim: 224 input_dim: 224
                  input_dim: 1 input_dim: 3 input_dim: 1 input_dim: 1
                  layer { name: "relu" type: "ReLU" bottom: "data" top: "r" }""")
    assert net_needs_input_upgrade(net)
    upgrade_net_input(net, "deploy.prototxt")
    assert not net_needs_input_upgrade(net)
    assert not net.input_dim and not net.input_shape
    first = net.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["data", "im_info"])
    assert [list(s.dim) for s in first.input_param.shape] == [[1, 3, 224, 224], [1, 3, 1, 1]]
    assert [layer.name for layer in net.layer] == ["input", "relu"]


def test_input_shape_becomes_an_input_layer() -> None:
    net = _net('input: "data" input_shape { dim: 2 dim: 5 }')
    upgrade_net_input(net, "deploy.prototxt")
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[2, 5]]


def test_input_without_shapes_is_just_stripped() -> None:
    # Old .caffemodels name their inputs but carry no shapes.
    net = _net('input: "data" layer { name: "ip" type: "InnerProduct" }')
    upgrade_net_input(net, "old.caffemodel")
    assert not net.input and [layer.name for layer in net.layer] == ["ip"]


def test_too_few_input_dims_is_a_user_error() -> None:
    net = _net('input: "a" input: "b" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8')
    with pytest.raises(CaffeError) as err:
        upgrade_net_input(net, "deploy.prototxt")
    assert str(err.value).startswith(
        "deploy.prototxt: the net has 2 input(s) but 4 input_dim values; expected 4 per input")


def test_batchnorm_with_three_param_specs_is_frozen() -> None:
    net = _net("""layer { name: "bn" type: "BatchNorm"
                          param { lr_mult: 1 } param { lr_mult: 1 decay_mult: 2 }
                          param { name: "f" lr_mult: 1 } }
                  layer { name: "bn2" type: "BatchNorm" param { lr_mult: 1 } }""")
    assert net_needs_batchnorm_upgrade(net)
    upgrade_net_batchnorm(net)
    # Caffe's check is the spec count alone, so it still holds; a second
    # upgrade changes nothing.
    assert net_needs_batchnorm_upgrade(net) and len(net.layer[0].param) == 3
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [(0, 0)] * 3
    assert net.layer[0].param[2].name == "f"
    assert net.layer[1].param[0].lr_mult == 1  # not the old 3-spec form: untouched


def test_solver_type_enum_becomes_type_string() -> None:
    for name in caffe_pb2.SolverParameter.SolverType.keys():
        solver = _solver(f"solver_type: {name}")
        assert solver_needs_type_upgrade(solver)
        assert upgrade_solver_type(solver, "s.prototxt")
        assert not solver.HasField("solver_type")
        assert solver.type == SOLVER_TYPES[name] and solver.type.upper() == name


def test_solver_with_both_solver_type_and_type_is_fatal() -> None:
    solver = _solver('solver_type: ADAM type: "Adam"')
    with pytest.raises(CaffeError) as err:
        upgrade_solver_as_needed(solver, "solver.prototxt")
    assert str(err.value).startswith(
        "solver.prototxt: cannot upgrade the solver: it sets both the old 'solver_type' "
        "(enum, ADAM) and the new 'type' (string, \"Adam\")")


def test_solver_type_already_current(caffe_log: _Records) -> None:
    solver = _solver('type: "Adam"')
    assert not solver_needs_type_upgrade(solver)
    assert not upgrade_solver_type(solver, "s.prototxt")
    assert "Warning: solver type already up to date. " in caffe_log.lines(logging.ERROR)
    assert upgrade_solver_as_needed(solver, "s.prototxt") and solver.type == "Adam"


def test_snapshot_prefix_defaults_to_the_solver_path_without_extension() -> None:
    solver = caffe_pb2.SolverParameter()
    upgrade_snapshot_prefix(solver, "models/x/solver.prototxt")
    assert solver.snapshot_prefix == "models/x/solver"


def test_snapshot_prefix_naming_a_folder_gets_the_solver_stem(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "snaps").mkdir()
    solver = _solver('snapshot_prefix: "snaps"')
    upgrade_snapshot_prefix(solver, "models/x/quick_solver.prototxt")
    assert solver.snapshot_prefix == "snaps/quick_solver"
    kept = _solver('snapshot_prefix: "snaps/lenet"')
    upgrade_snapshot_prefix(kept, "models/x/quick_solver.prototxt")
    assert kept.snapshot_prefix == "snaps/lenet"


def test_read_solver_text_upgrades_type_and_prefix(tmp_path: Path, caffe_log: _Records) -> None:
    path = tmp_path / "old_solver.prototxt"
    path.write_text('net: "train_val.prototxt"\nbase_lr: 0.01\nsolver_type: NESTEROV\n')
    solver = read_solver_text(path)
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")
    assert solver.snapshot_prefix == str(tmp_path / "old_solver")
    assert (f"Attempting to upgrade input file specified using deprecated 'solver_type' field "
            f"(enum)': {path}") in caffe_log.lines(logging.INFO)
    assert ("Successfully upgraded file specified using deprecated 'solver_type' field (enum) "
            "to 'type' field (string).") in caffe_log.lines(logging.INFO)
    assert ("Note that future Caffe releases will only support 'type' field (string) for a "
            "solver's type.") in caffe_log.lines(logging.WARNING)


def _v1_caffemodel(values: np.ndarray) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter(name="legacy")
    layer = net.layers.add(name="fc", type=V1.INNER_PRODUCT)
    layer.blobs.append(array_to_blob_proto(values, legacy=True))
    return net


def test_read_net_binary_upgrades_a_v1_caffemodel(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(_v1_caffemodel(values).SerializeToString())
    net = read_net_binary(path)
    assert not net.layers and net.layer[0].type == "InnerProduct"
    np.testing.assert_array_equal(blob_proto_to_array(net.layer[0].blobs[0]),
                                  values.reshape(1, 1, 3, 4))


def test_read_net_binary_reads_caffemodels_over_64mb(tmp_path: Path) -> None:
    # protobuf's classic default limit is 64 MB; Caffe lifts it to 2 GB.
    count = 70 * 1024 * 1024 // 4
    values = np.linspace(-1, 1, count, dtype=np.float32)
    path = tmp_path / "big.caffemodel"
    path.write_bytes(_v1_caffemodel(values).SerializeToString())
    assert path.stat().st_size > 70 * 1024 * 1024
    net = read_net_binary(path)
    got = blob_proto_to_array(net.layer[0].blobs[0]).ravel()
    np.testing.assert_array_equal(got, values)


def test_upgrade_net_proto_text_writes_what_read_net_text_reads(
        tmp_path: Path, caffe_log: _Records) -> None:
    source = tmp_path / "v0.prototxt"
    source.write_text(V0_NET)
    target = tmp_path / "v2.prototxt"
    assert main(["upgrade_net_proto_text", str(source), str(target)]) == 0
    written = text_format.Parse(target.read_text(), caffe_pb2.NetParameter())
    assert written == read_net_text(source)
    assert f"Wrote upgraded NetParameter text proto to {target}" in caffe_log.lines(logging.INFO)


def test_upgrade_net_proto_text_on_a_current_file_still_writes(
        tmp_path: Path, caffe_log: _Records) -> None:
    source = tmp_path / "v2.prototxt"
    source.write_text('name: "n"\nlayer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n')
    target = tmp_path / "out.prototxt"
    assert main(["upgrade_net_proto_text", str(source), str(target)]) == 0
    assert f"File already in latest proto format: {source}" in caffe_log.lines(logging.ERROR)
    assert text_format.Parse(target.read_text(), caffe_pb2.NetParameter()) == _net(
        source.read_text())


def test_upgrade_net_proto_text_reports_dropped_fields_with_status_1(
        tmp_path: Path, caffe_log: _Records) -> None:
    source = tmp_path / "odd.prototxt"
    source.write_text('input: "x" layers { layer { name: "c" type: "conv" dropout_ratio: 0.1 } '
                      'bottom: "x" top: "c" }')
    target = tmp_path / "out.prototxt"
    assert main(["upgrade_net_proto_text", str(source), str(target)]) == 1
    assert target.exists()
    assert ("Encountered error(s) while upgrading prototxt; see details above."
            in caffe_log.lines(logging.ERROR))


def test_upgrade_net_proto_binary(tmp_path: Path) -> None:
    values = np.ones((2, 2), dtype=np.float32)
    source = tmp_path / "v1.caffemodel"
    source.write_bytes(_v1_caffemodel(values).SerializeToString())
    target = tmp_path / "v2.caffemodel"
    assert main(["upgrade_net_proto_binary", str(source), str(target)]) == 0
    upgraded = caffe_pb2.NetParameter.FromString(target.read_bytes())
    assert upgraded == read_net_binary(source) and upgraded.layer[0].type == "InnerProduct"


def test_upgrade_solver_proto_text_changes_only_the_type(
        tmp_path: Path, caffe_log: _Records) -> None:
    source = tmp_path / "solver.prototxt"
    source.write_text('net: "n.prototxt"\nbase_lr: 0.1\nsolver_type: ADAGRAD\n')
    target = tmp_path / "new_solver.prototxt"
    assert main(["upgrade_solver_proto_text", str(source), str(target)]) == 0
    written = _solver(target.read_text())
    expected = _solver('net: "n.prototxt"\nbase_lr: 0.1\ntype: "AdaGrad"\n')
    assert written == expected
    assert main(["upgrade_solver_proto_text", str(target), str(tmp_path / "again.prototxt")]) == 0
    assert f"File already in latest proto format: {target}" in caffe_log.lines(logging.ERROR)


def test_upgrade_tools_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["upgrade_net_proto_text", "only_one.prototxt"]) == 2
    assert "usage: caffe_ft upgrade_net_proto_text" in capsys.readouterr().err
    missing = tmp_path / "missing.prototxt"
    assert main(["upgrade_net_proto_text", str(missing), str(tmp_path / "o.prototxt")]) == 1
    assert f"Net file not found: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "o.prototxt").exists()

"""The net upgrades that apply to V2 nets too (input fields, old BatchNorm
param specs), and UpgradeNetAsNeeded, which runs every net upgrade in
Caffe's order with Caffe's log lines."""
from __future__ import annotations

from caffe_ft.errors import CaffeError
from caffe_ft.glog import logger
from caffe_ft.proto import caffe_pb2
from caffe_ft.upgrade.step import run_upgrade_step
from caffe_ft.upgrade.v0 import net_needs_v0_to_v1_upgrade, upgrade_v0_net
from caffe_ft.upgrade.v1 import (
    net_needs_data_upgrade,
    net_needs_v1_to_v2_upgrade,
    upgrade_net_data_transformation,
    upgrade_v1_net,
)


def net_needs_input_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return len(net.input) > 0


def upgrade_net_input(net: caffe_pb2.NetParameter, source: str = "<net>") -> None:
    """Turn net-level input/input_shape/input_dim into a first layer
    `{name: "input" type: "Input"}`. An input without shapes (an old
    .caffemodel) is just dropped."""
    inputs = list(net.input)
    if net.input_shape:
        if len(net.input_shape) < len(inputs):
            raise CaffeError(f"{source}: the net has {len(inputs)} input(s) but "
                             f"{len(net.input_shape)} input_shape; expected one per input")
        shapes = [list(shape.dim) for shape in net.input_shape[:len(inputs)]]
    elif net.input_dim:
        if len(net.input_dim) < 4 * len(inputs):
            raise CaffeError(f"{source}: the net has {len(inputs)} input(s) but "
                             f"{len(net.input_dim)} input_dim values; expected 4 per input "
                             f"(num, channels, height, width)")
        shapes = [list(net.input_dim[4 * i:4 * i + 4]) for i in range(len(inputs))]
    else:
        shapes = []
    if shapes:
        layer = caffe_pb2.LayerParameter(name="input", type="Input", top=inputs)
        for dims in shapes:
            layer.input_param.shape.add().dim.extend(dims)
        # The Input layer goes first so every later layer finds its bottoms.
        rest = list(net.layer)
        del net.layer[:]
        net.layer.append(layer)
        net.layer.extend(rest)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


def net_needs_batchnorm_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """Old BatchNorm definitions declared 3 param specs (mean, variance,
    scale factor) to freeze them by hand."""
    return any(_is_old_batchnorm(layer) for layer in net.layer)


def upgrade_net_batchnorm(net: caffe_pb2.NetParameter) -> None:
    """Zero lr_mult and decay_mult on those 3 specs; the specs stay, as in
    Caffe (the BatchNorm statistics are never learned by the solver)."""
    for layer in net.layer:
        if _is_old_batchnorm(layer):
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


def _is_old_batchnorm(layer: caffe_pb2.LayerParameter) -> bool:
    return layer.type == "BatchNorm" and len(layer.param) == 3


def net_needs_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return (net_needs_v0_to_v1_upgrade(net) or net_needs_v1_to_v2_upgrade(net)
            or net_needs_data_upgrade(net) or net_needs_input_upgrade(net)
            or net_needs_batchnorm_upgrade(net))


def upgrade_net_as_needed(net: caffe_pb2.NetParameter, source: str) -> bool:
    """Apply every upgrade `net` needs, in place; False if a V0/V1 field had
    to be dropped on the way (logged; the net is still usable)."""
    success = True
    if net_needs_v0_to_v1_upgrade(net):
        success &= run_upgrade_step(
            "Attempting to upgrade input file specified using deprecated V0LayerParameter",
            source, lambda: upgrade_v0_net(net, source),
            "Successfully upgraded file specified using deprecated V0LayerParameter",
            "Warning: had one or more problems upgrading V0NetParameter to NetParameter (see "
            "above); continuing anyway.")
        logger.warning("Note that future Caffe releases will not support V0NetParameter; use "
                       "caffe_ft upgrade_net_proto_text for prototxt and caffe_ft "
                       "upgrade_net_proto_binary for model weights upgrade this and any other "
                       "net protos to the new format.")
    if net_needs_data_upgrade(net):
        logger.info("Attempting to upgrade input file specified using deprecated "
                    "transformation parameters: %s", source)
        upgrade_net_data_transformation(net)
        logger.info("Successfully upgraded file specified using deprecated data "
                    "transformation parameters.")
        logger.warning("Note that future Caffe releases will only support transform_param "
                       "messages for transformation fields.")
    if net_needs_v1_to_v2_upgrade(net):
        success &= run_upgrade_step(
            "Attempting to upgrade input file specified using deprecated V1LayerParameter",
            source, lambda: upgrade_v1_net(net, source),
            "Successfully upgraded file specified using deprecated V1LayerParameter",
            "Warning: had one or more problems upgrading V1LayerParameter (see above); "
            "continuing anyway.")
    if net_needs_input_upgrade(net):
        logger.info("Attempting to upgrade input file specified using deprecated input "
                    "fields: %s", source)
        upgrade_net_input(net, source)
        logger.info("Successfully upgraded file specified using deprecated input fields.")
        logger.warning("Note that future Caffe releases will only support input layers and "
                       "not input fields.")
    if net_needs_batchnorm_upgrade(net):
        logger.info("Attempting to upgrade batch norm layers using deprecated params: %s",
                    source)
        upgrade_net_batchnorm(net)
        logger.info("Successfully upgraded batch norm layers using deprecated params.")
    return success

"""Caffe's upgrade_proto: legacy nets (V0, V1, old data-transform, input and
BatchNorm fields) and solvers (solver_type enum, snapshot_prefix) brought to
the current format, in Caffe's order and with Caffe's log lines, plus the
net/solver readers that apply them.

Each upgrade is a pair: `*_needs_*(msg)` says whether it applies, the other
function does it in place. Fatal cases raise CaffeError naming the file.
"""
from caffe_ft.upgrade.net import (
    net_needs_batchnorm_upgrade,
    net_needs_input_upgrade,
    net_needs_upgrade,
    upgrade_net_as_needed,
    upgrade_net_batchnorm,
    upgrade_net_input,
)
from caffe_ft.upgrade.readers import read_net_binary, read_net_text, read_solver_text
from caffe_ft.upgrade.solver import (
    solver_needs_type_upgrade,
    upgrade_snapshot_prefix,
    upgrade_solver_as_needed,
    upgrade_solver_type,
)
from caffe_ft.upgrade.v0 import (
    net_needs_v0_to_v1_upgrade,
    upgrade_v0_layer,
    upgrade_v0_net,
    upgrade_v0_padding_layers,
)
from caffe_ft.upgrade.v1 import (
    net_needs_data_upgrade,
    net_needs_v1_to_v2_upgrade,
    upgrade_net_data_transformation,
    upgrade_v1_layer,
    upgrade_v1_net,
)

__all__ = [
    "net_needs_batchnorm_upgrade", "net_needs_data_upgrade", "net_needs_input_upgrade",
    "net_needs_upgrade", "net_needs_v0_to_v1_upgrade", "net_needs_v1_to_v2_upgrade",
    "read_net_binary", "read_net_text", "read_solver_text", "solver_needs_type_upgrade",
    "upgrade_net_as_needed", "upgrade_net_batchnorm", "upgrade_net_data_transformation",
    "upgrade_net_input", "upgrade_snapshot_prefix", "upgrade_solver_as_needed",
    "upgrade_solver_type", "upgrade_v0_layer", "upgrade_v0_net", "upgrade_v0_padding_layers",
    "upgrade_v1_layer", "upgrade_v1_net",
]

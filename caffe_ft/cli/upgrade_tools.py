"""`caffe_ft upgrade_net_proto_text|upgrade_net_proto_binary|upgrade_solver_proto_text
IN OUT`: Caffe's upgrade tools. As in Caffe, OUT is written even when IN
was already current, and the exit status is 1 when a legacy field had to be
dropped on the way."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from caffe_ft.cli import action
from caffe_ft.log import logger, setup_logging
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import read_binary, read_text, write_binary, write_text
from caffe_ft.upgrade import (
    net_needs_upgrade,
    solver_needs_type_upgrade,
    upgrade_net_as_needed,
    upgrade_solver_as_needed,
)


def _upgrade(needed: bool, upgrade: Callable[[], bool], source: str) -> bool:
    """Run `upgrade` if the file needs it, with the messages of Caffe's tools."""
    if not needed:
        logger.error("File already in latest proto format: %s", source)
        return True
    success = upgrade()
    if not success:
        logger.error("Encountered error(s) while upgrading prototxt; see details above.")
    return success


def _upgrade_net(net: caffe_pb2.NetParameter, source: str) -> bool:
    return _upgrade(net_needs_upgrade(net), lambda: upgrade_net_as_needed(net, source), source)


@action("upgrade_net_proto_text", "Upgrade a legacy (V0/V1) net prototxt to the current format",
        "V0_NET_PROTO_FILE_IN NET_PROTO_FILE_OUT", nargs=(2, 2))
def upgrade_net_proto_text(flags: dict[str, Any], args: list[str]) -> int:
    setup_logging()
    source, target = args
    net = read_text(source, caffe_pb2.NetParameter(), "Net file")
    success = _upgrade_net(net, source)
    write_text(target, net)
    logger.info("Wrote upgraded NetParameter text proto to %s", target)
    return 0 if success else 1


@action("upgrade_net_proto_binary", "Upgrade a legacy (V0/V1) .caffemodel to the current format",
        "V0_NET_PROTO_FILE_IN NET_PROTO_FILE_OUT", nargs=(2, 2))
def upgrade_net_proto_binary(flags: dict[str, Any], args: list[str]) -> int:
    setup_logging()
    source, target = args
    net = read_binary(source, caffe_pb2.NetParameter(), "Weights file")
    success = _upgrade_net(net, source)
    write_binary(target, net)
    logger.info("Wrote upgraded NetParameter binary proto to %s", target)
    return 0 if success else 1


@action("upgrade_solver_proto_text", "Upgrade a solver prototxt's solver_type enum to type",
        "OLD_SOLVER_PROTO_FILE_IN SOLVER_PROTO_FILE_OUT", nargs=(2, 2))
def upgrade_solver_proto_text(flags: dict[str, Any], args: list[str]) -> int:
    setup_logging()
    source, target = args
    solver = read_text(source, caffe_pb2.SolverParameter(), "Solver file")
    # Caffe's tool upgrades only the type; snapshot_prefix is left for
    # `train` to default, so the output does not pin this file's path.
    success = _upgrade(solver_needs_type_upgrade(solver),
                       lambda: upgrade_solver_as_needed(solver, source), source)
    write_text(target, solver)
    logger.info("Wrote upgraded SolverParameter text proto to %s", target)
    return 0 if success else 1

"""Runs `caffe_ft upgrade_net_proto_text|upgrade_net_proto_binary|
upgrade_solver_proto_text IN OUT`, Caffe's upgrade tools (declared in
caffe_ft.cli.actions). As in Caffe, OUT is written even when IN was already
current, and the exit status is 1 when a legacy field had to be dropped on
the way."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from caffe_ft.glog import logger, setup_logging
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import read_binary, read_text, write_binary, write_text
from caffe_ft.upgrade import (
    net_needs_upgrade,
    solver_needs_type_upgrade,
    upgrade_net_as_needed,
    upgrade_solver_as_needed,
)

M = TypeVar("M", bound=Message)


def _upgrade_file(args: list[str], message: M, what: str, binary: bool,
                  needs_upgrade: Callable[[M], bool], upgrade: Callable[[M, str], bool]) -> int:
    """Read IN into `message`, upgrade it if it needs it and write OUT, with
    the messages of Caffe's tools."""
    setup_logging()
    source, target = args
    read, write = (read_binary, write_binary) if binary else (read_text, write_text)
    message = read(source, message, what)
    if needs_upgrade(message):
        success = upgrade(message, source)
        if not success:
            logger.error("Encountered error(s) while upgrading prototxt; see details above.")
    else:
        logger.error("File already in latest proto format: %s", source)
        success = True
    write(target, message)
    logger.info("Wrote upgraded %s %s proto to %s", message.DESCRIPTOR.name,
                "binary" if binary else "text", target)
    return 0 if success else 1


def upgrade_net_proto_text(flags: dict[str, Any], args: list[str]) -> int:
    return _upgrade_file(args, caffe_pb2.NetParameter(), "Net file", False,
                         net_needs_upgrade, upgrade_net_as_needed)


def upgrade_net_proto_binary(flags: dict[str, Any], args: list[str]) -> int:
    return _upgrade_file(args, caffe_pb2.NetParameter(), "Weights file", True,
                         net_needs_upgrade, upgrade_net_as_needed)


def upgrade_solver_proto_text(flags: dict[str, Any], args: list[str]) -> int:
    # Caffe's tool upgrades only the type; snapshot_prefix is left for
    # `train` to default, so the output does not pin this file's path.
    return _upgrade_file(args, caffe_pb2.SolverParameter(), "Solver file", False,
                         solver_needs_type_upgrade, upgrade_solver_as_needed)

"""Solver upgrades: the deprecated `solver_type` enum → `type` string
(UpgradeSolverAsNeeded), and the snapshot_prefix default that
ReadSolverParamsFromTextFileOrDie applies (UpgradeSnapshotPrefixProperty)."""
from __future__ import annotations

import os

from caffe_ft.errors import CaffeError
from caffe_ft.glog import logger
from caffe_ft.proto import caffe_pb2
from caffe_ft.upgrade.step import run_upgrade_step

# SolverType enum name → the solver registry's type string.
SOLVER_TYPES: dict[str, str] = {
    "SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
    "ADADELTA": "AdaDelta", "ADAM": "Adam",
}


def solver_needs_type_upgrade(solver: caffe_pb2.SolverParameter) -> bool:
    return solver.HasField("solver_type")


def upgrade_solver_type(solver: caffe_pb2.SolverParameter, source: str = "<solver>") -> bool:
    """Replace `solver_type` by `type`; False if there was nothing to do."""
    if solver.HasField("solver_type") and solver.HasField("type"):
        raise CaffeError(
            f"{source}: cannot upgrade the solver: it sets both the old 'solver_type' (enum, "
            f"{caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)}) and the new "
            f"'type' (string, \"{solver.type}\"); keep only 'type'")
    if not solver.HasField("solver_type"):
        logger.error("Warning: solver type already up to date. ")
        return False
    solver.type = SOLVER_TYPES[caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)]
    solver.ClearField("solver_type")
    return True


def upgrade_solver_as_needed(solver: caffe_pb2.SolverParameter, source: str) -> bool:
    if not solver_needs_type_upgrade(solver):
        return True
    success = run_upgrade_step(
        "Attempting to upgrade input file specified using deprecated 'solver_type' field "
        "(enum)'", source, lambda: upgrade_solver_type(solver, source),
        "Successfully upgraded file specified using deprecated 'solver_type' field (enum) to "
        "'type' field (string).",
        "Warning: had one or more problems upgrading SolverType (see above).")
    if success:
        logger.warning("Note that future Caffe releases will only support 'type' field "
                       "(string) for a solver's type.")
    return success


def upgrade_snapshot_prefix(solver: caffe_pb2.SolverParameter, solver_path: str) -> None:
    """No snapshot_prefix → the solver file's path without its extension; a
    prefix that names an existing folder → that folder / the solver file's
    stem. Paths stay relative as given, like Caffe's."""
    stem_path = os.path.splitext(solver_path)[0]
    if not solver.HasField("snapshot_prefix"):
        solver.snapshot_prefix = stem_path
        logger.info("snapshot_prefix was not specified and is set to %s",
                    solver.snapshot_prefix)
    elif os.path.isdir(solver.snapshot_prefix):
        solver.snapshot_prefix = os.path.join(solver.snapshot_prefix,
                                              os.path.basename(stem_path))
        logger.info("snapshot_prefix was a directory and is replaced to %s",
                    solver.snapshot_prefix)

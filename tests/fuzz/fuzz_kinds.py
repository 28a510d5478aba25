"""The file kinds the fuzzer mutates, each one function: how caffe_ft uses a
file of that kind, from parse to the point where it would start computing.

A check returns when the mutant works and raises CaffeError when it is bad;
anything else it raises is a bug. To fuzz a new kind, write its seed in
fuzz_seeds.write_seeds and register one check here:

    @file_kind("datum_lmdb", binary=True, seeds=("lmdb/data.mdb",))
    def check_datum_lmdb(path: Path, work: Workspace) -> None:
        ...
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuzz_seeds import CAFFEMODEL, SOLVERSTATE

from caffe_ft.net import Net
from caffe_ft.net.weights import copy_trained_layers
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import read_text, write_text
from caffe_ft.solver.solver import Solver
from caffe_ft.upgrade import read_net_binary, read_net_text, read_solver_text


@dataclass
class Workspace:
    """The folder a worker runs mutants in (a copy of the seeds), and the
    objects built once per worker from well-formed seeds."""
    folder: Path
    built: dict[str, Any] = field(default_factory=dict)

    def once(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self.built:
            self.built[key] = build()
        return self.built[key]

    def lenet(self) -> Net:
        return self.once("lenet", lambda: Net(read_net_text(self.folder / "lenet.prototxt"),
                                              caffe_pb2.TRAIN))

    def solver(self) -> Solver:
        path = self.folder / "solver.prototxt"
        return self.once("solver", lambda: Solver(read_solver_text(path), str(path)))


Check = Callable[[Path, Workspace], None]


@dataclass(frozen=True)
class FileKind:
    name: str
    binary: bool
    seeds: tuple[str, ...]  # file names in the seed folder
    check: Check


KINDS: dict[str, FileKind] = {}


def file_kind(name: str, *, binary: bool, seeds: tuple[str, ...]) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        KINDS[name] = FileKind(name, binary, seeds, check)
        return check
    return register


@file_kind("net_prototxt", binary=False, seeds=("lenet.prototxt", "lenet_v1.prototxt"))
def check_net_prototxt(path: Path, work: Workspace) -> None:
    """Parse, upgrade and build for both phases on CPU, then write the
    upgraded net back as upgrade_net_proto_text does and read it again."""
    param = read_net_text(path)
    for phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        Net(param, phase, source=str(path))
    out = work.folder / "upgraded.prototxt"
    write_text(out, param)
    again = read_text(out, caffe_pb2.NetParameter())
    out.unlink()
    if again.SerializeToString() != param.SerializeToString():
        raise AssertionError(f"{out} does not read back as the net written")


@file_kind("solver_prototxt", binary=False, seeds=("solver.prototxt",))
def check_solver_prototxt(path: Path, work: Workspace) -> None:
    """Parse, upgrade and build the Solver (its train and test nets), no training."""
    Solver(read_solver_text(path), str(path))


@file_kind("caffemodel", binary=True, seeds=(CAFFEMODEL,))
def check_caffemodel(path: Path, work: Workspace) -> None:
    """Read, upgrade and copy into LeNet, as -weights does."""
    copy_trained_layers(work.lenet(), read_net_binary(path), str(path))


@file_kind("solverstate", binary=True, seeds=(SOLVERSTATE,))
def check_solverstate(path: Path, work: Workspace) -> None:
    """Restore into LeNet's Adam solver, as -snapshot does."""
    work.solver().restore(str(path))


# The data kinds (Datums in an LMDB, image lists) register themselves on import.
import data_kinds  # noqa: E402,F401

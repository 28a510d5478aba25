"""Solver snapshots (.solverstate and .solverstate.h5) in Caffe's layout, so
Caffe resumes from ours and we resume from Caffe's.

Binary: a SolverState message {iter, learned_net, history[], current_step},
each history blob with `shape` and float `data`. HDF5: datasets `iter`,
`learned_net`, `current_step` and a group `history` of datasets "0".."n-1".
The history lists the first history blob of every learnable param in
Caffe's order, then (AdaDelta, Adam) the second of every param.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from caffe_ft.blobs import array_to_blob_proto, blob_proto_to_array
from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import atomic_write, read_binary, write_binary


@dataclass
class SolverState:
    iter: int
    learned_net: str
    current_step: int
    history: list[np.ndarray] = field(default_factory=list)


def is_hdf5_state(path: str) -> bool:
    # Caffe decides by the name alone (Solver::Restore).
    return path.endswith(".h5")


def write_state(path: str, state: SolverState) -> None:
    if is_hdf5_state(path):
        _write_hdf5(path, state)
        return
    proto = caffe_pb2.SolverState(iter=state.iter, learned_net=state.learned_net,
                                  current_step=state.current_step)
    for blob in state.history:
        proto.history.append(array_to_blob_proto(blob))
    write_binary(path, proto)


def read_state(path: str) -> SolverState:
    if is_hdf5_state(path):
        return _read_hdf5(path)
    proto = read_binary(path, caffe_pb2.SolverState(), "Solver state")
    if not proto.history and not proto.learned_net:
        _refuse_model(path)
    return SolverState(proto.iter, proto.learned_net, proto.current_step,
                       [blob_proto_to_array(blob) for blob in proto.history])


def _refuse_model(path: str) -> None:
    """A .caffemodel given where a state belongs parses as an empty SolverState
    (their field numbers overlap); say so instead of failing later on the
    history's length."""
    try:
        model = read_binary(path, caffe_pb2.NetParameter())
    except CaffeError:
        return
    if model.layer or model.layers:
        raise CaffeError(f"{path} is a trained model (a NetParameter with "
                         f"{len(model.layer) or len(model.layers)} layers), not a solver state: "
                         f"-snapshot expects the .solverstate written beside it; pass a model "
                         f"with -weights instead")


def resolve_learned_net(state_path: str, learned_net: str) -> str:
    """The model a solverstate names. Caffe stores the path the snapshot was
    written to (relative to that run's working folder); the model always
    sits beside its solverstate, so look there first, then as stored."""
    beside = os.path.join(os.path.dirname(state_path), os.path.basename(learned_net))
    for candidate in (beside, learned_net):
        if os.path.isfile(candidate):
            return candidate
    raise CaffeError(f"{state_path}: learned_net '{learned_net}' not found (looked for "
                     f"{beside} and {learned_net})")


def _write_hdf5(path: str, state: SolverState) -> None:
    import h5py
    with atomic_write(path) as handle, h5py.File(handle, "w") as out:
        # Caffe writes ints with H5LTmake_dataset_int: 1-D, one element.
        out.create_dataset("iter", data=np.array([state.iter], dtype=np.int32))
        _write_c_string(h5py, out, "learned_net", state.learned_net)
        out.create_dataset("current_step", data=np.array([state.current_step], dtype=np.int32))
        history = out.create_group("history")
        for i, blob in enumerate(state.history):
            history.create_dataset(str(i), data=np.asarray(blob, dtype=np.float32))


def _write_c_string(h5py, group, name: str, text: str) -> None:
    """A scalar, NUL-terminated fixed-length string, as H5LTmake_dataset_string
    writes it (Caffe's reader expects the terminator)."""
    raw = text.encode("utf-8")
    string_type = h5py.h5t.C_S1.copy()
    string_type.set_size(len(raw) + 1)
    string_type.set_strpad(h5py.h5t.STR_NULLTERM)
    dataset = h5py.h5d.create(group.id, name.encode("utf-8"), string_type,
                              h5py.h5s.create(h5py.h5s.SCALAR))
    dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw + b"\0", dtype=f"S{len(raw) + 1}"))


def _read_hdf5(path: str) -> SolverState:
    import h5py
    if not os.path.isfile(path):
        raise CaffeError(f"Solver state not found: {path}")
    with h5py.File(path, "r") as handle:
        for key in ("iter", "current_step", "history"):
            if key not in handle:
                raise CaffeError(f"{path}: not a Caffe solver state (no '{key}')")
        learned_net = ""
        if "learned_net" in handle:
            raw = handle["learned_net"][()]
            learned_net = (raw.tobytes() if isinstance(raw, np.ndarray) else raw)
            learned_net = learned_net.rstrip(b"\0").decode("utf-8")
        history = handle["history"]
        blobs = [np.asarray(history[str(i)], dtype=np.float32) for i in range(len(history))]
        return SolverState(int(np.asarray(handle["iter"]).reshape(-1)[0]), learned_net,
                           int(np.asarray(handle["current_step"]).reshape(-1)[0]), blobs)

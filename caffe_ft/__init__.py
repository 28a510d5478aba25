"""caffe_ft: Caffe-compatible fine-tuning on PyTorch.

`import caffe_ft as caffe` gives pycaffe's API, name for name as BVLC's
`import caffe` does (the table below; docs/pycaffe.md lists each with its
support status), and `caffe_ft python script.py` runs a script that says
`import caffe` against it. The names load on first use, and the `caffe_ft`
command imports only the module of the action it runs
(caffe_ft.cli.actions), so tools that need no torch (convert_imageset,
compute_image_mean, the upgrade tools) never import it.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SOLVERS = ("SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
            "AdamSolver", "get_solver", "NCCL", "Timer", "solver_count", "set_solver_count",
            "solver_rank", "set_solver_rank", "set_multiprocess", "has_nccl")
# pycaffe's name → the module that defines it.
EXPORTS: dict[str, str] = {
    "Net": "caffe_ft.pycaffe.net",
    "layer_type_list": "caffe_ft.pycaffe.net",
    **{name: "caffe_ft.pycaffe.solver" for name in _SOLVERS},
    **{name: "caffe_ft.pycaffe.mode" for name in (
        "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed", "init_log", "log")},
    "Layer": "caffe_ft.layers.python_layer",
    "TRAIN": "caffe_ft.proto.caffe_pb2",
    "TEST": "caffe_ft.proto.caffe_pb2",
    "Classifier": "caffe_ft.pycaffe.classifier",
    "Detector": "caffe_ft.pycaffe.detector",
    **{name: "caffe_ft.pycaffe.net_spec" for name in ("layers", "params", "NetSpec",
                                                       "to_proto")},
    "set_parity_mode": "caffe_ft.parity",
}
# pycaffe's submodules (`import caffe.draw`, `caffe.io`) → caffe_ft's.
SUBMODULES: dict[str, str] = {
    "io": "caffe_ft.io",
    "proto": "caffe_ft.proto",
    "pycaffe": "caffe_ft.pycaffe.net",
    "classifier": "caffe_ft.pycaffe.classifier",
    "detector": "caffe_ft.pycaffe.detector",
    "net_spec": "caffe_ft.pycaffe.net_spec",
    "draw": "caffe_ft.pycaffe.draw",
    "coord_map": "caffe_ft.pycaffe.coord_map",
}
__all__ = sorted([*EXPORTS, *SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in SUBMODULES:
        return importlib.import_module(SUBMODULES[name])
    if name == "Layer":
        return importlib.import_module(EXPORTS[name]).PythonLayerBase
    if name in EXPORTS:
        return getattr(importlib.import_module(EXPORTS[name]), name)
    raise AttributeError(f"module 'caffe_ft' has no attribute '{name}'")

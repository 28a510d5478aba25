"""caffe_ft: Caffe-compatible fine-tuning on PyTorch.

`import caffe_ft as caffe` gives pycaffe's API: caffe.Net, caffe.TRAIN/TEST,
caffe.set_mode_cpu/gpu, caffe.io, caffe.Layer for Python layers. They load on
first use, and the `caffe_ft` command imports only the module of the action it
runs (caffe_ft.cli.actions), so tools that need no torch (convert_imageset,
compute_image_mean, the upgrade tools) never import it.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Net": "caffe_ft.pycaffe", "TRAIN": "caffe_ft.pycaffe", "TEST": "caffe_ft.pycaffe",
    "set_device": "caffe_ft.pycaffe", "set_mode_cpu": "caffe_ft.pycaffe",
    "set_mode_gpu": "caffe_ft.pycaffe", "set_random_seed": "caffe_ft.pycaffe",
    "Layer": "caffe_ft.layers.python_layer",
    "set_parity_mode": "caffe_ft.parity",
}
__all__ = ["Layer", "Net", "TRAIN", "TEST", "io", "set_device", "set_mode_cpu", "set_mode_gpu",
           "set_random_seed", "set_parity_mode", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "io":
        return importlib.import_module("caffe_ft.io")
    if name == "Layer":
        return importlib.import_module(_LAZY[name]).PythonLayerBase
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'caffe_ft' has no attribute '{name}'")

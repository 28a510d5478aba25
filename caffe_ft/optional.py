"""Optional packages, imported where a feature first needs them, with one
clear message naming the pip extra that installs each."""
from __future__ import annotations

import importlib
from types import ModuleType

from caffe_ft.errors import CaffeError

# module → (what needs it, the extra that installs it)
_EXTRAS = {
    "onnx": ("ONNX export", "onnx"),
    "pydot": ("Drawing nets (caffe.draw)", "draw"),
}


def optional_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        need, extra = _EXTRAS[name]
        raise CaffeError(f"{need} needs {name}: pip install 'caffe_ft[{extra}]'") from None

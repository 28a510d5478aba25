"""`caffe_ft python SCRIPT [ARGS]`: run a legacy pycaffe script unchanged.

For that run only, an import hook makes `import caffe` and its submodules
(`caffe.io`, `caffe.proto.caffe_pb2`, `caffe.draw`, ...) resolve to
caffe_ft's, by the tables of caffe_ft's face. Nothing is installed under the
name `caffe`, so a real Caffe on the same machine is never shadowed.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import runpy
import sys
import types
from collections.abc import Sequence

import caffe_ft
from caffe_ft.errors import CaffeError

PACKAGE = "caffe"
# Submodules a script may import by their full dotted name.
_NESTED = {"proto.caffe_pb2": "caffe_ft.proto.caffe_pb2"}


def face() -> types.ModuleType:
    """The module a script gets for `import caffe`: pycaffe's names, loaded on use."""
    module = types.ModuleType(PACKAGE, "pycaffe's API, served by caffe_ft")

    module.__getattr__ = caffe_ft.__getattr__  # type: ignore[method-assign]
    module.__path__ = []  # a package, so `import caffe.draw` asks the finder below
    module.__all__ = list(caffe_ft.__all__)
    module.__version__ = caffe_ft.__version__
    return module


class CaffeFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `caffe` and `caffe.<submodule>` as caffe_ft's modules."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == PACKAGE or self._target(fullname) is not None:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if spec.name == PACKAGE:
            return face()
        return importlib.import_module(self._target(spec.name) or "")

    def exec_module(self, module: types.ModuleType) -> None:
        """The module is caffe_ft's own, already executed."""

    @staticmethod
    def _target(fullname: str) -> str | None:
        prefix = PACKAGE + "."
        if not fullname.startswith(prefix):
            return None
        name = fullname[len(prefix):]
        return caffe_ft.SUBMODULES.get(name) or _NESTED.get(name)


def run_script(path: str, args: Sequence[str]) -> None:
    """Run `path` as __main__ with `args` as its arguments, `caffe` being caffe_ft."""
    if not os.path.isfile(path):
        raise CaffeError(f"Python script not found: {path}")
    sys.argv = [path, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    sys.meta_path.insert(0, CaffeFinder())
    runpy.run_path(path, run_name="__main__")

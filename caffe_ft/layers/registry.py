"""Caffe type name → layer class, filled by the @register decorator in each
family module (as onnx2torch does per op). The net builder knows no layer."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from caffe_ft.errors import CaffeError

if TYPE_CHECKING:
    from caffe_ft.layers.base import Layer

L = TypeVar("L", bound="type[Layer]")

_REGISTRY: dict[str, type[Layer]] = {}


def register(*type_names: str) -> Callable[[L], L]:
    """Class decorator: make the class the builder for these Caffe types."""
    def wrap(cls: L) -> L:
        for name in type_names:
            if name in _REGISTRY:
                raise RuntimeError(f"Layer type {name} registered twice")
            _REGISTRY[name] = cls
        return cls
    return wrap


def known_types() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def layer_class(type_name: str) -> type[Layer]:
    _load_families()
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise CaffeError(f"Unknown layer type: {type_name} (known types: "
                         f"{', '.join(known_types())})") from None


def check_supported(types: Iterable[tuple[str, str]], source: str) -> None:
    """Fail once, naming every (layer name, type) whose type is not registered."""
    _load_families()
    missing: dict[str, list[str]] = {}
    for name, type_name in types:
        if type_name not in _REGISTRY:
            missing.setdefault(type_name, []).append(name)
    if missing:
        listed = "; ".join(f"{t} (layers: {', '.join(names)})" for t, names in missing.items())
        raise CaffeError(f"{source}: unsupported layer type(s), not in BVLC Caffe: {listed}")


def _load_families() -> None:
    # Importing the family modules runs their @register decorators.
    from caffe_ft.layers import families  # noqa: F401

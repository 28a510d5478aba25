"""Caffe type name → layer class, filled by the @register decorator in each
family module (as onnx2torch does per op). Lookups go through
caffe_ft.layers.families, which imports every family first; this module
knows no family, so the families can import it without a circle."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from caffe_ft.layers.base import Layer

L = TypeVar("L", bound="type[Layer]")

REGISTRY: dict[str, type[Layer]] = {}


def register(*type_names: str) -> Callable[[L], L]:
    """Class decorator: make the class the builder for these Caffe types."""
    def wrap(cls: L) -> L:
        for name in type_names:
            if name in REGISTRY:
                raise RuntimeError(f"Layer type {name} registered twice")
            REGISTRY[name] = cls
        return cls
    return wrap

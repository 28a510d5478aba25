"""Every layer family, registered: the lookups the net builder uses.

Importing the family modules runs their @register decorators, so a type is
known here once its family is imported below. Adding a family means adding
its import here."""
from __future__ import annotations

from collections.abc import Iterable

from caffe_ft.errors import CaffeError
from caffe_ft.layers import (  # noqa: F401
    activation,
    common,
    data,
    input,
    loss,
    normalization,
    python_layer,
    recurrent,
    vision,
)
from caffe_ft.layers.base import Layer
from caffe_ft.layers.registry import REGISTRY


def known_types() -> list[str]:
    return sorted(REGISTRY)


def layer_class(type_name: str) -> type[Layer]:
    try:
        return REGISTRY[type_name]
    except KeyError:
        raise CaffeError(f"Unknown layer type: {type_name} (known types: "
                         f"{', '.join(known_types())})") from None


def check_supported(types: Iterable[tuple[str, str]], source: str) -> None:
    """Fail once, naming every (layer name, type) whose type is not registered."""
    missing: dict[str, list[str]] = {}
    for name, type_name in types:
        if type_name not in REGISTRY:
            missing.setdefault(type_name, []).append(name)
    if missing:
        listed = "; ".join(f"{t} (layers: {', '.join(names)})" for t, names in missing.items())
        raise CaffeError(f"{source}: unsupported layer type(s), not in BVLC Caffe: {listed}")

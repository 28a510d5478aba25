"""The protobuf text that `str(message)` gives under pycaffe.

Scripts write prototxt files with `f.write(str(net_spec.to_proto()))`, so the
text of `str()` is the file they produce. Real pycaffe's protobuf (the Python
text printer Caffe's goldens were written with) prints a float field as
Python's `str()` of its value widened to a double: `std: 0.009999999776482582`
for 0.01, `mean_value: 104.0` for 104. The protobuf installed here prints the
shortest float text (`0.01`, `104`) instead, so caffe_ft prints pycaffe's text
itself. The other rules are that printer's: fields in field-number order, each
repeated value on its own line, a message as `name {` ... `}` indented by two,
enums by name, strings C-escaped as bytes (non-ASCII as octal).
"""
from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.text_encoding import CEscape

_INDENT = 2


def pycaffe_text(message: Message) -> str:
    """`message` in pycaffe's protobuf text format."""
    lines: list[str] = []
    _print_message(message, 0, lines)
    return "".join(lines)


def use_pycaffe_str(module: types.ModuleType) -> None:
    """Make `str()` of every message class of `module` (a generated *_pb2)
    print pycaffe's text, as `str()` does in a real pycaffe script."""
    for descriptor in module.DESCRIPTOR.message_types_by_name.values():
        for nested in _with_nested(descriptor):
            GetMessageClass(nested).__str__ = pycaffe_text


def _with_nested(descriptor: Descriptor) -> Iterator[Descriptor]:
    yield descriptor
    for nested in descriptor.nested_types:
        yield from _with_nested(nested)


def _print_message(message: Message, indent: int, lines: list[str]) -> None:
    # ListFields gives the set fields; pycaffe's printer orders them by number.
    for field, value in sorted(message.ListFields(), key=lambda item: item[0].number):
        values = value if field.is_repeated else [value]
        for item in values:
            _print_field(field, item, indent, lines)


def _print_field(field: FieldDescriptor, value: Any, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        lines.append(f"{pad}{field.name} {{\n")
        _print_message(value, indent + _INDENT, lines)
        lines.append(f"{pad}}}\n")
    else:
        lines.append(f"{pad}{field.name}: {_scalar_text(field, value)}\n")


def _scalar_text(field: FieldDescriptor, value: Any) -> str:
    if field.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else str(value)
    if field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        raw = value.encode("utf-8") if isinstance(value, str) else value
        return f'"{CEscape(raw, False)}"'
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return "true" if value else "false"
    return str(value)

"""Reading and writing Caffe's protobuf files: prototxt, .caffemodel,
.binaryproto and .solverstate.

Every write is atomic (temp file in the same folder, then rename), so an
interrupted run never leaves a truncated model or snapshot behind. Every
read error names the path as given and, for text, the line, column and token.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from caffe_ft.errors import CaffeError

M = TypeVar("M", bound=Message)
PathLike = str | os.PathLike[str]


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[BinaryIO]:
    """Open a temp file beside `path`; rename it over `path` only on success."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise CaffeError(f"Cannot write {path}: folder {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_bytes(path: PathLike, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise CaffeError(f"{what} not found: {os.fspath(path)}") from None
    except IsADirectoryError:
        raise CaffeError(f"{what} {os.fspath(path)} is a directory, expected a file") from None
    except PermissionError:
        raise CaffeError(f"Cannot read {what} {os.fspath(path)}: permission denied") from None


def parse_text(text: str, message: M, source: str = "<text>") -> M:
    """Parse prototxt `text` into `message`, with Caffe-style errors naming `source`."""
    unknown = _unknown_fields(text, message.DESCRIPTOR)
    if unknown:
        lines: dict[tuple[str, str], list[str]] = {}
        for line, name, owner in unknown:
            lines.setdefault((owner, name), []).append(str(line))
        listed = "; ".join(f"{owner}.{name} (line {', '.join(at)})"
                           for (owner, name), at in lines.items())
        raise CaffeError(
            f"{source}: {len(lines)} field(s) not in BVLC caffe.proto, probably from a Caffe "
            f"fork: {listed}")
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as err:
        line, col = err.GetLine(), err.GetColumn()
        token = _token_at(text, line, col)
        detail = str(err)
        if line and detail.startswith(f"{line}:"):
            detail = detail.split(" : ", 1)[-1]
        where = f"{source}:{line}:{col}" if line else source
        raise CaffeError(f"{where}: {detail} (at '{token}')") from None
    return message


def read_text(path: PathLike, message: M, what: str = "File") -> M:
    """Read a prototxt file (net, solver) into `message`."""
    raw = _read_bytes(path, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CaffeError(f"{os.fspath(path)}: not a text prototxt (byte {err.start} is not "
                         f"UTF-8); is it a binary .caffemodel?") from None
    return parse_text(text, message, os.fspath(path))


def read_binary(path: PathLike, message: M, what: str = "File") -> M:
    """Read a binary protobuf file (.caffemodel, .binaryproto, .solverstate)."""
    return parse_binary(_read_bytes(path, what), message,
                        f"{os.fspath(path)}: not a valid binary {message.DESCRIPTOR.name}",
                        "is it truncated, or a text prototxt?")


def parse_binary(raw: bytes, message: M, failure: str, hint: str) -> M:
    """Parse serialized bytes into `message`; bytes protobuf cannot decode
    raise "<failure> (<protobuf's reason>); <hint>"."""
    try:
        message.ParseFromString(raw)
    except DecodeError as err:
        raise CaffeError(f"{failure} ({err}); {hint}") from None
    return message


def write_text(path: PathLike, message: Message) -> None:
    with atomic_write(path) as handle:
        handle.write(text_format.MessageToString(message).encode("utf-8"))


def write_binary(path: PathLike, message: Message) -> None:
    with atomic_write(path) as handle:
        handle.write(message.SerializeToString())


def _token_at(text: str, line: int, col: int) -> str:
    """The token starting at 1-based (line, col), for error messages."""
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return "<end of file>"
    rest = lines[line - 1][max(col - 1, 0):].strip()
    if not rest:
        return "<end of line>"
    return rest.split()[0][:40]


def _unknown_fields(text: str, descriptor: Descriptor) -> list[tuple[int, str, str]]:
    """Every field name that `descriptor` (recursively) does not know, as
    (line, field, message type), so fork files fail with one complete message.
    A syntax error stops the scan; the real parser then reports it."""
    found: list[tuple[int, str, str]] = []
    tok = text_format.Tokenizer(text.splitlines(keepends=True))

    def skip_value() -> None:
        if tok.TryConsume("{") or tok.TryConsume("<"):
            skip_block()
        elif tok.TryConsume("["):
            while not tok.TryConsume("]"):
                if tok.AtEnd():
                    raise text_format.ParseError("unterminated list")
                skip_value()
                tok.TryConsume(",")
        else:
            tok.NextToken()
            while tok.token[:1] in ("'", '"'):  # adjacent string literals concatenate
                tok.NextToken()

    def skip_block() -> None:
        while not (tok.TryConsume("}") or tok.TryConsume(">")):
            if tok.AtEnd():
                raise text_format.ParseError("unterminated block")
            tok.NextToken()
            tok.TryConsume(":")
            skip_value()
            tok.TryConsume(",") or tok.TryConsume(";")

    def walk(desc: Descriptor, nested: bool) -> None:
        while not tok.AtEnd():
            if nested and (tok.TryConsume("}") or tok.TryConsume(">")):
                return
            line, name = tok._line + 1, tok.token
            tok.NextToken()
            field = desc.fields_by_name.get(name)
            tok.TryConsume(":")
            if field is None:
                found.append((line, name, desc.name))
                skip_value()
            elif field.type == FieldDescriptor.TYPE_MESSAGE and (
                    tok.TryConsume("{") or tok.TryConsume("<")):
                walk(field.message_type, True)
            else:
                skip_value()
            tok.TryConsume(",") or tok.TryConsume(";")

    try:
        walk(descriptor, False)
    except text_format.ParseError:
        pass
    return found

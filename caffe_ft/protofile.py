"""Reading and writing Caffe's protobuf files: prototxt, .caffemodel,
.binaryproto and .solverstate.

Every write is atomic (temp file in the same folder, then rename), so an
interrupted run never leaves a truncated model or snapshot behind. Every
read error names the path as given and, for text, the line, column and token.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from caffe_ft.errors import CaffeError

M = TypeVar("M", bound=Message)
# Deeper than any caffe.proto file needs, and protobuf's own limit for binary
# messages (io::CodedInputStream's default recursion limit).
MAX_NESTING = 100
# protobuf's Python wording for a non-repeated field given twice.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VALUE_START = re.compile(r"[A-Za-z0-9_\"'+.-]")
_REPEATED_SINGULAR = re.compile(
    r'Message type "(?P<owner>[^"]+)" should not have multiple "(?P<field>[^"]+)" fields\.')
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
    """Parse prototxt `text` into `message`, with Caffe-style errors naming `source`.

    Syntax is checked first, so a stray brace is reported as the syntax error
    it is; only a well-formed field name the schema lacks counts as a fork field.
    Parsing is protobuf's strict Parse, as Caffe's ReadProtoFromTextFile
    (TextFormat::Parse): a non-repeated field given twice is an error, where
    Merge would silently keep the last value."""
    _check_nesting(text, source)
    try:
        unknown = _unknown_fields(text, message.DESCRIPTOR)
    except text_format.ParseError as err:
        raise _located(_first_error(text, message, err), text, source) from None
    if unknown:
        lines: dict[tuple[str, str], list[str]] = {}
        for line, name, owner in unknown:
            lines.setdefault((owner, name), []).append(str(line))
        listed = "; ".join(f"{owner}.{name} (line {', '.join(at)})"
                           for (owner, name), at in lines.items())
        raise CaffeError(
            f"{source}: {len(lines)} field(s) not in BVLC caffe.proto, probably from a Caffe "
            f"fork: {listed}")
    return _parse(text, message, source)


def _parse(text: str, message: M, source: str) -> M:
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        raise _located(err, text, source) from None
    return message


def _first_error(text: str, message: Message,
                 found: text_format.ParseError) -> text_format.ParseError:
    """protobuf's reason for the first error in `text` (which may lie before
    the syntax error the scan `found`, e.g. a bad value), where protobuf can
    place it on a line; else the scan's."""
    try:
        text_format.Parse(text, message, allow_unknown_field=True)
    except text_format.ParseError as err:
        if err.GetLine():
            return err
    return found


def _check_nesting(text: str, source: str) -> None:
    """Refuse blocks nested deeper than MAX_NESTING before the recursive
    parsers see them, which would otherwise die with a RecursionError."""
    tok = text_format.Tokenizer(_lines(text))
    depth = 0
    while not tok.AtEnd():
        if tok.token in ("{", "<"):
            depth += 1
            if depth > MAX_NESTING:
                raise CaffeError(f"{source}:{tok._line + 1}:{tok._column + 1}: blocks nested "
                                 f"deeper than {MAX_NESTING} levels")
        elif tok.token in ("}", ">"):
            depth -= 1
        tok.NextToken()


def _located(err: text_format.ParseError, text: str, source: str) -> CaffeError:
    """protobuf's ParseError as "<source>:<line>:<col>: <reason> (at '<token>')",
    in Caffe's words where they differ."""
    line, col = err.GetLine(), err.GetColumn()
    detail = str(err)
    if line and detail.startswith(f"{line}:"):
        detail = detail.split(" : ", 1)[-1]
    lines = _lines(text)
    # The tokenizer prefixes some reasons with the line it is on (empty at the end).
    current = [lines[line - 1]] if line and 1 <= line <= len(lines) else []
    for prefix in current + [""]:
        detail = detail.removeprefix(f"'{prefix}': ")
    repeated = _REPEATED_SINGULAR.fullmatch(detail)
    if repeated:
        detail = (f'Non-repeated field "{repeated["field"]}" is specified multiple times '
                  f'(in {repeated["owner"]})')
    if not line:
        return CaffeError(f"{source}: {detail}")
    return CaffeError(f"{source}:{line}:{col}: {detail} (at '{_token_at(text, line, col)}')")


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


def _lines(text: str) -> list[str]:
    """Lines as protobuf's text parser numbers them: split at "\\n" only."""
    return text.split("\n")


def _token_at(text: str, line: int, col: int) -> str:
    """The token starting at 1-based (line, col), for error messages."""
    lines = _lines(text)
    if not 1 <= line <= len(lines):
        return "<end of file>"
    rest = lines[line - 1][max(col - 1, 0):].strip()
    if not rest:
        return "<end of line>"
    return rest.split()[0][:40]


def _unknown_fields(text: str, descriptor: Descriptor) -> list[tuple[int, str, str]]:
    """Every field name that `descriptor` (recursively) does not know, as
    (line, field, message type), so fork files fail with one complete message.
    Braces, field names and value tokens are checked as it goes: a stray
    brace or colon raises ParseError instead of passing for a field name."""
    found: list[tuple[int, str, str]] = []
    tok = text_format.Tokenizer(_lines(text))

    def fail(reason: str) -> text_format.ParseError:
        return text_format.ParseError(reason, tok._line + 1, tok._column + 1)

    def skip_value() -> None:
        if tok.TryConsume("{") or tok.TryConsume("<"):
            skip_block()
        elif tok.TryConsume("["):
            while not tok.TryConsume("]"):
                if tok.AtEnd():
                    raise fail('Expected "]"')
                skip_value()
                tok.TryConsume(",")
        elif _VALUE_START.match(tok.token):
            tok.NextToken()
            while tok.token[:1] in ("'", '"'):  # adjacent string literals concatenate
                tok.NextToken()
        else:
            raise fail(f"Expected a value, got {tok.token or 'end of file'}")

    def field_name() -> tuple[int, str]:
        if not _IDENTIFIER.fullmatch(tok.token):
            raise fail(f"Expected a field name, got {tok.token or 'end of file'}")
        line, name = tok._line + 1, tok.token
        tok.NextToken()
        return line, name

    def skip_block() -> None:
        while not (tok.TryConsume("}") or tok.TryConsume(">")):
            field_name()
            tok.TryConsume(":")
            skip_value()
            tok.TryConsume(",") or tok.TryConsume(";")

    def walk(desc: Descriptor, nested: bool) -> None:
        while nested or not tok.AtEnd():
            if nested and (tok.TryConsume("}") or tok.TryConsume(">")):
                return
            line, name = field_name()
            field = desc.fields_by_name.get(name)
            tok.TryConsume(":")
            if field is None:
                found.append((line, name, desc.name))
                skip_value()
            elif field.type != FieldDescriptor.TYPE_MESSAGE or tok.token == "[":
                skip_value()
            elif tok.TryConsume("{") or tok.TryConsume("<"):
                walk(field.message_type, True)
            else:
                raise fail(f'Expected "{{" after {name}')
            tok.TryConsume(",") or tok.TryConsume(";")

    walk(descriptor, False)
    return found

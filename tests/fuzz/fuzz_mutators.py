"""Mutations of a file's bytes: what a careless edit, a bad copy or a
truncated download does to a prototxt, caffemodel or solverstate.

Byte mutators apply to every file; line mutators only to text. A mutant
stacks one to three mutations, all drawn from a random.Random, so a mutant
is reproducible from its seed string alone.
"""
from __future__ import annotations

import random
import re
import struct
from collections.abc import Callable

Mutator = Callable[[bytes, random.Random], bytes]

# Numbers at the edges of Caffe's int32/uint32/int64/float fields, and past them.
EXTREME_NUMBERS = ("0", "-1", "2147483647", "2147483648", "-2147483649", "4294967296",
                   "9223372036854775808", "2000000000", "1000000", "1e38", "1e39", "-1e39",
                   "nan", "inf", "-inf", "1e-45", "0.0")
EXTREME_FLOATS = (float("nan"), float("inf"), float("-inf"), 3.4e38, -3.4e38, 1e-45)
_NUMBER = re.compile(rb"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def _span(data: bytes, rng: random.Random, longest: int = 8) -> tuple[int, int]:
    start = rng.randrange(len(data) + 1)
    return start, min(len(data), start + rng.randint(1, longest))


def delete_bytes(data: bytes, rng: random.Random) -> bytes:
    start, end = _span(data, rng)
    return data[:start] + data[end:]


def duplicate_bytes(data: bytes, rng: random.Random) -> bytes:
    start, end = _span(data, rng)
    return data[:end] + data[start:end] + data[end:]


def swap_bytes(data: bytes, rng: random.Random) -> bytes:
    if len(data) < 2:
        return data
    i, j = sorted(rng.sample(range(len(data)), 2))
    return data[:i] + data[j:j + 1] + data[i + 1:j] + data[i:i + 1] + data[j + 1:]


def overwrite_byte(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data) + 1)]


def delete_line(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    del lines[rng.randrange(len(lines))]
    return b"\n".join(lines)


def duplicate_line(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    return b"\n".join(lines)


def swap_lines(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def drop_punctuation(data: bytes, rng: random.Random) -> bytes:
    """Delete one brace, colon or quote: the edits a hand-written prototxt gets wrong."""
    spots = [m.start() for m in re.finditer(rb'[{}:"]', data)]
    if not spots:
        return data
    i = rng.choice(spots)
    return data[:i] + data[i + 1:]


def extreme_number(data: bytes, rng: random.Random) -> bytes:
    numbers = list(_NUMBER.finditer(data))
    if not numbers:
        return data
    found = rng.choice(numbers)
    return data[:found.start()] + rng.choice(EXTREME_NUMBERS).encode() + data[found.end():]


def deep_nesting(data: bytes, rng: random.Random) -> bytes:
    """Blocks nested past any parser's recursion limit, at a line start."""
    lines = data.split(b"\n")
    depth = rng.choice((5, 150, 1000))
    lines.insert(rng.randrange(len(lines) + 1), b"layer { " * depth + b"}" * depth)
    return b"\n".join(lines)


def extreme_float(data: bytes, rng: random.Random) -> bytes:
    """A float32 in a blob's data (or any 4 bytes) set to NaN, inf or an edge value."""
    if len(data) < 4:
        return data
    i = rng.randrange(len(data) - 3)
    return data[:i] + struct.pack("<f", rng.choice(EXTREME_FLOATS)) + data[i + 4:]


def huge_varint(data: bytes, rng: random.Random) -> bytes:
    """A varint (a length, a count, an int field) overwritten by a huge or overlong one."""
    i = rng.randrange(len(data) + 1)
    varint = rng.choice((b"\xff\xff\xff\xff\x0f", b"\xff" * 9 + b"\x01", b"\xff" * 11))
    return data[:i] + varint + data[i + len(varint):]


BYTE_MUTATORS: tuple[Mutator, ...] = (delete_bytes, duplicate_bytes, swap_bytes,
                                      overwrite_byte, truncate)
TEXT_MUTATORS: tuple[Mutator, ...] = BYTE_MUTATORS + (
    delete_line, duplicate_line, swap_lines, drop_punctuation, extreme_number,
    extreme_number, deep_nesting)
BINARY_MUTATORS: tuple[Mutator, ...] = BYTE_MUTATORS + (extreme_float, huge_varint)


def mutate(data: bytes, binary: bool, rng: random.Random) -> tuple[bytes, list[str]]:
    """`data` with one to three mutations stacked, and their names."""
    mutators = BINARY_MUTATORS if binary else TEXT_MUTATORS
    applied = []
    for _ in range(rng.randint(1, 3)):
        mutator = rng.choice(mutators)
        data = mutator(data, rng)
        applied.append(mutator.__name__)
    return data, applied

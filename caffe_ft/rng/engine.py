"""boost::mt19937 streams. numpy's MT19937 bit generator is the same engine;
seeding it through its state with the reference init_genrand recurrence
gives exactly the stream of `boost::mt19937(seed)`."""
from __future__ import annotations

from collections.abc import MutableSequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

STATE_WORDS = 624
# Raw draws are pulled in blocks: one numpy call per draw would cost more
# than the draw itself.
_BLOCK = 1024
_REPLAY = 1 << 20


def init_genrand(seed: int) -> np.ndarray:
    """The MT19937 state that `mt19937(seed)` starts from (Knuth's recurrence)."""
    key = np.empty(STATE_WORDS, np.uint32)
    value = seed & 0xFFFFFFFF
    key[0] = value
    for i in range(1, STATE_WORDS):
        value = (1812433253 * (value ^ (value >> 30)) + i) & 0xFFFFFFFF
        key[i] = value
    return key


def engine_at(key: np.ndarray, position: int,
              engine: np.random.MT19937 | None = None) -> np.random.MT19937:
    """An engine whose next draw is word `position` of `key` (624: the
    state is regenerated first, as right after seeding): `engine` set
    there, or a new one."""
    engine = np.random.MT19937(0) if engine is None else engine
    engine.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": position}}
    return engine


class RawCursor:
    """The raw 32-bit draws of an engine, read ahead in blocks and consumed
    exactly: `peek` shows the draws to come, `take` consumes them, and
    `engine_after()` is the engine moved on by exactly the draws consumed,
    so a sampler that rejects and redraws leaves the stream where boost's
    would."""

    def __init__(self, engine: np.random.MT19937) -> None:
        self._engine = engine
        # Where the engine stood before its first read ahead, and the draws
        # consumed by then: engine_after replays from there. Read when first
        # needed: a state read costs more than a small sampler's draws.
        self._start: tuple[dict[str, Any], int] | None = None
        self._ahead = np.empty(0, np.uint32)
        self._next = 0
        self.consumed = 0

    def peek(self, n: int) -> np.ndarray:
        """The next n draws (at least), without consuming them."""
        if len(self._ahead) - self._next < n:
            if self._start is None:
                self._start = (self._engine.state, self.consumed + len(self._ahead) - self._next)
            fresh = self._engine.random_raw(max(n, _BLOCK)).astype(np.uint32)
            self._ahead = np.concatenate([self._ahead[self._next:], fresh])
            self._next = 0
        return self._ahead[self._next:]

    def take(self, n: int) -> np.ndarray:
        if self._next == len(self._ahead):
            # Nothing read ahead: exactly n draws, so the engine needs no replay.
            self.consumed += n
            return self._engine.random_raw(n).astype(np.uint32)
        draws = self.peek(n)[:n]
        self._next += n
        self.consumed += n
        return draws

    def one(self) -> int:
        return int(self.take(1)[0])

    def engine_after(self) -> np.random.MT19937:
        if self._next == len(self._ahead):
            return self._engine  # nothing read ahead is left unconsumed
        # MT19937 cannot step back over the draws read ahead: replay from
        # where it stood before the first read ahead.
        assert self._start is not None
        start, consumed_before = self._start
        engine = np.random.MT19937(0)
        engine.state = start
        skip = self.consumed - consumed_before
        while skip:
            step = min(skip, _REPLAY)  # in blocks: the draws are dropped
            engine.random_raw(step)
            skip -= step
        return engine


class CaffeRNG:
    """The raw 32-bit stream of boost::mt19937(seed), with a draw counter so a
    worker process can jump to any position of the stream."""

    def __init__(self, seed: int) -> None:
        self.seed = seed & 0xFFFFFFFF
        self.reset()

    def reset(self) -> None:
        """Back to the first draw of the stream."""
        self._engine = engine_at(init_genrand(self.seed), STATE_WORDS)
        self._block = np.empty(0, np.uint64)
        self._next = 0
        self.position = 0  # draws taken since the start of the stream

    def raw(self) -> int:
        """The next 32-bit output of the engine."""
        if self._next == len(self._block):
            self._block = self._engine.random_raw(_BLOCK)
            self._next = 0
        value = int(self._block[self._next])
        self._next += 1
        self.position += 1
        return value

    def rand(self, n: int) -> int:
        """DataTransformer::Rand(n): a raw draw modulo n (with its slight bias)."""
        return self.raw() % n

    def seek(self, position: int) -> None:
        """Make `position` the next draw: skip forward, or restart and skip when
        it lies behind (a worker that has to serve an earlier batch)."""
        if position < self.position:
            self.reset()
        skip = position - self.position
        in_block = min(skip, len(self._block) - self._next)
        self._next += in_block
        skip -= in_block
        while skip:
            # Whole blocks are generated and dropped; MT19937 has no cheap jump by n.
            step = min(skip, _REPLAY)
            self._engine.random_raw(step)
            skip -= step
        self.position = position

    def uniform_int(self, low: int, high: int) -> int:
        """boost::uniform_int<>(low, high) on a 32-bit engine: the raw draw is
        divided into 2**32 // (range + 1) sized buckets, and draws that land
        past the last full bucket are rejected."""
        span = high - low
        if span == 0:
            return low
        if span >= 0xFFFFFFFF:
            raise ValueError("CaffeRNG.uniform_int supports ranges below 2**32")
        bucket = (1 << 32) // (span + 1)
        while True:
            result = self.raw() // bucket
            if result <= span:
                return low + result

    def shuffle(self, items: MutableSequence[T]) -> None:
        """caffe::shuffle in place: Fisher-Yates from the last element down,
        swapping i with uniform_int(0, i)."""
        for i in range(len(items) - 1, 0, -1):
            j = self.uniform_int(0, i)
            items[i], items[j] = items[j], items[i]

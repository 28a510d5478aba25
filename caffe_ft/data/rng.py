"""Caffe's data-side random streams: boost::mt19937 and the two ways Caffe
draws from it (DataTransformer's Rand(n) and caffe::shuffle).

numpy's MT19937 bit generator is the same engine; seeding it through its
state with the reference init_genrand recurrence gives exactly the stream of
`boost::mt19937(seed)`, so with Caffe's seed the draws would be Caffe's own.
Caffe derives that seed from its global RNG, which also feeds the fillers and
cannot be replayed here; `seed_from_torch` takes one from torch's generator
instead, so `torch.manual_seed` makes the data pipeline repeatable as it makes
the fillers repeatable.
"""
from __future__ import annotations

from collections.abc import MutableSequence
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")

_STATE_WORDS = 624
# Raw draws are pulled in blocks: one numpy call per draw would cost more
# than the draw itself.
_BLOCK = 1024


def _init_genrand(seed: int) -> np.ndarray:
    """The MT19937 state that `mt19937(seed)` starts from (Knuth's recurrence)."""
    key = np.empty(_STATE_WORDS, np.uint32)
    value = seed & 0xFFFFFFFF
    key[0] = value
    for i in range(1, _STATE_WORDS):
        value = (1812433253 * (value ^ (value >> 30)) + i) & 0xFFFFFFFF
        key[i] = value
    return key


def seed_from_torch() -> int:
    """A 32-bit seed drawn from torch's default generator (Caffe draws its
    data seeds with caffe_rng_rand() from its global generator)."""
    return int(torch.randint(0, 2**32, (1,), dtype=torch.int64).item())


class CaffeRNG:
    """The raw 32-bit stream of boost::mt19937(seed), with a draw counter so a
    worker process can jump to any position of the stream."""

    def __init__(self, seed: int) -> None:
        self.seed = seed & 0xFFFFFFFF
        self._engine = np.random.MT19937(0)
        self.reset()

    def reset(self) -> None:
        """Back to the first draw of the stream."""
        self._engine.state = {"bit_generator": "MT19937",
                              "state": {"key": _init_genrand(self.seed), "pos": _STATE_WORDS}}
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
            step = min(skip, 1 << 20)
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

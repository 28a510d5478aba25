"""Caffe's data-side random streams: boost::mt19937, the two ways Caffe
draws from it (DataTransformer's Rand(n) and caffe::shuffle), and the seeds
data layers take from Caffe's global generator.

numpy's MT19937 bit generator is the same engine; seeding it through its
state with the reference init_genrand recurrence gives exactly the stream of
`boost::mt19937(seed)`, so with Caffe's seed the draws are Caffe's own.

Caffe's global generator (Caffe::set_random_seed, caffe_rng_rand()) is
torch's default generator here: it is an mt19937 seeded the same way, so
`set_random_seed` → `torch.manual_seed` gives the same 32-bit outputs, and a
data layer's seeds are Caffe's when it takes exactly Caffe's draws in Caffe's
order. The fillers draw from that generator too, but torch's distributions
take other counts of outputs than boost's, so a data layer set up after a
random filler gets other seeds than Caffe's.
"""
from __future__ import annotations

from collections.abc import MutableSequence
from dataclasses import dataclass
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


def _global_pair() -> tuple[int, int]:
    """The next two caffe_rng_rand() draws, in order: a full-range int64
    random_() is the generator's next two 32-bit outputs, the first in the
    high word (the only lossless draw torch offers; a single 32-bit output
    always comes reduced modulo something)."""
    value = int(torch.empty((), dtype=torch.int64).random_(-2**63, None)) & 0xFFFFFFFFFFFFFFFF
    return value >> 32, value & 0xFFFFFFFF


def _skip_global_draw() -> None:
    """Consume one caffe_rng_rand() draw whose value nobody uses (a small
    range takes a single 32-bit output; from 2**31 on, torch takes two)."""
    torch.randint(0, 2, ())


@dataclass(frozen=True)
class PrefetchSeeds:
    """The seeds a prefetching data layer keeps from its setup draws."""
    transformer: int  # DataTransformer's generator; 0 when it has none
    layer: list[int]  # the layer's own DataLayerSetUp draws, in order


def prefetching_layer_seeds(transformer_needs_rng: bool, layer_draws: int) -> PrefetchSeeds:
    """Take the caffe_rng_rand() draws a BasePrefetchingDataLayer makes while
    it sets up, in Caffe's order: DataTransformer::InitRand (only when the
    transformer needs a generator), the layer's `layer_draws` own draws in
    DataLayerSetUp, InitRand again (the seed the transformer keeps: the
    first one is replaced), and StartInternalThread's seed for the prefetch
    thread, which no data path uses. Taking every one of them keeps the
    seeds of the layers set up after this one Caffe's."""
    wanted = 2 * int(transformer_needs_rng) + layer_draws
    values: list[int] = []
    while len(values) < wanted:
        values.extend(_global_pair())
    if len(values) == wanted:
        _skip_global_draw()  # the thread's draw; else it was the last pair's second half
    own = values[int(transformer_needs_rng):][:layer_draws]
    return PrefetchSeeds(values[wanted - 1] if transformer_needs_rng else 0, own)


def seed_outside_caffe_rng() -> int:
    """A seed for a shuffle that Caffe does not draw from its own generator
    (HDF5Data's std::random_shuffle uses C's rand()): it takes no draw, so the
    layers set up after it keep Caffe's seeds, and set_random_seed still
    makes it repeatable."""
    return torch.initial_seed() & 0xFFFFFFFF


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

"""C's rand() as glibc makes it, which std::random_shuffle draws from: the
only randomness Caffe takes outside boost (HDF5Data's shuffles). Caffe never
calls srand(), so a Caffe process starts from glibc's default seed 1, and
every shuffle of every HDF5Data layer continues the one process-wide stream.

glibc's default generator (TYPE_3) is an additive lagged Fibonacci
generator: r[i] = r[i-3] + r[i-31] mod 2**32 from i = 34, where r[0..30]
is a Lehmer (16807) sequence from the seed and r[31..33] repeat r[0..2];
the first 310 sums are dropped, and rand() is r[i] >> 1.
"""
from __future__ import annotations

from collections.abc import MutableSequence
from typing import TypeVar

T = TypeVar("T")

_LAG_SHORT, _LAG_LONG = 3, 31
_DROPPED = 310


class GlibcRand:
    def __init__(self, seed: int = 1) -> None:
        self.srand(seed)

    def srand(self, seed: int) -> None:
        seed &= 0xFFFFFFFF
        state = [seed if seed else 1]
        for _ in range(1, _LAG_LONG):
            # Lehmer's 16807 · r mod (2**31 - 1), on the signed 32-bit word.
            word = (16807 * _signed(state[-1])) % 2147483647
            state.append(word & 0xFFFFFFFF)
        # r[31..33] repeat r[0..2]; the window holds the last 31 values of r.
        self._window = state[_LAG_SHORT:] + state[:_LAG_SHORT]
        for _ in range(_DROPPED):
            self._step()

    def _step(self) -> int:
        window = self._window
        value = (window[-_LAG_SHORT] + window[-_LAG_LONG]) & 0xFFFFFFFF
        window.append(value)
        del window[0]
        return value

    def rand(self) -> int:
        return self._step() >> 1

    def random_shuffle(self, items: MutableSequence[T]) -> None:
        """libstdc++'s std::random_shuffle: from the second element on, swap
        element i with element rand() % (i + 1)."""
        for i in range(1, len(items)):
            j = self.rand() % (i + 1)
            items[i], items[j] = items[j], items[i]


def _signed(word: int) -> int:
    return word - (1 << 32) if word & 0x80000000 else word


# The process's one stream, as C's.
C_RAND = GlibcRand()

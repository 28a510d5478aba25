"""Caffe's global generator (Caffe::rng_stream(), what caffe_rng_rand() and
the fillers draw from) is torch's default CPU generator here. Both are an
mt19937 seeded the same way, so Caffe::set_random_seed(s) is
torch.manual_seed(s), and `caffe_rng()` lends that stream, at its current
position, to a sampler that takes exactly Caffe's draws."""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import numpy as np
import torch

from caffe_ft.errors import CaffeError
from caffe_ft.rng.engine import STATE_WORDS, CaffeRNG, RawCursor, engine_at

# torch's CPU generator state (CPUGeneratorImplState): int64 seed, int32 left,
# int32 seeded, uint64 next, 624 uint64 state words, then normal-sampling caches.
_STATE_BYTES = 5056
_LEFT = slice(8, 12)
_NEXT = slice(16, 24)
_WORDS = slice(24, 24 + 8 * STATE_WORDS)


def _read_state() -> tuple[np.ndarray, np.ndarray]:
    state = torch.get_rng_state().numpy().copy()
    if state.size != _STATE_BYTES:
        raise CaffeError(f"torch {torch.__version__} keeps its CPU generator state in "
                         f"{state.size} bytes, not the {_STATE_BYTES} Caffe's random "
                         f"draws are read from")
    return state, state[_WORDS].view(np.uint64).astype(np.uint32)


@functools.cache
def _check_layout() -> None:
    """Once per process: the state read here is torch's stream, and a state
    written here is where torch goes on (a torch that kept the size but
    moved the fields would otherwise give other numbers silently)."""
    saved = torch.get_rng_state()
    try:
        torch.manual_seed(5489)
        reference = CaffeRNG(5489)
        with _cursor() as stream:
            ours = [int(v) for v in stream.take(3)]
        pair = int(torch.empty((), dtype=torch.int64).random_(-2**63, None)) & (2**64 - 1)
        expected = [reference.raw() for _ in range(5)]
        if ours + [pair >> 32, pair & 0xFFFFFFFF] != expected:
            raise CaffeError(f"torch {torch.__version__} keeps its CPU generator state in a "
                             f"layout Caffe's random draws cannot be read from")
    finally:
        torch.set_rng_state(saved)


@contextlib.contextmanager
def caffe_rng() -> Iterator[RawCursor]:
    """The global stream, for the block's draws; on exit torch's generator
    has moved on by exactly the draws taken."""
    _check_layout()
    with _cursor() as stream:
        yield stream


# Engines lent to the blocks and taken back: making an MT19937 costs more
# than the draws of a Dropout layer on a small batch.
_SPARE_ENGINES: list[np.random.MT19937] = []


@contextlib.contextmanager
def _cursor() -> Iterator[RawCursor]:
    state, key = _read_state()
    # torch regenerates when `left` counts down to 0: after k draws of a
    # block it holds 625 - k, the position numpy's engine calls k.
    left = int(state[_LEFT].view(np.int32)[0])
    engine = engine_at(key, STATE_WORDS + 1 - left,
                       _SPARE_ENGINES.pop() if _SPARE_ENGINES else None)
    try:
        cursor = RawCursor(engine)
        yield cursor
        if not cursor.consumed:
            return
        after = cursor.engine_after().state["state"]
    finally:
        _SPARE_ENGINES.append(engine)
    position = int(after["pos"])
    state[_WORDS] = np.asarray(after["key"], np.uint64).view(np.uint8)
    state[_LEFT] = np.array([STATE_WORDS + 1 - position], np.int32).view(np.uint8)
    state[_NEXT] = np.array([position], np.uint64).view(np.uint8)
    torch.set_rng_state(torch.from_numpy(state))

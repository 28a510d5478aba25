"""The boost distributions Caffe samples from (math_functions.cpp's
caffe_rng_uniform, caffe_rng_gaussian and caffe_rng_bernoulli), in float32,
on a RawCursor, taking exactly boost's draws: the same values from the same
stream position, and the stream left where boost leaves it.

Rejections make the number of draws per value vary, so each sampler works
out, for every upcoming draw at once, what an attempt starting there gives,
and walks through them consuming what boost would.
"""
from __future__ import annotations

import functools

import numpy as np

from caffe_ft.rng.engine import RawCursor
from caffe_ft.rng.ziggurat import exponential_table, normal_table

f32 = np.float32
_TWO_32 = f32(4294967296.0)  # float(mt19937::max() - min()) + 1 rounds to 2**32
_TWO_24 = f32(16777216.0)
# Draws looked at per pass of the ziggurat's vectorized tests, and the room
# after them for the draws the last attempts go on to take.
_WINDOW = 1 << 16
_HEADROOM = 64
# Draws taken at a time by the one-draw-per-value samplers, to bound memory.
_CHUNK = 1 << 20


def uniform_real(cursor: RawCursor, n: int, low: float, high: float) -> np.ndarray:
    """boost::uniform_real<float>(low, high): u / 2**32 * (high - low) + low
    in float, redrawn when it reaches high. A range wider than float holds
    is drawn at half scale and doubled, as boost does."""
    low, high = f32(low), f32(high)
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"uniform_real needs finite low < high, got [{low}, {high})")
    if high / f32(2) - low / f32(2) > np.finfo(np.float32).max / f32(2):
        return f32(2) * uniform_real(cursor, n, low / f32(2), high / f32(2))
    span = f32(high - low)
    out = np.empty(n, np.float32)
    done = 0
    while done < n:
        count = min(n - done, _CHUNK)
        values = (cursor.take(count).astype(np.float32) / _TWO_32) * span + low
        # Only the accepted ones count; each rejected draw costs one more.
        kept = values[values < high]
        out[done:done + len(kept)] = kept
        done += len(kept)
    return out


class _OutOfDraws(Exception):
    """A scalar step ran past the draws looked at: look at more."""


class _Reader:
    """Scalar steps' view of draws already looked at, from `index` on."""

    def __init__(self, draws: np.ndarray, index: int) -> None:
        self.draws = draws
        self.index = index

    def one(self) -> int:
        if self.index >= len(self.draws):
            raise _OutOfDraws
        self.index += 1
        return int(self.draws[self.index - 1])


Source = RawCursor | _Reader


def uniform_01(source: Source) -> np.float32:
    """boost::uniform_01<float>: u · 2**-32, redrawn when it rounds to 1."""
    while True:
        value = f32(source.one()) / _TWO_32
        if value < f32(1):
            return value


def bernoulli(cursor: RawCursor, n: int, p: float,
              real: type[np.floating] = np.float32) -> np.ndarray:
    """boost::bernoulli_distribution<real>(p): u ≤ p · (2**32 - 1) in
    `real`, one draw per value; p = 0 takes no draw."""
    p = real(p)
    out = np.zeros(n, bool)
    if p == 0:
        return out
    for start in range(0, n, _CHUNK):
        count = min(n - start, _CHUNK)
        out[start:start + count] = cursor.take(count).astype(real) <= p * real(0xFFFFFFFF)
    return out


def _wedge_accepts(layer: np.ndarray, x: np.ndarray, y01: np.ndarray) -> np.ndarray:
    """The normal ziggurat's test for attempts that fell outside layer i's
    rectangle core, with y01 their uniform_01 draw, in boost's float steps.
    Convex layers (x_i ≥ 1) lie below the chord and above the tangent at
    x_i; concave ones the other way round."""
    table = normal_table()
    x_i = table.x[layer].astype(np.float32)
    y_i = table.y[layer].astype(np.float32)
    y = y_i + y01 * (table.y[layer + 1] - table.y[layer]).astype(np.float32)
    chord = (table.x[layer] - table.x[layer + 1]).astype(np.float32) * y01 - (x_i - x)
    tangent = y - (y_i + (x_i - x) * y_i * x_i)
    convex = table.x[layer] >= 1
    upper = np.where(convex, chord, tangent)
    lower = np.where(convex, tangent, chord)
    return (upper < 0) & ((lower < 0) | (y < _expf(-(x * x / f32(2)))))


def _normal_attempt(source: Source) -> np.float32 | None:
    """One whole attempt of the normal ziggurat, draw by draw; None when it
    is rejected. Its first draw is generate_int_float_pair<float, 8> on a
    32-bit engine: the low bit is the sign, the next 7 the layer, the high
    24 the fraction of the layer's width."""
    widths, quick_below = _normal_float_tables()
    draw = source.one()
    layer = (draw >> 1) & 0x7F
    x = f32(draw >> 8) / _TWO_24 * widths[layer]
    sign = f32(1) if draw & 1 else f32(-1)
    if x < quick_below[layer]:
        return x * sign
    if layer == 0:
        return _normal_tail(source) * sign
    y01 = np.array([uniform_01(source)], np.float32)
    accepted = _wedge_accepts(np.array([layer]), np.array([x], np.float32), y01)[0]
    return x * sign if accepted else None


def normal(cursor: RawCursor, n: int, mean: float, sigma: float) -> np.ndarray:
    """boost::normal_distribution<float>(mean, sigma): boost's ziggurat
    (128 layers, a random sign from the bucket's low bit), then
    value · sigma + mean in float."""
    out = np.empty(n, np.float32)
    done = 0
    while done < n:
        view = min(n - done, _WINDOW) + _HEADROOM
        values, used = _normal_window(cursor.peek(view)[:view], n - done)
        if not used:
            # An attempt right at the start needs more draws than the headroom.
            value = _normal_attempt(cursor)
            values = np.array([] if value is None else [value], np.float32)
        else:
            cursor.take(used)
        out[done:done + len(values)] = values
        done += len(values)
    out *= f32(sigma)
    out += f32(mean)
    return out


@functools.cache
def _normal_float_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per layer i: float(x_i), the factor of an attempt's fraction, and the
    least float ≥ x_(i+1), so that a float x < x_(i+1) (the quick test, in
    double) is x < that bound in float."""
    table = normal_table()
    bound = table.x[1:].astype(np.float32)
    below = bound.astype(np.float64) < table.x[1:]
    bound[below] = np.nextafter(bound[below], np.float32(np.inf))
    return table.x[:-1].astype(np.float32), bound


def _normal_window(draws: np.ndarray, wanted: int) -> tuple[np.ndarray, int]:
    """Up to `wanted` values from the draws looked at, and the draws they
    used. Every draw is first treated as an attempt's start: about 99% pass
    the quick test (value x · sign, one draw). The others take the next draw
    as their uniform_01 (two draws in all) and are accepted or not, so in a
    run of consecutive slow draws every other one starts an attempt. Rarely
    (the tail, or a uniform_01 that rounds to 1) an attempt takes other
    draws: those run draw by draw, and the run the walk lands in after one
    starts its alternation again there."""
    widths, quick_below = _normal_float_tables()
    starts = len(draws) - _HEADROOM  # attempts start here; the rest is room for their draws
    layer = (draws >> 1) & 0x7F
    x = (draws >> 8).astype(np.float32)
    x /= _TWO_24
    x *= widths[layer]
    # The bucket's low bit is the sign: set the float's sign bit where it is 0.
    values = (x.view(np.uint32) | ((~draws & 1) << 31)).view(np.float32)
    slow = np.flatnonzero(x[:starts] >= quick_below[layer[:starts]])
    y01 = draws[slow + 1].astype(np.float32) / _TWO_32
    two = (layer[slow] != 0) & (y01 < f32(1))
    run_start = np.ones(len(slow), bool)
    run_start[1:] = slow[1:] != slow[:-1] + 1
    run_first = np.flatnonzero(run_start)
    run_of = np.cumsum(run_start) - 1
    attempt = (np.arange(len(slow)) - run_first[run_of]) % 2 == 0
    dropped = np.zeros(len(draws), bool)  # draws used without giving a value
    ends: dict[int, int] = {}  # where each draw-by-draw attempt's draws end
    end = starts
    for k in np.flatnonzero(~two).tolist():
        if not attempt[k]:
            continue  # an earlier attempt's draw
        at = int(slow[k])
        reader = _Reader(draws, at)
        try:
            value = _normal_attempt(reader)
        except _OutOfDraws:
            end = at  # start this attempt again with more draws in view
            break
        ends[at] = reader.index
        dropped[at + 1:reader.index] = True
        if value is None:
            dropped[at] = True
        else:
            values[at] = value
        resume = int(np.searchsorted(slow, reader.index))
        attempt[k + 1:resume] = False
        if resume < len(slow) and not run_start[resume]:
            run = run_of[resume] + 1
            stop = int(run_first[run]) if run < len(run_first) else len(slow)
            attempt[resume:stop] = np.arange(stop - resume) % 2 == 0
    pairs = attempt & two & (slow < end)
    wedges = slow[pairs]
    dropped[wedges + 1] = True
    dropped[wedges[~_wedge_accepts(layer[wedges], x[wedges], y01[pairs])]] = True
    two_at = np.zeros(len(draws), bool)
    two_at[wedges] = True
    made = np.cumsum(~dropped[:end])
    if end and made[-1] >= wanted:
        last = int(np.searchsorted(made, wanted))
        used = ends.get(last, last + 1 + int(two_at[last]))
    else:
        # Every attempt starting before `end` is in: the last may reach past it.
        used = max(end + int(end > 0 and two_at[end - 1]), max(ends.values(), default=0))
    return values[:used][~dropped[:used]], used


def _normal_tail(source: Source) -> np.float32:
    """Beyond R: x from Exp(R), y from Exp(1), accepted when 2y > x²."""
    start = f32(normal_table().x[1])
    while True:
        x = exponential(source) / start
        y = exponential(source)
        if f32(2) * y > x * x:
            return x + start


def exponential(source: Source) -> np.float32:
    """boost's unit exponential<float>: a 256-layer ziggurat whose base
    layer's tail repeats the whole distribution, shifted by R."""
    table = exponential_table()
    tx, ty = table.x, table.y
    shift = f32(0)
    while True:
        draw = source.one()
        fraction = f32(draw >> 8) / _TWO_24
        i = draw & 0xFF
        x = fraction * f32(tx[i])
        if x < f32(tx[i + 1]):
            return shift + x
        if i == 0:
            shift += f32(tx[1])
            continue
        y01 = uniform_01(source)
        y = f32(ty[i]) + y01 * f32(ty[i + 1] - ty[i])
        upper = f32(tx[i] - tx[i + 1]) * y01 - (f32(tx[i]) - x)
        lower = y - (f32(ty[i + 1]) + (f32(tx[i + 1]) - x) * f32(ty[i + 1]))
        if upper < 0 and (lower < 0 or y < _expf(-x)):
            return x + shift


def _expf(value: np.float32 | np.ndarray) -> np.float32 | np.ndarray:
    """std::exp on floats: exp rounded to float (glibc's expf is within
    half an ulp but for ties this never meets)."""
    return np.exp(np.asarray(value, np.float64)).astype(np.float32)[()]

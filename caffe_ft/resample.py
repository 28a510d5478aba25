"""The resampling pycaffe's caffe.io delegates to scikit-image and SciPy,
restated in numpy so caffe_ft.io gives pycaffe's numbers without either
package: skimage.transform.resize (a Gaussian anti-aliasing blur when
shrinking, then scipy.ndimage.zoom on the pixel grid with zero padding, then
a clip to the input's range) and scipy.ndimage.zoom's corner-aligned mode.

Interpolation orders 0 (nearest), 1 (linear) and 3 (cubic B-spline, with
ndimage's spline prefilter) are supported; ndimage computes in double and
rounds once to the input's type, and so do we.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from caffe_ft.errors import CaffeError

ORDERS = (0, 1, 3)
# The cubic B-spline's prefilter pole, and the zeros ndimage pads each side
# before prefiltering in 'grid-constant' mode (so the mirror boundary rule
# of the recursive filter only touches the padding).
_POLE = math.sqrt(3.0) - 2.0
_GRID_CONSTANT_PAD = 12
# ndimage.gaussian_filter's default kernel radius, in standard deviations.
_TRUNCATE = 4.0


def skimage_resize(image: np.ndarray, height: int, width: int, order: int) -> np.ndarray:
    """skimage.transform.resize(image, (height, width), order, mode='constant')
    of an H×W×K float image whose values lie in [0, 1]."""
    _check_order(order)
    factors = (image.shape[0] / height, image.shape[1] / width)
    blurred = image
    if height < image.shape[0] or width < image.shape[1]:
        # skimage's default anti-aliasing when any axis shrinks.
        blurred = gaussian_filter(image, [max(0.0, (f - 1) / 2) for f in factors])
    out = blurred.astype(np.float64)
    if order > 1:
        pad = [(_GRID_CONSTANT_PAD, _GRID_CONSTANT_PAD)] * 2 + [(0, 0)]
        out = _spline_coefficients(_spline_coefficients(np.pad(out, pad), 0), 1)
    shift = _GRID_CONSTANT_PAD if order > 1 else 0
    for axis, (size, factor) in enumerate(zip((height, width), factors)):
        # grid_mode: pixel k's centre k + 0.5 maps to (k + 0.5) * factor.
        coords = (np.arange(size) + 0.5) * factor - 0.5 + shift
        out = _interpolate(out, axis, coords, order, mirror=False)
    return np.clip(out.astype(image.dtype), image.min(), image.max())


def ndimage_zoom(image: np.ndarray, height: int, width: int, order: int) -> np.ndarray:
    """scipy.ndimage.zoom(image, (h'/h, w'/w, 1), order) of an H×W×K float
    image: corners map to corners, taps past an edge mirror back."""
    _check_order(order)
    out = image.astype(np.float64)
    if order > 1:
        out = _spline_coefficients(_spline_coefficients(out, 0), 1)
    for axis, size in enumerate((height, width)):
        step = (image.shape[axis] - 1) / (size - 1) if size > 1 else 1.0
        out = _interpolate(out, axis, np.arange(size) * step, order, mirror=True)
    return out.astype(image.dtype)


def gaussian_filter(image: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """scipy.ndimage.gaussian_filter with zeros past the edges, axis by axis,
    rounding to the image's type after each axis as ndimage does."""
    out = image
    for axis, sigma in enumerate(sigmas):
        if sigma <= 1e-15:
            continue
        radius = int(_TRUNCATE * sigma + 0.5)
        taps = np.exp(-0.5 / (sigma * sigma) * np.arange(-radius, radius + 1) ** 2.0)
        taps /= taps.sum()
        pad = [(radius, radius) if a == axis else (0, 0) for a in range(out.ndim)]
        padded = np.moveaxis(np.pad(out.astype(np.float64), pad), axis, 0)
        size = out.shape[axis]
        summed = sum(weight * padded[k:k + size] for k, weight in enumerate(taps))
        out = np.moveaxis(summed, 0, axis).astype(image.dtype)
    return out


def _check_order(order: int) -> None:
    if order not in ORDERS:
        raise CaffeError(f"interp_order {order} is not supported (supported: "
                         f"{', '.join(map(str, ORDERS))})")


def _spline_coefficients(values: np.ndarray, axis: int) -> np.ndarray:
    """ndimage.spline_filter1d (order 3, mirror boundary) along `axis`: the
    coefficients whose cubic B-spline passes through `values`."""
    c = np.moveaxis(values, axis, 0).copy()
    n = c.shape[0]
    if n == 1:
        return values
    z = _POLE
    c *= (1.0 - z) * (1.0 - 1.0 / z)
    # Causal pass, started from the mirrored line's infinite sum.
    z_last = z ** (n - 1)
    start = c[0] + z_last * c[n - 1]
    z_i = z
    for i in range(1, n - 1):
        start = start + z_i * (c[i] + z_last * c[n - 1 - i])
        z_i *= z
    c[0] = start / (1.0 - z_last * z_last)
    for j in range(1, n):
        c[j] += z * c[j - 1]
    # Anti-causal pass.
    c[n - 1] = (z * c[n - 2] + c[n - 1]) * z / (z * z - 1.0)
    for j in range(n - 2, -1, -1):
        c[j] = z * (c[j + 1] - c[j])
    return np.moveaxis(c, 0, axis)


def _interpolate(values: np.ndarray, axis: int, coords: np.ndarray, order: int,
                 mirror: bool) -> np.ndarray:
    """`values` sampled at `coords` along `axis` by ndimage's order-`order`
    spline; taps past an edge mirror back (mirror) or read zero."""
    n = values.shape[axis]
    if order == 0:
        taps = [(np.floor(coords + 0.5), np.ones_like(coords))]
    elif order == 1:
        low = np.floor(coords)
        t = coords - low
        taps = [(low, 1.0 - t), (low + 1, t)]
    else:
        low = np.floor(coords)
        t = coords - low
        u = 1.0 - t
        taps = [(low - 1, u ** 3 / 6.0), (low, (3.0 * t ** 3 - 6.0 * t ** 2 + 4.0) / 6.0),
                (low + 1, (3.0 * u ** 3 - 6.0 * u ** 2 + 4.0) / 6.0), (low + 2, t ** 3 / 6.0)]
    shape = [1] * values.ndim
    shape[axis] = coords.size
    out = np.zeros(values.shape[:axis] + (coords.size,) + values.shape[axis + 1:])
    for index, weight in taps:
        index = index.astype(np.int64)
        if mirror:
            index = _mirror(index, n)
            inside = np.ones(index.shape, dtype=bool)
        else:
            inside = (index >= 0) & (index < n)
        picked = np.take(values, np.clip(index, 0, n - 1), axis=axis)
        out += picked * np.where(inside, weight, 0.0).reshape(shape)
    return out


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """ndimage's 'mirror' extension: -1 reads 1 and n reads n - 2."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)

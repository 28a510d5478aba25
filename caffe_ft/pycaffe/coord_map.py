"""pycaffe's `caffe.coord_map`: how a NetSpec layer maps coordinates, and
`crop(top_from, top_to)`, the Crop layer that aligns one top with another
(FCN's nets crop their upsampled scores to the input this way).

A coordinate map is (axis, a, b): output coordinate `a * x + b` for input
coordinate `x`, along every spatial axis from `axis + 1` on; `a` and `b` are
numpy arrays with one entry per spatial axis (or scalars when the map is the
identity). axis None means the map holds along any axis (pointwise layers).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np

from caffe_ft.errors import CaffeError
from caffe_ft.pycaffe.net_spec import Function, Top, layers as L

CoordMap = tuple[Optional[int], Any, Any]

# Layers whose every output coordinate is its input coordinate.
PASS_THROUGH_LAYERS = ['AbsVal', 'BatchNorm', 'Bias', 'BNLL', 'Dropout', 'Eltwise', 'ELU', 'Log',
                       'LRN', 'Exp', 'MVN', 'Power', 'ReLU', 'PReLU', 'Scale', 'Sigmoid', 'Split',
                       'TanH', 'Threshold']
_LEGACY_KEYS = {'pad_h', 'pad_w', 'kernel_h', 'kernel_w', 'stride_h', 'stride_w'}
_IDENTITY: CoordMap = (None, 1, 0)


class UndefinedMapException(Exception):
    """A layer type with no coordinate map (InnerProduct, ...): the walk stops there."""


class AxisMismatchException(CaffeError):
    """Two maps along different axes cannot compose."""


class CropError(CaffeError, AssertionError):
    """Tops that no Crop can align (an AssertionError, as pycaffe raises)."""


class UnconnectedError(CaffeError, RuntimeError):
    """Tops with no common ancestor through spatial layers (a RuntimeError, as pycaffe raises)."""


def conv_params(fn: Function) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(axis, stride, extent, pad) of a Convolution, Deconvolution, Im2col
    (their convolution_param) or Pooling (its keywords); the extent of a
    kernel is (kernel_size - 1) * dilation + 1."""
    params = fn.params.get('convolution_param', fn.params)
    if _LEGACY_KEYS & (set(fn.params) | set(params)):
        raise CropError(f"{fn.type_name}: cropping does not support legacy _h/_w params")
    if 'kernel_size' not in params:
        raise CropError(f"{fn.type_name}: no kernel_size to map coordinates by")
    kernel = np.array(params['kernel_size'], ndmin=1)
    dilation = np.array(params.get('dilation', 1), ndmin=1)
    return (params.get('axis', 1), np.array(params.get('stride', 1), ndmin=1),
            (kernel - 1) * dilation + 1, np.array(params.get('pad', 0), ndmin=1))


def crop_params(fn: Function) -> tuple[int, np.ndarray]:
    """(axis, offset) of a Crop layer, with Caffe's defaults (axis 2: crop H, W of N, C, H, W)."""
    params = fn.params.get('crop_param', fn.params)
    return params.get('axis', 2), np.array(params.get('offset', 0), ndmin=1)


def coord_map(fn: Function) -> CoordMap:
    """The map from `fn`'s bottom coordinates to its top coordinates."""
    if fn.type_name in ('Convolution', 'Pooling', 'Im2col'):
        axis, stride, extent, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if fn.type_name == 'Deconvolution':
        axis, stride, extent, pad = conv_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return _IDENTITY
    if fn.type_name == 'Crop':
        axis, offset = crop_params(fn)
        # Crop's axis is its first cropped axis; a map's is the one before.
        return axis - 1, 1, -offset
    raise UndefinedMapException(fn.type_name)


def compose(base_map: CoordMap, next_map: CoordMap) -> CoordMap:
    """`next_map` after `base_map`: the scales multiply and the further
    shift is scaled by the base scale."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is not None and ax2 is not None and ax1 != ax2:
        raise AxisMismatchException(f"coordinate maps along axes {ax1} and {ax2} do not compose")
    return (ax2 if ax1 is None else ax1), a1 * a2, a1 * b2 + b1


def inverse(coord_map: CoordMap) -> CoordMap:
    """The map back: de-scale and un-shift."""
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _mapped_bottoms(top: Top) -> tuple[Top, ...]:
    # Every bottom of a layer maps the same way, except Crop's second bottom,
    # which only gives the output's size.
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == 'Crop' else bottoms


def _ancestor_maps(start: Top) -> Iterator[tuple[Top, CoordMap]]:
    """`start` and each ancestor reached through mappable layers, nearest
    first, with the map from that ancestor to `start`'s coordinates."""
    maps = {start: _IDENTITY}
    frontier = deque([start])
    while frontier:
        top = frontier.popleft()
        yield top, maps[top]
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _mapped_bottoms(top):
            if bottom not in maps:
                maps[bottom] = compose(maps[top], step)
                frontier.append(bottom)


def coord_map_from_to(top_from: Top, top_to: Top) -> CoordMap:
    """The map from `top_from`'s coordinates to `top_to`'s, through their
    nearest common ancestor."""
    from_maps = dict(_ancestor_maps(top_from))
    # Lazily: ancestors beyond the common one are never mapped.
    for top, to_map in _ancestor_maps(top_to):
        if top in from_maps:
            return compose(to_map, inverse(from_maps[top]))
    raise UnconnectedError('Could not compute map between tops; are they connected by '
                           'spatial layers?')


def crop(top_from: Top, top_to: Top) -> Top:
    """A Crop layer that cuts `top_from` to `top_to`'s extent and alignment."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    if ax is None:
        raise CropError('no spatial layer between the tops: nothing to crop')
    if not np.all(a == 1):
        raise CropError(f'scale mismatch on crop (a = {a})')
    if not np.all(b <= 0):
        raise CropError(f'cannot crop negative offset (b = {b})')
    if not np.all(np.round(b) == b):
        raise CropError(f'cannot crop noninteger offset (b = {b})')
    offset = [int(x) for x in -np.round(np.asarray(b, dtype=float)).astype(int).ravel()]
    return L.Crop(top_from, top_to, crop_param=dict(axis=ax + 1, offset=offset))

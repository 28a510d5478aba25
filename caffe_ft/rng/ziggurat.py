"""The ziggurat tables of boost's normal (128 layers) and exponential (256
layers) distributions, built from their definition: layer i spans
[0, x_i] × [y_i, y_(i+1)] under f, y_i = f(x_i), every layer and the base
(with its tail beyond x_1 = R) has the same area v, x_0 = v / f(R) is the
base's virtual width and the top layer ends at x = 0, y = 1.

The recurrence is run in 34-digit decimals from R, the root that makes the
top layer end exactly at y = 1 (tests re-derive it), so every entry is the
double nearest to its true value, as boost's printed tables are.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from decimal import Decimal, localcontext
from typing import NamedTuple

import numpy as np

Curve = Callable[[Decimal], Decimal]


class Table(NamedTuple):
    x: np.ndarray  # float64, layers + 1 entries, x[0] > x[1] = R > ... > x[layers] = 0
    y: np.ndarray  # float64, y[0] = 0, y[i] = f(x[i]), y[layers] = 1


def _normal(x: Decimal) -> Decimal:
    return (-(x * x) / 2).exp()


def _normal_inverse(y: Decimal) -> Decimal:
    return (-2 * y.ln()).sqrt()


def _normal_tail(r: Decimal) -> Decimal:
    """∫_r^∞ exp(-x²/2) dx, by Laplace's continued fraction."""
    fraction = Decimal(0)
    for k in range(300, 0, -1):
        fraction = k / (r + fraction)
    return _normal(r) / (r + fraction)


def _exponential(x: Decimal) -> Decimal:
    return (-x).exp()


def _exponential_inverse(y: Decimal) -> Decimal:
    return -y.ln()


NORMAL_R = Decimal("3.442619855896652121424320491467339704")
EXPONENTIAL_R = Decimal("7.697117470131049714044628048015215499")
_DIGITS = 34


def layer_edges(r: Decimal, layers: int, f: Curve, inverse: Curve, tail: Curve
                ) -> list[Decimal]:
    """x_0 .. x_(layers-1) for base edge r; the top layer is layer - 1."""
    area = r * f(r) + tail(r)
    edges = [area / f(r), r]
    for _ in range(layers - 2):
        y = f(edges[-1]) + area / edges[-1]
        if y >= 1:
            break  # r too small: the layers reach the top too soon
        edges.append(inverse(y))
    return edges


def top_overshoot(r: Decimal, layers: int, f: Curve, inverse: Curve, tail: Curve) -> Decimal:
    """How far above y = 1 the top layer ends (> 0: r is too small)."""
    with localcontext() as context:
        context.prec = _DIGITS
        edges = layer_edges(r, layers, f, inverse, tail)
        if len(edges) < layers:
            return Decimal(1)
        area = r * f(r) + tail(r)
        return f(edges[-1]) + area / edges[-1] - 1


def _table(r: Decimal, layers: int, f: Curve, inverse: Curve, tail: Curve) -> Table:
    with localcontext() as context:
        context.prec = _DIGITS
        edges = layer_edges(r, layers, f, inverse, tail)
        heights = [Decimal(0)] + [f(x) for x in edges[1:]] + [Decimal(1)]
    return Table(np.array([float(x) for x in edges] + [0.0]),
                 np.array([float(y) for y in heights]))


@functools.cache
def normal_table() -> Table:
    return _table(NORMAL_R, 128, _normal, _normal_inverse, _normal_tail)


@functools.cache
def exponential_table() -> Table:
    return _table(EXPONENTIAL_R, 256, _exponential, _exponential_inverse, _exponential)


NORMAL_CURVE = (_normal, _normal_inverse, _normal_tail)
EXPONENTIAL_CURVE = (_exponential, _exponential_inverse, _exponential)

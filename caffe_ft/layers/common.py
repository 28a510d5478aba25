"""Common layers: shape plumbing, inner products, element-wise combinations.

Shapes and parameter checks follow Caffe's Reshape/LayerSetUp rules; the
arithmetic runs on fused torch kernels. Layers that share data in Caffe
(Flatten, Reshape, single-input Concat/Slice, Parameter) return views, so a
diff flows back exactly as through Caffe's ShareData/ShareDiff. Eltwise PROD
uses a torch.autograd.Function because Caffe's gradient is not autograd's
(product of the other inputs, or y / x without stable_prod_grad).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from caffe_ft.blobs import shape_string
from caffe_ft.layers.base import TRAIN, Layer, Shape
from caffe_ft.layers.registry import register
from caffe_ft.proto import caffe_pb2
from caffe_ft.rng import boost
from caffe_ft.rng.global_rng import caffe_rng

EltwiseOp = caffe_pb2.EltwiseParameter
ReductionOp = caffe_pb2.ReductionParameter


def _f32(value: float) -> float:
    """`value` rounded to float32, as Caffe holds a Dtype constant."""
    return float(np.float32(value))


def _count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    """Caffe's Blob::count(start, end): the product of dims [start, end)."""
    return math.prod(shape[start:end])


def _check_not_in_place(layer: Layer) -> None:
    # Caffe's CHECK_NE(top[0], bottom[0]): these layers share the bottom's
    # memory under a new shape, which an in-place top would overwrite.
    if layer.param.top[0] == layer.param.bottom[0]:
        raise layer.error(f"{layer.param.type} Layer does not allow in-place computation "
                          f"(top and bottom are both '{layer.param.top[0]}')")


@register("Split")
class Split(Layer):
    """One blob to several consumers. Each top is a distinct view so each gets
    its own diff; autograd sums them into the bottom, as Caffe's Split does."""
    tops = (1, None)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])] * len(self.param.top)

    def forward(self, bottom: torch.Tensor) -> list[torch.Tensor]:
        return [bottom.view_as(bottom) for _ in self.param.top]


@register("InnerProduct")
class InnerProduct(Layer):
    """y = x·Wᵀ + b over x flattened from `axis` on: M = count(0, axis) rows of
    K = count(axis) values. W is (N, K), or (K, N) with `transpose`."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.inner_product_param
        shape = bottom_shapes[0]
        axis = self.canonical_axis(p.axis, len(shape))
        # Caffe fixes K at setup; a later reshape must keep it.
        self._k = _count(shape, axis)
        n = p.num_output
        self.add_blob((self._k, n) if p.transpose else (n, self._k), p.weight_filler)
        if p.bias_term:
            self.add_blob((n,), p.bias_filler)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        p = self.param.inner_product_param
        shape = tuple(bottom_shapes[0])
        axis = self.canonical_axis(p.axis, len(shape))
        if _count(shape, axis) != self._k:
            raise self.error(f"Input size incompatible with inner product parameters: "
                             f"count from axis {axis} of {shape_string(shape)} is "
                             f"{_count(shape, axis)}, expected K = {self._k}")
        return [shape[:axis] + (p.num_output,)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.param.inner_product_param
        axis = self.canonical_axis(p.axis, x.dim())
        weight = self.blob(0)
        if p.transpose:
            weight = weight.t()
        bias = self.blob(1) if p.bias_term else None
        return [F.linear(x.flatten(axis), weight, bias)]


@register("Flatten")
class Flatten(Layer):
    """Collapses axes [axis, end_axis] into one; the top is a view of the bottom."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        _check_not_in_place(self)

    def _axes(self, num_axes: int) -> tuple[int, int]:
        p = self.param.flatten_param
        start = self.canonical_axis(p.axis, num_axes)
        end = self.canonical_axis(p.end_axis, num_axes)
        if end < start:
            raise self.error(f"end_axis {p.end_axis} comes before axis {p.axis} "
                             f"for a {num_axes}-D bottom")
        return start, end

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        start, end = self._axes(len(shape))
        return [shape[:start] + (_count(shape, start, end + 1),) + shape[end + 1:]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        start, end = self._axes(x.dim())
        return [x.flatten(start, end)]


@register("Reshape")
class Reshape(Layer):
    """Replaces bottom axes [axis, axis + num_axes) by `shape`: a 0 copies the
    bottom dim at the same position, one -1 is inferred from the count. The
    top is a view of the bottom (Caffe shares data and diff)."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        _check_not_in_place(self)
        dims = list(self.param.reshape_param.shape.dim)
        if dims.count(-1) > 1:
            raise self.error("new shape contains multiple -1 dims; at most a single (1) "
                             "value of -1 may be specified")
        if any(d < -1 for d in dims):
            raise self.error(f"new shape {dims} has a dim below -1")

    def _top_shape(self, shape: Shape) -> Shape:
        p = self.param.reshape_param
        num_axes = len(shape)
        # A negative axis counts from past the last axis: -1 means "append".
        start = p.axis if p.axis >= 0 else num_axes + p.axis + 1
        if not 0 <= start <= num_axes:
            raise self.error(f"axis {p.axis} out of range for a {num_axes}-D bottom")
        if p.num_axes < -1:
            raise self.error(f"num_axes must be >= 0, or -1 for all; got {p.num_axes}")
        end = num_axes if p.num_axes == -1 else start + p.num_axes
        if end > num_axes:
            raise self.error(f"end_axis = axis + num_axes ({end}) is out of range for a "
                             f"{num_axes}-D bottom")
        dims = list(p.shape.dim)
        top = list(shape[:start]) + dims + list(shape[end:])
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= num_axes:
                    raise self.error("new shape contains a 0, but there was no corresponding "
                                     "bottom axis to copy")
                top[start + i] = shape[start + i]
        if -1 in dims:
            inferred = start + dims.index(-1)
            explicit = math.prod(d for i, d in enumerate(top) if i != inferred)
            if explicit == 0 or _count(shape) % explicit:
                raise self.error(f"bottom count ({_count(shape)}) must be divisible by the "
                                 f"product of the specified dimensions ({explicit})")
            top[inferred] = _count(shape) // explicit
        if math.prod(top) != _count(shape):
            raise self.error(f"output count must match input count: top shape "
                             f"{shape_string(top)} from bottom {shape_string(shape)}")
        return tuple(top)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [self._top_shape(tuple(bottom_shapes[0]))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x.reshape(self._top_shape(tuple(x.shape)))]


@register("Concat")
class Concat(Layer):
    """Joins the bottoms along `axis` (or the legacy `concat_dim` when set)."""
    bottoms = (1, None)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        self.check_axis_or_legacy_dim(self.param.concat_param, "concat_dim")

    def _axis(self, num_axes: int) -> int:
        return self.axis_or_legacy_dim(self.param.concat_param, "concat_dim", num_axes)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        first = tuple(bottom_shapes[0])
        axis = self._axis(len(first))
        total = 0
        for i, shape in enumerate(bottom_shapes):
            if len(shape) != len(first):
                raise self.error(f"All inputs must have the same #axes: bottom[0] is "
                                 f"{shape_string(first)}, bottom[{i}] is {shape_string(shape)}")
            if any(a != b for j, (a, b) in enumerate(zip(first, shape)) if j != axis):
                raise self.error(f"All inputs must have the same shape, except at concat_axis "
                                 f"({axis}): bottom[0] is {shape_string(first)}, bottom[{i}] "
                                 f"is {shape_string(shape)}")
            total += shape[axis]
        return [first[:axis] + (total,) + first[axis + 1:]]

    def forward(self, *bottoms: torch.Tensor) -> list[torch.Tensor]:
        if len(bottoms) == 1:
            return [bottoms[0].view_as(bottoms[0])]  # Caffe shares data and diff
        return [torch.cat(bottoms, dim=self._axis(bottoms[0].dim()))]


@register("Slice")
class Slice(Layer):
    """Cuts the bottom along `axis` (or legacy `slice_dim`) at `slice_point`s,
    or into equal parts when none are given. Tops are views."""
    tops = (1, None)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        self.check_axis_or_legacy_dim(self.param.slice_param, "slice_dim")

    def _axis(self, num_axes: int) -> int:
        return self.axis_or_legacy_dim(self.param.slice_param, "slice_dim", num_axes)

    def _sizes(self, shape: Shape) -> tuple[int, list[int]]:
        axis = self._axis(len(shape))
        length = shape[axis]
        num_tops = len(self.param.top)
        points = list(self.param.slice_param.slice_point)
        if not points:
            if length % num_tops:
                raise self.error(f"Number of top blobs ({num_tops}) should evenly divide "
                                 f"input slice axis ({length})")
            return axis, [length // num_tops] * num_tops
        if len(points) != num_tops - 1:
            raise self.error(f"{len(points)} slice_point(s) for {num_tops} tops; expected "
                             f"{num_tops - 1} (one fewer than the tops)")
        if num_tops > length:
            raise self.error(f"{num_tops} tops exceed slice axis {axis} of bottom shape "
                             f"{shape_string(shape)}")
        sizes, prev = [], 0
        for point in points:
            if point <= prev:
                raise self.error(f"slice_point {points} must be strictly increasing and > 0")
            sizes.append(point - prev)
            prev = point
        if prev > length:
            raise self.error(f"slice_point {prev} is past the end of slice axis {axis} "
                             f"(size {length})")
        sizes.append(length - prev)
        return axis, sizes

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        axis, sizes = self._sizes(shape)
        return [shape[:axis] + (n,) + shape[axis + 1:] for n in sizes]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        axis, sizes = self._sizes(tuple(x.shape))
        if len(sizes) == 1:
            return [x.view_as(x)]  # Caffe shares data and diff
        return list(torch.split(x, sizes, dim=axis))


class _EltwiseProd(torch.autograd.Function):
    """y = x0 * x1 * ... with Caffe's gradient: dy times the product of the
    other inputs (stable_prod_grad), or dy * y / x_i, which is inf/NaN where
    x_i is 0, exactly as Caffe computes it."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, stable: bool,
                *xs: torch.Tensor) -> torch.Tensor:
        y = xs[0] * xs[1]
        for x in xs[2:]:
            y = y * x
        ctx.stable = stable
        # The stable gradient needs only the inputs; the quotient form needs y too.
        if stable:
            ctx.save_for_backward(*xs)
        else:
            ctx.save_for_backward(y, *xs)
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        xs = saved if ctx.stable else saved[1:]
        grads: list[torch.Tensor | None] = [None]
        for i, x in enumerate(xs):
            if not ctx.needs_input_grad[i + 1]:
                grads.append(None)
                continue
            if ctx.stable:
                others = [xj for j, xj in enumerate(xs) if j != i]
                factor = others[0]
                for xj in others[1:]:
                    factor = factor * xj
            else:
                factor = saved[0] / x
            grads.append(factor * dy)
        return tuple(grads)


@register("Eltwise")
class Eltwise(Layer):
    """Element-wise SUM (with per-bottom `coeff`), PROD or MAX of equal-shaped
    bottoms. MAX takes bottom 1 over bottom 0 on a tie and keeps the earlier
    winner on later ties; its gradient goes to the winner only, which
    torch.where's routing gives exactly."""
    bottoms = (2, None)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.eltwise_param
        if len(p.coeff) not in (0, len(bottom_shapes)):
            raise self.error(f"Eltwise Layer takes one coefficient per bottom blob: "
                             f"{len(p.coeff)} coeff for {len(bottom_shapes)} bottoms")
        if p.operation == EltwiseOp.PROD and len(p.coeff):
            raise self.error("Eltwise layer only takes coefficients for summation.")
        self._coeffs = [_f32(c) for c in p.coeff] or [1.0] * len(bottom_shapes)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        first = tuple(bottom_shapes[0])
        for i, shape in enumerate(bottom_shapes[1:], 1):
            if tuple(shape) != first:
                raise self.error(f"bottoms must have the same shape; bottom[0]: "
                                 f"{shape_string(first)}, bottom[{i}]: {shape_string(shape)}")
        return [first]

    def forward(self, *bottoms: torch.Tensor) -> list[torch.Tensor]:
        p = self.param.eltwise_param
        if p.operation == EltwiseOp.PROD:
            return [_EltwiseProd.apply(p.stable_prod_grad, *bottoms)]
        if p.operation == EltwiseOp.MAX:
            # Caffe: bottom 0 wins only if strictly greater than bottom 1; each
            # later bottom replaces the running max only if strictly greater.
            top = torch.where(bottoms[0] > bottoms[1], bottoms[0], bottoms[1])
            for x in bottoms[2:]:
                top = torch.where(x > top, x, top)
            return [top]
        coeffs = self._coeffs
        top = bottoms[0] if coeffs[0] == 1 else bottoms[0] * coeffs[0]
        for x, c in zip(bottoms[1:], coeffs[1:]):
            top = torch.add(top, x, alpha=c)
        return [top]


@register("Tile")
class Tile(Layer):
    """Repeats the whole block from `axis` on `tiles` times per outer index."""

    def _axis_tiles(self, num_axes: int) -> tuple[int, int]:
        p = self.param.tile_param
        if not p.HasField("tiles"):
            raise self.error("Number of tiles must be specified (tile_param.tiles)")
        if p.tiles <= 0:
            raise self.error(f"Number of tiles must be positive, got {p.tiles}")
        return self.canonical_axis(p.axis, num_axes), p.tiles

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        axis, tiles = self._axis_tiles(len(shape))
        return [shape[:axis] + (shape[axis] * tiles,) + shape[axis + 1:]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        axis, tiles = self._axis_tiles(x.dim())
        repeats = [1] * x.dim()
        repeats[axis] = tiles
        return [x.repeat(repeats)]


@register("Reduction")
class Reduction(Layer):
    """Reduces every axis from `axis` on (axis 0: a 0-axis scalar top) with
    SUM, ASUM, SUMSQ or MEAN, times `coeff`. The gradients autograd derives
    are Caffe's: coeff, coeff·sign(x) (0 at 0), 2·coeff·x, coeff/dim."""

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        return [shape[:self.canonical_axis(self.param.reduction_param.axis, len(shape))]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.param.reduction_param
        axis = self.canonical_axis(p.axis, x.dim())
        rows = x.reshape(x.shape[:axis] + (-1,))
        if p.operation == ReductionOp.ASUM:
            top = rows.abs().sum(-1)
        elif p.operation == ReductionOp.SUMSQ:
            top = rows.square().sum(-1)
        else:
            top = rows.sum(-1)
        coeff = _f32(p.coeff)
        if p.operation == ReductionOp.MEAN:
            # Caffe divides its float coeff by dim once: coeff_ /= dim_.
            coeff = _f32(np.float32(coeff) / np.float32(_count(x.shape, axis)))
        return [top if coeff == 1 else top * coeff]


@register("ArgMax")
class ArgMax(Layer):
    """The top_k largest values' indices (and values with out_max_val), per
    sample over its flattened values, or along `axis` when given (values only
    with out_max_val). Ties go to the larger index: Caffe sorts (value, index)
    pairs descending. Indices are output as floats; there is no backward."""

    def _axis(self, shape: Shape) -> int | None:
        p = self.param.argmax_param
        return self.canonical_axis(p.axis, len(shape)) if p.HasField("axis") else None

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.argmax_param
        shape = tuple(bottom_shapes[0])
        if p.top_k < 1:
            raise self.error("top k must not be less than 1.")
        axis = self._axis(shape)
        if axis is not None and p.top_k > shape[axis]:
            raise self.error(f"top_k ({p.top_k}) must be less than or equal to the dimension "
                             f"of the axis ({shape[axis]})")
        if axis is None and p.top_k > _count(shape, 1):
            raise self.error(f"top_k ({p.top_k}) must be less than or equal to the dimension "
                             f"of the flattened bottom blob per instance ({_count(shape, 1)})")

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        p = self.param.argmax_param
        shape = tuple(bottom_shapes[0])
        axis = self._axis(shape)
        if axis is not None:
            return [shape[:axis] + (p.top_k,) + shape[axis + 1:]]
        top = [1] * max(len(shape), 3)
        top[0], top[1], top[2] = shape[0], 2 if p.out_max_val else 1, p.top_k
        return [tuple(top)]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.param.argmax_param
        axis = self._axis(tuple(x.shape))
        data = x if axis is not None else x.reshape(x.shape[0], -1)
        dim = 1 if axis is None else axis
        # A stable descending sort of the reversed axis puts the larger index
        # first among equal values, as Caffe's std::greater on pairs does.
        values, order = data.flip(dim).sort(dim=dim, descending=True, stable=True)
        values = values.narrow(dim, 0, p.top_k)
        indices = (data.shape[dim] - 1 - order.narrow(dim, 0, p.top_k)).to(x.dtype)
        if axis is not None:
            return [values if p.out_max_val else indices]
        top = torch.stack([indices, values], 1) if p.out_max_val else indices
        return [top.reshape(self.reshape([tuple(x.shape)])[0])]


@register("Dropout")
class Dropout(Layer):
    """TRAIN: y = x · mask / (1 - ratio), mask ~ Bernoulli(1 - ratio) drawn
    each forward; the backward reuses the same scaled mask. TEST: identity.

    On the CPU the mask is Caffe's own: caffe_rng_bernoulli in double from
    Caffe's global generator, so a seeded CPU run drops what Caffe's drops.
    Caffe's GPU masks come from cuRAND, which no one reproduces: on a GPU
    the mask is drawn on the device (torch's generator)."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        ratio = self.param.dropout_param.dropout_ratio
        if not 0 <= ratio < 1:
            raise self.error(f"dropout_ratio must be in [0, 1), got {ratio}")
        # Caffe: threshold_ is a float; scale_ = 1 / (1 - threshold_) in double,
        # stored as float.
        self._ratio = _f32(ratio)
        self._scale = _f32(1.0 / (1.0 - self._ratio))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.phase != TRAIN:
            return [x.view_as(x)]
        if x.device.type == "cpu":
            with caffe_rng() as stream:
                # DropoutLayer passes 1. - threshold_: a double probability.
                drawn = boost.bernoulli(stream, x.numel(), 1.0 - float(self._ratio), np.float64)
            keep = torch.from_numpy(drawn).view(x.shape)
        else:
            keep = torch.rand_like(x) >= self._ratio
        return [x * (keep.to(x.dtype) * self._scale)]


@register("Silence")
class Silence(Layer):
    """Consumes blobs so they are not net outputs; no tops, zero bottom diffs."""
    bottoms = (1, None)
    tops = (0, 0)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return []

    def forward(self, *bottoms: torch.Tensor) -> list[torch.Tensor]:
        return []


@register("BatchReindex")
class BatchReindex(Layer):
    """top[i] = bottom[0][idx[i]] for the 1-D index blob bottom[1]; the
    gradient accumulates into repeated rows. No gradient to the indices."""
    bottoms = (2, 2)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        x, idx = (tuple(s) for s in bottom_shapes)
        if len(idx) != 1:
            raise self.error(f"the index blob (bottom[1]) must be 1-D, got {shape_string(idx)}")
        return [idx + x[1:]]

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> list[torch.Tensor]:
        rule = f"Index specified for reindex layer out of range [0, {x.shape[0]}) (the batch size)"
        self.check_values(~((idx < 0) | (idx >= x.shape[0])).any(), rule,
                          lambda: f"{rule}: indices span [{idx.min().item():g}, "
                                  f"{idx.max().item():g}]")
        # static_cast<int> truncates the float indices.
        return [x.index_select(0, idx.detach().long())]


@register("Filter")
class Filter(Layer):
    """Keeps the rows (axis 0) of each bottom where the selector (last bottom,
    singleton past axis 0) is non-zero. The top's row count depends on the
    data: `reshape` gives Caffe's setup-time shape (all rows), `forward` the
    selected rows. Rows not forwarded get a zero diff."""
    bottoms = (2, None)
    tops = (1, None)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        if len(self.param.top) != len(bottom_shapes) - 1:
            raise self.error(f"needs one top per filtered bottom: {len(bottom_shapes) - 1} "
                             f"bottom(s) before the selector, {len(self.param.top)} top(s)")

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        selector = tuple(bottom_shapes[-1])
        if any(d != 1 for d in selector[1:]):
            raise self.error(f"Selector blob dimensions must be singletons (1), except the "
                             f"first; got {shape_string(selector)}")
        for i, shape in enumerate(bottom_shapes[:-1]):
            if not shape or shape[0] != selector[0]:
                raise self.error(f"Each bottom should have the same 0th dimension as the "
                                 f"selector blob: bottom[{i}] is {shape_string(shape)}, "
                                 f"selector is {shape_string(selector)}")
        return [tuple(shape) for shape in bottom_shapes[:-1]]

    def forward(self, *bottoms: torch.Tensor) -> list[torch.Tensor]:
        rows = torch.nonzero(bottoms[-1].detach().reshape(-1)).reshape(-1)
        return [x.index_select(0, rows) for x in bottoms[:-1]]


@register("Embed")
class Embed(Layer):
    """y = W[int(x)] + b: each input value indexes a row of W (input_dim,
    num_output); the top appends a num_output axis. No gradient to the input."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.embed_param
        if p.num_output <= 0:
            raise self.error("EmbedLayer num_output must be positive.")
        if p.input_dim <= 0:
            raise self.error("EmbedLayer input_dim must be positive.")
        self.add_blob((p.input_dim, p.num_output), p.weight_filler)
        if p.bias_term:
            self.add_blob((p.num_output,), p.bias_filler)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0]) + (self.param.embed_param.num_output,)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.param.embed_param
        # static_cast<int> truncates; Caffe only DCHECKs the range, an index
        # outside it would read past the weights.
        index = x.detach().long()
        rule = f"input values must be indices in [0, {p.input_dim}) (input_dim)"
        self.check_values(~((index < 0) | (index >= p.input_dim)).any(), rule,
                          lambda: f"{rule}, got values in [{x.min().item():g}, "
                                  f"{x.max().item():g}]")
        top = F.embedding(index, self.blob(0))
        return [top + self.blob(1) if p.bias_term else top]


@register("Parameter")
class Parameter(Layer):
    """Outputs its one learned blob of `shape` (zero-filled, no filler); the
    top is the blob, so its diff is the blob's gradient."""
    bottoms = (0, 0)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        self.add_blob(tuple(self.param.parameter_param.shape.dim))

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(self.param.parameter_param.shape.dim)]

    def forward(self) -> list[torch.Tensor]:
        return [self.blob(0)]

"""Vision layers: Convolution, Deconvolution, Im2col, Pooling, SPP, LRN, Crop.

Geometry (output sizes, padding, window clipping) follows Caffe's rules
exactly. The arithmetic runs on torch's fused kernels (convolutions, max/avg
pooling, local response norm) wherever they give Caffe's numbers; where
Caffe's geometry is one torch cannot express (pooling windows that start past
the input, pads over half a kernel, more than 3 spatial axes) the input is
padded or cropped explicitly so the same kernels still apply.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from caffe_ft.blobs import blob_proto_shape, shape_string
from caffe_ft.layers.base import TRAIN, Layer, Shape
from caffe_ft.layers.registry import register
from caffe_ft.proto import caffe_pb2

PoolParam = caffe_pb2.PoolingParameter
# Caffe's MAX pooling starts every window at -FLT_MAX, so a window that holds
# no input cell outputs this value.
FLT_MAX = float(np.finfo(np.float32).max)

_CONV: dict[int, Callable[..., torch.Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_DECONV: dict[int, Callable[..., torch.Tensor]] = {
    1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _trunc_div(a: int, b: int) -> int:
    """C++ integer division, which truncates toward zero."""
    quotient = abs(a) // b
    return quotient if a >= 0 else -quotient


def _pad_arg(left: Sequence[int], right: Sequence[int]) -> tuple[int, ...]:
    """F.pad's argument (last axis first) for per-axis left/right amounts;
    a negative amount crops."""
    return tuple(v for lo, hi in reversed(tuple(zip(left, right))) for v in (lo, hi))


def _im2col(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int],
            left: Sequence[int], right: Sequence[int], dilation: Sequence[int]) -> torch.Tensor:
    """Caffe's im2col for (N, C, *spatial) input: (N, C*prod(kernel), *out),
    rows ordered channel-major then kernel offsets, as Caffe lays them out.
    `left`/`right` pad (zeros) or crop each spatial axis so that the windows
    tile it exactly; cells outside the input read as zero, as in Caffe."""
    if any(left) or any(right):
        x = F.pad(x, _pad_arg(left, right))
    axes = len(kernel)
    for i, (k, s, d) in enumerate(zip(kernel, stride, dilation)):
        x = x.unfold(2 + i, d * (k - 1) + 1, s)
    # x is now (N, C, *out, *extent); a dilated window keeps every d-th cell.
    if any(d > 1 for d in dilation):
        x = x[(..., *(slice(None, None, d) for d in dilation))]
    x = x.permute(0, 1, *range(2 + axes, 2 + 2 * axes), *range(2, 2 + axes))
    return x.reshape(x.shape[0], -1, *x.shape[2 + axes:])


def _conv_generic(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  stride: Sequence[int], left: Sequence[int], right: Sequence[int],
                  dilation: Sequence[int], groups: int) -> torch.Tensor:
    """Convolution as Caffe computes it (im2col, then one GEMM per group), for
    the spatial ranks torch has no kernel for (0 or more than 3 axes)."""
    cols = _im2col(x, weight.shape[2:], stride, left, right, dilation)
    num, out = x.shape[0], cols.shape[2:]
    cols = cols.reshape(num, groups, -1, math.prod(out))
    w = weight.reshape(groups, weight.shape[0] // groups, -1)
    y = torch.einsum("gok,ngkl->ngol", w, cols).reshape(num, weight.shape[0], *out)
    if bias is not None:
        y = y + bias.reshape(-1, *(1,) * len(out))
    return y


@dataclass(frozen=True)
class ConvGeometry:
    """Per-spatial-axis kernel, stride, pad and dilation of a convolution."""
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def extent(self) -> tuple[int, ...]:
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    def conv_output(self, spatial: Sequence[int]) -> tuple[int, ...]:
        # C++ truncation: an input a little smaller than the kernel still gives
        # one output, whose missing cells im2col reads as zeros.
        return tuple(_trunc_div(n + 2 * p - e, s) + 1
                     for n, p, e, s in zip(spatial, self.pad, self.extent, self.stride))

    def deconv_output(self, spatial: Sequence[int]) -> tuple[int, ...]:
        return tuple(s * (n - 1) + e - 2 * p
                     for n, p, e, s in zip(spatial, self.pad, self.extent, self.stride))

    def right_pad(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Right padding (negative: crop) after which the output's windows
        tile each axis exactly, the last one ending where Caffe's does."""
        out = self.conv_output(spatial)
        return tuple((o - 1) * s + e - p - n
                     for n, o, p, e, s in zip(spatial, out, self.pad, self.extent, self.stride))


def _conv_geometry(layer: Layer, num_spatial: int) -> ConvGeometry:
    """Parse convolution_param's geometry with Caffe's checks
    (BaseConvolutionLayer / Im2colLayer LayerSetUp)."""
    p = layer.param.convolution_param

    def per_axis(name: str, values: Sequence[int], default: int | None,
                 hw: tuple[str, str] | None = None) -> tuple[int, ...]:
        if hw is not None and (p.HasField(hw[0]) or p.HasField(hw[1])):
            if num_spatial != 2:
                raise layer.error(f"{hw[0]} & {hw[1]} can only be used for 2D convolution "
                                  f"(the bottom has {num_spatial} spatial axes).")
            if values:
                raise layer.error(f"Either {name} or {hw[0]}/{hw[1]} should be specified; "
                                  f"not both.")
            return (getattr(p, hw[0]), getattr(p, hw[1]))
        allowed = {1, num_spatial} if default is None else {0, 1, num_spatial}
        if len(values) not in allowed:
            raise layer.error(f"{name} must be specified once, or once per spatial dimension "
                              f"({name} specified {len(values)} times; {num_spatial} "
                              f"spatial dims).")
        if not values:
            return (default,) * num_spatial if default is not None else ()
        return tuple(int(values[0 if len(values) == 1 else i]) for i in range(num_spatial))

    kernel = per_axis("kernel_size", p.kernel_size, None, ("kernel_h", "kernel_w"))
    stride = per_axis("stride", p.stride, 1, ("stride_h", "stride_w"))
    pad = per_axis("pad", p.pad, 0, ("pad_h", "pad_w"))
    dilation = per_axis("dilation", p.dilation, 1)
    if any(k <= 0 for k in kernel):
        raise layer.error(f"Filter dimensions must be nonzero (kernel {list(kernel)}).")
    if any(s <= 0 for s in stride):
        raise layer.error(f"Stride dimensions must be nonzero (stride {list(stride)}).")
    if any(d <= 0 for d in dilation):
        # Caffe does not check, but a zero dilation reads one cell k times.
        raise layer.error(f"dilation must be positive, got {list(dilation)}")
    return ConvGeometry(kernel, stride, pad, dilation)


def _check_output(layer: Layer, out: Sequence[int], spatial: Sequence[int]) -> None:
    if any(o < 1 for o in out):
        raise layer.error(f"the output would be empty: spatial input {list(spatial)} gives "
                          f"output {list(out)} with this kernel, stride and pad")


class _ConvolutionBase(Layer):
    """Shared by Convolution and Deconvolution: the channel axis is `axis`,
    every later axis is spatial, axes before it are batch; several bottoms
    (all of one shape) each give a top, computed with the same weights."""
    bottoms = (1, None)
    tops = (1, None)
    transposed = False

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        if len(self.param.top) != len(self.param.bottom):
            raise self.error(f"needs one top per bottom, got {len(self.param.bottom)} bottom(s) "
                             f"and {len(self.param.top)} top(s)")
        p = self.param.convolution_param
        shape = tuple(bottom_shapes[0])
        self.channel_axis = self.canonical_axis(p.axis, len(shape))
        self.geometry = _conv_geometry(self, len(shape) - self.channel_axis - 1)
        self.channels = shape[self.channel_axis]
        if p.num_output <= 0:
            raise self.error(f"num_output must be positive, got {p.num_output}")
        if p.group <= 0:
            raise self.error(f"group must be positive, got {p.group}")
        if self.channels % p.group:
            raise self.error(f"input channels ({self.channels}) must be a multiple of "
                             f"group ({p.group})")
        if p.num_output % p.group:
            raise self.error(f"Number of output should be multiples of group "
                             f"(num_output {p.num_output}, group {p.group}).")
        if self.transposed:
            weight_shape = (self.channels, p.num_output // p.group, *self.geometry.kernel)
        else:
            weight_shape = (p.num_output, self.channels // p.group, *self.geometry.kernel)
        shapes = [weight_shape] + ([(p.num_output,)] if p.bias_term else [])
        if len(self.param.blobs):
            if len(self.param.blobs) != len(shapes):
                raise self.error(f"Incorrect number of weight blobs: {len(self.param.blobs)} "
                                 f"given inline, expected {len(shapes)}")
            for i, want in enumerate(shapes):
                have = blob_proto_shape(self.param.blobs[i])
                if have != want:
                    raise self.error(f"Incorrect {'bias' if i else 'weight'} shape: expected "
                                     f"shape {shape_string(want)}; instead, shape was "
                                     f"{shape_string(have)}")
        self.add_blob(weight_shape, p.weight_filler)
        if p.bias_term:
            self.add_blob(shapes[1], p.bias_filler)

    def output_spatial(self, spatial: Sequence[int]) -> tuple[int, ...]:
        raise NotImplementedError

    def compute(self, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        """The layer on a (N, C, *spatial) input."""
        raise NotImplementedError

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        axis = self.channel_axis
        num_axes = axis + 1 + len(self.geometry.kernel)
        if len(shape) != num_axes:
            raise self.error(f"bottom num_axes may not change (set up with {num_axes}, "
                             f"now {len(shape)})")
        if shape[axis] != self.channels:
            raise self.error(f"Input size incompatible with convolution kernel: bottom has "
                             f"{shape[axis]} channels on axis {axis}, set up with "
                             f"{self.channels}")
        for j, other in enumerate(bottom_shapes[1:], 1):
            if tuple(other) != shape:
                raise self.error(f"shape mismatch - bottom[0]: {shape_string(shape)} vs. "
                                 f"bottom[{j}]: {shape_string(tuple(other))}")
        spatial = shape[axis + 1:]
        out = self.output_spatial(spatial)
        _check_output(self, out, spatial)
        top = (*shape[:axis], self.param.convolution_param.num_output, *out)
        return [top] * len(bottom_shapes)

    def forward(self, *bottoms: torch.Tensor) -> list[torch.Tensor]:
        weight = self.blob(0)
        bias = self.blob(1) if self.param.convolution_param.bias_term else None
        axis = self.channel_axis
        if axis == 1:  # the usual N×C×... blob: no reshape, so no view op or autograd node
            return [self.compute(x, weight, bias) for x in bottoms]
        tops = []
        for x in bottoms:
            # Axes before the channel axis are all batch (Caffe's num_).
            lead = x.shape[:axis]
            y = self.compute(x.reshape(math.prod(lead), *x.shape[axis:]), weight, bias)
            tops.append(y.reshape(*lead, *y.shape[1:]))
        return tops


@register("Convolution")
class Convolution(_ConvolutionBase):
    """Caffe's Convolution; weights (num_output, C/group, *kernel)."""

    def output_spatial(self, spatial: Sequence[int]) -> tuple[int, ...]:
        return self.geometry.conv_output(spatial)

    def compute(self, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        g = self.geometry
        groups = self.param.convolution_param.group
        spatial = tuple(x.shape[2:])
        conv = _CONV.get(len(spatial))
        if conv is None:
            right = g.right_pad(spatial)
            return _conv_generic(x, weight, bias, g.stride, g.pad, right, g.dilation, groups)
        pad, explicit = _conv_padding(g, spatial)
        if explicit is not None:
            x = F.pad(x, explicit)
        return conv(x, weight, bias, g.stride, pad, g.dilation, groups)


@functools.lru_cache(maxsize=4096)
def _conv_padding(g: ConvGeometry, spatial: tuple[int, ...]
                  ) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """(the convolution's padding, an F.pad argument to apply first or None)
    for an input of this size; worked out once per geometry and size, as a
    pass would otherwise redo it for every convolution."""
    right = g.right_pad(spatial)
    if any(r > p for r, p in zip(right, g.pad)):
        # An input shorter than one kernel extent: Caffe still computes
        # one output, reading the cells past the input as zeros.
        return (0,) * len(spatial), _pad_arg(g.pad, right)
    return g.pad, None


@register("Deconvolution")
class Deconvolution(_ConvolutionBase):
    """Caffe's Deconvolution (the transpose of Convolution, no output
    padding); weights (C, num_output/group, *kernel), torch's ConvTranspose
    layout."""
    transposed = True

    def output_spatial(self, spatial: Sequence[int]) -> tuple[int, ...]:
        return self.geometry.deconv_output(spatial)

    def compute(self, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        g = self.geometry
        groups = self.param.convolution_param.group
        deconv = _DECONV.get(x.dim() - 2)
        if deconv is not None:
            return deconv(x, weight, bias, g.stride, g.pad, 0, groups, g.dilation)
        return _deconv_generic(x, weight, bias, g, groups)


def _deconv_generic(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    g: ConvGeometry, groups: int) -> torch.Tensor:
    """A transposed convolution for the spatial ranks torch has no kernel
    for: spread the input `stride` apart with zeros, then convolve at stride 1
    with the per-group transposed, spatially flipped kernel, padded by
    extent-1-pad (negative: cropped)."""
    num, channels, *spatial = x.shape
    axes = len(spatial)
    if any(s > 1 for s in g.stride):
        spread = x.new_zeros(num, channels, *((n - 1) * s + 1 for n, s in zip(spatial, g.stride)))
        spread[(slice(None), slice(None), *(slice(None, None, s) for s in g.stride))] = x
        x = spread
    kernel = weight.shape[2:]
    w = weight.reshape(groups, channels // groups, -1, *kernel).transpose(1, 2)
    w = w.reshape(-1, channels // groups, *kernel)
    if axes:
        w = w.flip(tuple(range(2, 2 + axes)))
    border = tuple(e - 1 - p for e, p in zip(g.extent, g.pad))
    return _conv_generic(x, w, bias, (1,) * axes, border, border, g.dilation, groups)


@register("Im2col")
class Im2col(Layer):
    """Caffe's Im2col: the convolution's column buffer as a top,
    (..., C*prod(kernel), *out) with the channel axis at `axis`."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        shape = tuple(bottom_shapes[0])
        self.channel_axis = self.canonical_axis(self.param.convolution_param.axis, len(shape))
        num_spatial = len(shape) - self.channel_axis - 1
        if num_spatial < 1:
            raise self.error(f"needs at least 1 spatial axis after channel axis "
                             f"{self.channel_axis}, bottom is {shape_string(shape)}")
        self.geometry = _conv_geometry(self, num_spatial)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        axis, g = self.channel_axis, self.geometry
        if len(shape) != axis + 1 + len(g.kernel):
            raise self.error(f"bottom num_axes may not change (set up with "
                             f"{axis + 1 + len(g.kernel)}, now {len(shape)})")
        spatial = shape[axis + 1:]
        out = g.conv_output(spatial)
        _check_output(self, out, spatial)
        return [(*shape[:axis], shape[axis] * math.prod(g.kernel), *out)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        g, axis = self.geometry, self.channel_axis
        lead = x.shape[:axis]
        x = x.reshape(math.prod(lead), *x.shape[axis:])
        spatial = x.shape[2:]
        right = g.right_pad(spatial)
        cols = _im2col(x, g.kernel, g.stride, g.pad, right, g.dilation)
        return [cols.reshape(*lead, *cols.shape[1:])]


# -- pooling ------------------------------------------------------------

@dataclass(frozen=True)
class PoolGeometry:
    """One 2-D pooling: method, (h, w) kernel, stride and pad, rounding."""
    method: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    ceil: bool = True

    def output(self, spatial: Sequence[int]) -> tuple[int, int]:
        """Caffe's pooled size: (in + 2*pad - k) / stride rounded up (CEIL)
        or down in float32, + 1; only when some pad is set, a last window
        that would start in the padding past the input is dropped."""
        rnd = np.ceil if self.ceil else np.floor
        out = [int(rnd(np.float32(n + 2 * p - k) / np.float32(s))) + 1
               for n, p, k, s in zip(spatial, self.pad, self.kernel, self.stride)]
        if any(self.pad):
            out = [o - 1 if (o - 1) * s >= n + p else o
                   for o, n, p, s in zip(out, spatial, self.pad, self.stride)]
        return out[0], out[1]

    def torch_output(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """The size torch's pooling kernels give with the same arguments
        (they drop a last window starting past input + pad even with pad 0)."""
        out = []
        for n, p, k, s in zip(spatial, self.pad, self.kernel, self.stride):
            o = (n + 2 * p - k + (s - 1 if self.ceil else 0)) // s + 1
            out.append(o - 1 if self.ceil and (o - 1) * s >= n + p else o)
        return tuple(out)

    def right_pad(self, spatial: Sequence[int], out: Sequence[int]) -> tuple[int, ...]:
        """Right padding (negative: crop) so `out` windows tile each axis."""
        return tuple((o - 1) * s + k - p - n
                     for n, o, p, k, s in zip(spatial, out, self.pad, self.kernel, self.stride))


def _check_pool(layer: Layer, g: PoolGeometry) -> None:
    """Caffe's PoolingLayer::LayerSetUp checks on the resolved geometry."""
    if min(g.kernel) <= 0:
        raise layer.error(f"Filter dimensions cannot be zero (kernel {list(g.kernel)}).")
    if min(g.stride) <= 0:
        raise layer.error(f"stride must be positive, got {list(g.stride)}")
    if any(g.pad):
        if g.method not in (PoolParam.MAX, PoolParam.AVE):
            raise layer.error("Padding implemented only for average and max pooling.")
        if g.pad[0] >= g.kernel[0] or g.pad[1] >= g.kernel[1]:
            raise layer.error(f"pad {list(g.pad)} must be smaller than the kernel "
                              f"{list(g.kernel)}")


def _check_4d(layer: Layer, shape: Shape) -> None:
    if len(shape) != 4:
        raise layer.error(f"Input must have 4 axes, corresponding to (num, channels, height, "
                          f"width); got {shape_string(shape)}")


def _pool_shape(layer: Layer, g: PoolGeometry, shape: Shape) -> tuple[int, int, int, int]:
    out = g.output(shape[2:])
    _check_output(layer, out, shape[2:])
    return (shape[0], shape[1], *out)


def pool(x: torch.Tensor, g: PoolGeometry, train: bool,
         want_mask: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Caffe's pooling of a (N, C, H, W) tensor; with `want_mask`, MAX also
    returns Caffe's argmax top (flat index h*W + w, as float; -1 where a
    window holds no input cell)."""
    spatial = tuple(x.shape[2:])
    out, native = _pool_plan(g, spatial)
    if g.method == PoolParam.STOCHASTIC:
        return _stochastic_pool(x, g, out, train), None
    if native:
        # torch's kernels share Caffe's window clipping, first-maximum argmax
        # and AVE divisor (padding counted, overhang not) for this geometry.
        if g.method == PoolParam.AVE:
            return F.avg_pool2d(x, g.kernel, g.stride, g.pad, ceil_mode=g.ceil,
                                count_include_pad=True), None
        if not want_mask:
            return F.max_pool2d(x, g.kernel, g.stride, g.pad, ceil_mode=g.ceil), None
        y, index = F.max_pool2d(x, g.kernel, g.stride, g.pad, ceil_mode=g.ceil,
                                return_indices=True)
        return y, index.to(x.dtype)
    # Geometry beyond torch's kernels: pad explicitly (or crop) so the windows
    # tile the padded input, then pool it unpadded.
    right = g.right_pad(spatial, out)
    if g.method == PoolParam.AVE:
        sums = F.avg_pool2d(F.pad(x, _pad_arg(g.pad, right)), g.kernel, g.stride,
                            divisor_override=1)
        return sums / _ave_divisor(g, spatial, out, x), None
    padded = F.pad(x, _pad_arg(g.pad, right), value=-math.inf)
    if want_mask:
        y, index = F.max_pool2d(padded, g.kernel, g.stride, return_indices=True)
    else:
        y, index = F.max_pool2d(padded, g.kernel, g.stride), None
    if any((o - 1) * s - p >= n for o, s, p, n in zip(out, g.stride, g.pad, spatial)):
        # Windows past the input (kernel < stride, no pad) keep Caffe's -FLT_MAX.
        y = y.clamp_min(-FLT_MAX)
    if index is None:
        return y, None
    width = padded.shape[3]
    h = torch.div(index, width, rounding_mode="floor") - g.pad[0]
    w = index % width - g.pad[1]
    inside = (h >= 0) & (h < spatial[0]) & (w >= 0) & (w < spatial[1])
    mask = torch.where(inside, h * spatial[1] + w, torch.full_like(index, -1))
    return y, mask.to(x.dtype)


@functools.lru_cache(maxsize=4096)
def _pool_plan(g: PoolGeometry, spatial: tuple[int, ...]) -> tuple[tuple[int, int], bool]:
    """(Caffe's output size, whether torch's kernels compute it as Caffe
    does) for an input of this size; worked out once per geometry and size,
    as a pass would otherwise redo it for every pooling."""
    out = g.output(spatial)
    return out, (g.torch_output(spatial) == out and
                 all(p <= k // 2 for p, k in zip(g.pad, g.kernel)))


def _ave_divisor(g: PoolGeometry, spatial: Sequence[int], out: Sequence[int],
                 like: torch.Tensor) -> torch.Tensor:
    """Caffe's AVE pool_size per output: the window clipped to input + pad,
    measured before clipping to the input. A window past the input gets 0 or
    a negative size; Caffe divides by it all the same (0/0 is NaN)."""
    sizes = []
    for n, o, p, k, s in zip(spatial, out, g.pad, g.kernel, g.stride):
        start = torch.arange(o, device=like.device) * s - p
        sizes.append(torch.clamp_max(start + k, n + p) - start)
    return (sizes[0][:, None] * sizes[1][None, :]).to(like.dtype)


def _stochastic_pool(x: torch.Tensor, g: PoolGeometry, out: tuple[int, int],
                     train: bool) -> torch.Tensor:
    """Caffe's STOCHASTIC pooling (its GPU kernels; windows never padded).
    TRAIN: draw u in (0, 1] per window and output the first cell, in row-major
    order, whose running sum reaches u * (window sum): a cell is picked with
    probability proportional to its (non-negative) activation, and the
    gradient flows to it. TEST: sum(x^2) / sum(x), 0 when sum(x) <= 0."""
    num, channels, *spatial = x.shape
    # Zero cells past the input add nothing to the sums; they can only be
    # picked in a window lying wholly outside the input, which outputs 0 as
    # Caffe's never-written top does.
    padded = F.pad(x, _pad_arg((0, 0), g.right_pad(spatial, out)))
    if not train:
        total = F.avg_pool2d(padded, g.kernel, g.stride, divisor_override=1)
        squares = F.avg_pool2d(padded * padded, g.kernel, g.stride, divisor_override=1)
        positive = total > 0
        safe = torch.where(positive, total, torch.ones_like(total))
        return torch.where(positive, squares / safe, torch.zeros_like(total))
    cols = F.unfold(padded, g.kernel, stride=g.stride)
    cols = cols.reshape(num, channels, math.prod(g.kernel), -1)
    with torch.no_grad():
        running = cols.cumsum(2)
        # Caffe's curand uniform draws are in (0, 1], so a zero cell is never
        # picked ahead of a later positive one.
        u = 1 - torch.rand(num, channels, 1, cols.shape[3], device=x.device, dtype=x.dtype)
        reached = running >= u * running[:, :, -1:]
        first = reached.to(torch.uint8).argmax(2, keepdim=True)
        found = reached.any(2)
    y = cols.gather(2, first).squeeze(2)
    # No cell reaches the threshold only for a negative window sum, outside
    # Caffe's assumption of non-negative input; its top then stays unwritten.
    y = torch.where(found, y, torch.zeros_like(y))
    return y.reshape(num, channels, *out)


@register("Pooling")
class Pooling(Layer):
    """Caffe's Pooling: MAX (optional 2nd top: the argmax mask), AVE,
    STOCHASTIC; CEIL rounding by default; global_pooling pools the whole
    plane."""
    tops = (1, 2)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.pooling_param
        if len(self.param.top) > 1 and p.pool != PoolParam.MAX:
            raise self.error(f"only MAX pooling has a 2nd (mask) top; pool is "
                             f"{PoolParam.PoolMethod.Name(p.pool)}")
        has_size, has_h, has_w = (p.HasField(f) for f in ("kernel_size", "kernel_h", "kernel_w"))
        if p.global_pooling:
            if has_size or has_h or has_w:
                raise self.error("With Global_pooling: true Filter size cannot specified")
        elif has_size == (has_h and has_w):
            raise self.error("Filter size is kernel_size OR kernel_h and kernel_w; not both; "
                             "for non-square filters both kernel_h and kernel_w are required.")
        for name in ("pad", "stride"):
            has_one, has_h, has_w = (p.HasField(f) for f in (name, f"{name}_h", f"{name}_w"))
            if not ((not has_one and has_h and has_w) or (not has_h and not has_w)):
                raise self.error(f"{name} is {name} OR {name}_h and {name}_w are required.")
        self.pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") else (p.pad, p.pad)
        self.stride = (p.stride_h, p.stride_w) if p.HasField("stride_h") else (p.stride, p.stride)
        if p.global_pooling and (any(self.pad) or self.stride != (1, 1)):
            raise self.error("With Global_pooling: true; only pad = 0 and stride = 1")
        self.kernel = (p.kernel_size, p.kernel_size) if has_size else (p.kernel_h, p.kernel_w)
        _check_4d(self, tuple(bottom_shapes[0]))
        geometry = self.geometry(bottom_shapes[0])
        _check_pool(self, geometry)
        # Only a global pooling's geometry follows the input's size.
        self._fixed_geometry = None if p.global_pooling else geometry

    def geometry(self, shape: Shape) -> PoolGeometry:
        p = self.param.pooling_param
        kernel = (shape[2], shape[3]) if p.global_pooling else self.kernel
        return PoolGeometry(p.pool, kernel, self.stride, self.pad,
                            ceil=p.round_mode == PoolParam.CEIL)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        _check_4d(self, shape)
        return [_pool_shape(self, self.geometry(shape), shape)] * len(self.param.top)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        want_mask = len(self.param.top) > 1
        g = self._fixed_geometry or self.geometry(tuple(x.shape))
        y, mask = pool(x, g, self.phase == TRAIN, want_mask)
        return [y] if mask is None else [y, mask]


@register("SPP")
class SPP(Layer):
    """Spatial pyramid pooling: level l pools into 2^l x 2^l bins (kernel and
    stride ceil(H / bins), pad (kernel*bins - H + 1) / 2); the levels are
    flattened and concatenated, except that a 1-level pyramid outputs its
    pooling (N, C, 1, 1) as is."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        if self.param.spp_param.pyramid_height < 1:
            raise self.error(f"pyramid_height must be at least 1, got "
                             f"{self.param.spp_param.pyramid_height}")
        self.reshape(bottom_shapes)

    def levels(self, shape: Shape) -> list[PoolGeometry]:
        _check_4d(self, shape)
        if shape[2] <= 0 or shape[3] <= 0:
            raise self.error(f"Input dimensions cannot be zero, got {shape_string(shape)}")
        p = self.param.spp_param
        levels = []
        for level in range(p.pyramid_height):
            bins = 2 ** level
            kernel = tuple(-(-n // bins) for n in shape[2:])
            pad = tuple((k * bins - n + 1) // 2 for k, n in zip(kernel, shape[2:]))
            g = PoolGeometry(p.pool, (kernel[0], kernel[1]), (kernel[0], kernel[1]),
                             (pad[0], pad[1]))
            _check_pool(self, g)
            levels.append(g)
        return levels

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        tops = [_pool_shape(self, g, shape) for g in self.levels(shape)]
        if len(tops) == 1:
            return tops
        return [(shape[0], sum(math.prod(top[1:]) for top in tops))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Caffe builds the pyramid's pooling layers from a fresh LayerParameter,
        # whose phase is TRAIN: STOCHASTIC levels sample in every phase.
        pooled = [pool(x, g, train=True)[0] for g in self.levels(tuple(x.shape))]
        if len(pooled) == 1:
            return pooled
        return [torch.cat([y.flatten(1) for y in pooled], dim=1)]


@register("LRN")
class LRN(Layer):
    """Local response normalization, y = x * scale^-beta.
    ACROSS_CHANNELS: scale = k + alpha/n * (sum of x^2 over n neighbouring
    channels, zero-padded). WITHIN_CHANNEL: scale = 1 + alpha * (mean of x^2
    over an n x n zero-padded neighbourhood); Caffe builds it from Power and
    Pooling layers whose shift is fixed at 1, so k is ignored."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        if self.param.lrn_param.local_size % 2 != 1:
            raise self.error(f"LRN only supports odd values for local_size, got "
                             f"{self.param.lrn_param.local_size}")

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        _check_4d(self, shape)
        return [shape]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.param.lrn_param
        size = p.local_size
        if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            return [F.local_response_norm(x, size, p.alpha, p.beta, p.k)]
        mean = F.avg_pool2d(x * x, size, 1, (size - 1) // 2, count_include_pad=True)
        return [x * (1 + p.alpha * mean).pow(-p.beta)]


@register("Crop")
class Crop(Layer):
    """Crops bottom[0] to bottom[1]'s size on every axis from `axis` on,
    starting at `offset` (one for all those axes, or one per axis; default
    0). Only bottom[0] gets a gradient."""
    bottoms = (2, 2)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.crop_param
        num_axes = len(bottom_shapes[0])
        self.start_axis = self.canonical_axis(p.axis, num_axes)
        if len(p.offset) > 1 and self.start_axis + len(p.offset) != num_axes:
            raise self.error(f"number of offset values specified must be equal to the number "
                             f"of dimensions following axis ({len(p.offset)} offsets, axes "
                             f"{self.start_axis}..{num_axes - 1})")

    def window(self, shape: Shape, ref: Shape) -> tuple[slice, ...]:
        """Per-axis slices of bottom[0] (Caffe's CropLayer::Reshape)."""
        offsets = self.param.crop_param.offset
        if len(ref) < len(shape):
            raise self.error(f"bottom[1] {shape_string(ref)} needs at least as many axes as "
                             f"bottom[0] {shape_string(shape)}")
        window = []
        for i, size in enumerate(shape):
            if i < self.start_axis:
                window.append(slice(None))
                continue
            offset = offsets[0 if len(offsets) == 1 else i - self.start_axis] if offsets else 0
            if size - offset < ref[i]:
                raise self.error(f"the crop for dimension {i} is out-of-bounds with size "
                                 f"{ref[i]} and offset {offset} (bottom[0] has {size})")
            window.append(slice(offset, offset + ref[i]))
        return tuple(window)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        if len(shape) <= self.start_axis:
            raise self.error(f"crop axis {self.start_axis} bigger than input dim "
                             f"{shape_string(shape)}")
        window = self.window(shape, tuple(bottom_shapes[1]))
        return [tuple(len(range(n)[w]) for n, w in zip(shape, window))]

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> list[torch.Tensor]:
        return [x[self.window(tuple(x.shape), tuple(ref.shape))]]

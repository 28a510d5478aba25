"""Element-wise neuron layers (Caffe's NeuronLayer family and PReLU).

Each maps one bottom to one top of the same shape. Most are a single fused
torch op whose autograd gradient is Caffe's; BNLL, Power, Threshold use a
torch.autograd.Function because Caffe's backward is not the exact derivative
(BNLL's clamp, Power's y/x quotient) or does not exist (Threshold).
Constants Caffe derives from its parameters are rounded to float32 as Caffe
computes them in Dtype.

In place (top named as its bottom), Caffe's layer writes its top over the
bottom, and the backward of ReLU, ELU, BNLL, Power, Log and Clip, which
reads the bottom's data, reads the top instead. Where that changes the
gradient (ReLU with negative_slope < 0, ELU with alpha < 0, and the other
four always) the layer's backward does the same, through _CaffeGradient.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from caffe_ft.errors import CaffeError
from caffe_ft.layers.base import Layer, Shape
from caffe_ft.layers.registry import register
from caffe_ft.proto import caffe_pb2

# Caffe's kBNLL_THRESHOLD: BNLL's backward clamps its exp argument here.
BNLL_THRESHOLD = 50.0


def _f32(value: float) -> float:
    """`value` rounded to float32, as Caffe holds a Dtype constant."""
    return float(np.float32(value))


# Caffe's dy/dx of a neuron layer from its bottom and top data.
Gradient = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _CaffeGradient(torch.autograd.Function):
    """compute(x), with Caffe's backward dx = dy * gradient(bottom, top).
    Run in place, the bottom's data Caffe reads is the top it overwrote."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor,
                compute: Callable[[torch.Tensor], torch.Tensor], gradient: Gradient,
                in_place: bool) -> torch.Tensor:
        y = compute(x)
        ctx.save_for_backward(y if in_place else x, y)
        ctx.gradient = gradient
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 dy: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        bottom, top = ctx.saved_tensors
        return dy * ctx.gradient(bottom, top), None, None, None


def _caffe_backward(layer: Layer, x: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor],
                    gradient: Gradient, overwrites: bool = True,
                    autograd_is_caffes: bool = True) -> torch.Tensor:
    """compute(x), whose backward is Caffe's `gradient`. Torch's autograd
    of `compute` serves where it gives the same (`autograd_is_caffes`) and
    the layer does not run in place in a way that changes it (`overwrites`)."""
    in_place = layer.param.top[0] == layer.param.bottom[0]
    if not autograd_is_caffes or (x.requires_grad and overwrites and in_place):
        return _CaffeGradient.apply(x, compute, gradient, in_place)
    return compute(x)


@register("ReLU")
class ReLU(Layer):
    """max(x, 0) + negative_slope * min(x, 0); the gradient at x == 0 is
    negative_slope (Caffe tests x > 0), which is what torch's kernels use too."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        slope = self.param.relu_param.negative_slope
        if slope == 0:
            return [torch.relu(x)]  # the common case, with autograd's (Caffe's) gradient
        # A negative slope flips the sign of the top where x < 0, so in place
        # Caffe's test of the (overwritten) bottom passes those gradients at 1.
        return [_caffe_backward(
            self, x, lambda t: torch.relu(t) if slope == 0 else F.leaky_relu(t, slope),
            lambda bottom, top: (bottom > 0).to(bottom.dtype) + slope * (bottom <= 0).to(
                bottom.dtype), overwrites=slope < 0)]


@register("PReLU")
class PReLU(Layer):
    """ReLU with a learned negative slope per channel (axis 1), or one shared
    0-axis slope. torch's prelu takes the slope branch at x == 0, as Caffe does."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        shape = bottom_shapes[0]
        if len(shape) < 2:
            raise self.error(f"Number of axes of bottom blob must be >=2, got {len(shape)}")
        p = self.param.prelu_param
        if p.HasField("filler"):
            filler = p.filler
        else:
            filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
        self.add_blob(() if p.channel_shared else (shape[1],), filler)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        if len(shape) < 2:
            raise self.error(f"Number of axes of bottom blob must be >=2, got {len(shape)}")
        if not self.param.prelu_param.channel_shared and self.blob(0).numel() != shape[1]:
            raise self.error(f"Negative slope size {self.blob(0).numel()} is inconsistent "
                             f"with the bottom's {shape[1]} channels")
        return [shape]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.prelu(x, self.blob(0).reshape(-1))]


@register("ELU")
class ELU(Layer):
    """max(x, 0) + alpha * (exp(min(x, 0)) - 1); gradient alpha * exp(x) = y + alpha
    for x <= 0, as Caffe's."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        alpha = self.param.elu_param.alpha
        return [_caffe_backward(
            self, x, lambda t: F.elu(t, alpha),
            lambda bottom, top: (bottom > 0).to(bottom.dtype) + (alpha + top) * (
                bottom <= 0).to(bottom.dtype), overwrites=alpha < 0)]


@register("Sigmoid")
class Sigmoid(Layer):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.sigmoid(x)]


@register("TanH")
class TanH(Layer):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.tanh(x)]


@register("AbsVal")
class AbsVal(Layer):
    """|x| with gradient sign(x), sign(0) = 0."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        # Caffe's backward reads the bottom's sign, which an in-place top would
        # have overwritten with |x|; Caffe refuses it, so do we.
        if self.param.top[0] == self.param.bottom[0]:
            raise self.error("AbsVal Layer does not allow in-place computation.")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.abs(x)]


def _bnll_gradient(bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Caffe's e / (e + 1) with e = exp(min(x, 50))."""
    return torch.sigmoid(bottom.clamp(max=BNLL_THRESHOLD))


@register("BNLL")
class BNLL(Layer):
    """log(1 + exp(x)), with Caffe's clamped gradient."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [_caffe_backward(self, x, F.softplus, _bnll_gradient, autograd_is_caffes=False)]


def _affine(x: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """scale * x + shift, skipping the identity steps as Caffe does."""
    if scale != 1:
        x = x * scale
    if shift != 0:
        x = x + shift
    return x


def _power_gradient(x: torch.Tensor, y: torch.Tensor, power: float, scale: float,
                    shift: float) -> torch.Tensor:
    """Caffe's backward for power != 1: for power 2 it is 2*scale*(shift +
    scale*x); otherwise it divides the output by the base (power * y / x
    when shift is 0), so a zero base gives NaN or inf exactly where Caffe's
    does."""
    diff_scale = _f32(power * scale)
    if power == 2:
        dydx = x * _f32(diff_scale * scale)
        if shift != 0:
            dydx = dydx + _f32(diff_scale * shift)
    elif shift == 0:
        dydx = y / x * power
    else:
        dydx = y / _affine(x, scale, shift)
        if diff_scale != 1:
            dydx = dydx * diff_scale
    return dydx


@register("Power")
class Power(Layer):
    """(shift + scale * x) ^ power. When power * scale == 0 the input is ignored:
    the top is the constant 1 (power 0) or shift ^ power, with zero gradient."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.param.power_param
        power, scale, shift = p.power, p.scale, p.shift
        if _f32(power * scale) == 0:
            value = 1.0 if power == 0 else float(np.float32(shift) ** np.float32(power))
            return [torch.full_like(x, value)]
        if power == 1:
            # The gradient is the constant scale: autograd of the affine map is exact.
            return [_affine(x, scale, shift)]
        return [_caffe_backward(
            self, x, lambda t: _affine(t, scale, shift).pow(power),
            lambda bottom, top: _power_gradient(bottom, top, power, scale, shift),
            autograd_is_caffes=False)]


def _log_of_base(layer: Layer, base: float) -> float:
    """ln(base) in float32, exactly 1 for Caffe's base -1 (meaning e)."""
    if base == -1:
        return 1.0
    if not base > 0:
        raise layer.error(f"base must be strictly positive, got {base}")
    log_base = _f32(np.log(np.float32(base)))
    if not np.isfinite(log_base):
        raise layer.error(f"ln(base) = {log_base} for base {base}; it must be finite")
    return log_base


@register("Exp")
class Exp(Layer):
    """base ^ (shift + scale * x) computed as outer * exp(inner * x), with
    inner = ln(base) * scale and outer = base ^ shift (Caffe's factoring);
    base -1 means e."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.exp_param
        self.inner_scale = _f32(_log_of_base(self, p.base) * p.scale)
        if p.shift == 0:
            self.outer_scale = 1.0
        elif p.base == -1:
            self.outer_scale = _f32(np.exp(np.float32(p.shift)))
        else:
            self.outer_scale = float(np.float32(p.base) ** np.float32(p.shift))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = torch.exp(x if self.inner_scale == 1 else x * self.inner_scale)
        return [y if self.outer_scale == 1 else y * self.outer_scale]


@register("Log")
class Log(Layer):
    """log_base(shift + scale * x) = ln(shift + scale * x) / ln(base); base -1 means e."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        base = self.param.log_param.base
        log_base = _log_of_base(self, base)
        if log_base == 0:
            raise self.error(f"1/ln(base) is infinite for base {base}")
        self.base_scale = _f32(1.0 / log_base)
        # Caffe's backward_num_scale_: scale / ln(base) in float32.
        self.num_scale = float(np.float32(self.param.log_param.scale) / np.float32(log_base))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.param.log_param
        base_scale, num_scale = self.base_scale, self.num_scale
        # Caffe's backward: 1 / (shift + scale * bottom) times scale / ln(base).

        def compute(t: torch.Tensor) -> torch.Tensor:
            y = torch.log(_affine(t, p.scale, p.shift))
            return y if base_scale == 1 else y * base_scale

        return [_caffe_backward(
            self, x, compute,
            lambda bottom, top: _affine(bottom, p.scale, p.shift).reciprocal() * num_scale)]


class _ThresholdFunction(torch.autograd.Function):
    """x > threshold ? 1 : 0. Caffe implements no backward for Threshold and
    aborts if one reaches it; so does this."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, threshold: float,
                name: str) -> torch.Tensor:
        ctx.layer_name = name
        return (x > threshold).to(x.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor) -> None:
        raise CaffeError(f"Layer '{ctx.layer_name}' (Threshold): Threshold has no backward "
                         f"(Caffe: Not Implemented); set propagate_down: false on it or keep "
                         f"it off the path to the loss")


@register("Threshold")
class Threshold(Layer):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        threshold = self.param.threshold_param.threshold
        if not x.requires_grad:
            return [(x > threshold).to(x.dtype)]
        return [_ThresholdFunction.apply(x, threshold, self.name)]


@register("Swish")
class Swish(Layer):
    """x * sigmoid(beta * x); Caffe's gradient beta*y + s*(1 - beta*y) is the
    exact derivative, so autograd (or fused SiLU for beta 1) gives it."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        beta = self.param.swish_param.beta
        return [F.silu(x) if beta == 1 else x * torch.sigmoid(x * beta)]


@register("Clip")
class Clip(Layer):
    """max(min, min(x, max)); gradient 1 iff min <= x <= max (both ends inclusive)."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.param.clip_param
        if p.min <= p.max:
            # torch's clamp passes the gradient on the closed interval, as Caffe does;
            # in place Caffe tests the clipped top, which is always inside.
            return [_caffe_backward(
                self, x, lambda t: torch.clamp(t, p.min, p.max),
                lambda bottom, top: ((bottom >= p.min) & (bottom <= p.max)).to(bottom.dtype))]
        # An empty interval: Caffe's max(min, min(x, max)) is the constant min
        # (torch's clamp would give max) and no x gets a gradient.
        return [torch.clamp_max(x, p.max).clamp_min(p.min)]

"""Normalization and broadcast-affine layers: BatchNorm, Scale, Bias, MVN, Softmax."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from caffe_ft.layers.activation import ReLU
from caffe_ft.layers.base import Layer, Shape
from caffe_ft.layers.registry import register
from caffe_ft.proto import caffe_pb2


@register("BatchNorm")
class BatchNorm(Layer):
    """Caffe's BatchNorm: normalization only (no affine; that is a Scale layer).

    Blobs: [0] mean accumulator (C), [1] variance accumulator (C), [2] scale
    factor (1). With batch statistics (TRAIN by default) every forward updates
    them as s = maf*s + 1, mean = maf*mean + E[x], var = maf*var + m/(m-1)*Var[x],
    so mean/s and var/s are a bias-corrected moving average; global statistics
    (TEST by default) normalize with mean/s and var/s. The blobs are never
    trained: Caffe forces their lr_mult to 0 and computes no diff for them.

    Followed in place by a per-channel Scale (and a ReLU), it can run them as
    one autograd step that saves less for backward (caffe_ft.net.fusion
    decides where): `absorbs` and `forward_chain`.
    """

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        shape = bottom_shapes[0]
        if len(shape) < 2:
            # Caffe reads shape(1) in Reshape, which fails for fewer axes.
            raise self.error(f"needs a bottom with at least 2 axes (N, C, ...), got {len(shape)}")
        p = self.param.batch_norm_param
        self.use_global_stats = (p.use_global_stats if p.HasField("use_global_stats")
                                 else self.phase == caffe_pb2.TEST)
        self.channels = shape[1]
        for size in (self.channels, self.channels, 1):
            self.add_blob((size,), trainable=False)
        # The net reads lr_mult from these ParamSpecs, so the statistics stay
        # out of the solver's reach, exactly as Caffe's LayerSetUp arranges.
        for i in range(len(self.blobs)):
            if len(self.param.param) == i:
                self.param.param.add(lr_mult=0.0)
            elif self.param.param[i].lr_mult != 0:
                raise self.error("Cannot configure batch normalization statistics as layer "
                                 f"parameters (param {i} has lr_mult "
                                 f"{self.param.param[i].lr_mult:g}; it must be 0).")

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        if len(shape) < 2 or shape[1] != self.channels:
            raise self.error(f"bottom shape {list(shape)} needs {self.channels} channels on axis 1")
        return [shape]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        eps = self.param.batch_norm_param.eps
        if self.use_global_stats:
            return [F.batch_norm(x, *self._global_stats(), training=False, eps=eps)]
        if self._one_value_per_channel(x):
            # It is its own mean, the output is 0 and so is Caffe's gradient;
            # torch's batch_norm refuses this case.
            self._accumulate(x.detach().reshape(self.channels),
                             torch.zeros(self.channels, dtype=x.dtype, device=x.device))
            return [x - x]
        # With momentum 1 torch writes the batch mean and the unbiased
        # (m/(m-1)-corrected) batch variance into these, exactly the terms
        # Caffe accumulates; the normalization itself uses the biased one.
        batch_mean, batch_var = self._batch_buffers(x)
        y = F.batch_norm(x, batch_mean, batch_var, training=True, momentum=1.0, eps=eps)
        self._accumulate(batch_mean, batch_var)
        return [y]

    def _global_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """mean/s and var/s, detached: Caffe's backward gives the statistics no diff."""
        mean_sum, var_sum, factor = (self.blob(i).detach() for i in range(3))
        scale = torch.where(factor == 0, torch.zeros_like(factor), factor.reciprocal())
        return mean_sum * scale, var_sum * scale

    def _one_value_per_channel(self, x: torch.Tensor) -> bool:
        return x.numel() // self.channels == 1

    def _batch_buffers(self, x: torch.Tensor, dtype: torch.dtype | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.zeros(self.channels, dtype=dtype or x.dtype, device=x.device)
        return mean, torch.zeros_like(mean)

    def _accumulate(self, batch_mean: torch.Tensor, batch_var: torch.Tensor) -> None:
        """Caffe's running sums: s = maf*s + 1, mean = maf*mean + E[x], var = maf*var + Var[x]."""
        maf = self.param.batch_norm_param.moving_average_fraction
        with torch.no_grad():
            self.blob(2).mul_(maf).add_(1)
            self.blob(0).mul_(maf).add_(batch_mean)
            self.blob(1).mul_(maf).add_(batch_var)

    # -- BatchNorm → Scale → ReLU as one step (caffe_ft.net.fusion) ------
    def absorbs(self, chain: Sequence[Layer], follower: Layer) -> bool:
        """A per-channel learned Scale first, then a ReLU whose sign its top
        keeps (negative_slope ≥ 0), so its backward can read the chain's top."""
        if not chain:
            if not isinstance(follower, Scale) or len(follower.param.bottom) != 1 or \
                    follower.param.scale_param.axis != 1:
                return False
            return all(tuple(follower.blob(i).shape) == (self.channels,)
                       for i in range(len(follower.blobs)))
        return (len(chain) == 1 and isinstance(follower, ReLU)
                and follower.param.relu_param.negative_slope >= 0)

    def forward_chain(self, x: torch.Tensor, chain: Sequence[Layer]) -> list[torch.Tensor]:
        scale_layer = chain[0]
        params = [scale_layer.blob(i) for i in range(len(scale_layer.blobs))]
        wants_grad = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in params))
        if not wants_grad or (not self.use_global_stats and self._one_value_per_channel(x)):
            # Nothing to save for backward, or the case torch's kernels refuse:
            # each layer by itself gives the same numbers.
            tops = self.forward(x)
            for layer in chain:
                tops = layer(*tops)
            return tops
        axis = _broadcast_axis(scale_layer, tuple(x.shape), tuple(params[0].shape), 1)
        slope = chain[1].param.relu_param.negative_slope if len(chain) > 1 else None
        eps = self.param.batch_norm_param.eps
        if torch.is_autocast_enabled(x.device.type):
            return [self._affine_chain(x, params, slope, eps)]
        scale, *bias = (_broadcastable(p, x.dim(), axis) for p in params)
        if self.use_global_stats:
            mean, var = self._global_stats()
            return [_BatchNormScaleReLU.apply(x, scale, bias[0] if bias else None, mean, var,
                                              False, eps, slope)]
        batch_mean, batch_var = self._batch_buffers(x)
        top = _BatchNormScaleReLU.apply(x, scale, bias[0] if bias else None, batch_mean,
                                        batch_var, True, eps, slope)
        self._accumulate(batch_mean, batch_var)
        return [top]


    def _affine_chain(self, x: torch.Tensor, params: Sequence[torch.Tensor],
                      slope: float | None, eps: float) -> torch.Tensor:
        """The chain under autocast (the solver's bf16 and fp16 modes), where
        no one expects Caffe's float32 bits: one batch norm with the Scale as
        its affine (cuDNN's fused kernel on a GPU, in x's dtype), then the
        ReLU in place, as a handwritten module runs it. The running sums are
        Caffe's, from float32 batch statistics."""
        weight, bias = params[0].reshape(-1), params[1].reshape(-1) if len(params) > 1 else None
        if self.use_global_stats:
            top = F.batch_norm(x, *self._global_stats(), weight, bias, training=False, eps=eps)
        else:
            # Statistics in the affine's float32, as the mixed-dtype kernels want them.
            batch_mean, batch_var = self._batch_buffers(x, weight.dtype)
            top = F.batch_norm(x, batch_mean, batch_var, weight, bias, training=True,
                               momentum=1.0, eps=eps)
            self._accumulate(batch_mean, batch_var)
        if slope is None:
            return top
        return torch.relu_(top) if slope == 0 else F.leaky_relu_(top, slope)


class _BatchNormScaleReLU(torch.autograd.Function):
    """relu(scale * batch_norm(x) + bias), ReLU optional (slope None), with the
    very kernels and gradient formulas autograd runs for the three layers, so
    every number is the same; but only x, the top and per-channel tensors are
    saved. The BatchNorm output the Scale's gradient needs is recomputed from
    x, and the ReLU's mask is read from the top, whose sign is the input's.

    In training (`training`), running_mean/var are the batch buffers torch's
    kernel fills; with global statistics they are mean/s and var/s."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor | None, running_mean: torch.Tensor, running_var: torch.Tensor,
                training: bool, eps: float, slope: float | None) -> torch.Tensor:
        # F.batch_norm without weight and bias is this kernel (NativeBatchNormBackward0).
        y, save_mean, save_invstd = torch.native_batch_norm(
            x, None, None, running_mean, running_var, training, 1.0, eps)
        top = y * scale if bias is None else torch.addcmul(bias, y, scale)
        del y
        if slope is not None:
            top = torch.relu_(top) if slope == 0 else F.leaky_relu_(top, slope)
        saved = [x, scale, running_mean, running_var, save_mean, save_invstd]
        ctx.save_for_backward(*saved, *([top] if slope is not None else []))
        ctx.config = (training, eps, slope, None if bias is None else bias.shape)
        return top

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dtop: torch.Tensor
                 ) -> tuple[torch.Tensor | None, ...]:
        x, scale, running_mean, running_var, save_mean, save_invstd, *top = ctx.saved_tensors
        training, eps, slope, bias_shape = ctx.config
        dz = dtop
        if slope == 0:
            dz = torch.ops.aten.threshold_backward(dtop, top[0], 0)
        elif slope is not None:
            dz = torch.ops.aten.leaky_relu_backward(dtop, top[0], slope, True)
        dx = dscale = dbias = None
        if ctx.needs_input_grad[1]:
            # Batch statistics are recomputed exactly: the same kernel on the same x.
            buffers = ((torch.zeros_like(running_mean), torch.zeros_like(running_var))
                       if training else (running_mean, running_var))
            y = torch.native_batch_norm(x, None, None, *buffers, training, 1.0, eps)[0]
            dscale = (dz * y).sum_to_size(scale.shape)
        if bias_shape is not None and ctx.needs_input_grad[2]:
            dbias = dz.sum_to_size(bias_shape)
        if ctx.needs_input_grad[0]:
            # The BatchNorm top had x's dtype (under autocast, not the Scale's):
            # autograd casts its diff to that dtype, and so do we.
            dy = (dz * scale).to(x.dtype)
            dx = torch.ops.aten.native_batch_norm_backward(
                dy, x, None, running_mean, running_var, save_mean, save_invstd,
                training, eps, [True, False, False])[0]
        return dx, dscale, dbias, None, None, None, None, None


def _param_shape(layer: Layer, x_shape: Shape, axis: int, num_axes: int) -> Shape:
    """Shape of a learned Scale/Bias blob: x's axes [axis, axis + num_axes),
    num_axes -1 meaning through the last axis and 0 a scalar."""
    axis = layer.canonical_axis(axis, len(x_shape))
    if num_axes < -1:
        raise layer.error(f"num_axes must be non-negative, or -1 to extend to the end of "
                          f"bottom[0]; got {num_axes}")
    if num_axes >= 0 and len(x_shape) < axis + num_axes:
        raise layer.error(f"the parameter's shape extends past bottom[0]'s shape "
                          f"{list(x_shape)} when applied starting with axis {axis}")
    return tuple(x_shape[axis:] if num_axes == -1 else x_shape[axis:axis + num_axes])


def _broadcast_axis(layer: Layer, x_shape: Shape, p_shape: Shape, axis: int) -> int:
    """The axis of x where p's axes start, after Caffe's checks that p's shape
    matches x there. A scalar p uses axis 0 whatever `axis` says."""
    if not p_shape:
        return 0
    axis = layer.canonical_axis(axis, len(x_shape))
    if len(x_shape) < axis + len(p_shape) or \
            tuple(x_shape[axis:axis + len(p_shape)]) != tuple(p_shape):
        raise layer.error(f"shape {list(p_shape)} does not match bottom[0]'s shape "
                          f"{list(x_shape)} starting at axis {axis}")
    return axis


def _broadcastable(p: torch.Tensor, x_dim: int, axis: int) -> torch.Tensor:
    """p viewed with trailing 1s so it broadcasts against x from `axis` on."""
    return p.reshape(tuple(p.shape) + (1,) * (x_dim - axis - p.dim()))


@register("Bias")
class Bias(Layer):
    """y = x + b, b (learned, or bottom[1]) spanning x's axes from `axis`."""
    bottoms = (1, 2)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        if len(bottom_shapes) == 1:
            p = self.param.bias_param
            self.add_blob(_param_shape(self, bottom_shapes[0], p.axis, p.num_axes), p.filler)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        bias = bottom_shapes[1] if len(bottom_shapes) > 1 else tuple(self.blob(0).shape)
        _broadcast_axis(self, bottom_shapes[0], bias, self.param.bias_param.axis)
        return [tuple(bottom_shapes[0])]

    def forward(self, x: torch.Tensor, *bias: torch.Tensor) -> list[torch.Tensor]:
        b = bias[0] if bias else self.blob(0)
        axis = _broadcast_axis(self, tuple(x.shape), tuple(b.shape), self.param.bias_param.axis)
        return [x + _broadcastable(b, x.dim(), axis)]


@register("Scale")
class Scale(Layer):
    """y = x * s (+ b with bias_term), s learned (default filler constant 1) or
    bottom[1], spanning x's axes from `axis`. Blobs: [scale, bias], or [bias]
    when s is bottom[1]; the bias spans the same axes as s."""
    bottoms = (1, 2)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.scale_param
        x_shape = bottom_shapes[0]
        if len(bottom_shapes) == 1:
            filler = p.filler if p.HasField("filler") else \
                caffe_pb2.FillerParameter(type="constant", value=1)
            self.add_blob(_param_shape(self, x_shape, p.axis, p.num_axes), filler)
        if p.bias_term:
            num_axes = len(bottom_shapes[1]) if len(bottom_shapes) > 1 else p.num_axes
            self.add_blob(_param_shape(self, x_shape, p.axis, num_axes), p.bias_filler)

    @property
    def _has_bias(self) -> bool:
        return self.param.scale_param.bias_term

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        axis = self.param.scale_param.axis
        x_shape = tuple(bottom_shapes[0])
        scale = bottom_shapes[1] if len(bottom_shapes) > 1 else tuple(self.blob(0).shape)
        _broadcast_axis(self, x_shape, scale, axis)
        if self._has_bias:
            _broadcast_axis(self, x_shape, tuple(self.blob(len(self.blobs) - 1).shape), axis)
        return [x_shape]

    def forward(self, x: torch.Tensor, *scale: torch.Tensor) -> list[torch.Tensor]:
        axis = self.param.scale_param.axis
        s = scale[0] if scale else self.blob(0)
        s = _broadcastable(s, x.dim(), _broadcast_axis(self, tuple(x.shape), tuple(s.shape), axis))
        if not self._has_bias:
            return [x * s]
        b = self.blob(len(self.blobs) - 1)
        b = _broadcastable(b, x.dim(), _broadcast_axis(self, tuple(x.shape), tuple(b.shape), axis))
        return [torch.addcmul(b, x, s)]


class _MVNFunction(torch.autograd.Function):
    """Rows of x (num, dim) to zero mean and unit std: y = (x - mean) / (std + eps).
    Caffe's backward (dy - mean(dy) - y*mean(y*dy)) / (std + eps) stays finite
    for a constant row, where autograd through sqrt(0) would give NaN."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor,
                eps: float) -> torch.Tensor:
        centered = x - x.mean(dim=1, keepdim=True)
        std = centered.square().mean(dim=1, keepdim=True).sqrt() + eps
        y = centered / std
        ctx.save_for_backward(y, std)
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 dy: torch.Tensor) -> tuple[torch.Tensor, None]:
        y, std = ctx.saved_tensors
        dx = dy - dy.mean(dim=1, keepdim=True) - y * (y * dy).mean(dim=1, keepdim=True)
        return dx / std, None


@register("MVN")
class MVN(Layer):
    """Mean-variance normalization per (n, c), or per n with across_channels;
    eps (default 1e-9) is added to the std, not the variance. Caffe sizes the
    top with the legacy num/channels/height/width accessors, so it is 4-D."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        if len(bottom_shapes[0]) > 4:
            raise self.error(f"bottom has {len(bottom_shapes[0])} axes; MVN uses Caffe's legacy "
                             f"num/channels/height/width and takes at most 4")

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        return [shape + (1,) * (4 - len(shape))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.param.mvn_param
        top_shape = tuple(x.shape) + (1,) * (4 - x.dim())
        rows = top_shape[0] if p.across_channels else top_shape[0] * top_shape[1]
        flat = x.reshape(rows, -1)
        if p.normalize_variance:
            y = _MVNFunction.apply(flat, p.eps)
        else:
            y = flat - flat.mean(dim=1, keepdim=True)
        return [y.reshape(top_shape)]


@register("Softmax")
class Softmax(Layer):
    """Softmax along `axis` (default 1), independently for every outer and inner index."""

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        self.canonical_axis(self.param.softmax_param.axis, len(shape))
        return [shape]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.softmax(x, dim=self.canonical_axis(self.param.softmax_param.axis, x.dim()))]

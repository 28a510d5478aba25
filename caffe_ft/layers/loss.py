"""Loss layers and Accuracy.

Every loss outputs a 0-axis scalar; the net gives top 0 a default
loss_weight of 1. Labels are read as Caffe reads them, static_cast<int>
(truncation toward zero). Where Caffe's backward is not the derivative of its
forward -- the FLT_MIN / 1e-20 clamps inside the logs, zeroed ignore_label
positions, ContrastiveLoss's d + 1e-4 denominator -- a torch.autograd.Function
computes Caffe's gradient. Label bottoms (and InfogainLoss's H, and
ContrastiveLoss's similarity) never get a gradient; a propagate_down that asks
for one is an error where Caffe aborts on it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from caffe_ft.blobs import blob_proto_to_array
from caffe_ft.layers.base import Layer, Shape
from caffe_ft.layers.registry import register
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import read_binary

Ctx = torch.autograd.function.FunctionCtx
Norm = caffe_pb2.LossParameter
# Caffe's kLOG_THRESHOLD (loss_layer.hpp) and FLT_MIN: floors under log().
LOG_THRESHOLD = 1e-20
FLT_MIN = float(np.finfo(np.float32).tiny)
# ContrastiveLoss adds this to the distance in its backward denominator.
CONTRASTIVE_EPS = 1e-4


def _legacy_dim(shape: Shape, index: int) -> int:
    """Caffe's LegacyShape: axes past the end read as 1."""
    return int(shape[index]) if index < len(shape) else 1


def _outer_inner(shape: Shape, axis: int) -> tuple[int, int, int]:
    """(outer, classes, inner) counts around the class axis."""
    return math.prod(shape[:axis]), int(shape[axis]), math.prod(shape[axis + 1:])


def _normalizer(mode: int, outer: int, inner: int, valid: torch.Tensor | None,
                device: torch.device) -> torch.Tensor:
    """Caffe's get_normalizer, floored at 1, as a float32 scalar on `device`.
    `valid` masks the non-ignored labels (None: every label counts). Only
    VALID with ignored labels depends on the data; the other counts are
    filled on the device, as a copy from the host would wait for it."""
    if mode == Norm.VALID and valid is not None:
        return valid.sum().to(torch.float32).clamp(min=1.0)
    count = {Norm.FULL: outer * inner, Norm.VALID: outer * inner, Norm.BATCH_SIZE: outer}
    return torch.full((), max(float(count.get(mode, 1)), 1.0), dtype=torch.float32,
                      device=device)


def _class_labels(layer: Layer, label: torch.Tensor, classes: int, ignore: int | None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(class index, valid mask) per label; ignored positions index class 0
    so gathers stay in range, and the mask is None without an ignore_label
    (every label counts). An out-of-range label is an error here, where
    Caffe would read past the class axis."""
    index = label.detach().reshape(-1).to(torch.int64)
    valid = None if ignore is None else index != ignore
    bad = (index < 0) | (index >= classes)
    if valid is not None:
        bad &= valid
    rule = f"labels must be integers in [0, {classes - 1}]"
    layer.check_values(~bad.any(), f"a label is outside the {classes} classes ({rule})",
                       lambda: f"label {index[bad][0].item()} is outside the {classes} "
                               f"classes ({rule})")
    if valid is None:
        return index, None
    return torch.where(valid, index, torch.zeros_like(index)), valid


def _valid_mask(like: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """The valid mask of labels shaped `like`: all true where none is ignored."""
    return torch.ones_like(like, dtype=torch.bool) if valid is None else valid


class _LossLayer(Layer):
    """Caffe's LossLayer: bottom 0 and bottom 1 share their first dimension,
    the top is a scalar, and bottom 1 (the label) takes no gradient."""
    is_loss = True
    bottoms = (2, 2)
    # (bottom index, what it holds) for the bottoms Caffe refuses to backpropagate to.
    refused_bottoms: tuple[tuple[int, str], ...] = ((1, "label"),)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self._check_first_dims(bottom_shapes)
        return [()]

    def _check_label_count(self, bottom_shapes: Sequence[Shape], predictions: int,
                           axis_of: str) -> None:
        """One label per prediction (Caffe's message names the layer's axis)."""
        labels = math.prod(bottom_shapes[1])
        if predictions != labels:
            raise self.error(f"Number of labels must match number of predictions; e.g., if "
                             f"{axis_of} axis == 1 and prediction shape is (N, C, H, W), label "
                             f"count (number of labels) must be N*H*W, with integer values in "
                             f"{{0, 1, ..., C-1}} (got {labels} labels for {predictions} "
                             f"predictions).")

    def _check_first_dims(self, bottom_shapes: Sequence[Shape]) -> None:
        first = [_legacy_dim(s, 0) for s in bottom_shapes[:2]]
        if first[0] != first[1]:
            raise self.error(f"The data and label should have the same first dimension "
                             f"(got {first[0]} and {first[1]}).")

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        # Caffe aborts when propagate_down asks for a gradient to a label-like
        # bottom; labels never get one here, so an explicit request is the error.
        propagate = self.param.propagate_down
        for index, what in self.refused_bottoms:
            if index < len(propagate) and propagate[index]:
                raise self.error(f"{self.param.type} Layer cannot backpropagate to {what} "
                                 f"inputs (propagate_down is true for bottom {index}).")

    def _ignore_label(self) -> int | None:
        p = self.param.loss_param
        return p.ignore_label if p.HasField("ignore_label") else None


# -- SoftmaxWithLoss -------------------------------------------------------------


class _SoftmaxLossFunction(torch.autograd.Function):
    """x (outer, C, inner) → (loss, prob). loss = -Σ log(max(p_label, FLT_MIN)) /
    normalizer over valid positions; Caffe's gradient (p - onehot) * g /
    normalizer, zero at ignored positions. prob (Caffe's top[1]) shares the
    softmax's data but not its diff, so it carries no gradient."""

    @staticmethod
    def forward(ctx: Ctx, x: torch.Tensor, label: torch.Tensor, valid: torch.Tensor | None,
                normalizer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prob = torch.softmax(x, dim=1)
        picked = prob.gather(1, label.unsqueeze(1)).squeeze(1)
        logs = torch.log(picked.clamp(min=FLT_MIN))
        if valid is not None:
            logs = torch.where(valid, logs, torch.zeros_like(logs))
        loss = -logs.sum() / normalizer
        ctx.save_for_backward(prob, label, valid, normalizer)
        ctx.mark_non_differentiable(prob)
        return loss, prob

    @staticmethod
    def backward(ctx: Ctx, grad_loss: torch.Tensor, _grad_prob: torch.Tensor
                 ) -> tuple[torch.Tensor, None, None, None]:
        prob, label, valid, normalizer = ctx.saved_tensors
        dx = prob.clone()
        dx.scatter_add_(1, label.unsqueeze(1), -torch.ones_like(label, dtype=dx.dtype).unsqueeze(1))
        if valid is not None:
            dx = dx * valid.unsqueeze(1).to(dx.dtype)
        return dx * (grad_loss / normalizer), None, None, None


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(_LossLayer):
    """Softmax along softmax_param.axis, then the multinomial logistic loss of
    the true class. Normalization: loss_param.normalization (default VALID),
    or the legacy `normalize` when normalization is unset (true → VALID,
    false → BATCH_SIZE). Optional top 1 is the softmax output."""
    tops = (1, 2)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        super().setup(bottom_shapes)
        p = self.param.loss_param
        if not p.HasField("normalization") and p.HasField("normalize"):
            self.normalization = Norm.VALID if p.normalize else Norm.BATCH_SIZE
        else:
            self.normalization = p.normalization

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self._check_first_dims(bottom_shapes)
        shape = tuple(bottom_shapes[0])
        outer, _, inner = _outer_inner(shape, self.canonical_axis(self.param.softmax_param.axis,
                                                                   len(shape)))
        self._check_label_count(bottom_shapes, outer * inner, "softmax")
        return [(), shape][:self.num_tops]

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> list[torch.Tensor]:
        axis = self.canonical_axis(self.param.softmax_param.axis, x.dim())
        outer, classes, inner = _outer_inner(tuple(x.shape), axis)
        index, valid = _class_labels(self, label, classes, self._ignore_label())
        index = index.reshape(outer, inner)
        valid = None if valid is None else valid.reshape(outer, inner)
        normalizer = _normalizer(self.normalization, outer, inner, valid, x.device)
        loss, prob = _SoftmaxLossFunction.apply(x.reshape(outer, classes, inner), index, valid,
                                                normalizer)
        return [loss, prob.reshape(x.shape)][:self.num_tops]


# -- Accuracy --------------------------------------------------------------------


@register("Accuracy")
class Accuracy(Layer):
    """Fraction of non-ignored positions whose true class is within the top_k
    scores along `axis`. A class scoring >= the true class counts as better,
    so ties count against the prediction. Optional top 1: per-class accuracy
    (C,), 0 for classes with no labels. Caffe has no backward for it."""
    bottoms = (2, 2)
    tops = (1, 2)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        p = self.param.accuracy_param
        shape = tuple(bottom_shapes[0])
        labels = math.prod(bottom_shapes[1])
        if labels == 0 or p.top_k > math.prod(shape) // labels:
            raise self.error(f"top_k must be less than or equal to the number of classes "
                             f"(top_k {p.top_k}, {math.prod(shape)} scores for {labels} labels).")
        outer, classes, inner = _outer_inner(shape, self.canonical_axis(p.axis, len(shape)))
        if outer * inner != labels:
            raise self.error(f"Number of labels must match number of predictions; e.g., if "
                             f"label axis == 1 and prediction shape is (N, C, H, W), label "
                             f"count (number of labels) must be N*H*W, with integer values in "
                             f"{{0, 1, ..., C-1}} (got {labels} labels for {outer * inner} "
                             f"predictions).")
        return [(), (classes,)][:len(self.param.top)]

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> list[torch.Tensor]:
        p = self.param.accuracy_param
        with torch.no_grad():
            axis = self.canonical_axis(p.axis, x.dim())
            outer, classes, inner = _outer_inner(tuple(x.shape), axis)
            scores = x.reshape(outer, classes, inner)
            ignore = p.ignore_label if p.HasField("ignore_label") else None
            index, valid = _class_labels(self, label, classes, ignore)
            valid = _valid_mask(index, valid).reshape(outer, inner)
            index = index.reshape(outer, inner)
            true_score = scores.gather(1, index.unsqueeze(1))
            # The true class itself is among those >= its score, hence the - 1.
            better = (scores >= true_score).sum(dim=1) - 1
            correct = (better < p.top_k) & valid
            count = valid.sum()
            accuracy = torch.where(count > 0, correct.sum().to(torch.float32)
                                   / count.clamp(min=1).to(torch.float32),
                                   torch.zeros((), device=x.device))
            tops = [accuracy]
            if len(self.param.top) > 1:
                # Counts by scatter, not bincount of a masked select: both of
                # those wait for the device to learn their sizes.
                flat = index.reshape(-1)
                totals = x.new_zeros(classes, dtype=torch.float32).index_add_(
                    0, flat, valid.reshape(-1).to(torch.float32))
                hits = x.new_zeros(classes, dtype=torch.float32).index_add_(
                    0, flat, correct.reshape(-1).to(torch.float32))
                tops.append(torch.where(totals > 0, hits / totals.clamp(min=1),
                                        torch.zeros_like(totals)))
        return tops


# -- EuclideanLoss ---------------------------------------------------------------


@register("EuclideanLoss")
class EuclideanLoss(_LossLayer):
    """Σ (a - b)² / (2N), N = bottom 0's first dimension. Both bottoms get a
    gradient, ±(a - b) / N, so force_backward reaches both."""
    refused_bottoms = ()

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self._check_first_dims(bottom_shapes)
        a, b = (math.prod(s[1:]) for s in bottom_shapes)
        if a != b:
            raise self.error(f"Inputs must have the same dimension (count from axis 1: "
                             f"{a} vs {b}).")
        return [()]

    def allow_force_backward(self, bottom_index: int) -> bool:
        return True

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
        diff = a - b.reshape(a.shape)
        return [diff.reshape(-1).dot(diff.reshape(-1)) / a.shape[0] / 2]


# -- SigmoidCrossEntropyLoss ------------------------------------------------------


class _SigmoidCrossEntropyFunction(torch.autograd.Function):
    """Caffe's stable cross-entropy of sigmoid(x) against soft targets t, summed
    over valid elements and divided by the normalizer; gradient
    (sigmoid(x) - t) * g / normalizer, zero where the target is ignored."""

    @staticmethod
    def forward(ctx: Ctx, x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                normalizer: torch.Tensor) -> torch.Tensor:
        positive = (x >= 0).to(x.dtype)
        # log(1 + exp(z)) in float as Caffe writes it (z <= 0), not log1p.
        terms = x * (target - positive) - torch.log(1 + torch.exp(x - 2 * x * positive))
        loss = -torch.where(valid, terms, torch.zeros_like(terms)).sum() / normalizer
        ctx.save_for_backward(x, target, valid, normalizer)
        return loss

    @staticmethod
    def backward(ctx: Ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        x, target, valid, normalizer = ctx.saved_tensors
        dx = (torch.sigmoid(x) - target) * valid.to(x.dtype)
        return dx * (grad_loss / normalizer), None, None, None


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(_LossLayer):
    """Targets are probabilities, same count as the scores. Normalization:
    loss_param.normalization if set, else the legacy `normalize` (true → VALID,
    false → BATCH_SIZE), else BATCH_SIZE -- by N, not by element count."""

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        super().setup(bottom_shapes)
        p = self.param.loss_param
        if p.HasField("normalization"):
            self.normalization = p.normalization
        elif p.HasField("normalize"):
            self.normalization = Norm.VALID if p.normalize else Norm.BATCH_SIZE
        else:
            self.normalization = Norm.BATCH_SIZE

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self._check_first_dims(bottom_shapes)
        counts = [math.prod(s) for s in bottom_shapes]
        if counts[0] != counts[1]:
            raise self.error(f"SIGMOID_CROSS_ENTROPY_LOSS layer inputs must have the same "
                             f"count (got {counts[0]} and {counts[1]}).")
        return [()]

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        target = target.detach().reshape(x.shape)
        ignore = self._ignore_label()
        valid = None if ignore is None else target.to(torch.int64) != ignore
        outer = int(x.shape[0])
        normalizer = _normalizer(self.normalization, outer, x.numel() // max(outer, 1),
                                 valid, x.device)
        return [_SigmoidCrossEntropyFunction.apply(x, target, _valid_mask(target, valid),
                                                   normalizer)]


# -- HingeLoss -------------------------------------------------------------------


@register("HingeLoss")
class HingeLoss(_LossLayer):
    """Scores (N, ...) flattened to (N, K), labels (N). With t = +1 at the label
    and -1 elsewhere: L1 Σ max(0, 1 - t·x) / N, L2 Σ max(0, 1 - t·x)² / N.
    Autograd's gradient is Caffe's (sign(0) = 0 at the hinge)."""

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> list[torch.Tensor]:
        num = int(x.shape[0])
        scores = x.reshape(num, -1)
        # Caffe reads one label per sample from the start of the label blob.
        index, _ = _class_labels(self, label.reshape(-1)[:num], scores.shape[1], None)
        sign = torch.ones_like(scores).scatter_(1, index.unsqueeze(1), -1.0)
        margins = torch.relu(1 + sign * scores)
        if self.param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L1:
            return [margins.sum() / num]
        return [margins.reshape(-1).dot(margins.reshape(-1)) / num]


# -- InfogainLoss ----------------------------------------------------------------


class _InfogainFunction(torch.autograd.Function):
    """x (outer, C, inner), H (C, C) → (loss, prob):
    loss = -Σ_valid Σ_l H[label, l] log(max(p_l, 1e-20)) / normalizer; Caffe's
    gradient (p · Σ_l H[label, l] - H[label, :]) * g / normalizer."""

    @staticmethod
    def forward(ctx: Ctx, x: torch.Tensor, label: torch.Tensor, valid: torch.Tensor,
                infogain: torch.Tensor, normalizer: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        prob = torch.softmax(x, dim=1)
        rows = infogain[label].permute(0, 2, 1)  # (outer, C, inner): H[label] per position
        terms = (rows * torch.log(prob.clamp(min=LOG_THRESHOLD))).sum(dim=1)
        loss = -torch.where(valid, terms, torch.zeros_like(terms)).sum() / normalizer
        ctx.save_for_backward(prob, label, valid, infogain, normalizer)
        ctx.mark_non_differentiable(prob)
        return loss, prob

    @staticmethod
    def backward(ctx: Ctx, grad_loss: torch.Tensor, _grad_prob: torch.Tensor
                 ) -> tuple[torch.Tensor, None, None, None, None]:
        prob, label, valid, infogain, normalizer = ctx.saved_tensors
        row_sums = infogain.sum(dim=1)[label].unsqueeze(1)  # (outer, 1, inner)
        dx = prob * row_sums - infogain[label].permute(0, 2, 1)
        dx = dx * valid.unsqueeze(1).to(dx.dtype)
        return dx * (grad_loss / normalizer), None, None, None, None


@register("InfogainLoss")
class InfogainLoss(_LossLayer):
    """Softmax along infogain_loss_param.axis, then the infogain-weighted log
    loss. H (C x C) is bottom 2 or the BlobProto file infogain_loss_param.source.
    Normalization as SoftmaxWithLoss, except that the legacy `normalize` is
    refused. Optional top 1 is the softmax output."""
    bottoms = (2, 3)
    tops = (1, 2)
    refused_bottoms = ((1, "label"), (2, "infogain"))

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        super().setup(bottom_shapes)
        if self.param.loss_param.HasField("normalize"):
            raise self.error('normalize is deprecated. use "normalization"')
        if len(bottom_shapes) < 3:
            p = self.param.infogain_loss_param
            if not p.HasField("source"):
                raise self.error("Infogain matrix source must be specified (infogain_loss_param "
                                 "source, or a third bottom).")
            blob = read_binary(p.source, caffe_pb2.BlobProto(), "Infogain matrix")
            self.register_buffer("infogain", torch.from_numpy(blob_proto_to_array(blob).copy()))

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self._check_first_dims(bottom_shapes)
        shape = tuple(bottom_shapes[0])
        outer, classes, inner = _outer_inner(
            shape, self.canonical_axis(self.param.infogain_loss_param.axis, len(shape)))
        self._check_label_count(bottom_shapes, outer * inner, "infogain")
        h_count = math.prod(bottom_shapes[2]) if len(bottom_shapes) > 2 else self.infogain.numel()
        if h_count != classes * classes:
            raise self.error(f"H must be {classes}x{classes} ({classes * classes} values), "
                             f"got {h_count}")
        return [(), shape][:self.num_tops]

    def forward(self, x: torch.Tensor, label: torch.Tensor, *matrix: torch.Tensor
                ) -> list[torch.Tensor]:
        axis = self.canonical_axis(self.param.infogain_loss_param.axis, x.dim())
        outer, classes, inner = _outer_inner(tuple(x.shape), axis)
        infogain = (matrix[0] if matrix else self.infogain).detach().reshape(classes, classes)
        index, valid = _class_labels(self, label, classes, self._ignore_label())
        index = index.reshape(outer, inner)
        valid = None if valid is None else valid.reshape(outer, inner)
        normalizer = _normalizer(self.param.loss_param.normalization, outer, inner, valid,
                                 x.device)
        loss, prob = _InfogainFunction.apply(x.reshape(outer, classes, inner), index,
                                             _valid_mask(index, valid),
                                             infogain.to(x.dtype), normalizer)
        return [loss, prob.reshape(x.shape)][:self.num_tops]


# -- MultinomialLogisticLoss -----------------------------------------------------


class _MultinomialLogisticFunction(torch.autograd.Function):
    """p (N, D) probabilities → -Σ log(max(p[label], 1e-20)) / N; Caffe's
    gradient -g / (N · max(p[label], 1e-20)) at the label, 0 elsewhere (the
    floor's clamp would zero autograd's gradient instead)."""

    @staticmethod
    def forward(ctx: Ctx, prob: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        picked = prob.gather(1, label.unsqueeze(1)).clamp(min=LOG_THRESHOLD)
        ctx.save_for_backward(picked, label)
        ctx.shape = prob.shape
        return -torch.log(picked).sum() / prob.shape[0]

    @staticmethod
    def backward(ctx: Ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None]:
        picked, label = ctx.saved_tensors
        scale = -grad_loss / ctx.shape[0]
        dp = torch.zeros(ctx.shape, dtype=picked.dtype, device=picked.device)
        return dp.scatter_(1, label.unsqueeze(1), scale / picked), None


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(_LossLayer):
    """Bottom 0 holds probabilities (N, ...), bottom 1 one label per sample."""

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self._check_first_dims(bottom_shapes)
        label = tuple(bottom_shapes[1])
        if any(_legacy_dim(label, i) != 1 for i in (1, 2, 3)):
            raise self.error(f"label blob must be N x 1 x 1 x 1, got {list(label)}")
        return [()]

    def forward(self, prob: torch.Tensor, label: torch.Tensor) -> list[torch.Tensor]:
        num = int(prob.shape[0])
        flat = prob.reshape(num, -1)
        index, _ = _class_labels(self, label, flat.shape[1], None)
        return [_MultinomialLogisticFunction.apply(flat, index)]


# -- ContrastiveLoss -------------------------------------------------------------


class _ContrastiveFunction(torch.autograd.Function):
    """a, b (N, C), similar (N,) bool. d² = ||a - b||²; similar pairs add d²,
    dissimilar max(margin - d, 0)² (legacy: max(margin - d², 0)); / (2N).
    Caffe's gradient for a dissimilar pair divides by d + 1e-4, so it stays
    finite at d = 0; b's gradient is the negative of a's."""

    @staticmethod
    def forward(ctx: Ctx, a: torch.Tensor, b: torch.Tensor, similar: torch.Tensor,
                margin: float, legacy: bool) -> torch.Tensor:
        diff = a - b
        dist_sq = (diff * diff).sum(dim=1)
        if legacy:
            dissimilar = torch.clamp(margin - dist_sq, min=0.0)
        else:
            dissimilar = torch.clamp(margin - torch.sqrt(dist_sq), min=0.0).square()
        loss = torch.where(similar, dist_sq, dissimilar).sum() / a.shape[0] / 2
        ctx.save_for_backward(diff, dist_sq, similar)
        ctx.margin, ctx.legacy = margin, legacy
        return loss

    @staticmethod
    def backward(ctx: Ctx, grad_loss: torch.Tensor
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        diff, dist_sq, similar = ctx.saved_tensors
        alpha = grad_loss / diff.shape[0]
        if ctx.legacy:
            mdist = ctx.margin - dist_sq
            beta = -alpha * torch.ones_like(dist_sq)
        else:
            dist = torch.sqrt(dist_sq)
            mdist = ctx.margin - dist
            beta = -alpha * mdist / (dist + CONTRASTIVE_EPS)
        beta = torch.where(mdist > 0, beta, torch.zeros_like(beta))
        coeff = torch.where(similar, alpha.expand_as(beta), beta)
        da = coeff.unsqueeze(1) * diff
        return (da if ctx.needs_input_grad[0] else None,
                -da if ctx.needs_input_grad[1] else None, None, None, None)


@register("ContrastiveLoss")
class ContrastiveLoss(_LossLayer):
    """Siamese loss over feature pairs a, b (N, C, 1, 1) and a similarity
    label y (N, 1, 1, 1), similar iff int(y) != 0. Both features get a
    gradient; the similarity label never does."""
    bottoms = (3, 3)
    # Caffe skips the similarity bottom's gradient without complaint.
    refused_bottoms = ()

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        super().setup(bottom_shapes)
        a, b, y = (tuple(s) for s in bottom_shapes)
        checks = [(_legacy_dim(a, 1) == _legacy_dim(b, 1), "bottoms 0 and 1 need equal channels"),
                  (_legacy_dim(a, 2) == _legacy_dim(a, 3) == 1, "bottom 0 must be N x C x 1 x 1"),
                  (_legacy_dim(b, 2) == _legacy_dim(b, 3) == 1, "bottom 1 must be N x C x 1 x 1"),
                  (all(_legacy_dim(y, i) == 1 for i in (1, 2, 3)),
                   "bottom 2 (similarity) must be N x 1 x 1 x 1")]
        for ok, message in checks:
            if not ok:
                raise self.error(f"{message}; got shapes {list(a)}, {list(b)}, {list(y)}")

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2

    def forward(self, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        p = self.param.contrastive_loss_param
        num = int(a.shape[0])
        similar = y.detach().reshape(-1).to(torch.int64) != 0
        return [_ContrastiveFunction.apply(a.reshape(num, -1), b.reshape(num, -1), similar,
                                           p.margin, p.legacy_version)]

"""Recurrent layers: RNN, LSTM (Caffe's RecurrentLayer) and LSTMUnit.

Caffe runs RNN and LSTM as an unrolled internal net over T timesteps; this
module computes the same graph step by step. Inputs are x (T, N, ...) and the
sequence continuation indicators cont (T, N), plus an optional static input
x_static (N, ...) added to every timestep. At step t the previous hidden
state is first multiplied by cont_t, so cont_t = 0 starts a new sequence.

The parameter blobs are the unrolled net's owned params in its layer order,
so caffemodels load unchanged:
  LSTM: W_xc (4H, D), b_c (4H,), [W_xc_static (4H, D_static)], W_hc (4H, H)
  RNN:  W_xh (H, D), b_h (H,), [W_xh_static (H, D_static)], W_hh (H, H),
        W_ho (H, H), b_o (H,)
The LSTM's 4H gate pre-activations are ordered i, f, o, g.

Without expose_hidden the final hidden state of one forward is the initial
state of the next, as Caffe copies h_T (and c_T) into h_0 (c_0) before each
forward; no gradient crosses that boundary. With expose_hidden the initial
state comes from extra bottoms and the final state goes to extra tops; Caffe
shares only their data with the unrolled net, so no gradient flows through
either.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from caffe_ft.layers.base import Layer, Shape
from caffe_ft.layers.registry import register
from caffe_ft.glog import logger

Ctx = torch.autograd.function.FunctionCtx


class _LSTMUnitFunction(torch.autograd.Function):
    """One LSTM step on gate pre-activations X (N, 4H) ordered i, f, o, g:
    f = cont · sigmoid(f') (exactly 0 where cont is 0), c = f·c_prev + i·g,
    h = o·tanh(c). Caffe's backward uses that f, cont included, in
    f·(1 - f), which is not the derivative when cont is neither 0 nor 1."""

    @staticmethod
    def forward(ctx: Ctx, c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        i, f_raw, o, g_raw = gates.chunk(4, dim=-1)
        i, o, g = torch.sigmoid(i), torch.sigmoid(o), torch.tanh(g_raw)
        cont = cont.unsqueeze(-1)
        f = torch.where(cont == 0, torch.zeros_like(f_raw), cont * torch.sigmoid(f_raw))
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        return c, o * tanh_c

    @staticmethod
    def backward(ctx: Ctx, dc: torch.Tensor, dh: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, None]:
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        c_term = dc + dh * o * (1 - tanh_c * tanh_c)
        d_gates = torch.cat([c_term * g * i * (1 - i),
                             c_term * c_prev * f * (1 - f),
                             dh * tanh_c * o * (1 - o),
                             c_term * i * (1 - g * g)], dim=-1)
        return c_term * f, d_gates, None


def _refuse_cont_gradient(layer: Layer, cont_index: int) -> None:
    """Caffe aborts when propagate_down asks for a gradient to the sequence
    indicators; they never get one here, so an explicit request is the error."""
    propagate = layer.param.propagate_down
    if cont_index < len(propagate) and propagate[cont_index]:
        raise layer.error(f"Cannot backpropagate to sequence indicators (propagate_down is "
                          f"true for bottom {cont_index}).")


@register("LSTMUnit")
class LSTMUnit(Layer):
    """A single LSTM timestep: bottoms c_prev (1, N, H), gate pre-activations
    (1, N, 4H) ordered i, f, o, g, cont (1, N); tops c (1, N, H), h (1, N, H)."""
    bottoms = (3, 3)
    tops = (2, 2)

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        _refuse_cont_gradient(self, 2)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        c_prev, gates, cont = (tuple(s) for s in bottom_shapes)
        num = c_prev[1] if len(c_prev) > 1 else None
        for index, shape in enumerate((c_prev, gates, cont)):
            axes = 2 if index == 2 else 3
            if len(shape) != axes or shape[0] != 1 or shape[1] != num:
                raise self.error(f"bottom {index} must be (1, N{', ...' if axes == 3 else ''}) "
                                 f"with {axes} axes and N = {num}; got {list(shape)}")
        if gates[2] != 4 * c_prev[2]:
            raise self.error(f"bottom 1 needs 4 x {c_prev[2]} gate inputs, got {gates[2]}")
        return [c_prev, c_prev]

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2

    def forward(self, c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor
                ) -> list[torch.Tensor]:
        c, h = _LSTMUnitFunction.apply(c_prev[0], gates[0], cont[0].detach())
        return [c.unsqueeze(0), h.unsqueeze(0)]


class _Recurrent(Layer):
    """Caffe's RecurrentLayer: the bottom/top layout, shape checks, blob
    creation and the carried hidden state; subclasses give the recurrence."""
    # Names of the recurrent state blobs, in Caffe's RecurrentInputBlobNames order.
    state_names: tuple[str, ...] = ()
    # (name, kind, rows) per parameter blob, in the unrolled net's param order
    # (names as Caffe logs them). Kind "x" and "static" weights take the
    # width of x or x_static, "h" the hidden width, "bias" is 1-D; rows are
    # in units of num_output. The static weight exists only with a static input.
    blob_layout: tuple[tuple[str, str, int], ...] = ()

    @property
    def _num_exposed(self) -> int:
        """How many state blobs expose_hidden adds as bottoms and as tops."""
        return len(self.state_names) if self.param.recurrent_param.expose_hidden else 0

    # Caffe's Min/MaxBottomBlobs and ExactNumTopBlobs depend on expose_hidden.
    @property
    def bottoms(self) -> tuple[int, int]:  # type: ignore[override]
        return 2 + self._num_exposed, 3 + self._num_exposed

    @property
    def tops(self) -> tuple[int, int]:  # type: ignore[override]
        return 1 + self._num_exposed, 1 + self._num_exposed

    @property
    def _has_static(self) -> bool:
        return len(self.param.bottom) > 2 + self._num_exposed

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        _refuse_cont_gradient(self, 1)
        p = self.param.recurrent_param
        if p.num_output <= 0:
            raise self.error(f"num_output must be positive, got {p.num_output}")
        x = tuple(bottom_shapes[0])
        # Caffe unrolls the net for this T once; reshape refuses another T.
        self.timesteps = x[0] if x else 0
        self._check_inputs(bottom_shapes)
        logger.info("Initializing recurrent layer: assuming input batch contains %d timesteps "
                    "of %d independent streams.", x[0], x[1])
        widths = {"x": math.prod(x[2:]), "h": p.num_output,
                  "static": math.prod(bottom_shapes[2][1:]) if self._has_static else 0}
        for name, kind, rows in self.blob_layout:
            if kind == "static" and not self._has_static:
                continue
            logger.info("Adding parameter %d: %s", len(self.blobs), name)
            if kind == "bias":
                self.add_blob((rows * p.num_output,), p.bias_filler)
            else:
                self.add_blob((rows * p.num_output, widths[kind]), p.weight_filler)
        for name in self.state_names:
            self.register_buffer(f"carried_{name}", torch.zeros(0), persistent=False)

    def _check_inputs(self, bottom_shapes: Sequence[Shape]) -> None:
        x, cont = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(x) < 2:
            raise self.error(f"bottom[0] must have at least 2 axes -- (#timesteps, #streams, "
                             f"...); got {list(x)}")
        if x[0] != self.timesteps:
            raise self.error(f"input number of timesteps changed from {self.timesteps} to {x[0]}")
        if len(cont) != 2 or tuple(cont) != x[:2]:
            raise self.error(f"bottom[1] must have exactly 2 axes -- (#timesteps, #streams) = "
                             f"{list(x[:2])}; got {list(cont)}")
        if self._has_static:
            static = tuple(bottom_shapes[2])
            if len(static) < 1 or static[0] != x[1]:
                raise self.error(f"bottom[2] (static input) must be ({x[1]}, ...); "
                                 f"got {list(static)}")
        state = (1, x[1], self.param.recurrent_param.num_output)
        first = 2 + int(self._has_static)
        for j, shape in enumerate(bottom_shapes[first:]):
            if tuple(shape) != state:
                raise self.error(f"shape mismatch - {self.state_names[j]} must be {list(state)}, "
                                 f"bottom[{first + j}] is {list(shape)}")

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self._check_inputs(bottom_shapes)
        t, n = bottom_shapes[0][:2]
        hidden = self.param.recurrent_param.num_output
        return [(t, n, hidden)] + [(1, n, hidden)] * self._num_exposed

    def forward(self, x: torch.Tensor, cont: torch.Tensor, *rest: torch.Tensor
                ) -> list[torch.Tensor]:
        static = rest[0] if self._has_static else None
        steps, num = x.shape[:2]
        hidden = self.param.recurrent_param.num_output
        if self._num_exposed:
            state = [s.detach() for s in rest[int(self._has_static):]]
        else:
            state = [self._carried(name, num, hidden, x) for name in self.state_names]
        output, final = self.recur(x.reshape(steps, num, -1), cont.detach().to(x.dtype),
                                   None if static is None else static.reshape(num, -1), state)
        final = [s.detach() for s in final]
        if not self._num_exposed:
            for name, value in zip(self.state_names, final):
                setattr(self, f"carried_{name}", value)
        return [output] + (final if self._num_exposed else [])

    def _carried(self, name: str, num: int, hidden: int, like: torch.Tensor) -> torch.Tensor:
        """The previous forward's final state: Caffe copies h_T into h_0 as
        flat memory, so a smaller batch keeps the first streams; a larger
        one gets newly allocated, zeroed state."""
        value = getattr(self, f"carried_{name}")
        if value.dim() == 3 and value.shape[1] >= num and value.shape[2] == hidden:
            return value[:, :num].to(like.device, like.dtype)
        return torch.zeros((1, num, hidden), dtype=like.dtype, device=like.device)

    def recur(self, x: torch.Tensor, cont: torch.Tensor, static: torch.Tensor | None,
              state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (T, N, D), cont (T, N), static (N, D_static) → output (T, N, H)
        and the final state blobs (1, N, H)."""
        raise NotImplementedError


@register("LSTM")
class LSTM(_Recurrent):
    """Long short-term memory over T timesteps; top h (T, N, H). With
    expose_hidden: bottoms ..., h_0, c_0 and tops h, h_T, c_T."""
    state_names = ("h", "c")
    blob_layout = (("W_xc", "x", 4), ("b_c", "bias", 4), ("W_xc_static", "static", 4),
                   ("W_hc", "h", 4))

    def recur(self, x: torch.Tensor, cont: torch.Tensor, static: torch.Tensor | None,
              state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        w_xc, b_c = self.blob(0), self.blob(1)
        w_hc = self.blob(2 + int(self._has_static))
        gates_x = F.linear(x, w_xc, b_c)
        gates_static = None if static is None else F.linear(static, self.blob(2))
        h, c = state[0][0], state[1][0]
        outputs = []
        for t in range(x.shape[0]):
            h_conted = h * cont[t].unsqueeze(1)
            gates = F.linear(h_conted, w_hc) + gates_x[t]
            if gates_static is not None:
                gates = gates + gates_static
            c, h = _LSTMUnitFunction.apply(c, gates, cont[t])
            outputs.append(h)
        return torch.stack(outputs), [h.unsqueeze(0), c.unsqueeze(0)]


@register("RNN")
class RNN(_Recurrent):
    """Vanilla (Elman) RNN: h_t = tanh(W_hh (cont_t · h_{t-1}) + W_xh x_t + b_h),
    o_t = tanh(W_ho h_t + b_o); top o (T, N, H). With expose_hidden: bottoms
    ..., h_0 and tops o, h_T."""
    state_names = ("h",)
    blob_layout = (("W_xh", "x", 1), ("b_h", "bias", 1), ("W_xh_static", "static", 1),
                   ("W_hh", "h", 1), ("W_ho", "h", 1), ("b_o", "bias", 1))

    def recur(self, x: torch.Tensor, cont: torch.Tensor, static: torch.Tensor | None,
              state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        offset = int(self._has_static)
        w_xh, b_h = self.blob(0), self.blob(1)
        w_hh, w_ho, b_o = (self.blob(i + offset) for i in (2, 3, 4))
        pre_x = F.linear(x, w_xh, b_h)
        pre_static = None if static is None else F.linear(static, self.blob(2))
        h = state[0][0]
        outputs = []
        for t in range(x.shape[0]):
            pre = F.linear(h * cont[t].unsqueeze(1), w_hh) + pre_x[t]
            if pre_static is not None:
                pre = pre + pre_static
            h = torch.tanh(pre)
            outputs.append(torch.tanh(F.linear(h, w_ho, b_o)))
        return torch.stack(outputs), [h.unsqueeze(0)]

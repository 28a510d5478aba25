"""LSTMUnit against a numpy restatement of Caffe's lstm_unit_layer.cpp, and
RNN/LSTM behaviour the golden cases do not reach: cont = 0 resets, the hidden
state carried between forwards, expose_hidden, static inputs, blob layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_ft.errors import CaffeError
from caffe_ft.layers.recurrent import _LSTMUnitFunction
from caffe_ft.net import Net
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text

HIDDEN = 3
FILLERS = ('weight_filler { type: "uniform" min: -0.5 max: 0.5 } '
           'bias_filler { type: "uniform" min: -0.5 max: 0.5 }')


def build(text: str, shapes: dict[str, tuple[int, ...]], force_backward: bool = True) -> Net:
    layers = "".join(
        f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ '
        + " ".join(f"dim: {d}" for d in shape) + " } } }\n" for name, shape in shapes.items())
    head = "force_backward: true\n" if force_backward else ""
    net = Net(parse_text(head + layers + text, caffe_pb2.NetParameter()), caffe_pb2.TRAIN,
              source="test.prototxt")
    net.keep_blob_diffs = True
    return net


def forward(net: Net, inputs: dict[str, np.ndarray]) -> Net:
    for name, value in inputs.items():
        net.set_blob_data(name, torch.from_numpy(value))
    net.forward()
    return net


def recurrent(kind: str, extra: str = "", bottoms: str = 'bottom: "x" bottom: "cont"',
              tops: str = 'top: "y"') -> str:
    return (f'layer {{ name: "rec" type: "{kind}" {bottoms} {tops} recurrent_param {{ '
            f'num_output: {HIDDEN} {FILLERS} {extra} }} }}')


def copy_params(source: Net, target: Net) -> None:
    for a, b in zip(source.params_of("rec"), target.params_of("rec")):
        b.data.copy_(a.data)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def lstm_unit_reference(c_prev: np.ndarray, x: np.ndarray, cont: np.ndarray,
                        dc: np.ndarray, dh: np.ndarray) -> tuple[np.ndarray, ...]:
    """lstm_unit_layer.cpp's Forward_cpu and Backward_cpu, in numpy."""
    i, f, o, g = np.split(x, 4, axis=-1)
    i, o, g = sigmoid(i), sigmoid(o), np.tanh(g)
    f = np.where(cont[:, None] == 0, 0.0, cont[:, None] * sigmoid(f))
    c = f * c_prev + i * g
    tanh_c = np.tanh(c)
    h = o * tanh_c
    c_term = dc + dh * o * (1 - tanh_c ** 2)
    dx = np.concatenate([c_term * g * i * (1 - i), c_term * c_prev * f * (1 - f),
                         dh * tanh_c * o * (1 - o), c_term * i * (1 - g * g)], axis=-1)
    return c, h, c_term * f, dx


def test_lstm_unit_layer_matches_caffe_including_fractional_cont() -> None:
    rng = np.random.default_rng(0)
    n = 4
    c_prev = rng.normal(size=(1, n, HIDDEN)).astype(np.float32)
    gates = rng.normal(size=(1, n, 4 * HIDDEN)).astype(np.float32)
    # cont 0.5 shows Caffe's f·(1 - f) gradient, which includes cont.
    cont = np.array([[1, 0, 0.5, 1]], np.float32)
    net = build('''layer { name: "unit" type: "LSTMUnit" bottom: "c_prev" bottom: "gates"
                   bottom: "cont" top: "c" top: "h" }''',
                {"c_prev": c_prev.shape, "gates": gates.shape, "cont": cont.shape})
    forward(net, {"c_prev": c_prev, "gates": gates, "cont": cont})
    dc = rng.normal(size=c_prev.shape).astype(np.float32)
    dh = rng.normal(size=c_prev.shape).astype(np.float32)
    net.backward({"c": torch.from_numpy(dc), "h": torch.from_numpy(dh)})
    inputs = (v[0].astype(np.float64) for v in (c_prev, gates, cont))
    c, h, dc_prev, dx = lstm_unit_reference(*inputs, dc[0], dh[0])
    np.testing.assert_allclose(net.blob_data("c").detach().numpy()[0], c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blob_data("h").detach().numpy()[0], h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blob_diff("c_prev").numpy()[0], dc_prev, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blob_diff("gates").numpy()[0], dx, rtol=1e-5, atol=1e-6)
    assert net.blob_diff("cont") is None


def test_lstm_unit_backward_is_the_derivative_for_binary_cont() -> None:
    rng = np.random.default_rng(1)
    c_prev = torch.from_numpy(rng.normal(size=(3, 2))).requires_grad_()
    gates = torch.from_numpy(rng.normal(size=(3, 8))).requires_grad_()
    cont = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda c, x: _LSTMUnitFunction.apply(c, x, cont),
                                    (c_prev, gates))


def test_lstm_unit_refuses_gradient_to_cont() -> None:
    with pytest.raises(CaffeError, match="Cannot backpropagate to sequence indicators"):
        build('''layer { name: "unit" type: "LSTMUnit" bottom: "c_prev" bottom: "gates"
                 bottom: "cont" top: "c" top: "h" propagate_down: true propagate_down: true
                 propagate_down: true }''',
              {"c_prev": (1, 2, 3), "gates": (1, 2, 12), "cont": (1, 2)})


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_cont_zero_starts_a_new_sequence(kind: str) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 2, 4)).astype(np.float32)
    cont = np.ones((5, 2), np.float32)
    cont[0] = 0
    cont[3, 1] = 0  # stream 1 starts over at t = 3
    full = forward(build(recurrent(kind), {"x": x.shape, "cont": cont.shape}),
                   {"x": x, "cont": cont})
    tail = build(recurrent(kind), {"x": (2, 2, 4), "cont": (2, 2)})
    copy_params(full, tail)
    forward(tail, {"x": x[3:], "cont": np.array([[0, 0], [1, 1]], np.float32)})
    y_full, y_tail = full.blob_data("y").detach().numpy(), tail.blob_data("y").detach().numpy()
    np.testing.assert_allclose(y_full[3:, 1], y_tail[:, 1], rtol=1e-5, atol=1e-6)
    # Stream 0 continued, so its outputs depend on the earlier steps.
    assert not np.allclose(y_full[3:, 0], y_tail[:, 0], atol=1e-4)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_hidden_state_carries_over_between_forwards(kind: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 2, 3)).astype(np.float32)
    cont = np.ones((4, 2), np.float32)
    cont[0] = 0
    whole = forward(build(recurrent(kind), {"x": x.shape, "cont": cont.shape}),
                    {"x": x, "cont": cont})
    halves = build(recurrent(kind), {"x": (2, 2, 3), "cont": (2, 2)})
    copy_params(whole, halves)
    first = forward(halves, {"x": x[:2], "cont": cont[:2]}).blob_data("y").detach().clone()
    second = forward(halves, {"x": x[2:], "cont": cont[2:]}).blob_data("y").detach()
    np.testing.assert_allclose(torch.cat([first, second]).numpy(),
                               whole.blob_data("y").detach().numpy(), rtol=1e-5, atol=1e-6)
    # The carried state takes no gradient: backward of the second batch works alone.
    halves.backward({"y": torch.ones(2, 2, HIDDEN)})
    assert halves.blob_diff("x") is not None


def test_lstm_expose_hidden_threads_state_through_blobs() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 2, 3)).astype(np.float32)
    cont = np.ones((4, 2), np.float32)
    cont[0] = 0
    whole = forward(build(recurrent("LSTM"), {"x": x.shape, "cont": cont.shape}),
                    {"x": x, "cont": cont})
    exposed = build(recurrent("LSTM", "expose_hidden: true",
                              'bottom: "x" bottom: "cont" bottom: "h0" bottom: "c0"',
                              'top: "y" top: "hT" top: "cT"'),
                    {"x": (2, 2, 3), "cont": (2, 2), "h0": (1, 2, HIDDEN), "c0": (1, 2, HIDDEN)})
    copy_params(whole, exposed)
    zeros = np.zeros((1, 2, HIDDEN), np.float32)
    forward(exposed, {"x": x[:2], "cont": cont[:2], "h0": zeros, "c0": zeros})
    first = exposed.blob_data("y").detach().clone()
    h_t, c_t = (exposed.blob_data(n).detach().clone().numpy() for n in ("hT", "cT"))
    np.testing.assert_allclose(h_t[0], first[-1].numpy())
    forward(exposed, {"x": x[2:], "cont": cont[2:], "h0": h_t, "c0": c_t})
    np.testing.assert_allclose(torch.cat([first, exposed.blob_data("y").detach()]).numpy(),
                               whole.blob_data("y").detach().numpy(), rtol=1e-5, atol=1e-6)
    exposed.backward({"y": torch.ones(2, 2, HIDDEN)})
    # Caffe shares only the data of exposed state blobs: no gradient reaches h0/c0.
    assert exposed.blob_diff("h0") is None and exposed.blob_diff("c0") is None
    assert exposed.blob_diff("x") is not None


def rnn_reference(x: np.ndarray, cont: np.ndarray, static: np.ndarray,
                  blobs: list[np.ndarray]) -> np.ndarray:
    w_xh, b_h, w_static, w_hh, w_ho, b_o = blobs
    h = np.zeros((x.shape[1], w_hh.shape[0]))
    out = []
    for t in range(x.shape[0]):
        h = np.tanh((h * cont[t][:, None]) @ w_hh.T + x[t] @ w_xh.T + b_h
                    + static @ w_static.T)
        out.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(out)


def test_rnn_static_input_blob_layout_and_values() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 2, 4)).astype(np.float32)
    cont = np.array([[0, 0], [1, 1], [1, 0]], np.float32)
    static = rng.normal(size=(2, 2, 3)).astype(np.float32)
    net = build(recurrent("RNN", bottoms='bottom: "x" bottom: "cont" bottom: "s"'),
                {"x": x.shape, "cont": cont.shape, "s": static.shape})
    assert [tuple(p.shape) for p in net.params_of("rec")] == \
        [(HIDDEN, 4), (HIDDEN,), (HIDDEN, 6), (HIDDEN, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN,)]
    forward(net, {"x": x, "cont": cont, "s": static})
    blobs = [p.detach().double().numpy() for p in net.params_of("rec")]
    np.testing.assert_allclose(net.blob_data("y").detach().numpy(),
                               rnn_reference(x, cont, static.reshape(2, -1), blobs),
                               rtol=1e-5, atol=1e-6)
    net.backward({"y": torch.ones(3, 2, HIDDEN)})
    assert net.blob_diff("s") is not None and net.blob_diff("cont") is None


def test_lstm_blob_layout_with_static_input() -> None:
    net = build(recurrent("LSTM", bottoms='bottom: "x" bottom: "cont" bottom: "s"'),
                {"x": (2, 1, 5), "cont": (2, 1), "s": (1, 7)})
    assert [tuple(p.shape) for p in net.params_of("rec")] == \
        [(4 * HIDDEN, 5), (4 * HIDDEN,), (4 * HIDDEN, 7), (4 * HIDDEN, HIDDEN)]


def test_recurrent_shape_checks() -> None:
    with pytest.raises(CaffeError, match="bottom\\[1\\] must have exactly 2 axes"):
        build(recurrent("RNN"), {"x": (3, 2, 4), "cont": (3, 2, 1)})
    with pytest.raises(CaffeError, match="Cannot backpropagate to sequence indicators"):
        build(recurrent("RNN", bottoms='bottom: "x" bottom: "cont" propagate_down: true '
                                       'propagate_down: true'), {"x": (3, 2, 4), "cont": (3, 2)})
    net = build(recurrent("LSTM"), {"x": (3, 2, 4), "cont": (3, 2)})
    net.reshape_input("x", (4, 2, 4))
    with pytest.raises(CaffeError, match="input number of timesteps changed"):
        net.reshape()


def test_batch_size_may_change_between_forwards() -> None:
    nets = [build(recurrent("LSTM"), {"x": (2, 3, 4), "cont": (2, 3)}) for _ in range(2)]
    copy_params(*nets)
    full, sub = (net.layers[net.layer_index("rec")] for net in nets)
    x = torch.from_numpy(np.random.default_rng(6).normal(size=(2, 3, 4)).astype(np.float32))
    ones = torch.ones(2, 3)
    full(x, ones)
    expected = full(x, ones)[0].detach()  # runs from the state of the first forward
    sub(x, ones)
    # A smaller batch keeps the first streams' state, as Caffe's flat copy does.
    assert sub.reshape([(2, 1, 4), (2, 1)]) == [(2, 1, HIDDEN)]
    np.testing.assert_allclose(sub(x[:, :1], ones[:, :1])[0].detach().numpy(),
                               expected[:, :1].numpy(), rtol=1e-5, atol=1e-6)
    # A larger batch than the carried state starts from zeros.
    fresh = build(recurrent("LSTM"), {"x": (2, 3, 4), "cont": (2, 3)})
    copy_params(nets[0], fresh)
    np.testing.assert_allclose(sub(x, ones)[0].detach().numpy(),
                               fresh.layers[fresh.layer_index("rec")](x, ones)[0].detach().numpy(),
                               rtol=1e-5, atol=1e-6)

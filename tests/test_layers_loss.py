"""Loss layers and Accuracy beyond the golden cases: every normalization
mode, ignore_label, the log floors' gradients, optional prob tops, the
infogain matrix from a file, and Caffe's refusals. Expected values come from
numpy restatements of Caffe's formulas."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_ft.blobs import array_to_blob_proto
from caffe_ft.errors import CaffeError
from caffe_ft.net import Net
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text, write_binary

FLT_MIN = np.finfo(np.float32).tiny
SOFTMAX_LOSS = '''layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label"
                 top: "loss" }'''


def run(text: str, inputs: dict[str, np.ndarray], backward: bool = True) -> Net:
    """Build a force_backward net from Input layers for `inputs` plus `text`,
    run forward (and backward from its loss tops)."""
    layers = "".join(
        f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ '
        + " ".join(f"dim: {d}" for d in value.shape) + " } } }\n"
        for name, value in inputs.items())
    net = Net(parse_text("force_backward: true\n" + layers + text, caffe_pb2.NetParameter()),
              caffe_pb2.TRAIN, source="test.prototxt")
    net.keep_blob_diffs = True
    for name, value in inputs.items():
        net.set_blob_data(name, torch.from_numpy(value))
    net.forward()
    if backward:
        net.backward()
    return net


def value(net: Net, name: str) -> np.ndarray:
    return net.blob_data(name).detach().numpy()


def diff(net: Net, name: str) -> np.ndarray:
    grad = net.blob_diff(name)
    assert grad is not None, f"no gradient reached {name}"
    return grad.numpy()


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def spatial_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)
    label = rng.integers(0, 4, size=(2, 1, 3, 3)).astype(np.float32)
    label[0, 0, 0, :] = 3  # make sure the ignored class occurs
    return x, label


def softmax_loss_reference(x: np.ndarray, label: np.ndarray, ignore: int | None,
                           normalizer_of: str) -> tuple[float, np.ndarray]:
    prob = softmax(x.astype(np.float64), 1)
    index = label[:, 0].astype(np.int64)
    valid = np.ones_like(index, bool) if ignore is None else index != ignore
    picked = np.take_along_axis(prob, np.where(valid, index, 0)[:, None], 1)[:, 0]
    n, _, h, w = x.shape
    normalizer = max(1.0, {"FULL": n * h * w, "VALID": valid.sum(), "BATCH_SIZE": n,
                           "NONE": 1}[normalizer_of])
    loss = -np.log(np.maximum(picked, FLT_MIN))[valid].sum() / normalizer
    grad = prob.copy()
    onehot = np.zeros_like(prob)
    np.put_along_axis(onehot, np.where(valid, index, 0)[:, None], 1.0, 1)
    grad = (grad - onehot) * valid[:, None] / normalizer
    return loss, grad


@pytest.mark.parametrize(("loss_param", "mode"), [
    ("normalization: FULL", "FULL"),
    ("normalization: VALID", "VALID"),
    ("", "VALID"),
    ("normalization: BATCH_SIZE", "BATCH_SIZE"),
    ("normalization: NONE", "NONE"),
    ("normalize: true", "VALID"),
    ("normalize: false", "BATCH_SIZE"),
    ("normalize: false normalization: FULL", "FULL"),  # normalization wins over legacy
])
def test_softmax_loss_normalization_modes(loss_param: str, mode: str) -> None:
    x, label = spatial_case()
    net = run(f'''layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label"
                  top: "loss" loss_weight: 2 loss_param {{ ignore_label: 3 {loss_param} }} }}''',
              {"x": x, "label": label})
    loss, grad = softmax_loss_reference(x, label, 3, mode)
    np.testing.assert_allclose(value(net, "loss"), loss, rtol=1e-5)
    np.testing.assert_allclose(diff(net, "x"), 2 * grad, rtol=1e-4, atol=1e-7)
    assert net.blob_diff("label") is None


def test_softmax_loss_axis_and_prob_top() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 2, 5)).astype(np.float32)
    label = rng.integers(0, 5, size=(3, 2)).astype(np.float32)
    net = run('''layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label"
                 top: "loss" top: "prob" loss_weight: 1 loss_weight: 0
                 softmax_param { axis: 2 } }''',
              {"x": x, "label": label})
    prob = softmax(x.astype(np.float64), 2)
    np.testing.assert_allclose(value(net, "prob"), prob, rtol=1e-5)
    picked = np.take_along_axis(prob, label.astype(np.int64)[..., None], 2)
    np.testing.assert_allclose(value(net, "loss"), -np.log(picked).sum() / 6, rtol=1e-5)


def test_softmax_loss_with_prob_top_needs_two_loss_weights() -> None:
    with pytest.raises(CaffeError, match="loss_weight must be unspecified or specified once"):
        run('''layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label"
               top: "loss" top: "prob" }''',
            {"x": np.zeros((2, 3), np.float32), "label": np.zeros(2, np.float32)})


def test_softmax_loss_floor_keeps_loss_and_gradient_finite() -> None:
    # exp(-200) underflows: p[label] is 0, so Caffe's log floor FLT_MIN applies,
    # while its gradient p - 1 knows nothing of the floor.
    x = np.array([[0.0, 200.0], [1.0, 0.0]], np.float32)
    label = np.array([0.0, 0.0], np.float32)
    net = run('''layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label"
                 top: "loss" propagate_down: true propagate_down: false }''',
              {"x": x, "label": label})
    prob = softmax(x.astype(np.float64), 1)
    expected = (-np.log(FLT_MIN) - np.log(prob[1, 0])) / 2
    np.testing.assert_allclose(value(net, "loss"), expected, rtol=1e-5)
    onehot = np.array([[1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(diff(net, "x"), (prob - onehot) / 2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("layer_type", ["SoftmaxWithLoss", "HingeLoss",
                                        "MultinomialLogisticLoss", "SigmoidCrossEntropyLoss"])
def test_backpropagating_to_labels_is_refused(layer_type: str) -> None:
    with pytest.raises(CaffeError, match="cannot backpropagate to label inputs"):
        run(f'''layer {{ name: "loss" type: "{layer_type}" bottom: "x" bottom: "label"
                top: "loss" propagate_down: true propagate_down: true }}''',
            {"x": np.full((2, 1), 0.5, np.float32), "label": np.zeros((2, 1), np.float32)})


def test_label_outside_the_classes_is_named() -> None:
    with pytest.raises(CaffeError, match="label 7 is outside the 3 classes"):
        run(SOFTMAX_LOSS,
            {"x": np.zeros((2, 3), np.float32), "label": np.array([0, 7], np.float32)})


def test_label_count_must_match_predictions() -> None:
    with pytest.raises(CaffeError, match="Number of labels must match number of predictions"):
        run(SOFTMAX_LOSS,
            {"x": np.zeros((2, 3, 2), np.float32), "label": np.zeros((2,), np.float32)})


def accuracy_reference(x: np.ndarray, label: np.ndarray, top_k: int, ignore: int | None
                       ) -> tuple[float, np.ndarray]:
    """Caffe's loop: correct iff fewer than top_k classes score >= the true one,
    the true class itself excluded."""
    hits, totals = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    count = correct = 0
    for scores, y in zip(x, label.astype(int)):
        if ignore is not None and y == ignore:
            continue
        totals[y] += 1
        count += 1
        if (scores >= scores[y]).sum() - 1 < top_k:
            correct += 1
            hits[y] += 1
    per_class = np.divide(hits, totals, out=np.zeros_like(hits), where=totals > 0)
    return (correct / count if count else 0.0), per_class


@pytest.mark.parametrize(("top_k", "ignore"), [(1, None), (2, None), (2, 1)])
def test_accuracy_ties_count_against(top_k: int, ignore: int | None) -> None:
    # Rows with ties at the true class's score: Caffe counts the tie as a better class.
    x = np.array([[1, 1, 0, 0], [2, 1, 1, 0], [0, 3, 3, 3], [5, 1, 2, 3],
                  [1, 1, 1, 1], [0, 0, 2, 1]], np.float32)
    label = np.array([0, 1, 2, 0, 3, 1], np.float32)
    param = f"top_k: {top_k}" + ("" if ignore is None else f" ignore_label: {ignore}")
    net = run(f'''layer {{ name: "acc" type: "Accuracy" bottom: "x" bottom: "label"
                  top: "acc" top: "per_class" accuracy_param {{ {param} }} }}''',
              {"x": x, "label": label}, backward=False)
    accuracy, per_class = accuracy_reference(x, label, top_k, ignore)
    np.testing.assert_allclose(value(net, "acc"), accuracy, rtol=1e-6)
    np.testing.assert_allclose(value(net, "per_class"), per_class, rtol=1e-6)


def test_accuracy_along_a_spatial_axis_and_all_ignored() -> None:
    x, label = spatial_case(2)
    net = run('''layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" }
                 layer { name: "none" type: "Accuracy" bottom: "x" bottom: "zeros" top: "none"
                         accuracy_param { ignore_label: 0 } }''',
              {"x": x, "label": label, "zeros": np.zeros_like(label)}, backward=False)
    flat_x = x.transpose(0, 2, 3, 1).reshape(-1, 4)
    np.testing.assert_allclose(value(net, "acc"),
                               accuracy_reference(flat_x, label.reshape(-1), 1, None)[0], rtol=1e-6)
    assert value(net, "none") == 0  # no counted label: Caffe reports 0


def test_accuracy_top_k_above_classes_is_refused() -> None:
    with pytest.raises(CaffeError, match="top_k must be less than or equal"):
        run('''layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc"
               accuracy_param { top_k: 4 } }''',
            {"x": np.zeros((2, 3), np.float32), "label": np.zeros(2, np.float32)}, backward=False)


def test_euclidean_loss_reaches_both_bottoms_under_force_backward() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(3, 2, 2)).astype(np.float32)
    b = rng.normal(size=(3, 4)).astype(np.float32)  # same count from axis 1
    net = run('''layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss"
                 loss_weight: 3 }''', {"a": a, "b": b})
    d = a.reshape(3, 4).astype(np.float64) - b
    np.testing.assert_allclose(value(net, "loss"), (d * d).sum() / 3 / 2, rtol=1e-5)
    np.testing.assert_allclose(diff(net, "a"), 3 * d.reshape(a.shape) / 3, rtol=1e-5)
    np.testing.assert_allclose(diff(net, "b"), -3 * d / 3, rtol=1e-5)


@pytest.mark.parametrize(("loss_param", "mode"), [
    ("", "BATCH_SIZE"), ("normalization: VALID", "VALID"), ("normalize: true", "VALID"),
    ("normalization: FULL", "FULL"), ("normalization: NONE", "NONE")])
def test_sigmoid_cross_entropy_normalization_and_ignore(loss_param: str, mode: str) -> None:
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(3, 5)) * 4).astype(np.float32)
    t = rng.uniform(size=(3, 5)).astype(np.float32)
    t[0, :2] = -1  # ignored (int(-1) == -1)
    net = run(f'''layer {{ name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t"
                  top: "loss" propagate_down: true propagate_down: false
                  loss_param {{ ignore_label: -1 {loss_param} }} }}''', {"x": x, "t": t})
    xd, td = x.astype(np.float64), t.astype(np.float64)
    valid = t.astype(np.int64) != -1
    terms = xd * (td - (xd >= 0)) - np.log1p(np.exp(xd - 2 * xd * (xd >= 0)))
    normalizer = {"BATCH_SIZE": 3, "VALID": valid.sum(), "FULL": 15, "NONE": 1}[mode]
    np.testing.assert_allclose(value(net, "loss"), -terms[valid].sum() / normalizer, rtol=1e-5)
    grad = (1 / (1 + np.exp(-xd)) - td) * valid / normalizer
    np.testing.assert_allclose(diff(net, "x"), grad, rtol=1e-5, atol=1e-7)


def infogain_reference(x: np.ndarray, label: np.ndarray, h: np.ndarray, ignore: int
                       ) -> tuple[float, np.ndarray]:
    prob = softmax(x.astype(np.float64), 1)
    y = label.astype(np.int64)
    valid = y != ignore
    rows = h[np.where(valid, y, 0)]
    loss = -(rows * np.log(np.maximum(prob, 1e-20))).sum(1)[valid].sum() / valid.sum()
    grad = (prob * rows.sum(1, keepdims=True) - rows) * valid[:, None] / valid.sum()
    return loss, grad


def test_infogain_matrix_from_source_file_and_bottom_agree(tmp_path) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    label = np.array([0, 2, 1, 2, 0], np.float32)
    h = rng.uniform(size=(3, 3)).astype(np.float32)
    source = tmp_path / "H.binaryproto"
    write_binary(source, array_to_blob_proto(h.reshape(1, 1, 3, 3)))
    net = run(f'''layer {{ name: "file" type: "InfogainLoss" bottom: "x" bottom: "label"
                   top: "file" top: "prob" loss_weight: 1 loss_weight: 0
                   loss_param {{ ignore_label: 1 }} infogain_loss_param {{ source: "{source}" }} }}
                  layer {{ name: "bottom" type: "InfogainLoss" bottom: "x" bottom: "label"
                   bottom: "H" top: "bottom" propagate_down: true propagate_down: false
                   propagate_down: false loss_param {{ ignore_label: 1 }} }}''',
              {"x": x, "label": label, "H": h})
    loss, grad = infogain_reference(x, label, h.astype(np.float64), 1)
    np.testing.assert_allclose(value(net, "file"), loss, rtol=1e-5)
    np.testing.assert_allclose(value(net, "bottom"), loss, rtol=1e-5)
    np.testing.assert_allclose(value(net, "prob"), softmax(x.astype(np.float64), 1), rtol=1e-5)
    # x feeds both losses (the net splits it), so its diff is the sum of two equal parts.
    np.testing.assert_allclose(diff(net, "x"), 2 * grad, rtol=1e-4, atol=1e-7)


def test_infogain_refuses_legacy_normalize_and_a_missing_matrix() -> None:
    inputs = {"x": np.zeros((2, 3), np.float32), "label": np.zeros(2, np.float32)}
    with pytest.raises(CaffeError, match="normalize is deprecated"):
        run('''layer { name: "l" type: "InfogainLoss" bottom: "x" bottom: "label" top: "l"
               loss_param { normalize: true } infogain_loss_param { source: "h" } }''', inputs)
    with pytest.raises(CaffeError, match="Infogain matrix source must be specified"):
        run('''layer { name: "l" type: "InfogainLoss" bottom: "x" bottom: "label" top: "l" }''',
            inputs)


def test_multinomial_logistic_gradient_uses_the_floored_probability() -> None:
    p = np.array([[0.0, 1.0], [0.25, 0.75]], np.float32)
    label = np.array([0, 1], np.float32)
    net = run('''layer { name: "loss" type: "MultinomialLogisticLoss" bottom: "p" bottom: "label"
                 top: "loss" propagate_down: true propagate_down: false }''',
              {"p": p, "label": label})
    np.testing.assert_allclose(value(net, "loss"), -(np.log(1e-20) + np.log(0.75)) / 2, rtol=1e-5)
    expected = np.zeros((2, 2))
    expected[0, 0] = -0.5 / np.float32(1e-20)  # Caffe: scale / max(p, 1e-20), not autograd's 0
    expected[1, 1] = -0.5 / 0.75
    np.testing.assert_allclose(diff(net, "p"), expected, rtol=1e-5)


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_caffe_gradient(legacy: bool) -> None:
    rng = np.random.default_rng(6)
    a = rng.normal(size=(6, 3)).astype(np.float32)
    b = rng.normal(size=(6, 3)).astype(np.float32)
    b[4] = a[4]  # a dissimilar pair at distance 0: Caffe's d + 1e-4 keeps it finite
    sim = np.array([1, 0, 1, 0, 0, 0], np.float32)
    margin = 2.0
    net = run(f'''layer {{ name: "loss" type: "ContrastiveLoss" bottom: "a" bottom: "b"
                  bottom: "sim" top: "loss" contrastive_loss_param {{ margin: {margin}
                  legacy_version: {str(legacy).lower()} }} }}''', {"a": a, "b": b, "sim": sim})
    d = a.astype(np.float64) - b
    dist_sq = (d * d).sum(1)
    dist = np.sqrt(dist_sq)
    if legacy:
        dissimilar, mdist, beta = np.maximum(margin - dist_sq, 0), margin - dist_sq, -np.ones(6)
    else:
        dissimilar = np.maximum(margin - dist, 0) ** 2
        mdist = margin - dist
        beta = -mdist / (dist + 1e-4)
    loss = np.where(sim != 0, dist_sq, dissimilar).sum() / 6 / 2
    coeff = np.where(sim != 0, 1.0, np.where(mdist > 0, beta, 0.0)) / 6
    np.testing.assert_allclose(value(net, "loss"), loss, rtol=1e-5)
    np.testing.assert_allclose(diff(net, "a"), coeff[:, None] * d, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(diff(net, "b"), -coeff[:, None] * d, rtol=1e-4, atol=1e-7)
    assert net.blob_diff("sim") is None  # force_backward skips the similarity bottom


def test_loss_layers_check_the_first_dimension() -> None:
    with pytest.raises(CaffeError, match="same first dimension"):
        run('''layer { name: "loss" type: "HingeLoss" bottom: "x" bottom: "label" top: "loss" }''',
            {"x": np.zeros((3, 2), np.float32), "label": np.zeros(2, np.float32)})

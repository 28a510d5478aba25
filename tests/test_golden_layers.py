"""Every layer case produced by real BVLC Caffe (golden/layers): forward
blobs, BatchNorm's updated stats, and backward diffs, within the README's
float32 tolerances, on conftest's TEST_DEVICE."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from caffe_ft.net import Net
from caffe_ft.net.weights import copy_trained_layers
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import read_binary, read_text
from conftest import FIXTURES, TEST_DEVICE

CASES_DIR = FIXTURES / "golden_layers"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if p.is_dir())
FORWARD = dict(rtol=1e-4, atol=1e-5)
BACKWARD = dict(rtol=1e-3, atol=1e-5)


def _run_case(case: str) -> tuple[Net, dict, dict[str, np.ndarray]]:
    folder = CASES_DIR / case
    meta = json.loads((folder / "meta.json").read_text())
    data = dict(np.load(folder / "data.npz"))
    param = read_text(folder / "net.prototxt", caffe_pb2.NetParameter())
    net = Net(param, getattr(caffe_pb2, meta["phase"]),
              source=str(folder / "net.prototxt")).to(TEST_DEVICE)
    weights = read_binary(folder / "weights.caffemodel", caffe_pb2.NetParameter())
    copy_trained_layers(net, weights, str(folder / "weights.caffemodel"))
    net.keep_blob_diffs = True
    for key, value in data.items():
        if key.startswith("input/"):
            net.set_blob_data(key[len("input/"):], torch.from_numpy(value))
    net.forward()
    return net, meta, data


def _check(actual: torch.Tensor | None, expected: np.ndarray, what: str, tol: dict) -> None:
    assert actual is not None, f"{what}: no value"
    got = actual.detach().cpu().numpy()
    assert got.shape == expected.shape or got.size == expected.size == 1, \
        f"{what}: shape {got.shape} != Caffe's {expected.shape}"
    np.testing.assert_allclose(got.reshape(expected.shape), expected, err_msg=what, **tol)


@pytest.mark.parametrize("case", CASES)
def test_forward(case: str) -> None:
    net, _, data = _run_case(case)
    for key, expected in data.items():
        if key.startswith("blob/"):
            _check(net.blob_data(key[5:]), expected, key, FORWARD)
        elif key.startswith("param/"):
            _, layer, index = key.split("/")
            _check(net.params_of(layer)[int(index)], expected, key, FORWARD)


@pytest.mark.parametrize("case", CASES)
def test_backward(case: str) -> None:
    net, meta, data = _run_case(case)
    if not meta["backward"]:
        pytest.skip(f"Caffe ran no backward for this case: {meta.get('note', '')}")
    seeds = {key[len("topdiff/"):]: torch.from_numpy(value)
             for key, value in data.items() if key.startswith("topdiff/")}
    net.backward(seeds)
    for key, expected in data.items():
        if key.startswith("diff/"):
            name = key[5:]
            diff = net.blob_diff(name)
            if diff is None and not expected.any():
                continue  # Caffe's diff stayed zero: no gradient reaches this blob
            _check(diff, expected, key, BACKWARD)
        elif key.startswith("paramdiff/"):
            _, layer, index = key.split("/")
            grad = net.params_of(layer)[int(index)].grad
            if grad is None and not expected.any():
                continue
            _check(grad, expected, key, BACKWARD)

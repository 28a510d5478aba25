"""The net's public blob store: pycaffe's host arrays (Caffe's SyncedMemory),
backward over a layer range, and per-layer hooks.

The copying path that a GPU takes (host array ≠ device tensor) runs here on
the CPU through the store's MIRROR_ALWAYS hook, and on CUDA when a device is
there."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_ft as caffe
from caffe_ft.errors import CaffeError
from caffe_ft.net import Net, store
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text

NET = '''
name: "small"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''

DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])]


@pytest.fixture(params=["view", "mirror"])
def mirror_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both host-array paths: a view of the CPU tensor, and a copied mirror."""
    monkeypatch.setattr(store, "MIRROR_ALWAYS", request.param == "mirror")
    return request.param


@pytest.fixture(params=DEVICES)
def pynet(request: pytest.FixtureRequest, tmp_path: Path, mirror_mode: str) -> caffe.Net:
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    torch.manual_seed(0)
    if request.param == "cuda":
        caffe.set_mode_gpu()
        request.addfinalizer(caffe.set_mode_cpu)
    return caffe.Net(str(path), caffe.TEST)


def _x(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 3, 6, 6)).astype(np.float32)


def test_input_written_through_the_host_array_reaches_the_net(pynet: caffe.Net) -> None:
    expected = pynet.forward(data=_x(1))["prob"].copy()
    pynet.forward(data=_x(2))
    pynet.blobs["data"].data[...] = _x(1)
    np.testing.assert_array_equal(pynet.forward()["prob"], expected)


def test_a_write_survives_later_reads_until_the_next_pass(pynet: caffe.Net) -> None:
    # Deep dream's jitter reads and writes the input in one statement, then reads it again.
    expected = pynet.forward(data=_x(1))["prob"].copy()
    pynet.forward(data=_x(2))
    pynet.blobs["data"].data[...] = _x(1)
    np.testing.assert_array_equal(pynet.blobs["data"].data, _x(1))
    np.testing.assert_array_equal(pynet.forward()["prob"], expected)


def test_a_view_taken_before_forward_shows_the_values_after_it(pynet: caffe.Net) -> None:
    prob = pynet.blobs["prob"].data
    data = pynet.blobs["data"].data
    out = pynet.forward(data=_x(3))["prob"]
    assert out is prob  # pycaffe returns the blob's own array
    np.testing.assert_array_equal(data, _x(3))
    first = prob.copy()
    pynet.forward(data=_x(4))
    assert not np.array_equal(prob, first)
    np.testing.assert_allclose(prob.sum(axis=1), [1, 1], rtol=1e-5)


def test_net_surgery_on_params_changes_the_output(pynet: caffe.Net) -> None:
    before = pynet.forward(data=_x(5))["prob"].copy()
    pynet.params["fc"][0].data[...] = 0
    pynet.params["fc"][1].data[...] = np.arange(5, dtype=np.float32)
    after = pynet.forward()["prob"]
    expected = np.exp(np.arange(5)) / np.exp(np.arange(5)).sum()
    np.testing.assert_allclose(after, np.stack([expected] * 2), rtol=1e-5)
    assert not np.allclose(before, after)
    # The write reached the tensor the net computes with.
    layer = pynet.torch_module.layers[pynet.torch_module.layer_index("fc")]
    assert float(layer.blobs[0].detach().abs().sum()) == 0


def test_a_written_computed_blob_feeds_the_layers_after_it(pynet: caffe.Net) -> None:
    pynet.forward(data=_x(6))
    pynet.blobs["fc"].data[...] = np.arange(5, dtype=np.float32)
    out = pynet.forward(start="prob")["prob"]
    expected = np.exp(np.arange(5)) / np.exp(np.arange(5)).sum()
    np.testing.assert_allclose(out, np.stack([expected] * 2), rtol=1e-5)


def test_backward_diffs_and_param_diffs_reach_the_host(pynet: caffe.Net) -> None:
    pynet.forward(data=_x(7))
    seed = np.random.default_rng(8).standard_normal((2, 5)).astype(np.float32)
    diffs = pynet.backward(prob=seed)
    assert diffs["data"].shape == (2, 3, 6, 6) and np.abs(diffs["data"]).sum() > 0
    assert diffs["data"] is pynet.blobs["data"].diff
    grad = pynet.params["conv"][0].diff.copy()
    assert np.abs(grad).sum() > 0
    # Param diffs accumulate over backward passes until cleared, as in Caffe.
    pynet.backward(prob=seed)
    np.testing.assert_allclose(pynet.params["conv"][0].diff, 2 * grad, rtol=1e-5, atol=1e-7)
    pynet.torch_module.clear_param_diffs()
    assert not pynet.params["conv"][0].diff.any()


def test_backward_over_a_range_matches_the_whole_pass(pynet: caffe.Net) -> None:
    pynet.forward(data=_x(9))
    seed = np.ones((2, 5), np.float32)
    whole = {name: diff.copy() for name, diff in
             pynet.backward(diffs=["fc", "conv"], prob=seed).items()}
    pynet.torch_module.clear_param_diffs()
    pynet.blobs["data"].diff[...] = 0
    # prob → fc alone: the diff of fc, and nothing below it yet.
    top = pynet.backward(start="prob", end="fc", prob=seed)
    assert set(top) == {"conv"}  # `end`'s bottoms
    np.testing.assert_allclose(pynet.blobs["fc"].diff, whole["fc"], rtol=1e-6)
    assert not pynet.blobs["data"].diff.any()
    assert not pynet.params["conv"][0].diff.any()
    # Then relu → conv from the diffs the first range left.
    pynet.backward(start="relu", end="conv")
    np.testing.assert_allclose(pynet.blobs["data"].diff, whole["data"], rtol=1e-5, atol=1e-7)


def test_layer_by_layer_backward_equals_the_whole_graph() -> None:
    param = parse_text(NET, caffe_pb2.NetParameter())
    torch.manual_seed(0)
    graph = Net(param, caffe_pb2.TRAIN)
    torch.manual_seed(0)
    layered = Net(param, caffe_pb2.TRAIN)
    layered.keep_blob_diffs = True
    seed = torch.from_numpy(np.random.default_rng(10).standard_normal((2, 5)).astype(np.float32))
    for net in (graph, layered):
        net.set_blob_data("data", torch.from_numpy(_x(11)))
        net.forward()
        net.backward({"prob": seed})
    for a, b in zip(graph.parameters(), layered.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)
    assert graph.blob_diff("conv") is None  # the whole-graph pass keeps no blob diffs
    assert layered.blob_diff("conv") is not None


def test_a_range_or_hook_needs_kept_blob_diffs() -> None:
    net = Net(parse_text(NET, caffe_pb2.NetParameter()), caffe_pb2.TRAIN)
    net.forward()
    with pytest.raises(CaffeError, match="keep_blob_diffs"):
        net.backward(start=3, end=1)


def test_the_hook_sees_every_layer_in_caffe_order() -> None:
    net = Net(parse_text(NET, caffe_pb2.NetParameter()), caffe_pb2.TRAIN)
    net.keep_blob_diffs = True
    seen: list[tuple[int, str]] = []

    @contextlib.contextmanager
    def hook(index: int, direction: str) -> Iterator[None]:
        seen.append((index, direction))
        yield

    net.forward(hook=hook)
    net.backward({"prob": torch.ones(2, 5)}, hook=hook)
    count = len(net.layers)
    assert seen[:count] == [(i, "forward") for i in range(count)]
    # Backward runs from the top down, around every layer as Caffe's
    # BackwardFromTo does (the Input layer, which has nothing to do, too).
    assert seen[count:] == [(i, "backward") for i in reversed(range(count))]


def test_writing_a_blob_of_another_shape_is_refused() -> None:
    net = Net(parse_text(NET, caffe_pb2.NetParameter()), caffe_pb2.TRAIN)
    with pytest.raises(CaffeError, match=r"Blob 'data' has shape \[2, 3, 6, 6\]"):
        net.set_blob_data("data", torch.zeros(1, 3, 6, 6))
    with pytest.raises(CaffeError, match="has no blob named 'nope'"):
        net.blob_data("nope")


def _golden_net(case: str, graph_diffs: bool) -> tuple[Net, dict[str, torch.Tensor]]:
    """A golden layer case's net run forward (keeping blob diffs) as the
    layer-by-layer pass or as one graph, and the case's top diffs."""
    import json
    from caffe_ft.net.weights import copy_trained_layers
    from caffe_ft.protofile import read_binary, read_text
    folder = GOLDEN / case
    meta = json.loads((folder / "meta.json").read_text())
    data = dict(np.load(folder / "data.npz"))
    net = Net(read_text(folder / "net.prototxt", caffe_pb2.NetParameter()),
              getattr(caffe_pb2, meta["phase"]))
    copy_trained_layers(net, read_binary(folder / "weights.caffemodel", caffe_pb2.NetParameter()),
                        "weights")
    net.keep_blob_diffs = True
    for key, value in data.items():
        if key.startswith("input/"):
            net.set_blob_data(key[len("input/"):], torch.from_numpy(value))
    net.forward(graph_diffs=graph_diffs)
    seeds = {key[len("topdiff/"):]: torch.from_numpy(value)
             for key, value in data.items() if key.startswith("topdiff/")}
    return net, seeds


GOLDEN = Path(__file__).parent / "fixtures" / "golden_layers"


@pytest.mark.parametrize("case", sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()))
def test_a_graph_pass_leaves_the_blob_diffs_a_layer_by_layer_one_leaves(case: str) -> None:
    """The pycaffe Solver's own iterations run as one graph: every blob and
    param diff is the layer-by-layer backward's (in-place chains, splits,
    loss tops and blobs no gradient reaches included)."""
    layered, seeds = _golden_net(case, graph_diffs=False)
    graph, _ = _golden_net(case, graph_diffs=True)
    assert (graph._retained is not None) == torch.is_grad_enabled()
    layered.backward(dict(seeds))
    graph.backward(dict(seeds))
    assert graph._diffs.keys() == layered._diffs.keys()
    for name, diff in layered._diffs.items():
        torch.testing.assert_close(graph._diffs[name], diff, rtol=1e-6, atol=1e-7, msg=name)
    for a, b in zip(graph.parameters(), layered.parameters()):
        if b.grad is None:
            assert a.grad is None or not a.grad.any()
        else:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)


def test_a_second_backward_or_a_range_after_a_graph_pass_replays() -> None:
    net = Net(parse_text(NET, caffe_pb2.NetParameter()), caffe_pb2.TRAIN)
    net.keep_blob_diffs = True
    net.set_blob_data("data", torch.from_numpy(_x(3)))
    net.forward(graph_diffs=True)
    seed = {"prob": torch.ones(2, 5)}
    net.backward(seed)
    whole = net.blob_diff("data").clone()
    net.backward(seed, start=4, end=0)  # the graph is gone: the layers replay
    torch.testing.assert_close(net.blob_diff("data"), whole)

"""pycaffe's solver API (caffe.SGDSolver, get_solver, ...) over caffe_ft.

- A run driven from Python is `caffe_ft train`'s run: the same display
  losses, snapshots and final weights, and Caffe's golden numbers.
- pycaffe's semantics: the class's update rule, the live .net/.test_nets
  (host writes reach the run), callbacks in Caffe's Step order, base_lr
  edits, share_weights, restore/solve(resume), Timer.
- Real scripts through `caffe_ft python`: BVLC's pyloss.py example layer
  trained through SGDSolver, and FCN's solve.py flow (copy_from,
  surgery.interp, step) with its VOCSegDataLayer.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from caffe_ft.data.prefetch import WORKERS_ENV
from caffe_ft.errors import CaffeError
from caffe_ft.pycaffe import solver as pycaffe
from caffe_ft.solver.state import read_state
from caffe_log_parser import display_losses
from conftest import FIXTURES
from solver_helpers import TINY_NET, captured_log
from test_solver_golden import (
    GOLDEN,
    assert_case_matches,
    read_model,
    run_train,
    stage_case,
)

LAYERS = FIXTURES / "pycaffe" / "layers"
FCN = FIXTURES / "fcn"


@pytest.fixture(autouse=True)
def _in_process_data(monkeypatch: pytest.MonkeyPatch) -> None:
    # Same batches either way; no worker processes for these short runs.
    monkeypatch.setenv(WORKERS_ENV, "0")


def write_solver(folder: Path, text: str, net: str = TINY_NET) -> Path:
    (folder / "net.prototxt").write_text(net)
    path = folder / "solver.prototxt"
    path.write_text(f'net: "{folder / "net.prototxt"}"\n' + textwrap.dedent(text))
    return path


TINY_SOLVER = """
base_lr: 0.1
lr_policy: "fixed"
max_iter: 10
display: 0
random_seed: 7
snapshot_after_train: false
"""


def fill_inputs(solver: pycaffe.Solver, seed: int = 0) -> None:
    """A fixed batch into the train net, written through pycaffe's host arrays."""
    rng = np.random.default_rng(seed)
    solver.net.blobs["data"].data[...] = rng.standard_normal((8, 5))
    solver.net.blobs["label"].data[...] = rng.integers(0, 3, 8)


# -- a Python-driven run is `caffe_ft train`'s run ---------------------------
@pytest.mark.parametrize("case,make", [("sgd_step_momentum", pycaffe.SGDSolver),
                                       ("adam_poly", pycaffe.get_solver)])
def test_solve_matches_the_golden_case(case: str, make, tmp_path: Path) -> None:
    folder = stage_case(case, tmp_path / "golden")
    log = tmp_path / "pycaffe.log"
    with captured_log(log):
        solver = make(str(folder / "solver.prototxt"))
        solver.net.copy_from(str(GOLDEN / case / "init.caffemodel"))
        solver.solve()
    assert solver.iter == 40
    assert_case_matches(case, folder, log, log.read_text())


def test_solve_and_step_match_caffe_ft_train(tmp_path: Path) -> None:
    case = "sgd_step_momentum"
    cli = stage_case(case, tmp_path / "cli")
    cli_text = run_train(tmp_path / "cli.log", "-solver", str(cli / "solver.prototxt"),
                         "-weights", str(GOLDEN / case / "init.caffemodel"))
    solved = stage_case(case, tmp_path / "solved")
    with captured_log(tmp_path / "solved.log"):
        solver = pycaffe.SGDSolver(str(solved / "solver.prototxt"))
        solver.net.copy_from(str(GOLDEN / case / "init.caffemodel"))
        solver.solve()
    assert display_losses((tmp_path / "solved.log").read_text()) == display_losses(cli_text)
    stepped = stage_case(case, tmp_path / "stepped")
    solver = pycaffe.SGDSolver(str(stepped / "solver.prototxt"))
    solver.net.copy_from(str(GOLDEN / case / "init.caffemodel"))
    losses = []
    for _ in range(40):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    solver.snapshot()
    # The log prints each loss to 6 significant digits (%g).
    cli_losses = display_losses(cli_text)
    np.testing.assert_allclose(losses, [cli_losses[i] for i in range(40)], rtol=1e-5)
    for run in (solved, stepped):
        ours, theirs = read_model(run / "snap_iter_40.caffemodel"), \
            read_model(cli / "snap_iter_40.caffemodel")
        assert ours.keys() == theirs.keys()
        for name in theirs:
            for mine, cli_blob in zip(ours[name], theirs[name], strict=True):
                np.testing.assert_array_equal(mine, cli_blob)
        state, cli_state = read_state(str(run / "snap_iter_40.solverstate")), \
            read_state(str(cli / "snap_iter_40.solverstate"))
        assert (state.iter, state.current_step) == (cli_state.iter, cli_state.current_step)
        for mine, cli_blob in zip(state.history, cli_state.history, strict=True):
            np.testing.assert_array_equal(mine, cli_blob)


# -- pycaffe's semantics -----------------------------------------------------
def test_classes_force_their_rule_and_get_solver_follows_the_file(tmp_path: Path) -> None:
    path = write_solver(tmp_path, TINY_SOLVER + 'type: "Adam"\nsnapshot_prefix: "'
                        + str(tmp_path / "s") + '"\n')
    forced = pycaffe.SGDSolver(str(path))
    assert type(forced) is pycaffe.SGDSolver
    # The file's type stays what it says, as Caffe's param_ keeps it.
    assert forced.param.type == "Adam"
    forced.snapshot()
    params = sum(len(blobs) for blobs in forced.net.params.values())
    assert len(read_state(str(tmp_path / "s_iter_0.solverstate")).history) == params
    chosen = pycaffe.get_solver(str(path))
    assert type(chosen) is pycaffe.AdamSolver
    chosen.snapshot()
    assert len(read_state(str(tmp_path / "s_iter_0.solverstate")).history) == 2 * params
    momentum = write_solver(tmp_path, TINY_SOLVER + "momentum: 0.9\n")
    with pytest.raises(CaffeError, match="Momentum cannot be used with AdaGrad"):
        pycaffe.AdaGradSolver(str(momentum))
    unknown = write_solver(tmp_path, TINY_SOLVER + 'type: "Lion"\n')
    with pytest.raises(CaffeError, match=f"{unknown}: Unknown solver type: Lion"):
        pycaffe.get_solver(str(unknown))


def test_callbacks_run_where_caffe_step_runs_them(tmp_path: Path) -> None:
    solver = pycaffe.SGDSolver(str(write_solver(tmp_path, TINY_SOLVER)))
    fill_inputs(solver)
    seen = []
    weights = solver.net.params["fc1"][0]

    def on_start() -> None:
        # Before forward/backward: no diffs yet this iteration.
        seen.append(("start", solver.iter, float(np.abs(weights.diff).sum())))

    def on_gradients_ready() -> None:
        seen.append(("ready", solver.iter, weights.data.copy(), weights.diff.copy()))

    solver.add_callback(on_start, on_gradients_ready)
    before = weights.data.copy()
    solver.step(2)
    assert [(kind, it) for kind, it, *_ in seen] == [("start", 0), ("ready", 0),
                                                    ("start", 1), ("ready", 1)]
    assert seen[0][2] == 0.0 and seen[2][2] == 0.0
    _, _, data0, diff0 = seen[1]
    np.testing.assert_array_equal(data0, before)
    assert np.abs(diff0).sum() > 0
    # SGD without momentum or decay: the update is exactly lr · diff.
    np.testing.assert_array_equal(seen[3][2], data0 - np.float32(0.1) * diff0)


def _solver_and_hand_run_diffs(tmp_path: Path) -> tuple[pycaffe.Solver, dict[str, np.ndarray]]:
    """A solver, and every blob diff of its first iteration run by hand: a
    pycaffe Net with the weights before the step, forward and backward."""
    from caffe_ft.proto import caffe_pb2
    from caffe_ft.pycaffe.net import Net
    solver = pycaffe.SGDSolver(str(write_solver(tmp_path, TINY_SOLVER)))
    fill_inputs(solver)
    net = Net(str(tmp_path / "net.prototxt"), caffe_pb2.TRAIN)
    solver.share_weights(net)
    for name in ("data", "label"):
        net.blobs[name].data[...] = solver.net.blobs[name].data
    net.forward()
    net.backward()
    return solver, {name: blob.diff.copy() for name, blob in net.blobs.items()}


def test_after_a_step_blob_diffs_and_layer_callbacks_are_caffes(tmp_path: Path) -> None:
    solver, expected = _solver_and_hand_run_diffs(tmp_path)
    calls: list[tuple[str, int]] = []
    for when in ("before_forward", "after_forward", "before_backward", "after_backward"):
        getattr(solver.net, when)(lambda index, when=when: calls.append((when, index)))
    solver.step(1)
    for name, diff in expected.items():
        np.testing.assert_array_equal(solver.net.blobs[name].diff, diff, err_msg=name)
    assert np.abs(solver.net.blobs["fc1"].diff).sum() > 0
    # Caffe's Net runs them around every layer of the solver's passes.
    layers = range(len(solver.net.layers))
    assert calls == [(when, i) for i in layers for when in ("before_forward", "after_forward")] + \
        [(when, i) for i in reversed(layers) for when in ("before_backward", "after_backward")]


def test_a_step_with_no_callbacks_runs_as_one_graph_with_caffes_blob_diffs(
        tmp_path: Path) -> None:
    """Without per-layer callbacks the solver's iteration is one autograd
    pass (one per layer would cost a GPU step much host time); the blob
    diffs it leaves are still those of Caffe's layer-by-layer backward."""
    solver, expected = _solver_and_hand_run_diffs(tmp_path)
    passes: list[int] = []
    core = solver._solver.net
    original = core._backward_layers
    core._backward_layers = lambda *a: passes.append(1) or original(*a)  # type: ignore
    solver.step(1)
    assert passes == []  # no layer-by-layer pass ran
    for name, diff in expected.items():
        np.testing.assert_allclose(solver.net.blobs[name].diff, diff, rtol=1e-6, atol=1e-8,
                                   err_msg=name)
    assert np.abs(solver.net.blobs["fc1"].diff).sum() > 0


def test_host_writes_through_net_reach_the_run(tmp_path: Path) -> None:
    path = write_solver(tmp_path, TINY_SOLVER + f'snapshot_prefix: "{tmp_path / "s"}"\n'
                        "test_iter: 1\ntest_interval: 1000\n")
    solver = pycaffe.SGDSolver(str(path))
    fill_inputs(solver)
    fc2 = solver.net.params["fc2"][0]
    fc2.data[...] = 0  # net surgery: the class scores are all 0, the loss is ln 3
    solver.step(1)
    assert float(solver.net.blobs["loss"].data) == pytest.approx(math.log(3), rel=1e-6)
    # The test net shares the written weights; the snapshot saves them.
    assert solver.test_nets[0].params["fc2"][0].data is not None
    np.testing.assert_array_equal(solver.test_nets[0].params["fc2"][0].data, fc2.data)
    solver.snapshot()
    np.testing.assert_array_equal(read_model(tmp_path / "s_iter_1.caffemodel")["fc2"][0],
                                  fc2.data)
    # apply_update uses diffs written from Python (BVLC's test_apply_update).
    fc2.data[...] = 0
    fc2.diff[...] = 1
    solver.apply_update()
    np.testing.assert_array_equal(fc2.data, np.full(fc2.data.shape, -0.1, np.float32))


def test_base_lr_edits_apply_and_lr_reads_the_policy(tmp_path: Path) -> None:
    solver = pycaffe.SGDSolver(str(write_solver(tmp_path, TINY_SOLVER)))
    fill_inputs(solver)
    assert solver.lr == pytest.approx(0.1)
    solver.param.base_lr = 0
    before = solver.net.params["fc1"][0].data.copy()
    solver.step(1)
    np.testing.assert_array_equal(solver.net.params["fc1"][0].data, before)
    assert solver.lr == 0


def test_share_weights_gives_a_net_the_train_weights(tmp_path: Path) -> None:
    from caffe_ft.proto import caffe_pb2
    from caffe_ft.pycaffe.net import Net
    path = write_solver(tmp_path, TINY_SOLVER)
    solver = pycaffe.SGDSolver(str(path))
    fill_inputs(solver)
    net = Net(str(tmp_path / "net.prototxt"), caffe_pb2.TEST)
    solver.share_weights(net)
    solver.step(2)
    for name, blobs in solver.net.params.items():
        for mine, theirs in zip(net.params[name], blobs, strict=True):
            np.testing.assert_array_equal(mine.data, theirs.data)


def test_solve_resumes_from_a_snapshot(tmp_path: Path) -> None:
    path = write_solver(tmp_path, TINY_SOLVER.replace("snapshot_after_train: false", "")
                        + f'momentum: 0.9\nsnapshot: 5\nsnapshot_prefix: "{tmp_path / "s"}"\n')
    full = pycaffe.SGDSolver(str(path))
    fill_inputs(full)
    full.solve()
    final = read_model(tmp_path / "s_iter_10.caffemodel")
    resumed = pycaffe.SGDSolver(str(path))
    fill_inputs(resumed)
    with captured_log() as messages:
        resumed.solve(str(tmp_path / "s_iter_5.solverstate"))
    assert messages.index(f"Restoring previous solver status from "
                          f"{tmp_path / 's_iter_5.solverstate'}") > \
        messages.index("Learning Rate Policy: fixed")
    assert resumed.iter == 10
    for name, blobs in read_model(tmp_path / "s_iter_10.caffemodel").items():
        for mine, theirs in zip(blobs, final[name], strict=True):
            np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-7)


def test_timer_counts_whole_milliseconds_on_the_cpu() -> None:
    timer = pycaffe.Timer()
    assert timer.ms == 0.0
    timer.start()
    time.sleep(0.03)
    timer.stop()
    assert timer.ms >= 30 and timer.ms == int(timer.ms)
    timer.start()
    # Reading a running timer stops it.
    first = timer.ms
    time.sleep(0.01)
    assert timer.ms == first


def test_solver_count_and_rank_are_checked() -> None:
    assert (pycaffe.solver_count(), pycaffe.solver_rank()) == (1, 0)
    with pytest.raises(CaffeError, match="≥ 1"):
        pycaffe.set_solver_count(0)
    with pytest.raises(CaffeError, match="≥ 0"):
        pycaffe.set_solver_rank(-1)


# -- real scripts through `caffe_ft python` ----------------------------------
def run_script(script: Path, *args: str, pythonpath: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(pythonpath), os.environ.get("PYTHONPATH", "")]), WORKERS_ENV: "0"}
    done = subprocess.run([sys.executable, "-m", "caffe_ft", "python", str(script), *args],
                          cwd=script.parent, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


LINREG_SCRIPT = """
import json, sys
import caffe
caffe.set_mode_cpu()
solver = caffe.SGDSolver(sys.argv[1])
losses = []
for _ in range(8):
    solver.step(1)
    losses.append(float(solver.net.blobs['loss'].data.flat[0]))
solver.net.save('final.caffemodel')
json.dump(losses, open('losses.json', 'w'))
"""


def test_pyloss_layer_trains_as_euclidean_loss(tmp_path: Path) -> None:
    """BVLC's pyloss.py EuclideanLossLayer in linreg.prototxt, trained through
    SGDSolver, follows the same run as the built-in EuclideanLoss."""
    linreg = (LAYERS / "linreg.prototxt").read_text()
    builtin = linreg.replace("type: 'Python'", "type: 'EuclideanLoss'")
    assert builtin != linreg
    runs = {}
    for kind, net in (("python", linreg), ("builtin", builtin)):
        folder = tmp_path / kind
        folder.mkdir()
        path = write_solver(folder, "base_lr: 0.05\nlr_policy: 'fixed'\nmomentum: 0.9\n"
                            "max_iter: 8\ndisplay: 1\nrandom_seed: 3\n", net)
        script = folder / "train.py"
        script.write_text(LINREG_SCRIPT)
        run_script(script, str(path), pythonpath=LAYERS)
        runs[kind] = (json.loads((folder / "losses.json").read_text()),
                      read_model(folder / "final.caffemodel"))
    (losses, model), (builtin_losses, builtin_model) = runs["python"], runs["builtin"]
    np.testing.assert_allclose(losses, builtin_losses, rtol=1e-5)
    assert losses[-1] < losses[0]
    for name in ("ipx", "ipy"):
        for mine, theirs in zip(model[name], builtin_model[name], strict=True):
            np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-6)


FCN_NET = """
name: "tiny-fcn"
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "voc_layers" layer: "VOCSegDataLayer"
    param_str: "{'voc_dir': '@VOC@', 'seed': 1337, 'split': '@SPLIT@', 'mean': (104.00699, 116.66877, 122.67892)}" } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 8 pad: 1 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "score_fr" type: "Convolution" bottom: "pool1" top: "score_fr"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "upscore" type: "Deconvolution" bottom: "score_fr" top: "upscore"
  param { lr_mult: 0 }
  convolution_param { num_output: 3 bias_term: false kernel_size: 4 stride: 2 } }
layer { name: "score" type: "Crop" bottom: "upscore" bottom: "data" top: "score"
  crop_param { axis: 2 offset: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 normalize: false } }
"""

FCN_SOLVER = """train_net: "train.prototxt"
test_net: "val.prototxt"
test_iter: 2
# make test net, but don't invoke it from the solver itself
test_interval: 999999999
display: 1
average_loss: 1
lr_policy: "fixed"
base_lr: 1e-6
momentum: 0.9
iter_size: 1
max_iter: 100000
weight_decay: 0.0005
snapshot: 4000
snapshot_prefix: "snapshot/train"
test_initialization: false
"""

# FCN's solve.py calls, with a few steps instead of 100,000, after a
# "pretrained" model is made with caffe.Net as ilsvrc-nets provides one.
FCN_SCRIPT = """
import json
import caffe
import surgery
import numpy as np

pretrained = caffe.Net('train.prototxt', caffe.TRAIN)
rng = np.random.RandomState(0)
for name in ('conv1', 'score_fr'):
    pretrained.params[name][0].data[...] = rng.normal(0, 0.1, pretrained.params[name][0].data.shape)
pretrained.save('pretrained.caffemodel')
weights = 'pretrained.caffemodel'

caffe.set_mode_cpu()

solver = caffe.SGDSolver('solver.prototxt')
solver.net.copy_from(weights)
np.save('after_copy.npy', solver.net.params['conv1'][0].data)

# surgeries
interp_layers = [k for k in solver.net.params.keys() if 'up' in k]
surgery.interp(solver.net, interp_layers)

losses = []
for _ in range(3):
    solver.step(2)
    losses.append(float(solver.net.blobs['loss'].data))
solver.net.save('final.caffemodel')
json.dump({'interp_layers': interp_layers, 'losses': losses}, open('result.json', 'w'))
"""


def make_voc(root: Path) -> None:
    """A VOC-shaped folder: JPEGImages, SegmentationClass (palette PNGs of
    class indices with 255 borders) and ImageSets/Segmentation splits."""
    from PIL import Image
    rng = np.random.default_rng(5)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    names = [f"2007_{i:06d}" for i in range(4)]
    for i, name in enumerate(names):
        height, width = 16 + 4 * (i % 2), 20
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{name}.jpg")
        label = rng.integers(0, 3, (height, width), dtype=np.uint8)
        label[0, :] = 255
        png = Image.frombytes("P", (width, height), label.tobytes())
        png.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
        png.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(names[:3]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text(names[3] + "\n")


def bilinear(size: int) -> np.ndarray:
    """The bilinear upsampling kernel FCN initializes its Deconvolutions with."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - np.abs(np.arange(size) - center) / factor
    return np.outer(ramp, ramp)


def test_fcn_solve_flow(tmp_path: Path) -> None:
    pytest.importorskip("PIL", reason="FCN's voc_layers.py reads images with Pillow")
    make_voc(tmp_path / "voc")
    for split, name in (("train", "train.prototxt"), ("val", "val.prototxt")):
        (tmp_path / name).write_text(FCN_NET.replace("@VOC@", str(tmp_path / "voc"))
                                     .replace("@SPLIT@", split))
    (tmp_path / "solver.prototxt").write_text(FCN_SOLVER)
    (tmp_path / "snapshot").mkdir()
    script = tmp_path / "solve.py"
    script.write_text(FCN_SCRIPT)
    run_script(script, pythonpath=FCN)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["interp_layers"] == ["upscore"]
    assert len(result["losses"]) == 3 and all(math.isfinite(x) for x in result["losses"])
    final = read_model(tmp_path / "final.caffemodel")
    pretrained = read_model(tmp_path / "pretrained.caffemodel")
    # surgery.interp's write reached the live net; lr_mult 0 kept it through training.
    upscore = final["upscore"][0]
    expected = np.zeros_like(upscore)
    expected[range(3), range(3)] = bilinear(4)
    np.testing.assert_allclose(upscore, expected, rtol=1e-6)
    # copy_from's weights were the starting point, and training moved them.
    np.testing.assert_array_equal(np.load(tmp_path / "after_copy.npy"),
                                  pretrained["conv1"][0])
    assert not np.array_equal(final["conv1"][0], pretrained["conv1"][0])


# BVLC's python/train.py calls, on the CPU with two processes.
NCCL_SCRIPT = """
import multiprocessing
import sys
import numpy as np
import caffe

def solve(proto, uid, rank):
    caffe.set_mode_cpu()
    caffe.set_solver_count(2)
    caffe.set_solver_rank(rank)
    caffe.set_multiprocess(True)
    solver = caffe.SGDSolver(proto)
    batch = np.load('batch.npz')
    solver.net.blobs['data'].data[...] = batch['data'][8 * rank:8 * rank + 8]
    solver.net.blobs['label'].data[...] = batch['label'][8 * rank:8 * rank + 8]
    nccl = caffe.NCCL(solver, uid)
    nccl.bcast()
    solver.add_callback(nccl)
    solver.step(3)
    solver.net.save('rank%d.caffemodel' % rank)

if __name__ == '__main__':
    uid = caffe.NCCL.new_uid()
    procs = [multiprocessing.Process(target=solve, args=(sys.argv[1], uid, rank))
             for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    sys.exit(max(p.exitcode for p in procs))
"""


def test_nccl_averages_the_processes_gradients(tmp_path: Path) -> None:
    """Two processes of batch 8 joined by caffe.NCCL train as one process of
    batch 16 (SoftmaxWithLoss averages over the batch)."""
    rng = np.random.default_rng(1)
    data, label = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
    np.savez(tmp_path / "batch.npz", data=data, label=label)
    path = write_solver(tmp_path, TINY_SOLVER)
    script = tmp_path / "train.py"
    script.write_text(NCCL_SCRIPT)
    run_script(script, str(path), pythonpath=tmp_path)
    single = tmp_path / "single"
    single.mkdir()
    whole = pycaffe.SGDSolver(str(write_solver(
        single, TINY_SOLVER, TINY_NET.replace("dim: 8 dim: 5", "dim: 16 dim: 5")
        .replace("shape { dim: 8 }", "shape { dim: 16 }"))))
    whole.net.blobs["data"].data[...] = data
    whole.net.blobs["label"].data[...] = label
    whole.step(3)
    ranks = [read_model(tmp_path / f"rank{r}.caffemodel") for r in range(2)]
    for name, blobs in whole.net.params.items():
        for j, blob in enumerate(blobs):
            np.testing.assert_array_equal(ranks[0][name][j], ranks[1][name][j])
            np.testing.assert_allclose(ranks[0][name][j], blob.data, rtol=1e-5, atol=1e-7)

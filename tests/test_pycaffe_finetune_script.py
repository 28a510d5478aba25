"""A NetSpec-built CaffeNet-style fine-tune driven from Python, as BVLC's
examples/pycaffe/caffenet.py and the flickr-style fine-tuning notebook do it: the nets are
written with NetSpec (a renamed classifier, frozen lower layers via param lr_mult 0), the
solver is a SolverParameter built in Python and saved with str(), `caffe.get_solver` loads
it, `solver.net.copy_from` takes the pretrained weights, and `solver.step(1)` runs in a loop
that reads `solver.net.blobs['loss']` and `['acc']`. The script runs unchanged through
`caffe_ft python` (it says `import caffe`), and must end where `caffe_ft train` with the same
solver and weights ends."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from caffe_ft.data.prefetch import WORKERS_ENV
from caffe_ft.net.net import Net
from caffe_ft.proto import caffe_pb2
from caffe_ft.upgrade import read_net_text
from conftest import FIXTURES

PHOTOS = FIXTURES / "data" / "images"

SCRIPT = r'''
import json
import os
import sys

import numpy as np
import caffe
from caffe import layers as L, params as P
from caffe.proto import caffe_pb2

weight_param = dict(lr_mult=1, decay_mult=1)
bias_param = dict(lr_mult=2, decay_mult=0)
learned_param = [weight_param, bias_param]
frozen_param = [dict(lr_mult=0)] * 2


def conv_relu(bottom, ks, nout, stride=1, pad=0, group=1, param=learned_param):
    conv = L.Convolution(bottom, kernel_size=ks, stride=stride, num_output=nout, pad=pad,
                         group=group, param=param,
                         weight_filler=dict(type='gaussian', std=0.1),
                         bias_filler=dict(type='constant', value=0.1))
    return conv, L.ReLU(conv, in_place=True)


def fc_relu(bottom, nout, param=learned_param):
    fc = L.InnerProduct(bottom, num_output=nout, param=param,
                        weight_filler=dict(type='gaussian', std=0.05),
                        bias_filler=dict(type='constant', value=0.1))
    return fc, L.ReLU(fc, in_place=True)


def caffenet(data, label=None, train=True, num_classes=4, classifier_name='fc8',
             learn_all=False):
    """The notebook's caffenet(), shrunk to 32x32 crops."""
    n = caffe.NetSpec()
    n.data = data
    param = learned_param if learn_all else frozen_param
    n.conv1, n.relu1 = conv_relu(n.data, 5, 8, stride=2, param=param)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=3, stride=2)
    n.norm1 = L.LRN(n.pool1, local_size=3, alpha=1e-4, beta=0.75)
    n.conv2, n.relu2 = conv_relu(n.norm1, 3, 8, pad=1, group=2, param=param)
    n.fc6, n.relu6 = fc_relu(n.relu2, 16, param=learned_param)
    n.drop6 = L.Dropout(n.relu6, in_place=True, dropout_ratio=0.0)
    fc8 = L.InnerProduct(n.drop6, num_output=num_classes, param=learned_param,
                         weight_filler=dict(type='gaussian', std=0.05),
                         bias_filler=dict(type='constant', value=0))
    n.__setattr__(classifier_name, fc8)
    if not train:
        n.probs = L.Softmax(fc8)
    if label is not None:
        n.label = label
        n.loss = L.SoftmaxWithLoss(fc8, n.label)
        n.acc = L.Accuracy(fc8, n.label)
    return n.to_proto()


def style_net(source, train=True, learn_all=False):
    transform_param = dict(mirror=False, crop_size=32, mean_value=[104, 117, 123])
    style_data, style_label = L.ImageData(
        transform_param=transform_param, source=source, root_folder=sys.argv[2] + '/',
        batch_size=4, new_height=40, new_width=40, ntop=2)
    return caffenet(data=style_data, label=style_label, train=train, num_classes=4,
                    classifier_name='fc8_flickr', learn_all=learn_all)


def solver(train_net_path, base_lr=0.01):
    s = caffe_pb2.SolverParameter()
    s.train_net = train_net_path
    s.iter_size = 1
    s.max_iter = 12
    s.type = 'SGD'
    s.base_lr = base_lr
    s.lr_policy = 'step'
    s.gamma = 0.1
    s.stepsize = 8
    s.momentum = 0.9
    s.weight_decay = 5e-4
    s.display = 1
    s.snapshot = 12
    s.snapshot_prefix = os.path.join(os.getcwd(), 'finetune_flickr_style')
    s.solver_mode = caffe_pb2.SolverParameter.CPU
    s.random_seed = 7
    return s


folder, photos, weights = sys.argv[1], sys.argv[2], sys.argv[3]
train_net = os.path.join(folder, 'train.prototxt')
with open(train_net, 'w') as f:
    f.write(str(style_net(sys.argv[4])))
solver_path = os.path.join(folder, 'solver.prototxt')
with open(solver_path, 'w') as f:
    f.write(str(solver(train_net)))

s = caffe.get_solver(solver_path)
s.net.copy_from(weights)
loss, acc = [], []
for it in range(12):
    s.step(1)
    loss.append(float(s.net.blobs['loss'].data.copy()))
    acc.append(float(s.net.blobs['acc'].data.copy()))
with open(os.path.join(folder, 'trace.json'), 'w') as f:
    json.dump({'loss': loss, 'acc': acc}, f)
'''


def _pretrained(folder: Path, train_net: Path) -> Path:
    """The 'ImageNet' weights: the same net with the original classifier name fc8."""
    text = train_net.read_text().replace("fc8_flickr", "fc8")
    (folder / "pretrained.prototxt").write_text(text)
    net = Net(read_net_text(str(folder / "pretrained.prototxt")), caffe_pb2.TEST)
    path = folder / "pretrained.caffemodel"
    from caffe_ft.net.weights import save_caffemodel
    save_caffemodel(net, path)
    return path


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, WORKERS_ENV: "0"}
    return subprocess.run([sys.executable, "-m", "caffe_ft", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)


def test_netspec_finetune_through_get_solver_matches_train(tmp_path: Path) -> None:
    script = tmp_path / "finetune.py"
    script.write_text(SCRIPT)
    listing = PHOTOS / "photos.txt"
    # First pass writes the nets, with weights from the net it wrote (fc8, not fc8_flickr).
    first = tmp_path / "first"
    first.mkdir()
    seed_weights = tmp_path / "seed.caffemodel"
    subprocess.run([sys.executable, "-c", (
        "import sys, caffe_ft as caffe\n"
        "from caffe_ft.proto import caffe_pb2\n"
        "net = caffe_pb2.NetParameter(); net.name = 'empty'\n"
        f"open({str(seed_weights)!r}, 'wb').write(net.SerializeToString())")], check=True)
    run = _run(first, "python", str(script), str(first), str(PHOTOS), str(seed_weights),
               str(listing))
    assert run.returncode == 0, run.stderr[-3000:]
    weights = _pretrained(tmp_path, first / "train.prototxt")

    driven = tmp_path / "driven"
    driven.mkdir()
    run = _run(driven, "python", str(script), str(driven), str(PHOTOS), str(weights),
               str(listing))
    assert run.returncode == 0, run.stderr[-3000:]
    trace = json.loads((driven / "trace.json").read_text())
    assert len(trace["loss"]) == 12 and all(np.isfinite(trace["loss"]))
    assert all(0 <= a <= 1 for a in trace["acc"])

    # The same solver file through `caffe_ft train` ends on the same weights.
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "solver.prototxt").write_text(
        (driven / "solver.prototxt").read_text().replace(str(driven), str(trained)))
    (trained / "train.prototxt").write_text((driven / "train.prototxt").read_text())
    run = _run(trained, "train", "-solver", str(trained / "solver.prototxt"),
               "-weights", str(weights))
    assert run.returncode == 0, run.stderr[-3000:]
    ours = _weights(driven / "finetune_flickr_style_iter_12.caffemodel")
    theirs = _weights(trained / "finetune_flickr_style_iter_12.caffemodel")
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)

    # Frozen layers kept the pretrained weights; the renamed classifier and fc6 learned.
    pretrained = _weights(weights)
    for key in ("conv1/0", "conv2/0"):
        np.testing.assert_array_equal(ours[key], pretrained[key], err_msg=key)
    assert not np.array_equal(ours["fc6/0"], pretrained["fc6/0"])
    assert "fc8_flickr/0" in ours and "fc8/0" in pretrained


def _weights(path: Path) -> dict[str, np.ndarray]:
    param = caffe_pb2.NetParameter()
    param.ParseFromString(path.read_bytes())
    return {f"{layer.name}/{j}": np.asarray(blob.data, np.float32)
            for layer in param.layer for j, blob in enumerate(layer.blobs)}

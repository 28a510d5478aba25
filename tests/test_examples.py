"""The examples: bundled data, recipes that differ from their originals only by
the fine-tuning changes, deploy nets that load what training writes, training
curves, and (slow) the main job end to end."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from caffe_ft.cli import main
from caffe_ft.errors import CaffeError
from caffe_ft.net import Net
from caffe_ft.plot import parse_log, plot_logs
from caffe_ft.proto import caffe_pb2
from caffe_ft.upgrade import read_net_text, read_solver_text

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
LENET = EXAMPLES / "lenet_digits"
CORPUS = Path(__file__).parent / "fixtures" / "corpus"


def test_bundled_digits_are_small_gray_28x28_images_in_class_folders() -> None:
    data = LENET / "data"
    images = sorted(data.glob("*/*/*.png"))
    assert {p.parent.parent.name for p in images} == {"train", "test"}
    assert {p.parent.name for p in images} == {str(d) for d in range(10)}
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.shape == (28, 28) and image.dtype.name == "uint8"
    assert sum(p.stat().st_size for p in images) < 2 * 1024 * 1024
    assert "BSD-3-Clause" in (EXAMPLES / "DATA_SOURCES.md").read_text()


def without(param: caffe_pb2.NetParameter, *fields: str) -> dict[str, caffe_pb2.LayerParameter]:
    """Layers by name (data layers by name and phase) with `fields` cleared."""
    layers = {}
    for lp in param.layer:
        copy = caffe_pb2.LayerParameter()
        copy.CopyFrom(lp)
        for name in fields:
            copy.ClearField(name)
        phase = "".join(caffe_pb2.Phase.Name(rule.phase) for rule in lp.include)
        layers[f"{lp.name}{phase}"] = copy
    return layers


def test_lenet_transfer_net_is_the_base_with_the_recipe_changes() -> None:
    base = without(read_net_text(str(LENET / "lenet_train_val.prototxt")))
    transfer = without(read_net_text(str(LENET / "lenet_transfer_train_val.prototxt")))
    head = transfer.pop("ip2_ft")
    old_head = base.pop("ip2")
    assert [p.lr_mult for p in head.param] == [10, 20]
    assert head.top == old_head.top and head.bottom == old_head.bottom
    assert head.inner_product_param.num_output == old_head.inner_product_param.num_output
    assert [p.lr_mult for p in transfer["conv1"].param] == [0, 0]
    transfer["conv1"].ClearField("param")
    base["conv1"].ClearField("param")
    for name in ("digitsTRAIN", "digitsTEST"):  # the data each net reads
        for layers in (base, transfer):
            layers[name].data_param.ClearField("source")
            layers[name].data_param.ClearField("batch_size")
    assert transfer == base


def test_googlenet_recipe_renames_the_three_heads_and_freezes_the_stem() -> None:
    original = without(read_net_text(str(CORPUS / "bvlc_googlenet" / "train_val.prototxt")),
                       "top", "bottom")
    recipe = without(read_net_text(str(EXAMPLES / "googlenet_finetune" / "train_val.prototxt")),
                     "top", "bottom")
    deploy = read_net_text(str(EXAMPLES / "googlenet_finetune" / "deploy.prototxt"))
    classes = next(lp.inner_product_param.num_output for lp in deploy.layer
                   if lp.name == "loss3/classifier_ft")
    for head in ("loss1/classifier", "loss2/classifier", "loss3/classifier"):
        new = recipe.pop(f"{head}_ft")
        assert [p.lr_mult for p in new.param] == [10, 20]
        assert new.inner_product_param.num_output == classes
        old = original.pop(head)
        for layer in (new, old):
            layer.ClearField("param")
            layer.inner_product_param.ClearField("num_output")
        new.ClearField("name")
        old.ClearField("name")
        assert new == old
    frozen = [name for name, lp in recipe.items()
              if lp.param and not any(p.lr_mult for p in lp.param)]
    assert frozen == ["conv1/7x7_s2", "conv2/3x3_reduce", "conv2/3x3"]
    for name in frozen:
        assert [p.decay_mult for p in recipe[name].param] == \
            [p.decay_mult for p in original[name].param]
        recipe[name].ClearField("param")
        original[name].ClearField("param")
    for name in ("dataTRAIN", "dataTEST"):
        assert recipe[name].data_param.source in ("train_lmdb", "val_lmdb")
        recipe[name].data_param.ClearField("source")
        original[name].data_param.ClearField("source")
    assert recipe == original


def test_flickr_recipe_is_bvlcs_but_for_paths() -> None:
    for name in ("train_val.prototxt", "deploy.prototxt"):
        ours = without(read_net_text(str(EXAMPLES / "flickr_style" / name)))
        bvlc = without(read_net_text(str(CORPUS / "bvlc_finetune_flickr_style" / name)))
        for layers in (ours, bvlc):
            for lp in layers.values():
                lp.transform_param.ClearField("mean_file")
                lp.image_data_param.ClearField("source")
        assert ours == bvlc, name


def as_deploy(param: caffe_pb2.NetParameter, shape: tuple[int, ...]) -> caffe_pb2.NetParameter:
    """A train_val net in TEST form with its data layers replaced by Input."""
    net = caffe_pb2.NetParameter()
    net.CopyFrom(param)
    del net.layer[:]
    data_done = False
    for lp in param.layer:
        if lp.type in ("Data", "ImageData"):
            if not data_done:
                data_done = True
                layer = net.layer.add(name="data", type="Input", top=list(lp.top))
                layer.input_param.shape.add(dim=shape)
                layer.input_param.shape.add(dim=shape[:1])
            continue
        net.layer.add().CopyFrom(lp)
    return net


@pytest.mark.parametrize("train_val, deploy", [
    (LENET / "lenet_transfer_train_val.prototxt", LENET / "lenet_transfer_deploy.prototxt"),
    (EXAMPLES / "googlenet_finetune" / "train_val.prototxt",
     EXAMPLES / "googlenet_finetune" / "deploy.prototxt"),
    (EXAMPLES / "flickr_style" / "train_val.prototxt",
     EXAMPLES / "flickr_style" / "deploy.prototxt"),
], ids=["lenet_digits", "googlenet_finetune", "flickr_style"])
def test_deploy_net_finds_each_of_its_blobs_in_training(train_val: Path, deploy: Path) -> None:
    deploy_net = Net(read_net_text(str(deploy)), caffe_pb2.TEST, source=str(deploy))
    shape = tuple(deploy_net.blob_shapes[deploy_net.top_names[0][0]])
    trained = Net(as_deploy(read_net_text(str(train_val)), shape), caffe_pb2.TEST,
                  source=str(train_val))
    learned = {layer.name: [tuple(b.shape) for b in layer.blobs]
               for layer in trained.layers if len(layer.blobs)}
    serving = {layer.name: [tuple(b.shape) for b in layer.blobs]
               for layer in deploy_net.layers if len(layer.blobs)}
    # Training may have more (GoogLeNet's auxiliary heads); deploy needs each of its own.
    assert set(serving) <= set(learned)
    assert serving == {name: learned[name] for name in serving}


@pytest.mark.parametrize("solver", sorted(EXAMPLES.glob("*/*solver*.prototxt")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_solvers_name_nets_that_exist(solver: Path) -> None:
    param = read_solver_text(str(solver))
    # Every recipe runs inside its output folder, a copy of its files.
    assert (solver.parent / param.net).is_file()
    assert param.snapshot_prefix


@pytest.mark.parametrize("recipe", sorted(EXAMPLES.glob("*/*.prototxt")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipes_write_nothing_into_the_source_tree(recipe: Path) -> None:
    """Every path a recipe reads or writes is relative to the output folder
    it runs in (out/<recipe> or $CAFFE_FT_OUT/<recipe>), never the examples."""
    if "solver" in recipe.name:
        param = read_solver_text(str(recipe))
        paths = [param.net, param.snapshot_prefix]
    else:
        net = read_net_text(str(recipe))
        paths = [p for lp in net.layer for p in (
            lp.data_param.source, lp.image_data_param.source, lp.transform_param.mean_file)]
    for path in filter(None, paths):
        assert not os.path.isabs(path) and not path.startswith(("examples", "..")), path
    readme = (recipe.parent / "README.md").read_text()
    assert 'OUT="${CAFFE_FT_OUT:-out}/' in readme or recipe.parent == LENET


def test_main_job_writes_under_caffe_ft_out(tmp_path: Path) -> None:
    (tmp_path / "main_job").mkdir()
    (tmp_path / "main_job" / "precious.txt").write_text("keep me")
    run = subprocess.run(["bash", str(EXAMPLES / "main_job.sh")], capture_output=True,
                         text=True, check=False, cwd=ROOT,
                         env={**os.environ, "CAFFE_FT_OUT": str(tmp_path)})
    assert run.returncode == 1 and f"{tmp_path}/main_job exists" in run.stderr
    assert os.listdir(tmp_path / "main_job") == ["precious.txt"]


CAFFE_LOG = """\
I1123 10:00:00.000001  7 solver.cpp:347] Iteration 0, Testing net (#0)
I1123 10:00:00.000002  7 solver.cpp:414]     Test net output #0: accuracy = {acc0}
I1123 10:00:00.000003  7 solver.cpp:414]     Test net output #1: loss = 2.3 (* 1 = 2.3 loss)
I1123 10:00:00.000004  7 solver.cpp:239] Iteration 0 (0 iter/s, 0.1s/5 iters), loss = {loss0}
I1123 10:00:00.000005  7 sgd_solver.cpp:112] Iteration 0, lr = 0.01
I1123 10:00:00.000006  7 solver.cpp:239] Iteration 5 (50 iter/s, 0.1s/5 iters), loss = {loss5}
I1123 10:00:00.000007  7 solver.cpp:347] Iteration 10, Testing net (#0)
I1123 10:00:00.000008  7 solver.cpp:414]     Test net output #0: accuracy = {acc10}
I1123 10:00:00.000009  7 solver.cpp:414]     Test net output #1: loss = 0.5 (* 1 = 0.5 loss)
I1123 10:00:00.000010  7 solver.cpp:464] Iteration 10, loss = {loss10}
"""


def test_plot_reads_caffe_logs_and_writes_a_png(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    values = {"acc0": 0.125, "loss0": 2.25, "loss5": 1.5, "acc10": 0.875, "loss10": 0.75}
    (tmp_path / "run.log").write_text(CAFFE_LOG.format(**values))
    curves = parse_log(tmp_path / "run.log")
    assert curves.train_loss == [(0, values["loss0"]), (5, values["loss5"]),
                                 (10, values["loss10"])]
    assert curves.test["accuracy"] == [(0, values["acc0"]), (10, values["acc10"])]
    assert curves.test_losses == {"loss"}

    other = {**{key: value / 2 for key, value in values.items()}, "loss10": "nan"}
    (tmp_path / "other.log").write_text(CAFFE_LOG.format(**other))
    assert main(["plot", "-output", str(tmp_path / "c.png"), str(tmp_path / "run.log"),
                 str(tmp_path / "other.log")]) == 0
    image = cv2.imread(str(tmp_path / "c.png"))
    assert image is not None and image.shape[1] > image.shape[0] > 100
    assert "Wrote" in capsys.readouterr().out

    (tmp_path / "empty.log").write_text("I1123 10:00:00.000001  7 net.cpp:1] nothing\n")
    with pytest.raises(CaffeError, match="empty.log: no 'Iteration N, loss = X'"):
        plot_logs([tmp_path / "empty.log"], tmp_path / "x.png")


def test_main_job_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    run = subprocess.run(["bash", str(EXAMPLES / "main_job.sh"), str(tmp_path)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 1 and "not made by this script" in run.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.slow
def test_main_job_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "main_job"
    start = time.perf_counter()
    run = subprocess.run(["bash", str(EXAMPLES / "main_job.sh"), str(out)], capture_output=True,
                         text=True, check=False, cwd=tmp_path,
                         env={**os.environ, "PYTHON": sys.executable})
    seconds = time.perf_counter() - start
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    scores = re.findall(r"^fine-tuned: ([\d.]+), from scratch: ([\d.]+)$", run.stdout, re.M)
    assert scores, run.stdout[-3000:]
    finetuned, scratch = (float(v) for v in scores[-1])
    assert finetuned > scratch
    iters = read_solver_text(str(LENET / "lenet_transfer_solver.prototxt")).max_iter
    for name in ("finetuned", "scratch"):
        assert (out / f"{name}_iter_{iters}.caffemodel").is_file()
        assert (out / f"{name}_iter_{iters}.solverstate").is_file()
    assert cv2.imread(str(out / "curves.png")) is not None
    assert re.search(r"^---------- Prediction for .*\.png ----------\n\d\.\d{4} - \"\d\"$",
                     run.stdout, re.M)
    print(f"main job: {seconds:.0f} s; fine-tuned {finetuned}, from scratch {scratch}")

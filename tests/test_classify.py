"""`caffe_ft classify`: Caffe's test-time preprocessing (resize, mean, scale,
center crop), top-k with labels, and a fine-tuned caffemodel that OpenCV's dnn
module runs with the same outputs."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import caffe_ft as caffe
from caffe_ft.blobs import array_to_blob_proto
from caffe_ft.classify import Classifier, parse_mean_values
from caffe_ft.cli import main
from caffe_ft.data.compute_image_mean import compute_image_mean, write_mean
from caffe_ft.errors import CaffeError
from caffe_ft.protofile import write_binary

EXAMPLE = Path(__file__).parent.parent / "examples" / "lenet_digits"
DIGITS = EXAMPLE / "data"

GRAY_DEPLOY = '''name: "gray"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 5 stride: 2
          weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''

COLOR_DEPLOY = '''name: "color"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
'''


def saved_net(tmp_path: Path, text: str, name: str) -> tuple[str, str]:
    model = tmp_path / f"{name}.prototxt"
    model.write_text(text)
    weights = tmp_path / f"{name}.caffemodel"
    caffe.Net(str(model), caffe.TEST).save(str(weights))
    return str(model), str(weights)


def digit_paths(count: int) -> list[str]:
    return [str(p) for p in sorted((DIGITS / "test").glob("*/*.png"))[::37][:count]]


def gray_mean(tmp_path: Path, paths: list[str]) -> tuple[str, np.ndarray]:
    mean = np.mean([cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p in paths], axis=0,
                   dtype=np.float32)[np.newaxis]
    write_mean(tmp_path / "mean.binaryproto", mean)
    return str(tmp_path / "mean.binaryproto"), mean


def test_top_k_follows_the_data_layer_preprocessing(tmp_path: Path) -> None:
    model, weights = saved_net(tmp_path, GRAY_DEPLOY, "gray")
    paths = digit_paths(3)
    mean_file, mean = gray_mean(tmp_path, paths)
    (tmp_path / "labels.txt").write_text("north\neast\nsouth\nwest\n")
    results = Classifier(model, weights, mean_file=mean_file, scale=0.00390625,
                         labels_file=str(tmp_path / "labels.txt")).classify(paths, top_k=3)

    net = caffe.Net(model, caffe.TEST, weights=weights)
    labels = ["north", "east", "south", "west"]
    for path, predictions in zip(paths, results):
        # What the Data layer does: (pixel - mean) * scale, gray, no resize needed.
        image = cv2.imread(path, cv2.IMREAD_GRAYSCALE).astype(np.float32)
        prob = net.forward(data=((image - mean[0]) * np.float32(0.00390625))[None, None])["prob"][0]
        order = np.argsort(-prob, kind="stable")[:3]
        assert [p.index for p in predictions] == order.tolist()
        assert [p.label for p in predictions] == [labels[i] for i in order]
        np.testing.assert_allclose([p.score for p in predictions], prob[order], rtol=1e-5)


def test_mean_larger_than_input_is_subtracted_before_the_center_crop(tmp_path: Path) -> None:
    model, weights = saved_net(tmp_path, COLOR_DEPLOY, "color")
    rng = np.random.default_rng(3)
    mean = rng.uniform(0, 255, (3, 11, 13)).astype(np.float32)
    write_mean(tmp_path / "mean.binaryproto", mean)
    image = rng.integers(0, 256, (20, 17, 3), dtype=np.uint8)

    got = Classifier(model, weights, mean_file=str(tmp_path / "mean.binaryproto"),
                     scale=0.5).preprocess(image)
    resized = cv2.resize(image.astype(np.float32), (13, 11), interpolation=cv2.INTER_LINEAR)
    full = (resized.transpose(2, 0, 1) - mean) * 0.5
    # Caffe's TEST crop takes the center: offsets (11-8)//2 = 1 and (13-8)//2 = 2.
    np.testing.assert_allclose(got, full[:, 1:9, 2:10], rtol=1e-6, atol=1e-4)

    got = Classifier(model, weights, mean_value="10,20,30").preprocess(image)
    resized = cv2.resize(image.astype(np.float32), (8, 8), interpolation=cv2.INTER_LINEAR)
    expected = resized.transpose(2, 0, 1) - np.array([10, 20, 30], np.float32)[:, None, None]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)


def test_mean_and_label_errors_name_the_flag_or_file(tmp_path: Path) -> None:
    np.testing.assert_array_equal(parse_mean_values("104", 3), [104, 104, 104])
    with pytest.raises(CaffeError, match="gives 2 values; the net input has 3 channels"):
        parse_mean_values("1,2", 3)
    model, weights = saved_net(tmp_path, COLOR_DEPLOY, "color")
    with pytest.raises(CaffeError, match="-mean and -mean_value"):
        Classifier(model, weights, mean_file="m.binaryproto", mean_value="1")
    # The data layers' mean reader: a file of two images is refused with its name.
    write_binary(tmp_path / "two.binaryproto", array_to_blob_proto(np.zeros((2, 3, 8, 8))))
    with pytest.raises(CaffeError, match=r"two\.binaryproto: expected a 1×C×H×W blob"):
        Classifier(model, weights, mean_file=str(tmp_path / "two.binaryproto"))
    with pytest.raises(CaffeError, match="-blob nope: the net has no blob"):
        Classifier(model, weights, output="nope")
    (tmp_path / "labels.txt").write_text("only\ntwo\n")
    with pytest.raises(CaffeError, match=r"labels\.txt: Number of labels \(2\) is different "
                                         r"from the output layer dimension \(3\)"):
        Classifier(model, weights, labels_file=str(tmp_path / "labels.txt"))


def test_cli_prints_caffe_classification_output(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    model, weights = saved_net(tmp_path, GRAY_DEPLOY, "gray")
    paths = digit_paths(2)
    assert main(["classify", "-model", model, "-weights", weights, "-scale", "0.00390625",
                 "-top_k", "2", *paths]) == 0
    expected = Classifier(model, weights, scale=0.00390625).classify(paths, top_k=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    for block, path, predictions in zip((lines[0:3], lines[3:6]), paths, expected):
        assert block[0] == f"---------- Prediction for {path} ----------"
        assert block[1:] == [f'{p.score:.4f} - "{p.index}"' for p in predictions]

    assert main(["classify", "-weights", weights, paths[0]]) == 2
    assert main(["classify", "-model", model, "-weights", weights,
                 str(tmp_path / "missing.png")]) == 1
    assert "missing.png" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_gpu_flag_without_cuda_is_a_user_error(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    model, weights = saved_net(tmp_path, GRAY_DEPLOY, "gray")
    assert main(["classify", "-model", model, "-weights", weights, "-gpu", "0",
                 *digit_paths(1)]) == 1
    assert "no CUDA device 0" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_classification_matches_cpu(tmp_path: Path) -> None:
    model, weights = saved_net(tmp_path, GRAY_DEPLOY, "gray")
    paths = digit_paths(4)
    cpu = Classifier(model, weights, scale=0.00390625)
    gpu = Classifier(model, weights, scale=0.00390625, device=torch.device("cuda", 0))
    images = [cpu.load(p) for p in paths]
    np.testing.assert_allclose(gpu.scores(images), cpu.scores(images), rtol=1e-4, atol=1e-6)


def _class_folders(root: Path, split: str, digits: range, per_class: int) -> Path:
    for digit in digits:
        (root / str(digit)).mkdir(parents=True)
        for image in sorted((DIGITS / split / str(digit)).glob("*.png"))[:per_class]:
            shutil.copy(image, root / str(digit))
    return root


def _finetune(work: Path) -> Path:
    """The lenet_digits recipe in miniature: a base LeNet on 0-4, then its
    weights fine-tuned into the renamed, partly frozen net on 5-9."""
    from caffe_ft.data.convert_imageset import ConvertOptions, convert_class_folders
    from caffe_ft.solver import Solver
    from caffe_ft.upgrade import read_solver_text
    options = ConvertOptions(gray=True, shuffle=True, seed=1, workers=1)
    for name, split, digits in (("base_train", "train", range(0, 5)),
                                ("base_test", "test", range(0, 5)),
                                ("transfer_train", "train", range(5, 10)),
                                ("transfer_test", "test", range(5, 10))):
        convert_class_folders(str(_class_folders(work / "sets" / name, split, digits, 6)) + "/",
                              work / f"{name}_lmdb", options)
    write_mean(work / "mean.binaryproto", compute_image_mean(work / "base_train_lmdb"))
    for recipe in EXAMPLE.glob("*.prototxt"):
        shutil.copy(recipe, work)
    for solver, weights in (("lenet_solver.prototxt", ""),
                            ("lenet_transfer_solver.prototxt", "base_iter_3.caffemodel")):
        param = read_solver_text(str(work / solver))
        param.max_iter, param.snapshot_prefix = 3, str(work / param.snapshot_prefix)
        param.net = str(work / param.net)
        if weights:
            param.weights.append(str(work / weights))
        Solver(param, str(work / solver)).solve()
    return work / "finetuned_iter_3.caffemodel"


def test_finetuned_caffemodel_runs_in_opencv(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip(f"OpenCV {cv2.__version__} has no Caffe importer (OpenCV 5 removed it)")
    monkeypatch.chdir(tmp_path)  # the recipe's data paths are relative to where it runs
    finetuned = _finetune(tmp_path)
    deploy = str(EXAMPLE / "lenet_transfer_deploy.prototxt")
    classifier = Classifier(deploy, str(finetuned), mean_file="mean.binaryproto",
                            scale=0.00390625)
    images = [classifier.load(p) for p in digit_paths(4)]
    batch = np.stack([classifier.preprocess(image) for image in images])
    opencv = cv2.dnn.readNetFromCaffe(deploy, str(finetuned))
    opencv.setInput(batch)
    np.testing.assert_allclose(opencv.forward().reshape(len(images), -1),
                               classifier.scores(images), rtol=1e-4, atol=1e-6)

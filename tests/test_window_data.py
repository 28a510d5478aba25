"""WindowData (R-CNN's window sampler): the window file, Caffe's box
arithmetic, the sampling stream and the pixels, mean and scale."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from caffe_ft.pycaffe import net as pycaffe
from caffe_ft.blobs import array_to_blob_proto
from caffe_ft.data.prefetch import WORKERS_ENV
from caffe_ft.rng.engine import CaffeRNG
from caffe_ft.data.windows import Warp, Window, WindowSource, read_window_file, warp_geometry
from caffe_ft.errors import CaffeError
from caffe_ft.net import Net
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text, write_binary
from caffe_ft.pycaffe.mode import set_random_seed
from solver_helpers import captured_log

TRAIN = caffe_pb2.TRAIN


@pytest.fixture(autouse=True)
def _in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKERS_ENV, "0")


# -- box arithmetic, checked against values worked out by hand -------------
def test_plain_warp_takes_the_box_as_it_is() -> None:
    assert warp_geometry(Window(0, 1, 10, 20, 30, 40), 100, 100, 227, 0, False, False) == \
        Warp(10, 20, 30, 40, 227, 227, 0, 0)


def test_context_pad_grows_the_box() -> None:
    # scale 227/195; half 50 → 58.205; centre (150, 100); the grown box is
    # 117 wide, which warps back to 227 exactly.
    assert warp_geometry(Window(0, 1, 100, 50, 199, 149), 375, 500, 227, 16, False, False) == \
        Warp(92, 42, 208, 158, 227, 227, 0, 0)


@pytest.mark.parametrize("mirror, pad_w", [(False, 16), (True, 0)])
def test_a_box_clipped_by_the_image_keeps_its_place(mirror: bool, pad_w: int) -> None:
    # Grown to (-8, -8, 108, 108): 8 px fall off the image on the left and the
    # top, 8 × 227/117 → 16 px of zero padding; 109 px × 227/117 → 211.
    assert warp_geometry(Window(0, 1, 0, 0, 99, 99), 375, 500, 227, 16, False, mirror) == \
        Warp(0, 0, 108, 108, 211, 211, pad_w, 16)


def test_square_mode_takes_the_longer_side() -> None:
    # 200×100 box: half-sides 100 and 50 → 100, centre (200, 100).
    assert warp_geometry(Window(0, 1, 100, 50, 299, 149), 375, 500, 227, 0, True, False) == \
        Warp(100, 0, 300, 200, 227, 227, 0, 0)


# -- the window file ---------------------------------------------------
def _window_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "windows.txt"
    path.write_text(text)
    return path


def test_window_file_splits_foreground_and_background(tmp_path: Path) -> None:
    path = _window_file(tmp_path, "# 0\na.jpg\n3 40 60\n4\n"
                                  "2 0.8 1 2 30 20\n5 0.4 0 0 9 9\n7 0.1 3 3 19 19\n"
                                  "3 0.5 5 5 25 25\n"
                                  "# 1\nb.jpg\n3 40 60\n1\n4 0.0 0 0 59 39\n")
    windows = read_window_file(str(path), "root/", 0.5, 0.3)
    assert windows.images == ["root/a.jpg", "root/b.jpg"]
    assert list(windows.foreground) == [Window(0, 2, 1, 2, 30, 20), Window(0, 3, 5, 5, 25, 25)]
    # Background windows get label 0 whatever their class; 0.4 lies between
    # the thresholds and is dropped.
    assert list(windows.background) == [Window(0, 0, 3, 3, 19, 19), Window(1, 0, 0, 0, 59, 39)]
    assert windows.class_counts == {0: 2, 2: 1, 3: 1}


def test_window_file_is_read_as_tokens_like_cpp(tmp_path: Path) -> None:
    # C++ >> does not care where the lines break.
    path = _window_file(tmp_path, "# 0 a.jpg 3 40 60 2\n2 0.8 1 2\n30 20 7 0.1\n3 3 19 19\n")
    windows = read_window_file(str(path), "", 0.5, 0.5)
    assert list(windows.foreground) == [Window(0, 2, 1, 2, 30, 20)]
    assert list(windows.background) == [Window(0, 0, 3, 3, 19, 19)]


@pytest.mark.parametrize("text, message", [
    ("", "Window file is empty"),
    ("% 0\na.jpg\n3 4 4\n0\n", r"windows.txt:1: expected '# image_index', got '%'"),
    ("# 1\na.jpg\n3 4 4\n0\n", r"windows.txt:1: image index 1, expected 0"),
    ("# 0\na.jpg\n3 4 4\n1\n0 0.9 0 0 3 3\n", r"windows.txt:5: a foreground window .* class "
                                               r"index > 0, got 0"),
    ("# 0\na.jpg\n3 4 4\n1\n1 high 0 0 3 3\n", r"windows.txt:5: expected a window's overlap"),
    ("# 0\na.jpg\n3 4 4\n2\n1 0.9 0 0 3 3\n1 0.9 0 0 3.5 3\n", r"windows.txt:6: expected x2 "
                                                              r"\(int\), got '3.5'"),
    ("# 0\na.jpg\n3 4 4\n1\n1 0.9 0 0 inf 3\n", r"windows.txt:5: expected x2 \(int\), "
                                                r"got 'inf'"),
    ("# 0\na.jpg\n3 4 4\n2\n1 0.9 0 0 3 3\n", r"windows.txt:5: file ends where a window's "
                                               r"class index was expected"),
])
def test_window_file_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CaffeError, match=message):
        read_window_file(str(_window_file(tmp_path, text)), "", 0.5, 0.5)


# -- sampling and pixels -----------------------------------------------
def _images(tmp_path: Path) -> list[np.ndarray]:
    """Two 40×60 PNGs with distinct gradients, so every crop is recognizable."""
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (40, 60, 3), np.uint8) for _ in range(2)]
    for i, image in enumerate(images):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), image)
    return images


WINDOWS = ("# 0\nim0.png\n3 40 60\n3\n1 0.9 10 5 29 24\n0 0.1 0 0 15 15\n2 0.7 30 10 59 39\n"
           "# 1\nim1.png\n3 40 60\n2\n0 0.2 20 20 39 39\n3 0.6 0 0 19 9\n")


def _source(tmp_path: Path, seed: int, mirror: bool = False, mean_values: tuple = ()) \
        -> WindowSource:
    windows = read_window_file(str(_window_file(tmp_path, WINDOWS)), f"{tmp_path}/", 0.5, 0.5)
    return WindowSource(windows, batch_size=4, crop_size=8, mirror=mirror, context_pad=0,
                        square=False, fg_fraction=0.5, scale=0.5, mean=None,
                        mean_values=np.asarray(mean_values, np.float32), seed=seed,
                        labels=True, cached=None)


def _expected_batch(images: list[np.ndarray], source: WindowSource, index: int,
                    mean: float) -> tuple[np.ndarray, np.ndarray]:
    """Batch `index` as Caffe's load_batch makes it, from the raw mt19937 stream."""
    rng = CaffeRNG(source.rng.seed)
    draws = 2 if source.mirror else 1
    rng.seek(index * 4 * draws)
    data, labels = np.zeros((4, 3, 8, 8), np.float32), np.zeros(4, np.float32)
    pools = [source.windows.background] * 2 + [source.windows.foreground] * 2
    for item, pool in enumerate(pools):
        window = pool[rng.raw() % len(pool)]
        flip = source.mirror and rng.raw() % 2 == 1
        crop = images[window.image][window.y1:window.y2 + 1, window.x1:window.x2 + 1]
        patch = cv2.resize(crop, (8, 8), interpolation=cv2.INTER_LINEAR)
        patch = patch[:, ::-1] if flip else patch
        data[item] = (patch.transpose(2, 0, 1).astype(np.float32) - np.float32(mean)) * \
            np.float32(0.5)
        labels[item] = window.label
    return data, labels


@pytest.mark.parametrize("mirror", [False, True])
def test_batches_follow_caffes_sampling_stream(tmp_path: Path, mirror: bool) -> None:
    images = _images(tmp_path)
    source = _source(tmp_path, seed=1234, mirror=mirror, mean_values=(10.0,))
    for index in (0, 1, 2, 7):
        data, labels = source.load_batch(index)
        expected_data, expected_labels = _expected_batch(images, source, index, 10.0)
        np.testing.assert_array_equal(labels, expected_labels)
        np.testing.assert_array_equal(data, expected_data)
    # Two background windows first, then two foreground ones.
    assert (labels[:2] == 0).all() and (labels[2:] > 0).all()


def test_mean_file_is_read_at_the_crops_offset_and_padding(tmp_path: Path) -> None:
    image = np.full((40, 60, 3), 200, np.uint8)
    cv2.imwrite(str(tmp_path / "im0.png"), image)
    windows = read_window_file(str(_window_file(
        tmp_path, "# 0\nim0.png\n3 40 60\n2\n1 0.9 0 0 9 9\n0 0.0 0 0 9 9\n")),
        f"{tmp_path}/", 0.5, 0.5)
    mean = np.arange(3 * 12 * 12, dtype=np.float32).reshape(3, 12, 12)
    source = WindowSource(windows, batch_size=2, crop_size=8, mirror=False, context_pad=2,
                          square=False, fg_fraction=0.5, scale=1.0, mean=mean,
                          mean_values=np.zeros(0, np.float32), seed=5, labels=True,
                          cached=None)
    data, _ = source.load_batch(0)
    warp = warp_geometry(windows.foreground[0], 40, 60, 8, 2, False, False)
    assert warp.pad_w > 0 and warp.pad_h > 0  # the grown box is clipped at the corner
    region = (slice(None), slice(warp.pad_h, warp.pad_h + warp.height),
              slice(warp.pad_w, warp.pad_w + warp.width))
    # The mean is centred on the crop (offset (12 - 8) // 2) and shifted by the padding.
    offset = (slice(None), slice(2 + warp.pad_h, 2 + warp.pad_h + warp.height),
              slice(2 + warp.pad_w, 2 + warp.pad_w + warp.width))
    np.testing.assert_array_equal(data[1][region], 200 - mean[offset])
    outside = np.ones(data[1].shape, bool)
    outside[region] = False
    assert (data[1][outside] == 0).all()  # the padding stays zero


def _layer_text(tmp_path: Path, extra: str = "", transform: str = "crop_size: 8") -> str:
    _window_file(tmp_path, WINDOWS)
    return (f'layer {{ name: "data" type: "WindowData" top: "data" top: "label" '
            f'transform_param {{ {transform} }} window_data_param {{ '
            f'source: "{tmp_path}/windows.txt" root_folder: "{tmp_path}/" batch_size: 4 '
            f'fg_fraction: 0.5 {extra} }} }}')


def _layer_net(tmp_path: Path, extra: str = "", transform: str = "crop_size: 8") -> Net:
    return Net(parse_text(_layer_text(tmp_path, extra, transform), caffe_pb2.NetParameter()),
               TRAIN)


@pytest.mark.parametrize("phase, mirror, seed_draw, draws_taken", [
    # Caffe's setup draws: DataTransformer::InitRand (when mirror, or crop_size in
    # TRAIN), the sampler's seed, InitRand again, the prefetch thread's seed.
    ("TRAIN", False, 1, 4),
    ("TEST", True, 1, 4),
    ("TEST", False, 0, 2),
])
def test_sampler_seed_is_caffes_draw_in_either_phase(tmp_path: Path, phase: str, mirror: bool,
                                                     seed_draw: int, draws_taken: int) -> None:
    images = _images(tmp_path)
    transform = "crop_size: 8 mirror: true" if mirror else "crop_size: 8"
    (tmp_path / "net.prototxt").write_text(_layer_text(tmp_path, "scale: 0.5", transform))
    set_random_seed(1701)
    net = pycaffe.Net(str(tmp_path / "net.prototxt"), caffe_pb2.Phase.Value(phase))
    stream = CaffeRNG(1701)  # Caffe's global generator after set_random_seed(1701)
    draws = [stream.raw() for _ in range(draws_taken + 2)]
    # The layer took exactly its draws: the next ones are the next layer's (a
    # range of 2**16 takes one 32-bit output).
    following = [torch.randint(0, 2**16, ()).item() for _ in range(2)]
    assert following == [draw % 2**16 for draw in draws[draws_taken:]]
    expected = _source(tmp_path, seed=draws[seed_draw], mirror=mirror)
    for index in range(2):
        net.forward()
        expected_data, expected_labels = _expected_batch(images, expected, index, 0.0)
        np.testing.assert_array_equal(net.blobs["label"].data, expected_labels)
        np.testing.assert_array_equal(net.blobs["data"].data, expected_data)


def test_layer_logs_like_caffe_and_serves_batches(tmp_path: Path) -> None:
    _images(tmp_path)
    torch.manual_seed(0)
    with captured_log() as messages:
        net = _layer_net(tmp_path, "context_pad: 1 cache_images: true",
                         "crop_size: 8 mirror: true mean_value: 100")
    for line in ("Number of images: 2", "class 0 has 2 samples", "class 1 has 1 samples",
                 "Amount of context padding: 1", "Crop mode: warp", "output data size: 4,3,8,8"):
        assert line in messages
    assert net.blob_shapes["data"] == (4, 3, 8, 8) and net.blob_shapes["label"] == (4,)
    net.forward()
    labels = net.blob_data("label").numpy()
    assert (labels[:2] == 0).all() and set(labels[2:]) <= {1, 2, 3}


def test_workers_give_the_in_process_batches(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _images(tmp_path)
    # OpenCV's thread pool running in this process before the workers fork
    # once made every worker hang (it changed the thread count after the fork).
    threads = cv2.getNumThreads()
    cv2.setNumThreads(2)
    cv2.resize(np.zeros((2000, 2000, 3), np.uint8), (1500, 1500))
    cv2.setNumThreads(threads)
    runs = []
    for workers in ("0", "2"):
        monkeypatch.setenv(WORKERS_ENV, workers)
        torch.manual_seed(0)
        net = _layer_net(tmp_path, "context_pad: 1", "crop_size: 8 mirror: true")
        batches = []
        for _ in range(3):
            net.forward()
            batches.append(net.blob_data("data").numpy().copy())
        runs.append(batches)
    for in_process, from_workers in zip(*runs):
        np.testing.assert_array_equal(in_process, from_workers)


@pytest.mark.parametrize("extra, transform, message", [
    ("", "mirror: true", "crop_size must be > 0"),
    ("context_pad: 4", "crop_size: 8", "context_pad 4 leaves no room"),
    ("fg_threshold: 0.95", "crop_size: 8", "0 foreground and 2 background windows"),
    ("", "crop_size: 8 mean_value: 1 mean_value: 2", "Specify either 1 mean_value or as many"),
])
def test_layer_parameter_errors(tmp_path: Path, extra: str, transform: str,
                                message: str) -> None:
    _images(tmp_path)
    with pytest.raises(CaffeError, match=message):
        _layer_net(tmp_path, extra, transform)


def test_a_missing_image_is_named(tmp_path: Path) -> None:
    _images(tmp_path)
    (tmp_path / "im1.png").unlink()
    with pytest.raises(CaffeError, match="im1.png"):
        _layer_net(tmp_path, "cache_images: true")


def test_mean_file_too_small_for_the_crop(tmp_path: Path) -> None:
    _images(tmp_path)
    write_binary(tmp_path / "mean.binaryproto",
                 array_to_blob_proto(np.zeros((1, 3, 6, 6), np.float32)))
    with pytest.raises(CaffeError, match="room for the 8x8 crop"):
        _layer_net(tmp_path, transform=f'crop_size: 8 mean_file: "{tmp_path}/mean.binaryproto"')


CORPUS_RECIPE = (Path(__file__).parent / "fixtures" / "corpus" / "caffe_examples_misc" /
                 "finetune_pascal_detection" / "pascal_finetune_trainval_test.prototxt")


def test_rcnn_pascal_recipe_trains(tmp_path: Path) -> None:
    """Caffe's examples/finetune_pascal_detection net (CaffeNet, 21-way
    fc8_pascal), its WindowData layers pointed at a small window file and
    batch 4 instead of 128, trains and tests through `caffe_ft train`."""
    from caffe_ft.cli import main
    _images(tmp_path)
    mean = np.full((1, 3, 256, 256), 100, np.float32)
    write_binary(tmp_path / "mean.binaryproto", array_to_blob_proto(mean))
    windows = WINDOWS.replace("im0.png", f"{tmp_path}/im0.png").replace("im1.png",
                                                                          f"{tmp_path}/im1.png")
    (tmp_path / "windows.txt").write_text(windows)
    net = CORPUS_RECIPE.read_text()
    for old, new in (("examples/finetune_pascal_detection/window_file_2007_trainval.txt",
                      f"{tmp_path}/windows.txt"),
                     ("examples/finetune_pascal_detection/window_file_2007_test.txt",
                      f"{tmp_path}/windows.txt"),
                     ("data/ilsvrc12/imagenet_mean.binaryproto", f"{tmp_path}/mean.binaryproto"),
                     ("batch_size: 128", "batch_size: 4")):
        assert old in net
        net = net.replace(old, new)
    (tmp_path / "train_val.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path}/train_val.prototxt" base_lr: 0.001 lr_policy: "fixed" '
        f'momentum: 0.9 max_iter: 2 display: 1 test_iter: 1 test_interval: 2 '
        f'test_initialization: false snapshot_prefix: "{tmp_path}/rcnn" solver_mode: CPU')
    with captured_log() as messages:
        assert main(["train", "-solver", str(tmp_path / "solver.prototxt")]) == 0
    assert "output data size: 4,3,227,227" in messages
    assert any(m.startswith("    Test net output #0: accuracy = ") for m in messages)
    assert (tmp_path / "rcnn_iter_2.caffemodel").is_file()

"""caffe.Classifier and caffe.Detector against real
pycaffe's outputs (tests/fixtures/pycaffe/classifier, README.md there)."""
from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import caffe_ft as caffe
from caffe_ft.errors import CaffeError

CASE = Path(__file__).parent / "fixtures" / "pycaffe" / "classifier"
DEPLOY, WEIGHTS = str(CASE / "deploy.prototxt"), str(CASE / "weights.caffemodel")
PREPROCESSING = dict(mean=np.array([104, 117, 123]), raw_scale=255, channel_swap=(2, 1, 0))


@pytest.fixture(scope="module")
def golden() -> np.lib.npyio.NpzFile:
    return np.load(CASE / "predictions.npz")


@pytest.fixture(scope="module")
def photos(golden: np.lib.npyio.NpzFile) -> list[str]:
    return [str(CASE / name) for name in golden["names"]]


@pytest.fixture(scope="module")
def classifier() -> caffe.Classifier:
    return caffe.Classifier(DEPLOY, WEIGHTS, image_dims=(72, 72), **PREPROCESSING)


@pytest.fixture(scope="module")
def detector() -> caffe.Detector:
    return caffe.Detector(DEPLOY, WEIGHTS, **PREPROCESSING)


@pytest.mark.parametrize("key, oversample", [("oversample", True), ("center", False)])
def test_predict_matches_pycaffe(classifier: caffe.Classifier, golden: np.lib.npyio.NpzFile,
                                 photos: list[str], key: str, oversample: bool) -> None:
    images = [caffe.io.load_image(path) for path in photos]
    predictions = classifier.predict(images, oversample=oversample)
    assert predictions.dtype == np.float32
    np.testing.assert_allclose(predictions, golden[key], rtol=0, atol=1e-5)


def test_image_dims_default_to_the_input_size(photos: list[str]) -> None:
    net = caffe.Classifier(DEPLOY, WEIGHTS)
    assert list(net.image_dims) == [64, 64] and list(net.crop_dims) == [64, 64]
    image = caffe.io.resize_image(caffe.io.load_image(photos[0]), (64, 64))
    center = net.predict([image], oversample=False)
    # With the input size itself there is nothing to resize or crop.
    expected = net.forward(data=np.repeat(net.transformer.preprocess("data", image)[None],
                                          10, axis=0))["prob"][0]
    np.testing.assert_allclose(center[0], expected, rtol=1e-6, atol=1e-7)


def test_detect_windows_matches_pycaffe(detector: caffe.Detector, photos: list[str]) -> None:
    golden = np.load(CASE / "detector.npz")
    windows = golden["windows"]
    request = [(photos[0], windows[:2]), (photos[1], windows[2:])]
    detections = detector.detect_windows(request)
    assert [d["filename"] for d in detections] == [photos[0], photos[0], photos[1]]
    assert [list(d["window"]) for d in detections] == windows.tolist()
    np.testing.assert_allclose(np.stack([d["prediction"] for d in detections]),
                               golden["predictions"], rtol=0, atol=1e-5)


def test_crop_without_context_is_the_window(detector: caffe.Detector, photos: list[str]) -> None:
    image = caffe.io.load_image(photos[0])
    assert detector.context_pad is None
    assert list(detector.crop_dims) == [64, 64, 3]
    np.testing.assert_array_equal(detector.crop(image, [10, 20, 90, 120]), image[10:90, 20:120])


def test_context_crop_pads_with_the_mean_in_image_space(photos: list[str]) -> None:
    detector = caffe.Detector(DEPLOY, WEIGHTS, context_pad=16, **PREPROCESSING)
    image = caffe.io.load_image(photos[0])
    # A 32x32 window in the corner of a 64x64 input with 16 pixels of context
    # each side grows to (-16, -16, 48, 48): rows and columns below 0 are
    # padding (16 * 64/65 input pixels, rounded), the rest is the image's.
    crop = detector.crop(image, np.array([0, 0, 31, 31]))
    assert crop.shape == (64, 64, 3)
    # The mean given in the net's BGR, 0-255 terms, as an RGB image in [0, 1].
    mean = PREPROCESSING["mean"][[2, 1, 0]] / 255.0
    np.testing.assert_allclose(crop[:16], np.broadcast_to(mean, (16, 64, 3)), rtol=1e-6)
    np.testing.assert_allclose(crop[:, :16], np.broadcast_to(mean, (64, 16, 3)), rtol=1e-6)
    np.testing.assert_allclose(crop[16:, 16:], caffe.io.resize_image(image[:48, :48], (48, 48)),
                               rtol=1e-6)
    # Preprocessing brings the padding back to the net's mean, so it feeds zeros.
    net_input = detector.transformer.preprocess("data", crop)
    np.testing.assert_allclose(net_input[:, :16], 0, atol=1e-4)


def test_context_crop_inside_the_image(photos: list[str]) -> None:
    detector = caffe.Detector(DEPLOY, WEIGHTS, context_pad=8)
    image = caffe.io.load_image(photos[0])
    # Away from the borders of the 50x64 photo, the 24x24 window grown by
    # 64/48 is all image: (6, 6, 38, 38).
    crop = detector.crop(image, np.array([10, 10, 33, 33]))
    np.testing.assert_allclose(crop, caffe.io.resize_image(image[6:38, 6:38], (64, 64)),
                               rtol=1e-6)


def test_context_crop_outside_the_image_is_an_error(photos: list[str]) -> None:
    detector = caffe.Detector(DEPLOY, WEIGHTS, context_pad=16)
    with pytest.raises(CaffeError, match="outside the"):
        detector.crop(caffe.io.load_image(photos[0]), np.array([-200, -200, -150, -150]))


def test_selective_search_needs_its_package(detector: caffe.Detector,
                                            photos: list[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "selective_search_ijcv_with_python", None)
    with pytest.raises(CaffeError, match="selective_search_ijcv_with_python"):
        detector.detect_selective_search(photos[:1])


def test_selective_search_windows_are_detected(detector: caffe.Detector, photos: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[list[str], str]] = []

    def get_windows(fnames: list[str], cmd: str) -> list[np.ndarray]:
        asked.append((fnames, cmd))
        return [np.array([[10, 20, 90, 120]]) for _ in fnames]

    monkeypatch.setitem(sys.modules, "selective_search_ijcv_with_python",
                        types.SimpleNamespace(get_windows=get_windows))
    relative = os.path.relpath(photos[0])
    detections = detector.detect_selective_search([relative])
    assert asked == [([os.path.abspath(relative)], "selective_search_rcnn")]
    direct = detector.detect_windows([(photos[0], [[10, 20, 90, 120]])])
    np.testing.assert_array_equal(detections[0]["prediction"], direct[0]["prediction"])


def test_classifier_script_runs_unchanged(tmp_path: Path, photos: list[str]) -> None:
    """A legacy classification script that says `import caffe`."""
    script = tmp_path / "classify.py"
    script.write_text(
        "import sys\nimport numpy as np\nimport caffe\n"
        "net = caffe.Classifier(sys.argv[1], sys.argv[2], image_dims=(72, 72),\n"
        "    mean=np.array([104, 117, 123]), raw_scale=255, channel_swap=(2, 1, 0))\n"
        "images = [caffe.io.load_image(p) for p in sys.argv[4:]]\n"
        "np.save(sys.argv[3], net.predict(images))\n")
    out = tmp_path / "scores.npy"
    run = subprocess.run([sys.executable, "-m", "caffe_ft", "python", str(script), DEPLOY,
                          WEIGHTS, str(out), *photos], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    golden = np.load(CASE / "predictions.npz")["oversample"]
    np.testing.assert_allclose(np.load(out), golden, rtol=0, atol=1e-5)

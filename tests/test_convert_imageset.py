"""convert_imageset against the LMDBs BVLC Caffe wrote (tests/fixtures/data,
copied from golden/data), plus the builder's own guarantees: skips counted,
no partial database under the final name, map growth, seeded shuffle."""
from __future__ import annotations

import functools
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import caffe_ft.data.convert_imageset as builder
from caffe_ft.cli import main
from caffe_ft.data.convert_imageset import (
    ConvertOptions,
    convert_imageset,
    encode_entry,
)
from caffe_ft.data.datum import RawDatum
from caffe_ft.data.image_list import parse_list_file
from caffe_ft.data.lmdb_io import LMDBReader, LMDBWriter
from caffe_ft.data.progress import Progress
from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2
from conftest import golden_db, read_until

DATA = Path(__file__).parent / "fixtures" / "data"
IMAGES = DATA / "images"
CASES = json.loads((DATA / "lmdb" / "cases.json").read_text())
REPO = Path(__file__).parent.parent


def read_db(path: Path) -> list[tuple[bytes, caffe_pb2.Datum]]:
    with LMDBReader(path) as reader:
        items = list(reader)
    return [(key, caffe_pb2.Datum.FromString(value)) for key, value in items]


def decoded(datum: caffe_pb2.Datum) -> np.ndarray:
    if datum.encoded:
        return cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_UNCHANGED)
    return np.frombuffer(datum.data, np.uint8).reshape(datum.channels, datum.height, datum.width)


def list_paths(list_name: str) -> list[str]:
    return [entry.path for entry in parse_list_file(IMAGES / list_name)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_caffe_lmdb(case: str, tmp_path: Path) -> None:
    """README rule: same keys in the same order; raw Datums equal (≤1 grey
    level where resized); -encoded without re-encode: the file's bytes;
    re-encoded: equal decoded pixels (≤1 where resized or JPEG)."""
    spec = CASES[case]
    db = tmp_path / case
    assert main(["convert_imageset", *spec["flags"], "-workers=2", f"{IMAGES}/",
                 str(IMAGES / spec["list"]), str(db)]) == 0
    ours, golden = read_db(db), read_db(golden_db(case, tmp_path))
    assert [key for key, _ in ours] == [key for key, _ in golden]
    resized = (any(f.startswith("-resize_height=") for f in spec["flags"])
               and any(f.startswith("-resize_width=") for f in spec["flags"]))
    paths = list_paths(spec["list"])
    for (key, mine), (_, theirs), path in zip(ours, golden, paths):
        assert (mine.label, mine.encoded) == (theirs.label, theirs.encoded), key
        assert (mine.channels, mine.height, mine.width) == (
            theirs.channels, theirs.height, theirs.width), key
        if theirs.encoded and theirs.data == (IMAGES / path).read_bytes():
            assert mine.data == theirs.data, key
            continue
        jpeg_reencoded = theirs.encoded and theirs.data[:2] == b"\xff\xd8"
        tolerance = 1 if resized or jpeg_reencoded else 0
        a, b = decoded(mine).astype(int), decoded(theirs).astype(int)
        assert a.shape == b.shape, key
        assert np.abs(a - b).max() <= tolerance, key


def test_same_database_for_any_worker_count(tmp_path: Path) -> None:
    options = dict(shuffle=True, seed=7, resize_width=12, resize_height=10)
    one = tmp_path / "one"
    three = tmp_path / "three"
    convert_imageset(f"{IMAGES}/", IMAGES / "digits.txt", one, ConvertOptions(**options, workers=1))
    convert_imageset(f"{IMAGES}/", IMAGES / "digits.txt", three,
                     ConvertOptions(**options, workers=3))
    with LMDBReader(one) as first, LMDBReader(three) as second:
        assert list(first) == list(second)


def test_shuffle_with_seed_is_deterministic(tmp_path: Path, log_messages: list[str]) -> None:
    keys = []
    for name in ("a", "b"):
        convert_imageset(f"{IMAGES}/", IMAGES / "digits.txt", tmp_path / name,
                         ConvertOptions(shuffle=True, seed=3, workers=1))
        keys.append([key for key, _ in read_db(tmp_path / name)])
    assert keys[0] == keys[1]
    order = [key.decode().split("_", 1)[1] for key in keys[0]]
    paths = list_paths("digits.txt")
    assert sorted(order) == sorted(paths) and order != paths
    # Keys number the shuffled order, so DB (key) order is the shuffled order.
    assert [key[:8] for key in keys[0]] == [b"%08d" % i for i in range(len(paths))]
    assert "Shuffling data (seed 3)" in log_messages
    # Labels travel with their images.
    labels = {entry.path: entry.label for entry in parse_list_file(IMAGES / "digits.txt")}
    for key, datum in read_db(tmp_path / "a"):
        assert datum.label == labels[key.decode().split("_", 1)[1]]


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path,
                                                   log_messages: list[str]) -> None:
    (tmp_path / "not_an_image.png").write_bytes(b"plain text")
    shutil.copy(IMAGES / "digits" / "d000.png", tmp_path / "d000.png")
    shutil.copy(IMAGES / "digits" / "d001.png", tmp_path / "d001 copy.png")
    listing = tmp_path / "list.txt"
    listing.write_text("d000.png 0\nmissing.png 1\nnot_an_image.png 2\n\nd001 copy.png 4\n")
    summary = convert_imageset(f"{tmp_path}/", listing, tmp_path / "db", ConvertOptions(workers=2))
    assert summary.written == 2
    assert [path for path, _ in summary.skipped] == ["missing.png", "not_an_image.png", ""]
    # A skipped line still uses up its index, as in Caffe.
    assert [key for key, _ in read_db(tmp_path / "db")] == [
        b"00000000_d000.png", b"00000004_d001 copy.png"]
    warnings = "\n".join(log_messages)
    assert "missing.png" in warnings and "not_an_image.png" in warnings
    assert "skipped 3 of 5 images" in warnings
    assert "Processed 2 files." in log_messages


def test_a_path_with_a_nul_byte_is_an_unreadable_image(tmp_path: Path) -> None:
    # Caffe's fopen stops at the NUL and finds no file; Python refuses the path (fuzz finding).
    shutil.copy(IMAGES / "digits" / "d000.png", tmp_path / "d000.png")
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"d000.png 0\nd0\x0000.png 1\n")
    summary = convert_imageset(f"{tmp_path}/", listing, tmp_path / "db", ConvertOptions(workers=1))
    assert summary.written == 1
    assert [path for path, _ in summary.skipped] == ["d0\x0000.png"]


def test_nothing_readable_is_an_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(CaffeError, match="trailing '/'"):
        convert_imageset(str(IMAGES), IMAGES / "photos.txt", tmp_path / "db",
                         ConvertOptions(workers=1))
    assert os.listdir(tmp_path) == []


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Interrupted(LMDBWriter):
        def put(self, key: bytes, value: bytes) -> None:
            super().put(key, value)
            if key.startswith(b"00000005"):
                self.commit()
                raise KeyboardInterrupt

    monkeypatch.setattr(builder, "LMDBWriter", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_imageset(f"{IMAGES}/", IMAGES / "digits.txt", tmp_path / "db",
                         ConvertOptions(workers=2))
    assert os.listdir(tmp_path) == []


@pytest.mark.slow  # starts the tool in a fresh interpreter
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_the_tool_mid_build_leaves_nothing(tmp_path: Path, signum: int) -> None:
    listing = tmp_path / "big.txt"
    listing.write_text("".join(f"digits/d{i % 40:03d}.png {i % 10}\n" for i in range(40000)))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "convert_imageset"), "-workers=2", f"{IMAGES}/",
         str(listing), str(out / "db")], stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    seen = read_until(proc, "Processed 1000 files.")  # Datums are being written
    assert proc.poll() is None, "".join(seen)
    proc.send_signal(signum)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    stderr = "".join(seen) + proc.stderr.read()
    assert code == 130, stderr
    assert "interrupted" in stderr
    assert os.listdir(out) == []


def test_builds_after_opencv_ran_threads_in_this_process(tmp_path: Path) -> None:
    """Workers fork from a process whose OpenCV thread pool is running; the
    forked copy of that pool must never be used or reconfigured (which could
    hang)."""
    big = np.zeros((1500, 1500, 3), np.uint8)
    threads = cv2.getNumThreads()
    for attempt in range(4):
        cv2.resize(big, (700, 600))
        convert_imageset(f"{IMAGES}/", IMAGES / "digits.txt", tmp_path / f"db{attempt}",
                         ConvertOptions(resize_width=8, resize_height=8, workers=2))
    assert cv2.getNumThreads() == threads


def _crash_on_digit_3(job: builder._Job, task: tuple[str, int]) -> builder.Encoded:
    if task[0].endswith("3.png"):
        os.kill(os.getpid(), signal.SIGKILL)
    return encode_entry(job, task)


def test_a_worker_crashing_names_the_way_to_find_the_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The workers fork with the patched encode_entry.
    monkeypatch.setattr(builder, "encode_entry", _crash_on_digit_3)
    with pytest.raises(CaffeError, match=r"exited unexpectedly with code -9 while decoding "
                                         r"images.*-workers=1"):
        convert_imageset(f"{IMAGES}/", IMAGES / "digits.txt", tmp_path / "db",
                         ConvertOptions(workers=2))
    assert os.listdir(tmp_path) == []


def test_existing_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.mkdir()
    (db / "keep").write_text("x")
    with pytest.raises(CaffeError, match="already exists"):
        convert_imageset(f"{IMAGES}/", IMAGES / "digits.txt", db, ConvertOptions(workers=1))
    assert os.listdir(db) == ["keep"]


def test_map_grows_from_a_tiny_initial_map(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "LMDBWriter", functools.partial(LMDBWriter, map_size=16384))
    summary = convert_imageset(f"{IMAGES}/", IMAGES / "digits.txt", tmp_path / "db",
                               ConvertOptions(workers=1))
    assert summary.map_resizes > 0 and summary.map_size > 16384
    with LMDBReader(tmp_path / "db") as ours, LMDBReader(
            golden_db("raw_color_noresize_digits", tmp_path)) as golden:
        assert list(ours) == list(golden)


@pytest.mark.parametrize("ordered", [True, False])
def test_writer_grows_a_tiny_map_before_any_put_fills_it(tmp_path: Path, ordered: bool) -> None:
    # Values go straight into the open transaction and are not kept, so a
    # MapFullError (a CaffeError here) would lose them: the map must grow
    # ahead, for values on overflow pages and for small ones that split
    # leaves and branches, appended or in random key order.
    rng = random.Random(0)
    keys = [b"%06d" % i + b"k" * rng.randrange(0, 200) for i in range(3000)]
    values = {key: bytes([i % 251]) * rng.choice([10, 300, 3000, 9000])
              for i, key in enumerate(keys)}
    order = sorted(values) if ordered else rng.sample(sorted(values), len(values))
    with LMDBWriter(tmp_path / "db", map_size=16384, commit_every=150,
                    ordered=ordered) as writer:
        for key in order:
            writer.put(key, memoryview(values[key]))
    assert writer.resizes > 0
    with LMDBReader(tmp_path / "db") as reader:
        assert list(reader) == sorted(values.items())


def test_leveldb_backend_is_not_supported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["convert_imageset", "-backend=leveldb", f"{IMAGES}/",
                 str(IMAGES / "digits.txt"), str(tmp_path / "db")])
    assert code == 1
    assert "leveldb is not supported" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_check_size_rejects_differing_images(tmp_path: Path) -> None:
    with pytest.raises(CaffeError, match="incorrect data field size"):
        convert_imageset(f"{IMAGES}/", IMAGES / "photos.txt", tmp_path / "db",
                         ConvertOptions(check_size=True, workers=2))
    assert os.listdir(tmp_path) == []


def test_one_resize_dim_re_encodes_without_resizing(tmp_path: Path) -> None:
    """Caffe keeps the file's bytes only when neither resize dim is set; a
    single one does not resize but still re-encodes."""
    convert_imageset(f"{IMAGES}/", IMAGES / "photos.txt", tmp_path / "db",
                     ConvertOptions(encoded=True, resize_width=20, workers=1))
    for (_, datum), path in zip(read_db(tmp_path / "db"), list_paths("photos.txt")):
        original = cv2.imread(str(IMAGES / path), cv2.IMREAD_COLOR)
        if path.endswith(".jpg"):  # a JPEG re-encode is never the file's bytes
            assert datum.data != (IMAGES / path).read_bytes()
            assert decoded(datum).shape == original.shape
        else:  # lossless: the same pixels, never resized
            assert np.array_equal(decoded(datum), original)


def test_from_folders_writes_list_labels_and_database(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    names = {0: "zero", 1: "one", 2: "two"}
    for entry in parse_list_file(IMAGES / "digits.txt"):
        if entry.label in names:
            folder = root / names[entry.label]
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(IMAGES / entry.path, folder)
    (root / "one" / "notes.txt").write_text("not an image")
    db = tmp_path / "train_lmdb"
    assert main(["convert_imageset", "-from_folders", "-gray", "-workers=2", str(root),
                 str(db)]) == 0
    classes = sorted(names.values())
    assert (tmp_path / "train_lmdb_labels.txt").read_text().splitlines() == classes
    entries = parse_list_file(tmp_path / "train_lmdb_list.txt")
    for entry in entries:
        assert entry.path.split("/")[0] == classes[entry.label]
    items = read_db(db)
    assert len(items) == len(entries) == sum(1 for _ in root.rglob("*.png"))
    for (key, datum), entry in zip(items, entries):
        assert key.decode().split("_", 1)[1] == entry.path
        assert datum.label == entry.label
        image = cv2.imread(str(root / entry.path), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(decoded(datum)[0], image)


def test_list_file_splits_at_the_last_space_and_checks_labels(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"my photos/a b.jpg 7\r\nc.png -1\n")
    entries = parse_list_file(listing)
    assert [(e.path, e.label) for e in entries] == [("my photos/a b.jpg", 7), ("c.png", -1)]
    listing.write_text("a.jpg 0\nb.jpg cat\n")
    with pytest.raises(CaffeError, match=r"list\.txt:2: expected 'PATH LABEL'"):
        parse_list_file(listing)


def test_progress_bar_on_a_terminal_and_log_lines_otherwise(log_messages: list[str]) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    with Progress(4, screen) as bar:
        for wrote in (True, False, True, True):
            bar.advance(wrote)
        bar.finish()
    assert "4/4" in screen.getvalue() and "img/s" in screen.getvalue()
    assert "ETA 0:00:00" in screen.getvalue() and screen.getvalue().endswith("\n")
    assert log_messages == ["Processed 3 files."]

    log_messages.clear()
    with Progress(5, io.StringIO(), log_every=2) as lines:
        for _ in range(5):
            lines.advance(True)
        lines.finish()
    assert log_messages == [f"Processed {n} files." for n in (2, 4, 5)]


@pytest.mark.parametrize("shape", [(4, 5), (3, 2, 3), (7, 1, 4)])
@pytest.mark.parametrize("label", [0, 3, 300, 2**31 - 1, -1, -2**31])
def test_raw_datum_bytes_equal_protobufs(shape: tuple[int, ...], label: int) -> None:
    image = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
    chw = image.reshape(shape[0], shape[1], -1).transpose(2, 0, 1)
    expected = caffe_pb2.Datum(channels=chw.shape[0], height=chw.shape[1], width=chw.shape[2],
                               data=chw.tobytes(), label=label, encoded=False)
    raw = RawDatum(image, label, "test image")
    assert bytes(raw) == expected.SerializeToString()
    assert len(raw) == expected.ByteSize() and raw.data_size == chw.size


def test_unknown_encode_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CaffeError, match="no encoder"):
        convert_imageset(f"{IMAGES}/", IMAGES / "photos.txt", tmp_path / "db",
                         ConvertOptions(encode_type="nope", workers=1))
    assert os.listdir(tmp_path) == []

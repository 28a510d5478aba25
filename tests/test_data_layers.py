"""Caffe's data layers: every batch BVLC Caffe produced for golden/data/layers,
then Data's cursor rules (key order, wrap-around, shards, corrupt records),
worker prefetch against in-process reading, ImageData's list rules, and the
HDF5, Memory, Dummy and Window layers."""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

import caffe_ft.layers.data as data_layers
from caffe_ft.data.db_cursor import shared_env
from caffe_ft.data.lmdb_io import LMDBWriter
from caffe_ft.data.prefetch import WORKERS_ENV
from caffe_ft.data.sources import Shard
from caffe_ft.errors import CaffeError
from caffe_ft.net import Net
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text
from caffe_ft.pycaffe.mode import set_random_seed
from caffe_ft.rng.c_rand import C_RAND
from caffe_ft.rng.engine import CaffeRNG
from conftest import FIXTURES
from solver_helpers import captured_log

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
GOLDEN_CASES = FIXTURES / "golden_data" / "layers"
# @GOLDEN@ in the cases' nets: the copy of golden/data (lmdb/, images/, mean).
GOLDEN_ROOT = FIXTURES / "data"
CASES = sorted(p.name for p in GOLDEN_CASES.iterdir() if p.is_dir())


@pytest.fixture(autouse=True)
def _in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # Worker processes are tested where they matter; elsewhere they only cost startup.
    monkeypatch.setenv(WORKERS_ENV, "0")


def _net(text: str, phase: int = TEST) -> Net:
    return Net(parse_text(text, caffe_pb2.NetParameter()), phase)


def _batches(net: Net, passes: int, tops: tuple[str, ...] = ("data", "label")) -> list[dict]:
    out = []
    for _ in range(passes):
        net.forward()
        out.append({name: net.blob_data(name).detach().cpu().numpy().copy() for name in tops})
    return out


# -- golden batches ----------------------------------------------------
def _golden_layer(case: str) -> caffe_pb2.LayerParameter:
    # A case's own files (WindowData's window.txt) are in its fixture folder.
    text = (GOLDEN_CASES / case / "net.prototxt").read_text()
    text = text.replace(f"@GOLDEN@/layers/{case}/", f"{GOLDEN_CASES / case}/")
    text = text.replace("@GOLDEN@", str(GOLDEN_ROOT))
    return parse_text(text, caffe_pb2.NetParameter()).layer[0]


def _golden_meta(case: str) -> dict:
    """The case's meta.json: the phase its net was built in and the seed
    Caffe::set_random_seed was given just before. The Data and ImageData
    cases have none: TEST nets that draw no random number."""
    path = GOLDEN_CASES / case / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else {"phase": "TEST"}


def _reads_jpeg(layer: caffe_pb2.LayerParameter) -> bool:
    if layer.type == "ImageData":
        names = Path(layer.image_data_param.source).read_text().split()[::2]
        return any(name.lower().endswith((".jpg", ".jpeg")) for name in names)
    # The layer's own shared environment: py-lmdb allows one per database and process.
    with shared_env(layer.data_param.source).begin() as txn:
        for _, value in txn.cursor():
            datum = caffe_pb2.Datum.FromString(value)
            if datum.encoded and datum.data[:2] == b"\xff\xd8":
                return True
    return False


def _atol(layer: caffe_pb2.LayerParameter) -> float:
    # README tolerance: in the Data and ImageData cases a decoded JPEG may differ by
    # one grey level before scaling. The WindowData cases (README: 1e-5) are exact.
    if layer.type != "WindowData" and _reads_jpeg(layer):
        return layer.transform_param.scale
    return 0.0


def _check_golden(case: str) -> None:
    layer = _golden_layer(case)
    atol = _atol(layer)
    meta = _golden_meta(case)
    expected = np.load(GOLDEN_CASES / case / "batches.npz")
    passes = sorted({key.split("/")[0] for key in expected.files}, key=lambda p: int(p[4:]))
    if "seed" in meta:
        set_random_seed(meta["seed"])
    phase = caffe_pb2.Phase.Value(meta["phase"])
    net = Net(caffe_pb2.NetParameter(name="d", layer=[layer]), phase)
    assert net.blob_shapes["data"] == expected["pass0/data"].shape
    for index, batch in enumerate(_batches(net, len(passes))):
        np.testing.assert_array_equal(batch["label"], expected[f"pass{index}/label"])
        np.testing.assert_allclose(batch["data"], expected[f"pass{index}/data"], rtol=0,
                                   atol=atol, err_msg=f"{case} pass {index}")


@pytest.mark.parametrize("case", CASES)
def test_golden_batches(case: str) -> None:
    _check_golden(case)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_golden_batches_from_workers(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKERS_ENV, "2")
    _check_golden(case)


# -- Data: cursor order, wrap-around, shards, errors -------------------
def _raw_datum(label: int, value: int, shape: tuple[int, int, int] = (1, 2, 3)) -> bytes:
    pixels = np.full(shape, value, np.uint8)
    return caffe_pb2.Datum(channels=shape[0], height=shape[1], width=shape[2],
                           data=pixels.tobytes(), label=label).SerializeToString()


@pytest.fixture
def small_db(tmp_path: Path) -> tuple[Path, list[bytes]]:
    """Five raw Datums written out of key order; returns the keys in key order.
    Each Datum's label is its key's index in key order, its pixels 10 × that."""
    keys = [b"00000003_c", b"00000000_a", b"00000004_d", b"00000001_b", b"00000002_e"]
    ordered = sorted(keys)
    with LMDBWriter(tmp_path / "db") as writer:
        for key in keys:
            index = ordered.index(key)
            writer.put(key, _raw_datum(index, 10 * index))
    return tmp_path / "db", ordered


def _data_net(source: Path, batch: int, extra: str = "", phase: int = TEST,
              tops: str = 'top: "data" top: "label"') -> Net:
    return _net(f'layer {{ name: "data" type: "Data" {tops} {extra} data_param {{ '
                f'source: "{source}" batch_size: {batch} backend: LMDB }} }}', phase)


def test_data_reads_key_order_and_wraps_around(small_db: tuple[Path, list[bytes]]) -> None:
    source, keys = small_db
    net = _data_net(source, batch=3)
    with captured_log() as messages:
        batches = _batches(net, 4)  # 12 items over 5 records: two full wraps and a bit
    # Caffe's line, logged as the cursor passes the last record (after items 4 and 9).
    assert messages.count("Restarting data prefetching from start.") == 2
    labels = np.concatenate([b["label"] for b in batches])
    expected = np.array([k % len(keys) for k in range(12)], np.float32)
    np.testing.assert_array_equal(labels, expected)
    for batch in batches:
        for pixels, label in zip(batch["data"], batch["label"]):
            np.testing.assert_array_equal(pixels, np.full((1, 2, 3), 10 * label))


def test_data_without_label_top(small_db: tuple[Path, list[bytes]]) -> None:
    net = _data_net(small_db[0], batch=2, tops='top: "data"')
    assert net.blob_shapes["data"] == (2, 1, 2, 3)
    net.forward()
    assert "label" not in net.blob_shapes


def test_train_shard_keeps_every_size_th_record(small_db: tuple[Path, list[bytes]],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_layers, "train_shard", lambda: Shard(rank=1, size=2))
    source, keys = small_db
    train = _data_net(source, batch=4, phase=TRAIN)
    labels = np.concatenate([b["label"] for b in _batches(train, 2)])
    # Caffe's Skip(): rank 1 of 2 keeps cursor offsets 1, 3, 5, ... (records wrap).
    np.testing.assert_array_equal(labels, [(1 + 2 * j) % len(keys) for j in range(8)])
    test = _data_net(source, batch=4, phase=TEST)  # TEST nets run whole on every rank
    np.testing.assert_array_equal(_batches(test, 1)[0]["label"], [0, 1, 2, 3])


@pytest.mark.parametrize("workers", ["0", "2"])
def test_corrupt_datum_names_database_and_key(tmp_path: Path, workers: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKERS_ENV, workers)
    with LMDBWriter(tmp_path / "db") as writer:
        writer.put(b"key_0", _raw_datum(0, 1))
        writer.put(b"key_1_broken", b"\xff\xff\xff\xff")
    net = _data_net(tmp_path / "db", batch=2)
    with pytest.raises(CaffeError, match=re.escape(f"{tmp_path / 'db'} key key_1_broken")):
        net.forward()


def test_datums_of_different_sizes_in_one_batch_are_refused(tmp_path: Path) -> None:
    with LMDBWriter(tmp_path / "db") as writer:
        writer.put(b"a", _raw_datum(0, 1, (1, 2, 3)))
        writer.put(b"b", _raw_datum(0, 1, (1, 3, 3)))
    net = _data_net(tmp_path / "db", batch=2)
    with pytest.raises(CaffeError, match="key b: transforms to 1×3×3, but this batch is 1×2×3"):
        net.forward()


def test_leveldb_backend_is_refused(small_db: tuple[Path, list[bytes]], tmp_path: Path) -> None:
    layer = 'layer {{ name: "data" type: "Data" top: "data" data_param {{ source: "{}" ' \
            'batch_size: 1 }} }}'
    with pytest.raises(CaffeError, match="add `backend: LMDB`"):
        _net(layer.format(small_db[0]))
    (tmp_path / "leveldb").mkdir()
    (tmp_path / "leveldb" / "CURRENT").write_text("MANIFEST-000001\n")
    with pytest.raises(CaffeError, match="not supported.*-backend lmdb"):
        _net(layer.format(tmp_path / "leveldb"))


def test_two_nets_on_one_database_in_one_process(small_db: tuple[Path, list[bytes]]) -> None:
    # py-lmdb refuses to open a database twice per process: the nets share it.
    first, second = _data_net(small_db[0], 2), _data_net(small_db[0], 2)
    np.testing.assert_array_equal(_batches(first, 1)[0]["label"], _batches(second, 1)[0]["label"])


def test_source_survives_pickling_for_spawned_workers(small_db: tuple[Path, list[bytes]]) -> None:
    net = _data_net(small_db[0], batch=3, extra="transform_param { mirror: true }")
    source = net.layers[0].prefetcher.source
    direct = source.load_batch(4)
    copy = pickle.loads(pickle.dumps(source))
    for ours, theirs in zip(direct, copy.load_batch(4)):
        np.testing.assert_array_equal(ours, theirs)


# -- prefetch in workers -----------------------------------------------
@pytest.fixture(scope="module")
def encoded_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve encoded PNGs of different sizes (crops make one batch shape)."""
    folder = tmp_path_factory.mktemp("encoded") / "db"
    rng = np.random.default_rng(0)
    with LMDBWriter(folder) as writer:
        for index in range(12):
            image = rng.integers(0, 256, (20 + index, 18 + 2 * index, 3), dtype=np.uint8)
            ok, png = cv2.imencode(".png", image)
            datum = caffe_pb2.Datum(data=png.tobytes(), label=index, encoded=True)
            writer.put(b"%04d" % index, datum.SerializeToString())
    return folder


def _train_batches(source: Path, workers: str, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    monkeypatch.setenv(WORKERS_ENV, workers)
    torch.manual_seed(1234)  # the transformer's seed comes from torch's generator
    net = _data_net(source, batch=5, phase=TRAIN,
                    extra="transform_param { crop_size: 16 mirror: true scale: 0.5 "
                          "mean_value: 10 mean_value: 20 mean_value: 30 }")
    return _batches(net, 7)


def test_workers_give_the_in_process_batches(encoded_db: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    alone = _train_batches(encoded_db, "0", monkeypatch)
    shared = _train_batches(encoded_db, "2", monkeypatch)
    for ours, theirs in zip(alone, shared):
        np.testing.assert_array_equal(ours["data"], theirs["data"])
        np.testing.assert_array_equal(ours["label"], theirs["label"])
    # Random crops and mirrors: the same image differs between its two epochs.
    first, again = alone[0]["data"][0], alone[2]["data"][2]  # items 0 and 12
    assert alone[2]["label"][2] == alone[0]["label"][0] and not np.array_equal(first, again)


def test_batches_larger_than_the_slots_travel_by_value(encoded_db: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # No crop, batch 1: images grow, so every batch after the first outgrows
    # the slots sized at setup.
    def labels_and_shapes(workers: str) -> list[tuple]:
        monkeypatch.setenv(WORKERS_ENV, workers)
        net = _data_net(encoded_db, batch=1)
        return [(b["label"][0], b["data"].shape, float(b["data"].sum())) for b in _batches(net, 6)]

    assert labels_and_shapes("2") == labels_and_shapes("0")


def test_a_dead_worker_is_reported(small_db: tuple[Path, list[bytes]],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKERS_ENV, "1")
    net = _data_net(small_db[0], batch=2)
    net.forward()
    pool = net.layers[0].prefetcher._pool
    pool.processes[0].kill()
    pool.processes[0].join()
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        for _ in range(20):  # batches already buffered (at most 4 slots + 3) come first
            net.forward()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_reach_cuda_pinned_and_unchanged(encoded_db: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    on_cpu = _train_batches(encoded_db, "2", monkeypatch)
    torch.manual_seed(1234)
    net = _data_net(encoded_db, batch=5, phase=TRAIN,
                    extra="transform_param { crop_size: 16 mirror: true scale: 0.5 "
                          "mean_value: 10 mean_value: 20 mean_value: 30 }").to("cuda")
    for expected in on_cpu:
        net.forward()
        assert net.blob_data("data").device.type == "cuda"
        np.testing.assert_array_equal(net.blob_data("data").cpu().numpy(), expected["data"])


# -- ImageData ---------------------------------------------------------
def _image_folder(tmp_path: Path, count: int) -> Path:
    folder = tmp_path / "my images"
    folder.mkdir()
    lines = []
    for index in range(count):
        name = f"img {index}.png"  # a space in the name: split at the last space
        cv2.imwrite(str(folder / name), np.full((4, 5, 3), index * 20, np.uint8))
        lines.append(f"my images/{name} {index}\n")
    (tmp_path / "list.txt").write_text("".join(lines))
    return folder


def _image_net(tmp_path: Path, params: str, transform: str = "") -> Net:
    return _net(f'layer {{ name: "data" type: "ImageData" top: "data" top: "label" {transform} '
                f'image_data_param {{ source: "{tmp_path / "list.txt"}" {params} }} }}', TRAIN)


def test_imagedata_shuffles_each_epoch_with_a_seed(tmp_path: Path) -> None:
    _image_folder(tmp_path, 6)
    params = f'root_folder: "{tmp_path}/" batch_size: 3 shuffle: true'
    torch.manual_seed(5)
    epochs = np.concatenate([b["label"] for b in _batches(_image_net(tmp_path, params), 6)])
    epochs = epochs.reshape(3, 6)
    for epoch in epochs:
        assert sorted(epoch) == list(range(6))
    assert len({tuple(epoch) for epoch in epochs}) > 1  # reshuffled at each wrap
    torch.manual_seed(5)
    again = np.concatenate([b["label"] for b in _batches(_image_net(tmp_path, params), 6)])
    np.testing.assert_array_equal(again, epochs.ravel())


def test_imagedata_resize_gray_and_root_folder(tmp_path: Path) -> None:
    _image_folder(tmp_path, 2)
    net = _image_net(tmp_path, f'root_folder: "{tmp_path}/" batch_size: 2 is_color: false '
                               f'new_height: 3 new_width: 7')
    batch = _batches(net, 1)[0]
    assert batch["data"].shape == (2, 1, 3, 7)
    np.testing.assert_array_equal(batch["data"][1], np.full((1, 3, 7), 20))
    # root_folder is prepended as is (Caffe needs its trailing '/'); setup
    # reads the first image to size the tops.
    with pytest.raises(CaffeError, match=re.escape(f"{tmp_path}my images/img 0.png")):
        _image_net(tmp_path, f'root_folder: "{tmp_path}" batch_size: 1')


@pytest.mark.parametrize("params, message", [
    ("new_height: 3", "new_height and new_width must be set together"),
    ("batch_size: 0", "batch_size must be > 0"),
])
def test_imagedata_parameter_errors(tmp_path: Path, params: str, message: str) -> None:
    _image_folder(tmp_path, 1)
    with pytest.raises(CaffeError, match=message):
        _image_net(tmp_path, f'root_folder: "{tmp_path}/" {params}')


# -- seeds from Caffe's global generator ---------------------------------
# set_random_seed seeds Caffe's global mt19937; while a prefetching data layer
# sets up, Caffe draws from it: DataTransformer::InitRand (if the transformer
# needs a generator), the layer's own draws, InitRand again (the seed kept)
# and the prefetch thread's seed. The expected seeds below are read off
# CaffeRNG, an independent replay of that stream.
def _caffe_draws(seed: int, count: int) -> list[int]:
    stream = CaffeRNG(seed)
    return [stream.raw() for _ in range(count)]


def _mirror_coins(seed: int, count: int) -> list[bool]:
    """The mirror coins of a TEST transformer without crop (one Rand(2) per image)."""
    stream = CaffeRNG(seed)
    return [stream.rand(2) == 1 for _ in range(count)]


def _mirrored(data: np.ndarray) -> list[bool]:
    """Which images of a batch of left-to-right ramps were mirrored."""
    return [bool(image[0, 0, 0] > image[0, 0, -1]) for image in data]


def _ramp_db(path: Path, count: int) -> Path:
    """Raw 1×1×4 Datums: Datum i holds 10 i + (0, 1, 2, 3) and label i."""
    with LMDBWriter(path) as writer:
        for index in range(count):
            pixels = (10 * index + np.arange(4)).astype(np.uint8).reshape(1, 1, 4)
            datum = caffe_pb2.Datum(channels=1, height=1, width=4, data=pixels.tobytes(),
                                    label=index)
            writer.put(b"%04d" % index, datum.SerializeToString())
    return path


def _data_layer(name: str, source: Path, transform: str = "") -> str:
    return (f'layer {{ name: "{name}" type: "Data" top: "{name}" top: "{name}_label" '
            f'transform_param {{ {transform} }} data_param {{ source: "{source}" '
            f'batch_size: 8 backend: LMDB }} }}')


def test_data_layers_take_caffes_draws_in_order(tmp_path: Path) -> None:
    source = _ramp_db(tmp_path / "db", 8)
    # Draws 0-2: a's InitRand, InitRand (kept), thread; 3: b's thread (no
    # generator without mirror or a TRAIN crop); 4-6: c's.
    text = "\n".join([_data_layer("a", source, "mirror: true"), _data_layer("b", source),
                      _data_layer("c", source, "mirror: true")])
    set_random_seed(1701)
    net = _net(text, TEST)
    draws = _caffe_draws(1701, 7)
    batch = _batches(net, 1, ("a", "b", "c"))[0]
    assert _mirrored(batch["a"]) == _mirror_coins(draws[1], 8)
    assert not any(_mirrored(batch["b"]))
    assert _mirrored(batch["c"]) == _mirror_coins(draws[5], 8)


def test_imagedata_draws_shuffle_skip_and_transformer_seeds_in_caffes_order(
        tmp_path: Path) -> None:
    lines = []
    for index in range(6):
        cv2.imwrite(str(tmp_path / f"{index}.png"),
                    (10 * index + np.arange(4)).astype(np.uint8).reshape(1, 4))
        lines.append(f"{index}.png {index}\n")
    (tmp_path / "list.txt").write_text("".join(lines))
    set_random_seed(1701)
    net = _image_net(tmp_path, f'root_folder: "{tmp_path}/" batch_size: 3 shuffle: true '
                               f'rand_skip: 4', "transform_param { mirror: true }")
    # Draws 0: InitRand; 1: the shuffle's seed; 2: the skip; 3: InitRand (kept); 4: thread.
    draws = _caffe_draws(1701, 5)
    order = list(range(6))
    CaffeRNG(draws[1]).shuffle(order)
    skip = draws[2] % 4
    batch = _batches(net, 1)[0]
    np.testing.assert_array_equal(batch["label"], order[skip:skip + 3])
    assert _mirrored(batch["data"]) == _mirror_coins(draws[3], 3)


# -- HDF5Data / HDF5Output ---------------------------------------------
def _hdf5_files(tmp_path: Path) -> Path:
    """Two files, 3 and 2 rows; row r of the stream has data r and label 100 + r."""
    names = []
    for index, rows in enumerate((range(0, 3), range(3, 5))):
        name = tmp_path / f"part{index}.h5"
        with h5py.File(name, "w") as handle:
            handle["data"] = np.array([np.full((2, 2), r, np.float64) for r in rows])
            handle["label"] = np.array([100 + r for r in rows], np.int32)
        names.append(str(name))
    (tmp_path / "files.txt").write_text("\n".join(names) + "\n")
    return tmp_path / "files.txt"


def _hdf5_net(source: Path, extra: str = "") -> Net:
    return _net(f'layer {{ name: "h5" type: "HDF5Data" top: "data" top: "label" {extra} '
                f'hdf5_data_param {{ source: "{source}" batch_size: 4 }} }}')


def test_hdf5data_reads_files_in_order_and_wraps(tmp_path: Path) -> None:
    net = _hdf5_net(_hdf5_files(tmp_path))
    assert net.blob_shapes == {"data": (4, 2, 2), "label": (4,)}
    batches = _batches(net, 3)
    rows = [r % 5 for r in range(12)]
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]),
                                  [100 + r for r in rows])
    np.testing.assert_array_equal(np.concatenate([b["data"] for b in batches])[:, 0, 0], rows)


def test_hdf5data_train_shard(tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_layers, "train_shard", lambda: Shard(rank=1, size=2))
    source = _hdf5_files(tmp_path)
    net = _net(f'layer {{ name: "h5" type: "HDF5Data" top: "data" top: "label" '
               f'hdf5_data_param {{ source: "{source}" batch_size: 4 }} }}', TRAIN)
    # Caffe's Skip(): rank 1 of 2 keeps stream offsets 1, 3, 5, 7 (rows wrap at 5).
    np.testing.assert_array_equal(_batches(net, 1)[0]["label"],
                                  [100 + (1 + 2 * j) % 5 for j in range(4)])


def test_hdf5data_errors(tmp_path: Path) -> None:
    source = _hdf5_files(tmp_path)
    with pytest.raises(CaffeError, match="does not transform data"):
        _hdf5_net(source, "transform_param { scale: 2 }")
    with pytest.raises(CaffeError, match="part0.h5: Failed to find HDF5 dataset other"):
        _net(f'layer {{ name: "h5" type: "HDF5Data" top: "other" hdf5_data_param {{ '
             f'source: "{source}" batch_size: 1 }} }}')

def test_hdf5data_shuffle_takes_no_caffe_draw(tmp_path: Path) -> None:
    # Caffe shuffles HDF5 rows with std::random_shuffle (C's rand()), not with its
    # own generator: a Data layer set up after it keeps Caffe's seed (draw 1).
    files = _hdf5_files(tmp_path)
    text = (f'layer {{ name: "h5" type: "HDF5Data" top: "data" top: "label" hdf5_data_param '
            f'{{ source: "{files}" batch_size: 4 shuffle: true }} }}\n'
            + _data_layer("a", _ramp_db(tmp_path / "db", 8), "mirror: true"))
    set_random_seed(1701)
    net = _net(text, TEST)
    draws = _caffe_draws(1701, 2)
    assert _mirrored(_batches(net, 1, ("a",))[0]["a"]) == _mirror_coins(draws[1], 8)


def test_hdf5data_shuffles_rows_as_caffes_random_shuffle_on_glibc_rand(tmp_path: Path) -> None:
    # A fresh Caffe process: C's rand() from glibc's default seed 1, whose
    # first outputs are 1804289383, 846930886, 1681692777, 1714636915,
    # 1957747793. random_shuffle swaps i with rand() % (i + 1), i = 1, 2, ...:
    # files [0, 1] stay (1804289383 % 2 = 1); part0's rows [0, 1, 2] →
    # [1, 0, 2] (846930886 % 2 = 0) → [2, 0, 1] (1681692777 % 3 = 0); at
    # its end part1 is loaded, its rows [0, 1] shuffled at the load
    # (1714636915 % 2 = 1) and as the rows wrap (1957747793 % 2 = 1): both stay.
    C_RAND.srand(1)
    text = (f'layer {{ name: "h5" type: "HDF5Data" top: "data" top: "label" hdf5_data_param '
            f'{{ source: "{_hdf5_files(tmp_path)}" batch_size: 4 shuffle: true }} }}')
    batch = _batches(_net(text), 1)[0]
    np.testing.assert_array_equal(batch["label"], [102, 100, 101, 103])


def test_hdf5output_writes_one_pass(tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    net = _net(f'''
        layer {{ name: "in" type: "Input" top: "x" top: "y"
                 input_param {{ shape {{ dim: 2 dim: 3 }} shape {{ dim: 2 }} }} }}
        layer {{ name: "save" type: "HDF5Output" bottom: "x" bottom: "y"
                 hdf5_output_param {{ file_name: "{out}" }} }}''')
    x, y = torch.arange(6.0).reshape(2, 3), torch.tensor([7.0, 8.0])
    net.set_blob_data("x", x)
    net.set_blob_data("y", y)
    net.forward()
    with h5py.File(out, "r") as handle:
        np.testing.assert_array_equal(handle["data"][()], x.numpy().reshape(2, 3, 1, 1))
        np.testing.assert_array_equal(handle["label"][()], y.numpy().reshape(2, 1, 1, 1))
    with pytest.raises(CaffeError, match="single forward pass"):
        net.forward()


# -- MemoryData --------------------------------------------------------
def _memory_net() -> Net:
    return _net('layer { name: "mem" type: "MemoryData" top: "data" top: "label" '
                'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }')


def test_memorydata_serves_batches_in_order_and_wraps() -> None:
    net = _memory_net()
    assert net.blob_shapes == {"data": (2, 1, 2, 3), "label": (2,)}
    layer = net.layers[0]
    with pytest.raises(CaffeError, match="set_input_arrays"):
        net.forward()
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    labels = np.array([10, 11, 12, 13], np.float32)
    layer.set_input_arrays(data, labels)
    served = _batches(net, 3)
    np.testing.assert_array_equal(served[0]["data"], data[:2])
    np.testing.assert_array_equal(served[1]["label"], labels[2:].reshape(2, 1, 1, 1))
    np.testing.assert_array_equal(served[2]["data"], data[:2])  # wrapped
    data[0] += 100  # pycaffe keeps the array itself: later writes are seen
    net.forward()
    np.testing.assert_array_equal(net.blob_data("data").numpy(), data[2:])
    net.forward()
    np.testing.assert_array_equal(net.blob_data("data").numpy(), data[:2])


@pytest.mark.parametrize("data_shape, labels_shape, message", [
    ((4, 1, 2, 2), (4,), "expected N×1×2×3"),
    ((4, 1, 2, 3), (3,), "one label per image"),
    ((3, 1, 2, 3), (3, 1, 1, 1), "multiple of batch_size 2"),
])
def test_memorydata_input_checks(data_shape: tuple, labels_shape: tuple, message: str) -> None:
    layer = _memory_net().layers[0]
    with pytest.raises(CaffeError, match=message):
        layer.set_input_arrays(np.zeros(data_shape, np.float32), np.zeros(labels_shape))


def test_memorydata_with_a_random_transform_takes_its_transformers_seed(tmp_path: Path) -> None:
    # BaseDataLayer seeds MemoryData's DataTransformer (mirror) with one
    # caffe_rng_rand() draw: the Data layer after it seeds from draw 2, not 1.
    text = ('layer { name: "mem" type: "MemoryData" top: "m" top: "ml" '
            'transform_param { mirror: true } memory_data_param { batch_size: 2 channels: 1 '
            'height: 2 width: 3 } }\n'
            + _data_layer("a", _ramp_db(tmp_path / "db", 8), "mirror: true"))
    set_random_seed(1701)
    net = _net(text, TEST)
    net.layers[0].set_input_arrays(np.zeros((2, 1, 2, 3), np.float32), np.zeros(2))
    draws = _caffe_draws(1701, 3)
    assert _mirrored(_batches(net, 1, ("a",))[0]["a"]) == _mirror_coins(draws[2], 8)


# -- DummyData / WindowData --------------------------------------------
def test_dummydata_fills_constants_once_and_refills_others() -> None:
    net = _net('''layer { name: "d" type: "DummyData" top: "c" top: "g"
                   dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 }
                     data_filler { type: "constant" value: 0.5 }
                     data_filler { type: "gaussian" std: 1 } } }''')
    net.blob_data("c").fill_(7.0)  # never refilled: Caffe's constant tops keep what is written
    first = _batches(net, 1, ("c", "g"))[0]
    second = _batches(net, 1, ("c", "g"))[0]
    np.testing.assert_array_equal(first["c"], np.full((2, 3), 7.0))
    assert first["g"].shape == (4,) and not np.array_equal(first["g"], second["g"])


def test_dummydata_default_filler_and_legacy_dims() -> None:
    net = _net('layer { name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { '
               'num: 2 channels: 3 height: 1 width: 4 width: 5 } }')
    assert net.blob_shapes == {"a": (2, 3, 1, 4), "b": (2, 3, 1, 5)}
    np.testing.assert_array_equal(_batches(net, 1, ("a",))[0]["a"], np.zeros((2, 3, 1, 4)))


@pytest.mark.parametrize("param, message", [
    ("shape { dim: 1 } num: 1 channels: 1 height: 1 width: 1", "Both shape and legacy"),
    ("shape { dim: 1 } data_filler {} data_filler {} data_filler {}", "Number of data fillers"),
    ("shape { dim: 1 } data_filler { type: \"nope\" }", "Unknown filler type: nope"),
])
def test_dummydata_errors(param: str, message: str) -> None:
    with pytest.raises(CaffeError, match=message):
        _net(f'layer {{ name: "d" type: "DummyData" top: "a" top: "b" '
             f'dummy_data_param {{ {param} }} }}')


def test_windowdata_names_its_missing_window_file() -> None:
    with pytest.raises(CaffeError, match="Layer 'win' \\(WindowData\\): Failed to open window "
                                         "file windows.txt"):
        _net('layer { name: "win" type: "WindowData" top: "data" top: "label" '
             'transform_param { crop_size: 8 } '
             'window_data_param { source: "windows.txt" batch_size: 1 } }')

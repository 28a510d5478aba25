"""compute_image_mean against the mean.binaryproto BVLC Caffe computed over
its raw_color_32 LMDB (tests/fixtures/data, copied from golden/data)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from caffe_ft.blobs import blob_proto_to_array, legacy_shape
from caffe_ft.cli import main
from caffe_ft.data.compute_image_mean import channel_means, compute_image_mean
from caffe_ft.data.lmdb_io import LMDBReader, LMDBWriter
from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2
from conftest import golden_db
from caffe_ft.protofile import read_binary

DATA = Path(__file__).parent / "fixtures" / "data"


def write_db(path: Path, values: list[bytes]) -> None:
    with LMDBWriter(path) as writer:
        for index, value in enumerate(values):
            writer.put(b"%08d_item" % index, value)


def test_cli_mean_equals_caffe_mean_file(tmp_path: Path, log_messages: list[str]) -> None:
    out = tmp_path / "mean.binaryproto"
    source = golden_db("raw_color_32", tmp_path)
    assert main(["compute_image_mean", "-backend", "lmdb", str(source), str(out)]) == 0
    ours = read_binary(out, caffe_pb2.BlobProto())
    golden = read_binary(DATA / "mean.binaryproto", caffe_pb2.BlobProto())
    assert legacy_shape(ours) == legacy_shape(golden) == (1, 3, 32, 32)
    assert not ours.HasField("shape")
    # Same float32 arithmetic in the same order as Caffe: bit-identical.
    assert np.array_equal(blob_proto_to_array(ours), blob_proto_to_array(golden))
    assert out.read_bytes() == (DATA / "mean.binaryproto").read_bytes()
    logged = [m for m in log_messages if m.startswith("mean_value channel")]
    expected = blob_proto_to_array(golden)[0].astype(np.float64).mean(axis=(1, 2))
    assert len(logged) == 3
    for channel, (line, value) in enumerate(zip(logged, expected)):
        assert line.startswith(f"mean_value channel [{channel}]: ")
        assert float(line.split(": ")[1]) == pytest.approx(value, rel=1e-5)


def test_channel_means_sum_in_float32_order() -> None:
    mean = np.random.default_rng(0).uniform(0, 255, (2, 5, 7)).astype(np.float32)
    for plane, value in zip(mean, channel_means(mean)):
        total = np.float32(0)
        for element in plane.reshape(-1):
            total = np.float32(total + element)
        assert value == float(total / np.float32(plane.size))


def test_encoded_datums_are_decoded_natively(tmp_path: Path) -> None:
    golden = golden_db("encoded_png_resized", tmp_path)
    with LMDBReader(golden) as reader:
        images = [cv2.imdecode(np.frombuffer(caffe_pb2.Datum.FromString(v).data, np.uint8),
                               cv2.IMREAD_UNCHANGED) for _, v in reader]
    expected = np.mean([image.transpose(2, 0, 1) for image in images], axis=0, dtype=np.float64)
    mean = compute_image_mean(golden)
    assert mean.shape == (3, 24, 20) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, expected, rtol=1e-6)


def test_float_data_datums(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=(2, 3, 4)).astype(np.float32) for _ in range(5)]
    write_db(tmp_path / "db", [caffe_pb2.Datum(channels=2, height=3, width=4,
                                               float_data=a.ravel()).SerializeToString()
                               for a in arrays])
    np.testing.assert_allclose(compute_image_mean(tmp_path / "db"), np.mean(arrays, axis=0),
                               rtol=1e-5, atol=1e-6)


def test_corrupt_record_names_database_and_key(tmp_path: Path) -> None:
    good = caffe_pb2.Datum(channels=1, height=1, width=2, data=b"\x01\x02").SerializeToString()
    write_db(tmp_path / "db", [good, b"\xff\xff\xff"])
    with pytest.raises(CaffeError, match=r"db key 00000001_item: value is not a valid Datum"):
        compute_image_mean(tmp_path / "db")


def test_undecodable_encoded_record_names_key(tmp_path: Path) -> None:
    bad = caffe_pb2.Datum(data=b"not an image", encoded=True).SerializeToString()
    write_db(tmp_path / "db", [bad])
    with pytest.raises(CaffeError, match=r"key 00000000_item: could not decode"):
        compute_image_mean(tmp_path / "db")


def test_size_mismatch_names_key(tmp_path: Path) -> None:
    write_db(tmp_path / "db", [
        caffe_pb2.Datum(channels=1, height=1, width=2, data=b"\x01\x02").SerializeToString(),
        caffe_pb2.Datum(channels=1, height=1, width=3, data=b"\x01\x02\x03").SerializeToString()])
    with pytest.raises(CaffeError, match=r"key 00000001_item: incorrect data field size 3"):
        compute_image_mean(tmp_path / "db")


def test_missing_empty_and_leveldb_inputs(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CaffeError, match="not an LMDB.*does not exist"):
        compute_image_mean(tmp_path / "nowhere")
    write_db(tmp_path / "empty", [])
    with pytest.raises(CaffeError, match="holds no Datums"):
        compute_image_mean(tmp_path / "empty")
    assert main(["compute_image_mean", "-backend=leveldb", str(tmp_path / "empty")]) == 1
    assert "leveldb is not supported" in capsys.readouterr().err


def test_database_held_open_by_a_data_cursor_can_be_read(tmp_path: Path) -> None:
    # py-lmdb refuses a second environment on one database in a process; the
    # tools must share the one a Data layer already holds.
    from caffe_ft.data.db_cursor import DatumCursor
    golden = golden_db("raw_color_32", tmp_path)
    with LMDBReader(golden) as reader:
        count = len(reader)
    cursor = DatumCursor(golden, count)
    cursor.seek(0)
    assert compute_image_mean(golden).shape[0] == 3
    assert cursor.key() == next(iter(LMDBReader(golden)))[0]

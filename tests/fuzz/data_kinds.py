"""Fuzz kinds for data: Datums in an LMDB read by a Data layer, and image
lists read by convert_imageset and by an ImageData layer.

Plugged into the fuzzer by two hooks: fuzz_kinds imports this module (which
registers the kinds with @file_kind) and fuzz_seeds.write_seeds calls
write_data_seeds. The mutants are the fuzzer's own byte and line mutations
of the seeds:
  datum_lmdb         a serialized Datum (raw and PNG-encoded): deleted,
                     duplicated, swapped bytes, truncation, huge varints;
  datum_fields_lmdb  a Datum in text form, so lines and numbers mutate:
                     missing fields, extreme channels/height/width/label;
  image_list         list lines: missing labels, extra tokens, huge labels,
                     missing files, binary junk.
Each check builds what it reads in a folder of its own under the workspace
and removes it, after checking that a build left a complete database or
nothing.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from fuzz_kinds import Workspace, file_kind

from caffe_ft.data.convert_imageset import ConvertOptions, convert_imageset
from caffe_ft.data.lmdb_io import LMDBWriter
from caffe_ft.data.prefetch import WORKERS_ENV
from caffe_ft.net import Net
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text, read_text

RAW_DATUM = "datum.bin"
ENCODED_DATUM = "datum_encoded.bin"
TEXT_DATUM = "datum.prototxt"
FLOAT_DATUM = "datum_float.prototxt"
IMAGE_LIST = "images.txt"
_IMAGES = ("img_a.png", "img_b.jpg", "img_c.png")

# The Data layer reads with a random crop and mirror, so the transformer
# meets every mutated shape; the ImageData layer also resizes.
_DATA_NET = '''layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ crop_size: 1 mirror: true scale: 0.5 }}
  data_param {{ source: "{source}" batch_size: 2 backend: LMDB }} }}'''
_IMAGE_DATA_NET = '''layer {{ name: "data" type: "ImageData" top: "data" top: "label"
  transform_param {{ mirror: true }}
  image_data_param {{ source: "{source}" root_folder: "{root}" batch_size: 3
                     new_height: 6 new_width: 5 }} }}'''


def write_data_seeds(folder: Path) -> None:
    """The Datum seeds, the image list and the images it names."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 4, 5), np.uint8)
    raw = caffe_pb2.Datum(channels=3, height=4, width=5, data=pixels.tobytes(), label=3)
    (folder / RAW_DATUM).write_bytes(raw.SerializeToString())
    png = cv2.imencode(".png", pixels.transpose(1, 2, 0))[1].tobytes()
    encoded = caffe_pb2.Datum(data=png, encoded=True, label=1)
    (folder / ENCODED_DATUM).write_bytes(encoded.SerializeToString())
    # Small text Datums, their pixels letters, so that the line and number
    # mutations land on the fields.
    (folder / TEXT_DATUM).write_text('channels: 1\nheight: 2\nwidth: 3\ndata: "abcdef"\nlabel: 7\n')
    (folder / FLOAT_DATUM).write_text("channels: 2\nheight: 1\nwidth: 2\n" +
                                      "".join(f"float_data: {v}\n" for v in (0.5, -2, 3.25, 8))
                                      + "label: 2\n")
    for index, name in enumerate(_IMAGES):
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (7 + index, 9, 3), np.uint8))
    (folder / IMAGE_LIST).write_text("".join(f"{name} {index}\n"
                                             for index, name in enumerate(_IMAGES)))


@contextmanager
def _scratch(work: Workspace) -> Iterator[Path]:
    """A fresh folder under the workspace, removed afterwards; prefetch runs
    in this process (a worker pool per mutant would cost more than the check)."""
    os.environ[WORKERS_ENV] = "0"
    folder = Path(tempfile.mkdtemp(prefix="data_kind.", dir=work.folder))
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def _forward(text: str) -> None:
    net = Net(parse_text(text, caffe_pb2.NetParameter()), caffe_pb2.TRAIN)
    for _ in range(2):  # the second batch wraps around the one-record database
        net.forward()


def _read_datum(value: bytes, work: Workspace) -> None:
    with _scratch(work) as folder:
        with LMDBWriter(folder / "db") as writer:
            writer.put(b"00000000_mutant", value)
        _forward(_DATA_NET.format(source=folder / "db"))


@file_kind("datum_lmdb", binary=True, seeds=(RAW_DATUM, ENCODED_DATUM))
def check_datum_lmdb(path: Path, work: Workspace) -> None:
    """The mutated bytes as the one value of an LMDB, through a Data layer's forward."""
    _read_datum(path.read_bytes(), work)


@file_kind("datum_fields_lmdb", binary=False, seeds=(TEXT_DATUM, FLOAT_DATUM))
def check_datum_fields_lmdb(path: Path, work: Workspace) -> None:
    """A Datum whose fields were mutated (parsed from text, a syntax error
    being a CaffeError as in any prototxt), through a Data layer's forward."""
    datum = read_text(path, caffe_pb2.Datum(), "Datum")
    _read_datum(datum.SerializeToString(), work)


@file_kind("image_list", binary=False, seeds=(IMAGE_LIST,))
def check_image_list(path: Path, work: Workspace) -> None:
    """convert_imageset, then an ImageData layer's forward, on the mutated list;
    the build leaves a complete database or nothing."""
    root = f"{work.folder}/"
    with _scratch(work) as folder:
        try:
            convert_imageset(root, path, folder / "db", ConvertOptions(
                resize_height=6, resize_width=5, workers=1, shuffle=True, seed=1))
        finally:
            left = os.listdir(folder)
            if left not in ([], ["db"]) or (left and not (folder / "db" / "data.mdb").is_file()):
                raise AssertionError(f"convert_imageset left {left} in {folder}")
    _forward(_IMAGE_DATA_NET.format(source=path, root=root))

"""Faults from outside the program (a damaged database, a missing optional
package, a full disk, a killed build) end in one line naming the file, exit
status 1, and no file left half-written."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from caffe_ft.cli import main
from caffe_ft.data.lmdb_io import LMDBWriter
from caffe_ft.data.partial_db import make_partial, remove_stale_partials
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import write_binary
from conftest import FIXTURES, read_until
from solver_helpers import TINY_NET

REPO = Path(__file__).parent.parent
IMAGES = FIXTURES / "data" / "images"
PAGE = 4096


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "caffe_ft", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _error_lines(stderr: str, action: str) -> list[str]:
    """The CLI's error lines; there is no traceback besides them."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith(f"caffe_ft {action}:")]


def _datum_db(path: Path, records: int) -> None:
    with LMDBWriter(path) as writer:
        for i in range(records):
            pixels = np.full((3, 16, 16), i % 256, np.uint8)
            writer.put(b"%08d" % i, caffe_pb2.Datum(
                channels=3, height=16, width=16, data=pixels.tobytes(),
                label=i % 10).SerializeToString())


def test_a_damaged_lmdb_page_is_one_line_naming_the_database(tmp_path: Path) -> None:
    db = tmp_path / "db"
    _datum_db(db, 200)
    data = db / "data.mdb"
    pages = data.stat().st_size // PAGE
    with open(data, "r+b") as handle:  # a page in the middle: leaf and overflow pages
        handle.seek(pages // 2 * PAGE)
        handle.write(bytes([0x5A]) * PAGE)
    (tmp_path / "net.prototxt").write_text(
        f'layer {{ name: "data" type: "Data" top: "data" top: "label" data_param {{ '
        f'source: "{db}" batch_size: 10 backend: LMDB }} }}\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
        'inner_product_param { num_output: 10 } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }')
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.01 lr_policy: "fixed" max_iter: 40 display: 0 '
        'snapshot_after_train: false')
    before = sorted(os.listdir(db))
    done = _cli("train", "-solver", "solver.prototxt", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    errors = _error_lines(done.stderr, "train")
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith(f"caffe_ft train: Cannot read LMDB {db} (") or \
        errors[0].startswith(f"caffe_ft train: {db} key "), done.stderr
    assert sorted(os.listdir(db)) == before  # read without writing lock.mdb


def test_onnx_export_without_onnx_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # torch.onnx.export itself imports onnx to write the model (not only to
    # check it), so without onnx there is no export at all.
    deploy = TINY_NET.split('layer { name: "loss"')[0]
    (tmp_path / "deploy.prototxt").write_text(deploy)
    write_binary(tmp_path / "w.caffemodel", caffe_pb2.NetParameter())
    monkeypatch.setitem(sys.modules, "onnx", None)
    before = sorted(os.listdir(tmp_path))
    code = main(["export", "-model", str(tmp_path / "deploy.prototxt"), "-weights",
                 str(tmp_path / "w.caffemodel"), "-format", "onnx", "-output",
                 str(tmp_path / "net.onnx")])
    err = capsys.readouterr().err
    assert code == 1
    assert _error_lines(err, "export") == [
        "caffe_ft export: ONNX export needs onnx: pip install 'caffe_ft[onnx]'"]
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("fmt, state", [("BINARYPROTO", ".solverstate"),
                                        ("HDF5", ".solverstate.h5")])
def test_a_full_disk_during_a_snapshot_keeps_no_file_of_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        fmt: str, state: str) -> None:
    (tmp_path / "net.prototxt").write_text(TINY_NET)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 4 display: 0 '
        f'snapshot: 2 snapshot_prefix: "snap" snapshot_format: {fmt}')
    replace = os.replace

    def disk_full_at_the_state(source: str | os.PathLike[str],
                               target: str | os.PathLike[str]) -> None:
        # The model is complete by then; the state's bytes are what no longer fit.
        if os.fspath(target).endswith(state):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(source))
        replace(source, target)

    monkeypatch.setattr(os, "replace", disk_full_at_the_state)
    monkeypatch.chdir(tmp_path)
    code = main(["train", "-solver", "solver.prototxt"])
    err = capsys.readouterr().err
    assert code == 1
    assert _error_lines(err, "train") == [
        f"caffe_ft train: Snapshot at iteration 2 failed: snap_iter_2{state}: No space left on "
        f"device; no file of this snapshot was kept"]
    assert sorted(os.listdir(tmp_path)) == ["net.prototxt", "solver.prototxt"]


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(child) for task in tasks.iterdir()
            for child in (task / "children").read_text().split()]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_killed_build_leaves_no_workers_and_the_next_build_removes_its_folder(
        tmp_path: Path) -> None:
    listing = tmp_path / "big.txt"
    listing.write_text("".join(f"digits/d{i % 40:03d}.png {i % 10}\n" for i in range(40000)))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "caffe_ft", "convert_imageset", "-workers=2", f"{IMAGES}/",
         str(listing), str(out / "db")], stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    seen = read_until(proc, "Processed 1000 files.")  # Datums are being written
    workers = _children(proc.pid)
    assert proc.poll() is None and len(workers) == 2, "".join(seen)
    proc.kill()  # as the OOM killer does: the main process only, no chance to clean up
    proc.wait(timeout=60)
    deadline = time.monotonic() + 20
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_running, workers))
    left = os.listdir(out)
    assert len(left) == 1 and left[0].startswith(".db.") and left[0].endswith(".partial")

    done = _cli("convert_imageset", f"{IMAGES}/", str(IMAGES / "digits.txt"), str(out / "db"))
    assert done.returncode == 0, done.stderr
    assert f"Removed stale partial database {out / left[0]} left by process {proc.pid}" in \
        done.stderr
    assert os.listdir(out) == ["db"]


def test_a_live_runs_partial_folder_is_kept(tmp_path: Path) -> None:
    live = make_partial(tmp_path / "db")
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead = tmp_path / live.name.replace(f".{os.getpid()}-", f".{ended.stdout.strip()}-")
    dead.mkdir()
    (dead / "data.mdb").write_bytes(b"")
    other = tmp_path / ".db2.1-0-0.x.partial"  # another database's folder
    other.mkdir()
    assert remove_stale_partials(tmp_path / "db") == [dead]
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name])


def test_reading_the_fixture_databases_writes_no_lock_file() -> None:
    """Readers open LMDBs without LMDB's lock, which would write lock.mdb
    into the source tree (tests/fixtures) or a read-only dataset."""
    from caffe_ft.data.db_cursor import first_record
    from caffe_ft.data.lmdb_io import LMDBReader
    databases = sorted(path.parent for path in FIXTURES.rglob("data.mdb"))
    assert databases
    locks = {path: path.stat().st_mtime_ns for path in FIXTURES.rglob("lock.mdb")}
    for db in databases:
        assert first_record(str(db))[0] > 0
        with LMDBReader(db) as reader:
            assert sum(1 for _ in reader) == len(reader)
    for db in databases:
        lock = db / "lock.mdb"
        assert (lock in locks and lock.stat().st_mtime_ns == locks[lock]) or \
            not lock.exists(), lock

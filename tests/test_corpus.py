"""The real-world corpus (tests/fixtures/corpus, a copy of the project's
third-party prototxt collection): every file parses and upgrades, fork files
fail with one complete message, and legacy nets upgrade exactly as BVLC
Caffe's upgrade_net_proto_text did (tests/fixtures/upgrade)."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format

from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2
from caffe_ft.upgrade import (
    net_needs_upgrade,
    read_net_text,
    read_solver_text,
    upgrade_net_as_needed,
)

FIXTURES = Path(__file__).parent / "fixtures"
CORPUS = FIXTURES / "corpus"
GOLDEN = FIXTURES / "upgrade"
MANIFEST: list[dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())["files"]

FORK_FILES = [f for f in MANIFEST if f["non_bvlc_fields"]]
NETS = [f for f in MANIFEST if not f["non_bvlc_fields"] and f["kind"] != "solver"]
SOLVERS = [f for f in MANIFEST if not f["non_bvlc_fields"] and f["kind"] == "solver"]


def _ids(entries: list[dict[str, Any]]) -> list[str]:
    return [entry["file"] for entry in entries]


def _read(entry: dict[str, Any]) -> caffe_pb2.NetParameter | caffe_pb2.SolverParameter:
    path = CORPUS / entry["file"]
    return read_solver_text(path) if entry["kind"] == "solver" else read_net_text(path)


def test_corpus_is_complete() -> None:
    on_disk = sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*.prototxt"))
    assert on_disk == sorted(_ids(MANIFEST))
    assert len(FORK_FILES) == 12


@pytest.mark.parametrize("entry", FORK_FILES, ids=_ids(FORK_FILES))
def test_fork_file_fails_naming_every_unknown_field(entry: dict[str, Any]) -> None:
    path = CORPUS / entry["file"]
    with pytest.raises(CaffeError) as err:
        _read(entry)
    message = str(err.value)
    fields = entry["non_bvlc_fields"]
    assert message.startswith(f"{path}: {len(fields)} field(s) not in BVLC caffe.proto")
    lines = path.read_text().splitlines()
    for field in fields:
        found = re.search(re.escape(field) + r" \(line ([\d, ]+)\)", message)
        assert found, f"{field} missing from: {message}"
        # Every line the message gives really holds that field.
        name = field.split(".")[1]
        for number in found.group(1).split(", "):
            assert re.match(rf"\s*{name}\b", lines[int(number) - 1]), (field, number)


@pytest.mark.parametrize("entry", NETS, ids=_ids(NETS))
def test_net_parses_and_upgrades(entry: dict[str, Any]) -> None:
    net = _read(entry)
    assert not net.layers and not net.input and not net.input_dim and not net.input_shape
    # Upgrading is complete: nothing is left to do (bar old BatchNorm specs,
    # which Caffe's check keeps matching by their count).
    if not any(layer.type == "BatchNorm" and len(layer.param) == 3 for layer in net.layer):
        assert not net_needs_upgrade(net)
    expected = Counter(entry["counts"])
    if any(note.startswith("input: legacy") for note in entry["notes"]):
        expected["Input"] += 1
    assert Counter(layer.type for layer in net.layer) == expected


@pytest.mark.parametrize("entry", SOLVERS, ids=_ids(SOLVERS))
def test_solver_parses_and_upgrades(entry: dict[str, Any]) -> None:
    solver = _read(entry)
    assert not solver.HasField("solver_type")
    # The manifest names the type as written: "SGD (default)", "Adam", or
    # "ADAM (deprecated `solver_type` enum)".
    assert solver.type.upper() == entry["solver_type"].split()[0].upper()
    assert solver.lr_policy == entry["lr_policy"]
    assert solver.snapshot_prefix


def test_inline_v1_net_of_the_consolidated_solver_upgrades() -> None:
    entry = next(f for f in MANIFEST if f["fmt"] == "inline net: V1")
    path = CORPUS / entry["file"]
    solver = read_solver_text(path)
    net = caffe_pb2.NetParameter()
    net.CopyFrom(solver.net_param)
    assert net.layers and not net.layer
    assert upgrade_net_as_needed(net, str(path))
    assert not net.layers and not net_needs_upgrade(net)
    assert Counter(layer.type for layer in net.layer) == Counter(entry["counts"])


def test_every_legacy_net_has_a_caffe_upgrade() -> None:
    legacy = {f["file"].replace("/", "__") for f in MANIFEST if f["fmt"] == "V1"}
    assert legacy == {p.name for p in GOLDEN.glob("*.prototxt")}


GOLDEN_FILES = sorted(p.name for p in GOLDEN.glob("*.prototxt"))


@pytest.mark.parametrize("golden", GOLDEN_FILES)
def test_upgrade_equals_caffe_upgrade_net_proto_text(golden: str) -> None:
    corpus_path = {f["file"].replace("/", "__"): f["file"] for f in MANIFEST}[golden]
    expected = text_format.Parse((GOLDEN / golden).read_text(), caffe_pb2.NetParameter())
    assert read_net_text(CORPUS / corpus_path) == expected

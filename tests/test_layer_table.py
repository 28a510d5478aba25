"""docs/layers.md lists exactly the registered layer types, each under the
module that registers it, and together they cover every BVLC Caffe type."""
from __future__ import annotations

import json
import re
from pathlib import Path

from caffe_ft.layers.families import known_types, layer_class
from conftest import FIXTURES

TABLE = Path(__file__).resolve().parent.parent / "docs" / "layers.md"


def table_rows() -> dict[str, str]:
    rows = re.findall(r"^\| (\w+) \| (\w+) \|", TABLE.read_text(), flags=re.M)
    return {kind: module for kind, module in rows if kind != "type"}


def test_table_matches_registry() -> None:
    rows = table_rows()
    assert sorted(rows) == known_types()
    for kind, module in rows.items():
        assert layer_class(kind).__module__ == f"caffe_ft.layers.{module}", kind


def test_every_bvlc_type_is_registered() -> None:
    manifest = json.loads((FIXTURES / "corpus" / "manifest.json").read_text())
    assert sorted(manifest["bvlc_registered_layer_types"]) == known_types()

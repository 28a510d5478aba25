"""docs/pycaffe.md lists every pycaffe name caffe_ft exports, and every public member of
Net, the solvers and Blob, with its support status: the page and the code stay in step."""
from __future__ import annotations

import re

import caffe_ft
from caffe_ft.pycaffe.net import Blob, Net
from caffe_ft.pycaffe.solver import SGDSolver
from conftest import FIXTURES

PAGE = (FIXTURES.parent.parent / "docs" / "pycaffe.md").read_text()
STATUSES = {"supported", "caffe_ft only"}
# Net's own helpers (not pycaffe API).
NET_INTERNALS = {"_attach", "_add_callback", "_around", "_write"}


def _rows(section: str) -> dict[str, str]:
    """`name` → status of the table under the '## section' heading."""
    body = PAGE.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {name: status.strip() for name, status in
            re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", body, re.MULTILINE)}


def _members(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("__")}


def test_every_exported_name_is_listed() -> None:
    rows = _rows("Names")
    assert set(rows) == set(caffe_ft.EXPORTS) | set(caffe_ft.SUBMODULES)
    assert set(rows.values()) <= STATUSES


def test_every_net_solver_and_blob_member_is_listed() -> None:
    for section, cls, internal in (("Net", Net, NET_INTERNALS),
                                   ("Solver (`SGDSolver` and the others)", SGDSolver,
                                    {"_start"}),
                                   ("Blob", Blob, {"_legacy", "_host"})):
        rows = _rows(section)
        assert set(rows) == _members(cls) - internal, section
        assert set(rows.values()) <= STATUSES, section


def test_every_listed_name_resolves() -> None:
    for name in _rows("Names"):
        assert getattr(caffe_ft, name) is not None

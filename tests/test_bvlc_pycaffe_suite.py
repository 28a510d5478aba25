"""BVLC pycaffe's own unit tests (python/caffe/test, tests/fixtures/bvlc_pycaffe_tests) run
against caffe_ft, `import caffe` resolved by the `caffe_ft python` import hook. Real pycaffe
passes all 52 where Graphviz's `dot` is installed (test_draw needs it)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES

SUITE = FIXTURES / "bvlc_pycaffe_tests"
CORPUS = FIXTURES / "corpus"
RUNNER = ("import sys; from caffe_ft.pycaffe.runner import CaffeFinder; "
          "sys.meta_path.insert(0, CaffeFinder()); import pytest; "
          "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '.']))")


def _caffe_tree(root: Path) -> Path:
    """BVLC's layout: python/caffe/test beside models/ and examples/ (BVLC's own nets)."""
    tests = root / "python" / "caffe" / "test"
    shutil.copytree(SUITE, tests, ignore=shutil.ignore_patterns("README.md"))
    for prefix, folder in (("bvlc_", "models"), ("caffe_examples_", "examples")):
        for source in CORPUS.glob(f"{prefix}*"):
            shutil.copytree(source, root / folder / source.name)
    return tests


@pytest.mark.slow
def test_pycaffe_suite_passes(tmp_path: Path) -> None:
    tests = _caffe_tree(tmp_path)
    run = subprocess.run([sys.executable, "-c", RUNNER], cwd=tests, capture_output=True,
                         text=True, timeout=1200)
    summary = run.stdout.strip().splitlines()[-1]
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|error)", summary)}
    passed, failed = counts.get("passed", 0), counts.get("failed", 0) + counts.get("error", 0)
    if shutil.which("dot") is not None:
        assert (passed, failed) == (52, 0), run.stdout[-3000:]
    else:
        # Without Graphviz only test_draw may fail, as it does under real pycaffe.
        failures = re.findall(r"^FAILED (\S+)", run.stdout, re.MULTILINE)
        assert passed >= 51 and all(f.startswith("test_draw.py") for f in failures), \
            run.stdout[-3000:]

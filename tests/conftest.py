from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from caffe_ft.glog import logger
from caffe_ft.parity import parity_flags, using_flags
from solver_helpers import captured_log

FIXTURES = Path(__file__).parent / "fixtures"
TEST_DEVICE_ENV = "CAFFE_FT_TEST_DEVICE"


def _test_device() -> torch.device:
    """Where the golden layer and solver cases compute: the CPU, or the GPU
    when CAFFE_FT_TEST_DEVICE=cuda (tools/gpu_check.sh), so Caffe's own
    outputs check our CUDA kernels too under the same tolerances."""
    name = os.environ.get(TEST_DEVICE_ENV, "cpu")
    if name not in ("cpu", "cuda"):
        raise pytest.UsageError(f"{TEST_DEVICE_ENV}={name!r}: expected 'cpu' or 'cuda'")
    if name == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"{TEST_DEVICE_ENV}=cuda, but torch sees no CUDA device")
    return torch.device(name)


TEST_DEVICE = _test_device()


def golden_db(case: str, tmp_path: Path) -> Path:
    """A copy of Caffe's LMDB for `case` (tests/fixtures/data/lmdb): opening
    an LMDB writes lock.mdb beside it, which must not happen in the repository."""
    copy = tmp_path / "golden" / case
    copy.mkdir(parents=True)
    shutil.copy(FIXTURES / "data" / "lmdb" / case / "data.mdb", copy)
    return copy


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _parity() -> Iterator[None]:
    """Golden tests build Nets directly, and building a Net leaves torch's
    flags alone: every test runs under Caffe's float32 parity explicitly,
    and the flags it found are put back after it."""
    with using_flags(parity_flags(True)):
        yield


@pytest.fixture(autouse=True)
def _drop_cli_log_handlers() -> Iterator[None]:
    """main() points caffe_ft's log at pytest's captured stderr, which is
    closed after the test: later tests must not log to it."""
    before = list(logger.handlers)
    yield
    logger.handlers[:] = before


@pytest.fixture
def log_messages() -> Iterator[list[str]]:
    """The messages caffe_ft logs during the test."""
    with captured_log() as messages:
        yield messages


def read_until(proc: subprocess.Popen[str], text: str) -> list[str]:
    """The lines of a child's stderr up to the first that holds `text` (all
    of them if it ends first)."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            break
    return seen

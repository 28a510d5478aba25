from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from caffe_ft.log import logger
from solver_helpers import captured_log

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


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

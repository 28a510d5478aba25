"""Caffe's glog line format, so BVLC's parse_log.py and old habits keep working:

    I1017 07:36:17.370688 31333 solver.py:228] Iteration 20, lr = 0.01
"""
from __future__ import annotations

import logging
import sys
import threading
import time

LOGGER_NAME = "caffe_ft"
logger = logging.getLogger(LOGGER_NAME)

_LEVEL_LETTER = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W",
                 logging.ERROR: "E", logging.CRITICAL: "F"}


class GlogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.localtime(record.created)
        micros = int((record.created % 1) * 1_000_000)
        thread = threading.get_native_id() % 100000 if record.thread else 0
        prefix = (f"{_LEVEL_LETTER.get(record.levelno, 'I')}"
                  f"{time.strftime('%m%d %H:%M:%S', stamp)}.{micros:06d} {thread:5d} "
                  f"{record.filename}:{record.lineno}] ")
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return prefix + text


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record, so a
    redirected or captured stderr (tests, embedding apps) keeps working."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: int = logging.INFO, stream=None) -> logging.Handler:
    """Send caffe_ft's log to stderr (as glog does) in Caffe's format, once."""
    for handler in logger.handlers:
        if getattr(handler, "_caffe_ft", False):
            handler.setLevel(level)
            return handler
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(GlogFormatter())
    handler.setLevel(level)
    handler._caffe_ft = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(min(level, logger.level or level))
    logger.propagate = False
    return handler

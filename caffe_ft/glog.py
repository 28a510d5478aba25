"""Caffe's glog line format, so BVLC's parse_log.py and old habits keep working:

    I1017 07:36:17.370688 31333 solver.py:228] Iteration 20, lr = 0.01
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

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


class StatusLine:
    """A live line (a progress bar) under the log on an interactive terminal.

    Log records written to the same stream erase it first and draw it again
    after themselves, so log lines stay whole and in order for anyone reading
    the terminal, and a log sent to a file or a pipe never sees it (it is
    only drawn when the stream is a terminal)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._text = ""
        self._shown = False

    def __enter__(self) -> StatusLine:
        if self.enabled:
            _status_lines.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(keep=False)

    def show(self, text: str) -> None:
        if self.enabled:
            self._text = text
            self._draw()

    def close(self, keep: bool) -> None:
        """Stop drawing; `keep` leaves the last text as an ordinary line."""
        if self in _status_lines:
            _status_lines.remove(self)
        if self._shown:
            self.stream.write("\n" if keep else "\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def _erase(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self._shown = False

    def _draw(self) -> None:
        if self._text:
            self.stream.write(f"\r{self._text}\x1b[K")
            self.stream.flush()
            self._shown = True


# The status lines being drawn now (normally one).
_status_lines: list[StatusLine] = []


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record, so a
    redirected or captured stderr (tests, embedding apps) keeps working;
    a status line on that stream is erased around each record."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        lines = [line for line in _status_lines if line.stream is self.stream]
        for line in lines:
            line._erase()
        if not lines and getattr(self.stream, "isatty", lambda: False)():
            # A status line another process draws (this is a data worker, say)
            # is erased too, so the record starts at the left margin.
            self.stream.write("\r\x1b[K")
        super().emit(record)
        for line in lines:
            line._draw()


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

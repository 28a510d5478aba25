"""Progress of a database build: a live bar on a terminal, Caffe's periodic
"Processed N files." log lines when stderr is a file or a pipe."""
from __future__ import annotations

import sys
import time
from typing import TextIO

from caffe_ft.log import logger

# Caffe's convert_imageset logs (and commits) every 1000 written Datums.
LOG_EVERY = 1000
_REDRAW_SECONDS = 0.1
_BAR_WIDTH = 30


class Progress:
    """Counts processed list lines (for the bar's rate and ETA) and written
    Datums (what Caffe's log lines count: skipped images are not files it
    processed)."""

    def __init__(self, total: int, stream: TextIO | None = None,
                 log_every: int = LOG_EVERY) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.log_every = log_every
        self.processed = 0
        self.written = 0
        self._start = time.monotonic()
        self._drawn_at = 0.0
        self._drawn = False

    def advance(self, wrote: bool) -> None:
        self.processed += 1
        self.written += wrote
        if self.tty:
            now = time.monotonic()
            if now - self._drawn_at >= _REDRAW_SECONDS:
                self._draw(now)
        elif wrote and self.written % self.log_every == 0:
            logger.info("Processed %d files.", self.written)

    def clear(self) -> None:
        """Erase the bar so a log line can be printed; the next advance redraws it."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def finish(self) -> None:
        if self.tty:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
        # On a terminal no periodic line was logged, so always log the total.
        if self.tty or self.written % self.log_every:
            logger.info("Processed %d files.", self.written)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.processed / elapsed
        left = (self.total - self.processed) / rate if rate > 0 else 0.0
        filled = _BAR_WIDTH * self.processed // max(self.total, 1)
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        self.stream.write(f"\r[{bar}] {self.processed}/{self.total} {rate:7.1f} img/s "
                          f"ETA {_clock(left)}\x1b[K")
        self.stream.flush()
        self._drawn_at = now
        self._drawn = True


def _clock(seconds: float) -> str:
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"

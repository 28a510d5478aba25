"""Progress of a database build: a live bar on a terminal, Caffe's periodic
"Processed N files." log lines when stderr is a file or a pipe."""
from __future__ import annotations

import time
from typing import TextIO

from caffe_ft.glog import StatusLine, logger
from caffe_ft.progress_bar import bar, clock

# Caffe's convert_imageset logs (and commits) every 1000 written Datums.
LOG_EVERY = 1000
_REDRAW_SECONDS = 0.1


class Progress:
    """Counts processed list lines (for the bar's rate and ETA) and written
    Datums (what Caffe's log lines count: skipped images are not files it
    processed)."""

    def __init__(self, total: int, stream: TextIO | None = None,
                 log_every: int = LOG_EVERY) -> None:
        self.total = total
        self.line = StatusLine(stream)
        self.log_every = log_every
        self.processed = 0
        self.written = 0
        self._start = time.monotonic()
        self._drawn_at = 0.0

    def __enter__(self) -> Progress:
        self.line.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.line.close(keep=False)  # after finish(), nothing is left to erase

    def advance(self, wrote: bool) -> None:
        self.processed += 1
        self.written += wrote
        if self.line.enabled:
            now = time.monotonic()
            if now - self._drawn_at >= _REDRAW_SECONDS:
                self._draw(now)
        elif wrote and self.written % self.log_every == 0:
            logger.info("Processed %d files.", self.written)

    def finish(self) -> None:
        if self.line.enabled:
            self._draw(time.monotonic())
        self.line.close(keep=True)
        # On a terminal no periodic line was logged, so always log the total.
        if self.line.enabled or self.written % self.log_every:
            logger.info("Processed %d files.", self.written)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.processed / elapsed
        left = (self.total - self.processed) / rate if rate > 0 else 0.0
        self.line.show(f"{bar(self.processed, self.total)} {self.processed}/{self.total} "
                       f"{rate:7.1f} img/s ETA {clock(left)}")
        self._drawn_at = now

"""The live training line under Caffe's log on an interactive terminal:

    Iteration 1200/10000 [###...........] 3.41 iter/s, loss 0.2345, ETA 0:43:01

It is drawn on stderr only when stderr is a terminal, and log records erase
it and draw it again after themselves (caffe_ft.glog.StatusLine), so a log
in a file or a pipe (what parse_log.py reads) is exactly Caffe's."""
from __future__ import annotations

import time
from typing import TextIO

from caffe_ft.glog import StatusLine
from caffe_ft.progress_bar import bar, clock

_REDRAW_SECONDS = 0.2


class TrainingProgress:
    def __init__(self, start_iter: int, max_iter: int, stream: TextIO | None = None) -> None:
        self.line = StatusLine(stream)
        self.start_iter = start_iter
        self.max_iter = max_iter
        self._start = time.monotonic()
        self._drawn_at = 0.0

    def __enter__(self) -> TrainingProgress:
        self.line.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        # The log's own lines say where training ended.
        self.line.close(keep=False)

    def update(self, iteration: int, loss: float) -> None:
        """After an update: `iteration` done, `loss` the smoothed display loss."""
        if not self.line.enabled:
            return
        now = time.monotonic()
        if now - self._drawn_at < _REDRAW_SECONDS and iteration < self.max_iter:
            return
        self._drawn_at = now
        rate = (iteration - self.start_iter) / max(now - self._start, 1e-9)
        left = (self.max_iter - iteration) / rate if rate > 0 else 0.0
        self.line.show(f"Iteration {iteration}/{self.max_iter} "
                       f"{bar(iteration, self.max_iter)} {rate:.3g} iter/s, "
                       f"loss {loss:.4g}, ETA {clock(left)}")

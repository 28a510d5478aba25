"""The text of a progress line (caffe_ft.glog.StatusLine draws it): a bar and
an H:MM:SS clock, shared by the database build and the training line."""
from __future__ import annotations

_BAR_WIDTH = 30


def bar(done: int, total: int) -> str:
    filled = _BAR_WIDTH * done // max(total, 1)
    return "[" + "#" * filled + "." * (_BAR_WIDTH - filled) + "]"


def clock(seconds: float) -> str:
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"

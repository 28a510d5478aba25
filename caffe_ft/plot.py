"""Training curves from Caffe logs, drawn to a PNG (what Caffe's
tools/extra/plot_training_log.py shows): the displayed training loss and a
test output (accuracy when the net has one) against the iteration, one line
per log. Drawn with OpenCV, a dependency already, so no plotting library is needed.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from caffe_ft.errors import CaffeError
from caffe_ft.protofile import atomic_write

# The solver's display line and test lines, as Caffe writes them.
_TRAIN_LOSS = re.compile(r"\] Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)$")
_TESTING = re.compile(r"\] Iteration (\d+), Testing net \(#(\d+)\)")
_TEST_OUTPUT = re.compile(r"Test net output #\d+: (\S+) = (\S+)( \(\* .* loss\))?$")

# BGR colours for successive logs, and the canvas layout in pixels.
_COLORS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148)]
_PANEL_W, _PANEL_H, _MARGIN_L, _MARGIN_R, _MARGIN_T, _MARGIN_B = 520, 380, 70, 20, 40, 50
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class LogCurves:
    name: str
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    # "output" or "#net output" (when the solver has several test nets) → points
    test: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    test_losses: set[str] = field(default_factory=set)


def parse_log(path: str | os.PathLike[str]) -> LogCurves:
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        raise CaffeError(f"Cannot read log {os.fspath(path)}: {err.strerror or err}") from None
    curves = LogCurves(Path(path).stem)
    test_iter, test_net = -1, 0
    for line in lines:
        if match := _TRAIN_LOSS.search(line):
            curves.train_loss.append((int(match[1]), float(match[2])))
        elif match := _TESTING.search(line):
            test_iter, test_net = int(match[1]), int(match[2])
        elif (match := _TEST_OUTPUT.search(line)) and test_iter >= 0:
            name = match[1] if test_net == 0 else f"#{test_net} {match[1]}"
            curves.test.setdefault(name, []).append((test_iter, float(match[2])))
            if match[3]:
                curves.test_losses.add(name)
    if not curves.train_loss and not curves.test:
        raise CaffeError(f"{os.fspath(path)}: no 'Iteration N, loss = X' or 'Test net output' "
                         f"lines; is it the log (stderr) of caffe_ft train or Caffe?")
    return curves


def _test_output(curves: Sequence[LogCurves]) -> str | None:
    """The test output to plot: the first accuracy-like one (not a loss)."""
    for log in curves:
        for name in log.test:
            if name not in log.test_losses:
                return name
    return next((name for log in curves for name in log.test), None)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    return [i * step for i in range(math.floor(low / step), math.ceil(high / step) + 1)]


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.0e}"


def _panel(title: str, series: list[tuple[int, list[tuple[int, float]]]]) -> np.ndarray:
    """One chart; each series is (log index, points), coloured by the log index."""
    # A diverged run logs nan or inf: those points have no place on the chart.
    series = [(index, [(x, y) for x, y in line if math.isfinite(y)]) for index, line in series]
    image = np.full((_PANEL_H, _PANEL_W, 3), 255, np.uint8)
    cv2.putText(image, title, (_MARGIN_L, 25), _FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    points = [p for _, line in series for p in line]
    if not points:
        cv2.putText(image, "(no data in the log)", (_MARGIN_L, _PANEL_H // 2), _FONT, 0.5,
                    (90, 90, 90), 1, cv2.LINE_AA)
        return image
    xs = _ticks(0, max(x for x, _ in points))
    ys = _ticks(min(y for _, y in points), max(y for _, y in points))
    left, right = _MARGIN_L, _PANEL_W - _MARGIN_R
    top, bottom = _MARGIN_T, _PANEL_H - _MARGIN_B

    def at(x: float, y: float) -> tuple[int, int]:
        px = left + (x - xs[0]) / (xs[-1] - xs[0]) * (right - left)
        py = bottom - (y - ys[0]) / (ys[-1] - ys[0]) * (bottom - top)
        return int(round(px)), int(round(py))

    for x in xs:
        cv2.line(image, at(x, ys[0]), at(x, ys[-1]), (230, 230, 230), 1)
        text = _label(x)
        cv2.putText(image, text, (at(x, ys[0])[0] - 4 * len(text), bottom + 18), _FONT, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    for y in ys:
        cv2.line(image, at(xs[0], y), at(xs[-1], y), (230, 230, 230), 1)
        cv2.putText(image, _label(y), (4, at(xs[0], y)[1] + 4), _FONT, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (right, bottom), (0, 0, 0), 1)
    cv2.putText(image, "iteration", ((left + right) // 2 - 30, _PANEL_H - 12), _FONT, 0.45,
                (0, 0, 0), 1, cv2.LINE_AA)
    for index, line in series:
        if not line:
            continue
        color = _COLORS[index % len(_COLORS)]
        pixels = np.array([at(x, y) for x, y in line], np.int32).reshape(-1, 1, 2)
        cv2.polylines(image, [pixels], False, color, 2, cv2.LINE_AA)
        for point in pixels[:, 0]:
            cv2.circle(image, tuple(int(v) for v in point), 3, color, -1, cv2.LINE_AA)
    return image


def _legend(names: Sequence[str], width: int) -> np.ndarray:
    """One strip above both panels: a log's colour is the same in each."""
    strip = np.full((28, width, 3), 255, np.uint8)
    x = _MARGIN_L
    for i, name in enumerate(names):
        cv2.line(strip, (x, 14), (x + 24, 14), _COLORS[i % len(_COLORS)], 3)
        cv2.putText(strip, name, (x + 30, 19), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        x += 30 + cv2.getTextSize(name, _FONT, 0.5, 1)[0][0] + 30
    return strip


def plot_logs(logs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str]) -> None:
    """Write the training loss and test curves of these logs side by side."""
    curves = [parse_log(log) for log in logs]
    if len({c.name for c in curves}) < len(curves):
        # Same file names (run1/caffe.log, run2/caffe.log): tell them apart by folder.
        for curve, log in zip(curves, logs):
            curve.name = f"{Path(log).parent.name}/{curve.name}"
    test = _test_output(curves)
    panels = [_panel("training loss", [(i, c.train_loss) for i, c in enumerate(curves)])]
    if test is not None:
        panels.append(_panel(f"test {test}", [(i, c.test.get(test, [])) for i, c in
                                              enumerate(curves)]))
    image = np.hstack(panels)
    image = np.vstack([_legend([c.name for c in curves], image.shape[1]), image])
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise CaffeError(f"OpenCV could not encode the plot for {os.fspath(output)}")
    with atomic_write(output) as handle:
        handle.write(png.tobytes())

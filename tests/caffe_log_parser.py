"""A re-implementation of BVLC Caffe's tools/extra/parse_log.py (with
extract_seconds.py), written from its documented behaviour: the same
regular expressions, the same row logic and the same failure modes (a blank
line after the first "Iteration" line raises IndexError; lines whose glog
date does not parse are skipped). Tests run it on our logs to prove Caffe's
tool reads them.
"""
from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

ITERATION = re.compile(r"Iteration (\d+)")
TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")

# Lines the parser does not read, but the golden comparison does.
DISPLAY_LOSS = re.compile(r"\] Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)$")


def glog_time(line: str, year: int) -> datetime.datetime:
    """The glog timestamp of a line: `Lmmdd HH:MM:SS.micro ...`."""
    fields = line.strip().split()
    month = int(fields[0][1:3])
    day = int(fields[0][3:])
    stamp = fields[1]
    dot = stamp.rfind(".")
    hour, minute, second = (int(part) for part in stamp[:dot].split(":"))
    return datetime.datetime(year, month, day, hour, minute, second, int(stamp[dot + 1:]))


def _add_output(match: re.Match | None, row: dict | None, rows: list[dict], iteration: float,
                seconds: float, rate: float) -> dict | None:
    if match:
        if row is None or row["NumIters"] != iteration:
            if row is not None:
                rows.append(row)
            row = {"NumIters": iteration, "Seconds": seconds, "LearningRate": rate}
        row[match.group(2)] = float(match.group(3))
    if row is not None and rows and len(row) == len(rows[0]):
        rows.append(row)
        row = None
    return row


def parse_log(path: Path) -> tuple[list[dict], list[dict]]:
    """(train rows, test rows), as parse_log.py returns them."""
    year = datetime.datetime.fromtimestamp(os.path.getctime(path)).year
    train_rows: list[dict] = []
    test_rows: list[dict] = []
    train_row = test_row = None
    iteration = -1.0
    rate = float("nan")
    with open(path) as handle:
        start = None
        for line in handle:
            if "Solving" in line:
                start = glog_time(line.strip(), year)
                break
        if start is None:
            raise ValueError(f"{path}: no 'Solving' line")
        last = start
        for line in handle:
            found = ITERATION.search(line)
            if found:
                iteration = float(found.group(1))
            if iteration == -1:
                continue
            try:
                when = glog_time(line, year)
            except ValueError:
                continue
            if when.month < last.month:
                year += 1
                when = glog_time(line, year)
            last = when
            seconds = (when - start).total_seconds()
            found = LEARNING_RATE.search(line)
            if found:
                rate = float(found.group(1))
            train_row = _add_output(TRAIN_OUTPUT.search(line), train_row, train_rows, iteration,
                                    seconds, rate)
            test_row = _add_output(TEST_OUTPUT.search(line), test_row, test_rows, iteration,
                                   seconds, rate)
    for rows in (train_rows, test_rows):
        if len(rows) > 1:
            rows[0]["LearningRate"] = rows[1]["LearningRate"]
    return train_rows, test_rows


def display_losses(text: str) -> dict[int, float]:
    """Iteration → display loss ("Iteration N (...), loss = L" and the final
    "Iteration N, loss = L"), from a log of any glog date format."""
    found: dict[int, float] = {}
    for line in text.splitlines():
        match = DISPLAY_LOSS.search(line)
        if match:
            found[int(match.group(1))] = float(match.group(2))
    return found


"""Benchmark: what drawing Caffe's own numbers costs. Fills blobs of
AlexNet's and VGG16's largest shapes with caffe_ft's fillers (boost's
ziggurat normal and uniform_real in float, draw for draw from Caffe's global
generator) and with torch's own normal_ / uniform_ on the same blob, in one
process, interleaved; prints the median times and their ratio.

    python bench/bench_fillers.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from caffe_ft.fillers import fill  # noqa: E402
from caffe_ft.proto import caffe_pb2  # noqa: E402

SHAPES = {"fc6 of AlexNet": (4096, 9216), "fc6 of VGG16": (4096, 25088),
          "conv of VGG16": (512, 512, 3, 3)}
FILLERS = {
    "gaussian": (caffe_pb2.FillerParameter(type="gaussian", std=0.005),
                 lambda blob: blob.normal_(0.0, 0.005)),
    "xavier": (caffe_pb2.FillerParameter(type="xavier"),
               lambda blob: blob.uniform_(-0.01, 0.01)),
}


def median_seconds(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'blob':16} {'filler':9} {'values':>11} {'caffe_ft s':>11} {'torch s':>9} "
          f"{'ratio':>7} {'ns/value':>9}")
    for where, shape in SHAPES.items():
        blob = torch.empty(shape)
        for kind, (param, torch_fill) in FILLERS.items():
            ours = median_seconds(lambda: fill(blob, param), args.rounds)
            theirs = median_seconds(lambda: torch_fill(blob), args.rounds)
            print(f"{where:16} {kind:9} {blob.numel():>11,} {ours:>11.3f} {theirs:>9.3f} "
                  f"{ours / theirs:>7.1f} {ours / blob.numel() * 1e9:>9.1f}")


if __name__ == "__main__":
    main()

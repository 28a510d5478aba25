"""`caffe_ft time`: per-layer forward and backward times in the words of
Caffe's time tool.

The net keeps blob diffs, so its backward runs layer by layer as Caffe's
does, from the diffs the layers above produced; a hook around each layer's
forward and backward adds up its time.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

from caffe_ft.glog import logger
from caffe_ft.net import Net


class LayerTimes:
    """Milliseconds per layer and direction, summed over the timed passes."""

    def __init__(self, count: int, device: torch.device) -> None:
        self.device = device
        self.ms = {"forward": [0.0] * count, "backward": [0.0] * count}

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, index: int, direction: str) -> Iterator[None]:
        start = self.now()
        yield
        self.ms[direction][index] += (self.now() - start) * 1000


def time_net(net: Net, iterations: int, device: torch.device) -> None:
    net.keep_blob_diffs = True
    logger.info("Performing Forward")
    loss = net.forward()
    logger.info("Initial loss: %g", loss.item())
    logger.info("Performing Backward")
    net.backward()
    # A timed pass pays one-time costs of its own on its first run (a 20×
    # slower first iteration); keep them out of the times.
    warmup = LayerTimes(len(net.layers), device)
    net.forward(hook=warmup)
    net.backward(hook=warmup)
    times = LayerTimes(len(net.layers), device)
    forward_total = backward_total = 0.0
    logger.info("*** Benchmark begins ***")
    logger.info("Testing for %d iterations.", iterations)
    total_start = times.now()
    for j in range(iterations):
        iteration_start = times.now()
        net.forward(hook=times)
        backward_start = times.now()
        forward_total += (backward_start - iteration_start) * 1000
        net.backward(hook=times)
        end = times.now()
        backward_total += (end - backward_start) * 1000
        logger.info("Iteration: %d forward-backward time: %g ms.", j + 1,
                    (end - iteration_start) * 1000)
    total = (times.now() - total_start) * 1000
    runs = max(iterations, 1)
    logger.info("Average time per layer: ")
    for i, name in enumerate(net.layer_names):
        logger.info("%10s\tforward: %g ms.", name, times.ms["forward"][i] / runs)
        logger.info("%10s\tbackward: %g ms.", name, times.ms["backward"][i] / runs)
    logger.info("Average Forward pass: %g ms.", forward_total / runs)
    logger.info("Average Backward pass: %g ms.", backward_total / runs)
    logger.info("Average Forward-Backward: %g ms.", total / runs)
    logger.info("Total Time: %g ms.", total)
    logger.info("*** Benchmark ends ***")

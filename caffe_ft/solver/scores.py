"""Scoring a net over test batches, as Caffe's Solver::Test and `caffe test`
do: the loss and every element of every output blob summed over batches in
float32, then divided by the batch count, and logged with the loss weight
each output carries."""
from __future__ import annotations

import numpy as np
import torch

from caffe_ft.net import Net

f32 = np.float32


def loss_suffix(weight: float, value: np.float32) -> str:
    """Caffe's " (* w = w·v loss)" after an output that carries a loss weight."""
    return f" (* {weight:g} = {f32(weight) * value:g} loss)" if weight else ""


def output_values(net: Net) -> list[tuple[str, np.float32]]:
    """Every element of every output blob of the last forward, in output order."""
    return [(name, element) for name, value in net.outputs().items()
            for element in value.detach().reshape(-1).cpu().numpy().astype(np.float32)]


class Scores:
    """The running sums of one test, kept where the net computes: a test
    batch then never waits for the one before it to reach the host. They are
    float32 adds in batch order either way, so the means are Caffe's."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self._loss: torch.Tensor | None = None
        self._sums: dict[str, torch.Tensor] = {}  # output → its elements' sums

    def add(self, loss: torch.Tensor | None) -> None:
        """Count the batch the net just ran (`loss`: what its forward returned,
        None when the loss is not computed)."""
        for name, value in self.net.outputs().items():
            flat = value.detach().reshape(-1).float()
            total = self._sums.get(name)
            # The first batch is copied: an output may be a blob the next batch overwrites.
            self._sums[name] = flat.clone() if total is None else total + flat
        if loss is not None:
            loss = loss.detach().float()
            self._loss = loss if self._loss is None else self._loss + loss

    def mean_loss(self, iterations: int) -> np.float32:
        total = f32(0) if self._loss is None else f32(self._loss.item())
        return total / f32(iterations) if iterations else total

    def means(self, iterations: int) -> list[tuple[str, np.float32, float]]:
        """(output, mean over `iterations` batches, its loss weight) per output element."""
        return [(name, total / f32(iterations), self.net.loss_weight.get(name, 0.0))
                for name, sums in self._sums.items()
                for total in sums.cpu().numpy().astype(np.float32)]

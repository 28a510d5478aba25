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
    """The running sums of one test."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.loss = f32(0)
        self.batches = 0
        self._names: list[str] = []
        self._sums: np.ndarray | None = None

    def add(self, loss: torch.Tensor | None) -> list[tuple[str, np.float32]]:
        """Count the batch the net just ran (`loss`: what its forward returned,
        None when the loss is not computed); returns the batch's output values."""
        values = output_values(self.net)
        batch = np.array([value for _, value in values], dtype=np.float32)
        self._names = [name for name, _ in values]
        self._sums = batch if self._sums is None else self._sums + batch
        if loss is not None:
            self.loss += f32(loss.item())
        self.batches += 1
        return values

    def mean_loss(self, iterations: int) -> np.float32:
        return self.loss / f32(iterations) if iterations else self.loss

    def means(self, iterations: int) -> list[tuple[str, np.float32, float]]:
        """(output, mean over `iterations` batches, its loss weight) per output element."""
        sums = self._sums if self._sums is not None else []
        return [(name, total / f32(iterations), self.net.loss_weight.get(name, 0.0))
                for name, total in zip(self._names, sums)]

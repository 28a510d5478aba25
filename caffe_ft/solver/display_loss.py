"""The loss a Solver displays: Caffe's smoothed loss (UpdateSmoothedLoss),
fed from iteration losses that stay on the device until someone looks.

Reading a loss makes the host wait for the device, so the losses of
iterations that display nothing are kept as tensors and read in one
transfer when the smoothed value is shown, asked for, or when too many are
waiting. On a GPU, a step() call that ends between displays leaves its
losses pending: a pycaffe loop of `solver.step(1)` then never waits for the
device on its own, and a non-finite loss is reported at the next read. On
the CPU a read waits for nothing, so each call's losses are read as it ends.
Each pending loss folds into the smoothed loss of the step() call that made
it, so the values are Caffe's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from caffe_ft.solver.divergence import DivergenceWatch

f32 = np.float32

# Without display, pending losses are still read now and then so the list
# stays small; one wait per this many iterations costs nothing measurable.
MAX_PENDING = 256


class SmoothedLoss:
    """The display loss: mean of the last `average_loss` iteration losses,
    kept as Caffe's UpdateSmoothedLoss keeps it (running mean while the
    window fills, then a ring buffer with incremental updates)."""

    def __init__(self, average_loss: int) -> None:
        self.average_loss = average_loss
        self.losses: list[np.float32] = []
        self.value = f32(0)

    def update(self, loss: np.float32, index: int) -> None:
        if len(self.losses) < self.average_loss:
            self.losses.append(loss)
            size = len(self.losses)
            self.value = (self.value * f32(size - 1) + loss) / f32(size)
        else:
            slot = index % self.average_loss
            self.value += (loss - self.losses[slot]) / f32(self.average_loss)
            self.losses[slot] = loss


@dataclass(frozen=True)
class _Pending:
    smoothed: SmoothedLoss  # the step() call's display loss it folds into
    index: int  # its iteration's index in that call: Caffe's ring-buffer slot
    iteration: int
    loss: torch.Tensor


class DisplayLoss:
    """The smoothed loss of the current step() call and the losses still on
    the device. `divergence` looks at every loss as it is read; `lazy`: a
    step() call's last losses may stay pending after it (a device that
    makes the host wait for a read)."""

    def __init__(self, average_loss: int, divergence: DivergenceWatch, lazy: bool) -> None:
        self.average_loss = average_loss
        self.divergence = divergence
        self.lazy = lazy
        self._smoothed = SmoothedLoss(average_loss)
        self._pending: list[_Pending] = []

    def start_step(self) -> None:
        """Caffe's Step starts its smoothed loss afresh; losses still pending
        from the last call fold into that call's, when they are read."""
        self._smoothed = SmoothedLoss(self.average_loss)

    def end_step(self) -> None:
        if not self.lazy:
            self.read()  # with -stop_on_nan nothing is pending here: no stop to report

    def add(self, index: int, iteration: int, loss: torch.Tensor) -> None:
        self._pending.append(_Pending(self._smoothed, index, iteration, loss))

    @property
    def due(self) -> bool:
        """Too many losses wait: read them now, to bound the list."""
        return len(self._pending) >= MAX_PENDING

    def read(self) -> bool:
        """Bring the pending losses to the host in one transfer and fold them
        in, in iteration order. True when the divergence watch stops the run."""
        if not self._pending:
            return False
        values = torch.stack([p.loss for p in self._pending]).cpu().numpy()
        stop = self.divergence.check([p.iteration for p in self._pending], values)
        for pending, value in zip(self._pending, values):
            pending.smoothed.update(f32(value), pending.index)
        self._pending.clear()
        return stop

    @property
    def value(self) -> np.float32:
        """The current step() call's smoothed loss, up to its last iteration
        (a wait for the device when losses are pending)."""
        self.read()
        return self._smoothed.value

    def update(self, loss: np.float32, index: int) -> None:
        """Fold in a loss read on the host (Solve's last, display-only forward)."""
        self.read()
        self._smoothed.update(loss, index)

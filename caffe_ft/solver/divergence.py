"""Noticing a run that diverged: the first iteration whose loss is NaN or
infinite gets one warning (Caffe says nothing and trains on in NaN), and with
-stop_on_nan the solver stops there.

The watch only looks at losses the solver has already brought to the host
(for the display, the progress line or its periodic read), so it adds no
device wait; -stop_on_nan reads every iteration's loss to stop at once.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from caffe_ft.glog import logger


def _alone(diverged: bool) -> bool:
    return diverged


class DivergenceWatch:
    def __init__(self, stop: bool = False) -> None:
        self.stop = stop
        self.first_iteration: int | None = None  # the first non-finite loss seen
        # With `stop`, called at every check with whether this process's run
        # diverged; answers whether to stop. Data-parallel ranks answer
        # together, so all stop at the same iteration.
        self.agree: Callable[[bool], bool] = _alone

    def check(self, iterations: Sequence[int], losses: np.ndarray) -> bool:
        """Look at the losses of these iterations; warn at the first
        non-finite one. True when the run should stop (with `stop` only)."""
        diverged = self.first_iteration is not None or self._first_bad(iterations, losses)
        if not self.stop:
            return False
        stopping = self.agree(diverged)
        if stopping and not diverged:
            logger.warning("Iteration %d: the loss of another rank is not finite; stopping "
                           "(-stop_on_nan)", iterations[-1])
        return stopping

    def _first_bad(self, iterations: Sequence[int], losses: np.ndarray) -> bool:
        bad = np.flatnonzero(~np.isfinite(losses))
        if not bad.size:
            return False
        self.first_iteration = iterations[int(bad[0])]
        logger.warning("Iteration %d, loss = %g: the loss is not finite, training has "
                       "diverged (is base_lr too high, or negative?)%s",
                       self.first_iteration, losses[bad[0]],
                       "; stopping (-stop_on_nan)" if self.stop else
                       "; -stop_on_nan stops the run here")
        return True

"""What the solver does on SIGINT and SIGHUP (Caffe's SignalHandler and
SolverAction): the handlers only record the signal; the solver asks after
every update and before every test batch, so a run stops or snapshots
between iterations and never mid-write."""
from __future__ import annotations

import enum
import signal
from collections.abc import Callable
from types import FrameType

from caffe_ft.errors import CaffeError


class SolverAction(enum.IntEnum):
    NONE = 0
    STOP = 1      # stop training; snapshot_after_train still snapshots
    SNAPSHOT = 2  # snapshot and keep training


ActionRequest = Callable[[], SolverAction]


def action_from_flag(value: str) -> SolverAction:
    """-sigint_effect / -sighup_effect value → action."""
    actions = {"stop": SolverAction.STOP, "snapshot": SolverAction.SNAPSHOT,
               "none": SolverAction.NONE}
    if value not in actions:
        raise CaffeError(f'Invalid signal effect "{value}" was specified (use stop, snapshot '
                         f'or none)')
    return actions[value]


class SignalHandler:
    """Installs SIGINT/SIGHUP handlers for its lifetime (a context manager);
    `check` is the solver's action request."""

    def __init__(self, sigint_effect: SolverAction, sighup_effect: SolverAction) -> None:
        self.sigint_effect = sigint_effect
        self.sighup_effect = sighup_effect
        self._got_sigint = False
        self._got_sighup = False
        self._previous: dict[int, object] = {}

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self._got_sigint = True

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self._got_sighup = True

    def __enter__(self) -> SignalHandler:
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        if hasattr(signal, "SIGHUP"):  # absent on Windows
            self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_sighup)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def check(self) -> SolverAction:
        """One pending signal's action, SIGHUP first (as Caffe); each
        signal is reported once."""
        if self._got_sighup:
            self._got_sighup = False
            return self.sighup_effect
        if self._got_sigint:
            self._got_sigint = False
            return self.sigint_effect
        return SolverAction.NONE

"""Caffe's solvers: learning-rate policies, update rules, regularization,
the training loop with tests, display and snapshots, and solver state IO."""
from caffe_ft.solver.signals import SignalHandler, SolverAction
from caffe_ft.solver.solver import Solver

__all__ = ["SignalHandler", "Solver", "SolverAction"]

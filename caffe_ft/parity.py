"""Float32 parity mode: compute as Caffe's CPU/GPU float32 code does, so
training runs stay within the golden tolerances.

Parity turns off TF32 on CUDA, and oneDNN (mkldnn) on CPU, whose
convolution weight gradient carries ~6x the float error of Caffe's im2col +
GEMM route; over a training run that compounds past Caffe's tolerances
(golden solver case sgd_clip_gradients). Opting out (CAFFE_FT_PARITY=0, or
a fast precision: caffe_ft.solver.precision) trades that for speed.

Nothing here runs on import or when a Net is built: torch's flags are the
process's, so only code that owns a run sets them. The CLI sets them for its
action; a Solver sets them around each step and test and puts the caller's
back after (a pycaffe loop of solver.step() calls sees its own flags between
them); set_parity_mode sets them for the rest of the process.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

PARITY_ENV = "CAFFE_FT_PARITY"


@dataclass(frozen=True)
class TorchFlags:
    """The process-wide torch switches that change float32 results or speed."""
    mkldnn: bool
    matmul_tf32: bool
    cudnn_tf32: bool
    cudnn_benchmark: bool

    @classmethod
    def current(cls) -> TorchFlags:
        return cls(torch.backends.mkldnn.enabled, torch.backends.cuda.matmul.allow_tf32,
                   torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)

    def apply(self) -> None:
        torch.backends.mkldnn.enabled = self.mkldnn
        torch.backends.cuda.matmul.allow_tf32 = self.matmul_tf32
        torch.backends.cudnn.allow_tf32 = self.cudnn_tf32
        torch.backends.cudnn.benchmark = self.cudnn_benchmark


def default_parity() -> bool:
    """Parity unless the environment opts out (CAFFE_FT_PARITY=0)."""
    return os.environ.get(PARITY_ENV, "1") != "0"


def parity_flags(on: bool) -> TorchFlags:
    """Parity's flags (no oneDNN, no TF32, no autotuning), or torch's fast
    float32 ones (oneDNN and TF32 on)."""
    return TorchFlags(mkldnn=not on, matmul_tf32=not on, cudnn_tf32=not on,
                      cudnn_benchmark=False)


def set_parity_mode(on: bool) -> None:
    """Parity on or off for the rest of the process."""
    parity_flags(on).apply()


@contextmanager
def using_flags(flags: TorchFlags) -> Iterator[None]:
    """`flags` inside the block, the caller's flags again after it."""
    saved = TorchFlags.current()
    flags.apply()
    try:
        yield
    finally:
        saved.apply()

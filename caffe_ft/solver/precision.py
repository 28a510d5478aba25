"""How a Solver computes: float32 parity with Caffe (the default), or an
opt-in fast mode (TF32, or bf16/fp16 autocast) with channels_last and cuDNN
autotuning on CUDA. The weights, the solver's history and the update stay
float32 in every mode, so snapshots are float32 caffemodels; fp16 scales
the loss (torch.amp.GradScaler's rule) and unscales the diffs before
Caffe's update."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from caffe_ft.errors import CaffeError
from caffe_ft.parity import TorchFlags, default_parity, parity_flags

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    name: str = "fp32"
    device_type: str = "cpu"

    def __post_init__(self) -> None:
        if self.name not in PRECISIONS:
            raise CaffeError(f"Unknown precision: {self.name} (known: {', '.join(PRECISIONS)})")

    @property
    def parity(self) -> bool:
        return self.name == "fp32" and default_parity()

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _AUTOCAST.get(self.name)

    @property
    def fast_cuda(self) -> bool:
        """channels_last and cudnn.benchmark: CUDA fast modes only (on CPU
        channels_last convolutions are slower, and there is no cuDNN)."""
        return self.name != "fp32" and self.device_type == "cuda"

    def flags(self) -> TorchFlags:
        if self.name == "fp32":
            return parity_flags(self.parity)
        return TorchFlags(mkldnn=True, matmul_tf32=True, cudnn_tf32=True,
                          cudnn_benchmark=self.fast_cuda)

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=dtype)

    def describe(self) -> str:
        """The start-of-run log line's words."""
        if self.name == "fp32":
            return "fp32 parity" if self.parity else "fp32 (oneDNN, TF32)"
        words = [f"{self.name} (autocast)" if self.autocast_dtype else self.name]
        if self.fast_cuda:
            words += ["channels_last", "cudnn.benchmark"]
        return ", ".join(words)


class LossScaler:
    """fp16's dynamic loss scale, with torch.amp.GradScaler's defaults:
    start at 2^16, halve and skip the update when a diff is not finite,
    double after 2000 clean steps. Reading the check waits for the device
    once per iteration (as GradScaler.step does)."""

    def __init__(self, scale: float = 2.0 ** 16, growth_interval: int = 2000) -> None:
        self.scale = scale
        self.growth_interval = growth_interval
        self._clean_steps = 0

    def unscale(self, grads: list[torch.Tensor]) -> bool:
        """Divide the diffs by the scale; True when all are finite (the
        update may go ahead)."""
        if not grads:
            return True
        found_inf = torch.zeros(1, device=grads[0].device)
        inv_scale = torch.full((1,), 1.0 / self.scale, device=grads[0].device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)
        finite = not bool(found_inf.item())
        if finite:
            self._clean_steps += 1
            if self._clean_steps == self.growth_interval:
                self.scale *= 2.0
                self._clean_steps = 0
        else:
            self.scale /= 2.0
            self._clean_steps = 0
        return finite

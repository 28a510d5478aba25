"""The opt-in fast modes: their words in the log, their flags, autocast on a
CPU run, fp16's loss scale, and torch.compile's run against eager's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_ft.errors import CaffeError
from caffe_ft.parity import TorchFlags
from caffe_ft.solver.precision import LossScaler, Precision
from solver_helpers import captured_log, make_solver


def test_modes_describe_themselves() -> None:
    assert Precision("fp32", "cuda").describe() == "fp32 parity"
    assert Precision("bf16", "cuda").describe() == \
        "bf16 (autocast), channels_last, cudnn.benchmark"
    assert Precision("bf16", "cpu").describe() == "bf16 (autocast)"
    assert Precision("tf32", "cuda").flags().matmul_tf32


def test_unknown_precision_is_an_error() -> None:
    with pytest.raises(CaffeError, match="Unknown precision: fp8"):
        Precision("fp8")


def test_solve_logs_the_mode_and_bf16_trains_on_cpu() -> None:
    solver = make_solver("max_iter: 4", precision="bf16")
    seen: list[torch.dtype] = []
    solver.start_hooks.append(lambda s: seen.append(torch.get_autocast_dtype("cpu")))
    with captured_log() as messages:
        solver.solve()
    assert "Precision: bf16 (autocast)" in messages
    assert np.isfinite(solver.display_loss.value)
    # The weights and history stay float32: snapshots are float32 caffemodels.
    assert all(p.blob.dtype == torch.float32 for p in solver.params)


def test_default_solve_logs_parity() -> None:
    with captured_log() as messages:
        make_solver("max_iter: 1").solve()
    assert "Precision: fp32 parity" in messages


def test_fp16_scaler_skips_overflow_and_backs_off() -> None:
    scaler = LossScaler(scale=8.0, growth_interval=2)
    grads = [torch.tensor([8.0, 16.0])]
    assert scaler.unscale(grads)
    torch.testing.assert_close(grads[0], torch.tensor([1.0, 2.0]))
    assert scaler.unscale([torch.tensor([1.0])]) and scaler.scale == 16.0
    assert not scaler.unscale([torch.tensor([float("inf")])]) and scaler.scale == 8.0


def test_compiled_forward_follows_eager_losses() -> None:
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is unavailable")
    losses = {}
    for compile in (False, True):
        solver = make_solver("max_iter: 5", compile=compile)
        record: list[float] = []
        original = solver._forward_backward

        def recording() -> torch.Tensor:
            loss = original()
            record.append(float(loss))
            return loss
        solver._forward_backward = recording  # type: ignore[method-assign]
        try:
            solver.step(5)
        except Exception as error:  # no C++ compiler or backend here
            if compile and "compile" in type(error).__module__ + str(error).lower():
                pytest.skip(f"torch.compile cannot run here: {error}")
            raise
        losses[compile] = record
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5, atol=1e-6)


def test_fast_mode_flags_hold_only_inside_the_step() -> None:
    before = TorchFlags.current()
    solver = make_solver("max_iter: 2", precision="tf32")
    inside: list[TorchFlags] = []
    solver.start_hooks.append(lambda s: inside.append(TorchFlags.current()))
    solver.step(1)
    assert inside == [Precision("tf32").flags()]
    assert TorchFlags.current() == before

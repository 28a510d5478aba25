"""Torch's process-wide flags belong to whoever runs: importing caffe_ft or
building a Net leaves them alone; a Solver sets its own around each step and
puts the caller's back."""
from __future__ import annotations

import subprocess
import sys

import torch

from caffe_ft.net import Net
from caffe_ft.parity import TorchFlags, parity_flags, set_parity_mode, using_flags
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import parse_text
from solver_helpers import TINY_NET, make_solver

# Not torch's defaults and not parity's: any write by caffe_ft would show.
UNUSUAL = TorchFlags(mkldnn=False, matmul_tf32=True, cudnn_tf32=False, cudnn_benchmark=True)

FLAGS_PROBE = ("import torch; f = lambda: (torch.backends.mkldnn.enabled, "
               "torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32); "
               "before = f(); import caffe_ft, caffe_ft.net, caffe_ft.solver; "
               "print(before == f())")


def test_importing_caffe_ft_changes_no_flag() -> None:
    out = subprocess.run([sys.executable, "-c", FLAGS_PROBE], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "True"


def test_building_a_net_changes_no_flag() -> None:
    with using_flags(UNUSUAL):
        Net(parse_text(TINY_NET, caffe_pb2.NetParameter()), caffe_pb2.TRAIN)
        assert TorchFlags.current() == UNUSUAL
        assert torch.backends.mkldnn.enabled is False


def test_solver_steps_under_parity_and_restores_the_callers_flags() -> None:
    seen: list[TorchFlags] = []
    with using_flags(UNUSUAL):
        solver = make_solver()
        assert TorchFlags.current() == UNUSUAL
        solver.start_hooks.append(lambda s: seen.append(TorchFlags.current()))
        solver.step(2)
        assert TorchFlags.current() == UNUSUAL
    assert seen == [parity_flags(True)] * 2


def test_set_parity_mode_is_process_wide_until_changed() -> None:
    with using_flags(UNUSUAL):
        set_parity_mode(False)
        assert torch.backends.mkldnn.enabled and torch.backends.cuda.matmul.allow_tf32
        set_parity_mode(True)
        assert TorchFlags.current() == parity_flags(True)

"""Training throughput (images/s) of caffe_ft against handwritten PyTorch
modules of the same nets, in one process: parity (fp32) against a fp32
module under the same flags, and caffe_ft -precision bf16 against a bf16
autocast + channels_last module. Nets: Caffe's GoogLeNet and CaffeNet
train_val (Data layers replaced by Input layers fed one random batch).

    python bench/bench_gpu.py [--batches 32 128] [--steps 20]
    python bench/bench_gpu.py --smoke      # tiny sizes, runs on CPU

Not yet here: VGG16 and ResNet-50, and LMDB-fed against Input-fed.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import (  # noqa: E402
    BASE_LR, CORPUS, GoogLeNet, torch_step, with_inputs)

from caffe_ft.glog import setup_logging  # noqa: E402
from caffe_ft.parity import using_flags  # noqa: E402
from caffe_ft.proto import caffe_pb2  # noqa: E402
from caffe_ft.solver import Solver  # noqa: E402
from caffe_ft.solver.precision import Precision  # noqa: E402
from caffe_ft.upgrade import read_net_text  # noqa: E402


class CaffeNet(nn.Module):
    """bvlc_reference_caffenet: conv-pool-LRN ×2, three convs, three fc with dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.fc6, self.fc7, self.fc8 = nn.Linear(9216, 4096), nn.Linear(4096, 4096), \
            nn.Linear(4096, 1000)
        for layer in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5):
            nn.init.normal_(layer.weight, std=0.01)
        for layer in (self.fc6, self.fc7):
            nn.init.normal_(layer.weight, std=0.005)
        nn.init.normal_(self.fc8.weight, std=0.01)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        pool = lambda t: F.max_pool2d(t, 3, 2, ceil_mode=True)  # noqa: E731
        lrn = lambda t: F.local_response_norm(t, 5, 1e-4, 0.75)  # noqa: E731
        x = lrn(pool(F.relu(self.conv1(x))))
        x = lrn(pool(F.relu(self.conv2(x))))
        x = F.relu(self.conv4(F.relu(self.conv3(x))))
        x = pool(F.relu(self.conv5(x))).flatten(1)
        x = F.dropout(F.relu(self.fc6(x)), 0.5, self.training)
        x = F.dropout(F.relu(self.fc7(x)), 0.5, self.training)
        return F.cross_entropy(self.fc8(x), label)


NETS = {
    "googlenet": (CORPUS / "bvlc_googlenet" / "train_val.prototxt", GoogLeNet),
    "caffenet": (CORPUS / "bvlc_reference_caffenet" / "train_val.prototxt", CaffeNet),
}


def ours(prototxt: Path, data: torch.Tensor, label: torch.Tensor, precision: str
         ) -> Callable[[], None]:
    param = caffe_pb2.SolverParameter(
        base_lr=BASE_LR, momentum=0.9, weight_decay=0.0002, lr_policy="fixed",
        max_iter=10**9, display=0, random_seed=1, snapshot_after_train=False)
    param.net_param.CopyFrom(with_inputs(read_net_text(prototxt), tuple(data.shape)))
    solver = Solver(param, device=data.device, precision=precision)
    solver.net.set_blob_data("data", data)
    solver.net.set_blob_data("label", label.float())
    return lambda: solver.step(1)


def theirs(module: nn.Module, data: torch.Tensor, label: torch.Tensor, precision: Precision
           ) -> Callable[[], None]:
    if precision.fast_cuda:
        module, data = module.to(memory_format=torch.channels_last), \
            data.contiguous(memory_format=torch.channels_last)
    step = torch_step(module.to(data.device), data, label)

    def run() -> None:
        with using_flags(precision.flags()), precision.autocast():
            step()
    return run


def images_per_second(step: Callable[[], None], batch: int, steps: int,
                      device: torch.device) -> float:
    step()  # warm-up: allocation, autotuning
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", choices=sorted(NETS), default=sorted(NETS))
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="batch 2, 1 step, on CPU")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    batches, steps = ([2], 1) if args.smoke else (args.batches, args.steps)
    setup_logging(level=40)
    print(f"torch {torch.__version__} on {device}; images/s, ratio = caffe_ft / handwritten")
    print(f"{'net':<10} {'batch':>5} {'mode':<5} {'caffe_ft':>9} {'torch':>9} {'ratio':>6}")
    for name in args.nets:
        prototxt, module_class = NETS[name]
        for batch in batches:
            generator = torch.Generator().manual_seed(0)
            data = torch.rand((batch, 3, 227 if name == "caffenet" else 224, 224 if
                               name != "caffenet" else 227), generator=generator).to(device)
            label = torch.randint(0, 1000, (batch,), generator=generator).to(device)
            for mode in ("fp32", "bf16"):
                precision = Precision(mode, device.type)
                a = images_per_second(ours(prototxt, data, label, mode), batch, steps, device)
                b = images_per_second(theirs(module_class(), data, label, precision), batch,
                                      steps, device)
                print(f"{name:<10} {batch:>5} {mode:<5} {a:>9.1f} {b:>9.1f} {a / b:>6.3f}",
                      flush=True)


if __name__ == "__main__":
    main()

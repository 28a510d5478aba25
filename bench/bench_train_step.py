"""One training iteration (forward + backward + update) of caffe_ft's Solver
against a handwritten PyTorch module of the same net trained with
torch.optim.SGD, in the same process, on LeNet and GoogLeNet.

The prototxts are Caffe's own (examples/mnist LeNet, BVLC GoogLeNet) with
their Data layers replaced by Input layers fed one fixed random batch, so
only the net and the update are timed. The two sides run interleaved
(ours, torch, ours, ...) so machine load affects both alike; the ratio is
median(ours) / median(torch), target ≤ 1.05.

    python bench/bench_train_step.py [--nets lenet googlenet] [--rounds 7]
        [--threads N] [--clock wall|cpu] [--width N] [--batch N]

The host's share of a step (what decides a GPU step at small batch, where
the device waits for the CPU to launch its kernels) is measured with
`--width 64 --batch 1 --threads 1 --clock cpu --iterations 20`: the same
layers and ops, with almost no arithmetic.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from caffe_ft.glog import setup_logging  # noqa: E402
from caffe_ft.parity import set_parity_mode  # noqa: E402
from caffe_ft.proto import caffe_pb2  # noqa: E402
from caffe_ft.solver import Solver  # noqa: E402
from caffe_ft.upgrade import read_net_text  # noqa: E402

CORPUS = ROOT / "tests" / "fixtures" / "corpus"
BASE_LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 0.0002


# -- the handwritten nets --------------------------------------------------------
def thinned(channels: int, width: int) -> int:
    """A hidden layer's width divided by `width` (--width), at least 1."""
    return max(1, channels // width)


class LeNet(nn.Module):
    def __init__(self, width: int = 1) -> None:
        super().__init__()
        c1, c2, ip1 = (thinned(c, width) for c in (20, 50, 500))
        self.conv1 = nn.Conv2d(1, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.ip1 = nn.Linear(c2 * 16, ip1)
        self.ip2 = nn.Linear(ip1, 10)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2, 2, ceil_mode=True)
        x = F.max_pool2d(self.conv2(x), 2, 2, ceil_mode=True)
        x = self.ip2(F.relu(self.ip1(x.flatten(1)), inplace=True))
        return F.cross_entropy(x, label)


class Inception(nn.Module):
    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pp: int) -> None:
        super().__init__()
        self.width = c1 + c3 + c5 + pp  # its top's channels
        self.b1 = nn.Conv2d(cin, c1, 1)
        self.b3r, self.b3 = nn.Conv2d(cin, c3r, 1), nn.Conv2d(c3r, c3, 3, padding=1)
        self.b5r, self.b5 = nn.Conv2d(cin, c5r, 1), nn.Conv2d(c5r, c5, 5, padding=2)
        self.pp = nn.Conv2d(cin, pp, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu = F.relu
        return torch.cat([
            relu(self.b1(x), inplace=True),
            relu(self.b3(relu(self.b3r(x), inplace=True)), inplace=True),
            relu(self.b5(relu(self.b5r(x), inplace=True)), inplace=True),
            relu(self.pp(F.max_pool2d(x, 3, 1, 1, ceil_mode=True)), inplace=True)], 1)


class AuxHead(nn.Module):
    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        conv, fc = thinned(128, width), thinned(1024, width)
        self.conv = nn.Conv2d(cin, conv, 1)
        self.fc = nn.Linear(conv * 16, fc)
        self.classifier = nn.Linear(fc, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(F.avg_pool2d(x, 5, 3, ceil_mode=True)), inplace=True)
        x = F.dropout(F.relu(self.fc(x.flatten(1)), inplace=True), 0.7, self.training)
        return self.classifier(x)


class GoogLeNet(nn.Module):
    def __init__(self, width: int = 1) -> None:
        super().__init__()
        c1, c2r, c2 = (thinned(c, width) for c in (64, 64, 192))
        self.conv1 = nn.Conv2d(3, c1, 7, 2, 3)
        self.conv2r = nn.Conv2d(c1, c2r, 1)
        self.conv2 = nn.Conv2d(c2r, c2, 3, padding=1)
        self.lrn = nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)
        blocks = []
        cin = c2
        for outputs in ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64),
                        (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64),
                        (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),
                        (256, 160, 320, 32, 128, 128), (256, 160, 320, 32, 128, 128),
                        (384, 192, 384, 48, 128, 128)):
            blocks.append(Inception(cin, *(thinned(c, width) for c in outputs)))
            cin = blocks[-1].width
        self.i3a, self.i3b, self.i4a, self.i4b, self.i4c, self.i4d, self.i4e, self.i5a, \
            self.i5b = blocks
        self.aux1, self.aux2 = AuxHead(self.i4a.width, width), AuxHead(self.i4d.width, width)
        self.classifier = nn.Linear(cin, 1000)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        pool = lambda t: F.max_pool2d(t, 3, 2, ceil_mode=True)  # noqa: E731
        x = self.lrn(pool(F.relu(self.conv1(x), inplace=True)))
        x = F.relu(self.conv2(F.relu(self.conv2r(x), inplace=True)), inplace=True)
        x = pool(self.lrn(x))
        x = pool(self.i3b(self.i3a(x)))
        a = self.i4a(x)
        d = self.i4d(self.i4c(self.i4b(a)))
        x = self.i5b(self.i5a(pool(self.i4e(d))))
        x = F.dropout(F.avg_pool2d(x, 7, 1).flatten(1), 0.4, self.training)
        return (0.3 * F.cross_entropy(self.aux1(a), label) +
                0.3 * F.cross_entropy(self.aux2(d), label) +
                F.cross_entropy(self.classifier(x), label))


# -- the two training steps --------------------------------------------------------
def with_inputs(net: caffe_pb2.NetParameter, data: tuple[int, ...]) -> caffe_pb2.NetParameter:
    """The net with its TRAIN Data layer replaced by an Input layer."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for layer in net.layer:
        if layer.type == "Data":
            if any(rule.phase == caffe_pb2.TEST for rule in layer.include):
                continue
            layer = caffe_pb2.LayerParameter(name=layer.name, type="Input", top=layer.top)
            layer.input_param.shape.add(dim=data)
            layer.input_param.shape.add(dim=data[:1])
        out.layer.append(layer)
    return out


def thin_net(net: caffe_pb2.NetParameter, width: int, classes: int) -> caffe_pb2.NetParameter:
    """The net with every hidden Convolution and InnerProduct `width` times
    narrower (the classifiers keep `classes` outputs), as the handwritten
    modules' `width`."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    for layer in out.layer:
        for field in (layer.convolution_param, layer.inner_product_param):
            if field.num_output and field.num_output != classes:
                field.num_output = thinned(field.num_output, width)
    return out


def caffe_ft_step(prototxt: Path, data: torch.Tensor, label: torch.Tensor, width: int = 1,
                  classes: int = 0) -> Callable[[], None]:
    solver_param = caffe_pb2.SolverParameter(
        base_lr=BASE_LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, lr_policy="fixed",
        max_iter=10**9, display=0, random_seed=1, snapshot_after_train=False)
    net = with_inputs(read_net_text(prototxt), tuple(data.shape))
    solver_param.net_param.CopyFrom(thin_net(net, width, classes) if width > 1 else net)
    solver = Solver(solver_param)
    solver.net.set_blob_data("data", data)
    solver.net.set_blob_data("label", label.float())
    return lambda: solver.step(1)


def torch_step(module: nn.Module, data: torch.Tensor, label: torch.Tensor,
               foreach: bool | None = None) -> Callable[[], None]:
    """`foreach`: torch.optim's multi-tensor update (its default on CUDA; on
    the CPU it loops over the params unless asked)."""
    # Caffe's recipes: biases get lr_mult 2 and decay_mult 0.
    weights = [p for name, p in module.named_parameters() if not name.endswith("bias")]
    biases = [p for name, p in module.named_parameters() if name.endswith("bias")]
    optimizer = torch.optim.SGD([{"params": weights, "weight_decay": WEIGHT_DECAY},
                                 {"params": biases, "lr": 2 * BASE_LR, "weight_decay": 0}],
                                lr=BASE_LR, momentum=MOMENTUM, foreach=foreach)
    module.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        module(data, label).backward()
        optimizer.step()
    return step


NETS = {
    "lenet": (CORPUS / "caffe_examples_mnist" / "lenet_train_test.prototxt", LeNet,
              (64, 1, 28, 28), 10),
    "googlenet": (CORPUS / "bvlc_googlenet" / "train_val.prototxt", GoogLeNet,
                  (8, 3, 224, 224), 1000),
}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def seconds_per_step(step: Callable[[], None], iterations: int,
                     clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    for _ in range(iterations):
        step()
    return (clock() - start) / iterations


def bench(name: str, rounds: int, iterations: int, clock: Callable[[], float],
          width: int = 1, batch: int = 0) -> tuple[float, float]:
    # The solver computes under Caffe's float32 parity flags (oneDNN and TF32
    # off) around each step; the handwritten side gets the same flags.
    set_parity_mode(True)
    prototxt, module_class, shape, classes = NETS[name]
    shape = (batch or shape[0], *shape[1:])
    generator = torch.Generator().manual_seed(0)
    data = torch.rand(shape, generator=generator)
    label = torch.randint(0, classes, shape[:1], generator=generator)
    ours = caffe_ft_step(prototxt, data, label, width, classes)
    # A thinned net measures the host's work, which on a GPU runs beside
    # torch.optim's multi-tensor update, its default there.
    theirs = torch_step(module_class(width), data, label, foreach=width > 1 or None)
    for step in (ours, theirs):
        seconds_per_step(step, 2)  # warm-up: allocations, first-call dispatch
    times: dict[str, list[float]] = {"caffe_ft": [], "torch": []}
    for _ in range(rounds):
        times["caffe_ft"].append(seconds_per_step(ours, iterations, clock))
        times["torch"].append(seconds_per_step(theirs, iterations, clock))
    return statistics.median(times["caffe_ft"]), statistics.median(times["torch"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", choices=sorted(NETS), default=sorted(NETS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=0,
                        help="steps per round (default: 20 LeNet, 2 GoogLeNet)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="cpu: this process's CPU time, steadier than wall time on a "
                             "shared machine (use with --threads 1)")
    parser.add_argument("--width", type=int, default=1,
                        help="divide every hidden layer's width by N: with --batch 1 the step "
                             "is nearly all host work (Python, dispatch), what a GPU step "
                             "at small batch costs the CPU")
    parser.add_argument("--batch", type=int, default=0,
                        help="batch size (default: 64 LeNet, 8 GoogLeNet)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logging(level=40)  # net construction logs are not the point here
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock")
    print(f"{'net':<10} {'caffe_ft ms':>12} {'torch ms':>10} {'ratio':>7}")
    for name in args.nets:
        iterations = args.iterations or (20 if name == "lenet" else 2)
        ours, theirs = bench(name, args.rounds, iterations, CLOCKS[args.clock], args.width,
                             args.batch)
        print(f"{name:<10} {ours * 1e3:>12.2f} {theirs * 1e3:>10.2f} {ours / theirs:>7.3f}")


if __name__ == "__main__":
    main()

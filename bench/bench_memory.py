"""Memory of one training step: caffe_ft's net against a handwritten PyTorch
module of the same net, on ResNet-50 (BatchNorm in training mode) and
GoogLeNet (no BatchNorm).

The prototxts are Kaiming He's ResNet-50 (its deploy net given an Input of
the batch, a label and a SoftmaxWithLoss, and BatchNorm left to its TRAIN
default of batch statistics) and BVLC's GoogLeNet train_val (its Data
layers replaced by Input layers, as bench_train_step.py does). The
handwritten ResNet-50 below is torchvision's resnet50 in Caffe's layout
(stride on the 1x1 branch2a, a biased conv1); torchvision itself is not a
dependency. GoogLeNet's module is bench_train_step.py's.

Two measures:
- everywhere: the bytes autograd saves for backward during the forward,
  summed over unique storages (torch.autograd.graph.saved_tensors_hooks);
  parameters count once on both sides;
- with a GPU: the CUDA allocator's peak over a whole SGD step (forward,
  backward, update with momentum), measured on the second step.

    python bench/bench_memory.py [--nets resnet50 googlenet] [--batch 8] [--size 224]
    python bench/bench_memory.py --nets resnet50 --batch 64 --cuda-only   # issue 13, GPU

(ResNet-50's 7x7 pool5 needs --size 193 or more.) Measured on the CPU,
batch 8 at 224x224, ResNet-50's saved bytes were 1.45x the handwritten
module's with BatchNorm, Scale and ReLU run one by one, and are 1.00x with
them run as one step (caffe_ft.net.fusion); GoogLeNet's are 1.00x.
"""
from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_train_step import (BASE_LR, CORPUS, MOMENTUM, WEIGHT_DECAY,  # noqa: E402
                              GoogLeNet, torch_step, with_inputs)
from caffe_ft.glog import setup_logging  # noqa: E402
from caffe_ft.net import Net  # noqa: E402
from caffe_ft.proto import caffe_pb2  # noqa: E402
from caffe_ft.solver import Solver  # noqa: E402
from caffe_ft.upgrade import read_net_text  # noqa: E402

RESNET50 = CORPUS / "resnet_kaiminghe" / "ResNet-50-deploy.prototxt"
GOOGLENET = CORPUS / "bvlc_googlenet" / "train_val.prototxt"


# -- the handwritten ResNet-50 ---------------------------------------------------
class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = 4 * width
        # Caffe's ResNet strides in the first 1x1 convolution, not the 3x3.
        self.conv1 = nn.Conv2d(cin, width, 1, stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = F.relu(self.bn2(self.conv2(y)), inplace=True)
        y = self.bn3(self.conv3(y))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(y + identity, inplace=True)


class ResNet50(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3)
        self.bn1 = nn.BatchNorm2d(64)
        blocks, cin = [], 64
        for width, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for k in range(count):
                blocks.append(Bottleneck(cin, width, stride if k == 0 else 1))
                cin = 4 * width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(2048, 1000)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.blocks(F.max_pool2d(x, 3, 2, ceil_mode=True))
        x = F.avg_pool2d(x, x.shape[-1]).flatten(1)
        return F.cross_entropy(self.fc(x), label)


def resnet50_train(deploy: caffe_pb2.NetParameter, data: tuple[int, ...]) -> caffe_pb2.NetParameter:
    """The deploy net as a training net: Input data and label, BatchNorm on
    batch statistics, SoftmaxWithLoss in place of the Softmax."""
    out = caffe_pb2.NetParameter(name=deploy.name)
    source = out.layer.add(name="data", type="Input", top=["data", "label"])
    source.input_param.shape.add(dim=data)
    source.input_param.shape.add(dim=data[:1])
    for layer in deploy.layer:
        if layer.type == "Input":
            continue
        if layer.type == "Softmax":
            out.layer.add(name="loss", type="SoftmaxWithLoss", bottom=[layer.bottom[0], "label"],
                          top=["loss"])
            continue
        copy = out.layer.add()
        copy.CopyFrom(layer)
        if copy.type == "BatchNorm":
            copy.batch_norm_param.ClearField("use_global_stats")
    return out


def caffe_ft_param(name: str, data: tuple[int, ...]) -> caffe_pb2.NetParameter:
    if name == "resnet50":
        return resnet50_train(read_net_text(str(RESNET50)), data)
    return with_inputs(read_net_text(str(GOOGLENET)), data)


NETS: dict[str, Callable[[], nn.Module]] = {"resnet50": ResNet50, "googlenet": GoogLeNet}


# -- the measures ---------------------------------------------------------------
def saved_bytes(forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the unique storages autograd saves during `forward`."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(storages.values())


def cuda_peak(step: Callable[[], None]) -> int:
    """The CUDA allocator's peak over a step, after one step has made the
    momentum buffers and warmed the caches."""
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def measure(name: str, batch: int, size: int, saved: bool = True
            ) -> dict[str, tuple[int, int]]:
    """The measures for one net; `saved` False skips the CPU's saved bytes
    (minutes for ResNet-50 at batch 64 on a CPU) and keeps the CUDA peak."""
    shape = (batch, 3, size, size)
    generator = torch.Generator().manual_seed(0)
    data = torch.rand(shape, generator=generator)
    label = torch.randint(0, 1000, shape[:1], generator=generator)
    counts: dict[str, tuple[int, int]] = {}
    if saved:
        net = Net(caffe_ft_param(name, shape), caffe_pb2.TRAIN, source=name)
        net.set_blob_data("data", data)
        net.set_blob_data("label", label.float())
        module = NETS[name]().train()
        # Equal trained-parameter counts show the handwritten module is the same net.
        counts["params"] = (sum(entry.blob.numel() for entry in net.learnable_params
                                if entry.blob.requires_grad),
                            sum(p.numel() for p in module.parameters()))
        counts["saved"] = (saved_bytes(net.forward), saved_bytes(lambda: module(data, label)))
        del net, module
    if torch.cuda.is_available():
        device = torch.device("cuda")
        data, label = data.to(device), label.to(device)
        ours = cuda_peak(caffe_ft_sgd_step(name, data, label))
        gc.collect()  # the caffe_ft solver goes before the module's step is measured
        torch.cuda.empty_cache()
        theirs = cuda_peak(torch_step(NETS[name]().to(device), data, label))
        counts["cuda peak"] = (ours, theirs)
    return counts


def caffe_ft_sgd_step(name: str, data: torch.Tensor, label: torch.Tensor) -> Callable[[], None]:
    """bench_train_step's caffe_ft SGD step, on the data's device."""
    solver_param = caffe_pb2.SolverParameter(
        base_lr=BASE_LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, lr_policy="fixed",
        max_iter=10**9, display=0, random_seed=1, snapshot_after_train=False)
    solver_param.net_param.CopyFrom(caffe_ft_param(name, tuple(data.shape)))
    solver = Solver(solver_param, device=data.device)
    solver.net.set_blob_data("data", data)
    solver.net.set_blob_data("label", label.float())
    return lambda: solver.step(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", choices=sorted(NETS), 
                        default=sorted(NETS, reverse=True))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cuda-only", action="store_true",
                        help="only the CUDA allocator's peak (issue 13's GPU figure)")
    args = parser.parse_args()
    if args.cuda_only and not torch.cuda.is_available():
        parser.error("--cuda-only: torch sees no CUDA device")
    setup_logging(level=40)  # net construction logs are not the point here
    print(f"torch {torch.__version__}, batch {args.batch} at {args.size}x{args.size}; "
          f"cuda peak: the allocator's over a fp32 parity SGD step (target ≤ 1.1x)")
    print(f"{'net':<10} {'measure':<10} {'caffe_ft MiB':>13} {'handwritten MiB':>16} {'ratio':>7}")
    for name in args.nets:
        for measure_name, (ours, theirs) in measure(name, args.batch, args.size,
                                                         not args.cuda_only).items():
            if measure_name == "params":
                print(f"{name:<10} {measure_name:<10} {ours:>13,} {theirs:>16,}")
                continue
            print(f"{name:<10} {measure_name:<10} {ours / 2**20:>13.1f} {theirs / 2**20:>16.1f} "
                  f"{ours / theirs:>7.3f}")


if __name__ == "__main__":
    main()

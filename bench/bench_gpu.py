"""Training throughput (images/s) of caffe_ft against handwritten PyTorch
modules of the same nets, in one process (issue 11's figures):
- parity: caffe_ft fp32 against a fp32 module under the same flags
  (target ≥ 0.95);
- bf16: caffe_ft -precision bf16 against a bf16 autocast + channels_last
  module (target ≥ 1.0);
- data: GoogLeNet fed by a Data layer reading a JPEG LMDB (crop 224, mirror)
  against the same net fed by an Input layer, both caffe_ft (target ≥ 0.95).
Nets: the corpus's train_val GoogLeNet, CaffeNet, Places365 VGG16 (Data
layers replaced by Input layers fed one random batch) and Kaiming He's
ResNet-50 (bench_memory.py's training net of its deploy prototxt). On CUDA
each figure is timed with CUDA events over --steps steps after --warmup.

    python bench/bench_gpu.py [--nets ...] [--batches 32 128] [--data-batch 64]
                              [--warmup 3] [--steps 10]
    python bench/bench_gpu.py --smoke      # every path at batch 1, on CPU
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import RESNET50, ResNet50, resnet50_train  # noqa: E402
from bench_train_step import (  # noqa: E402
    BASE_LR, CORPUS, GoogLeNet, torch_step, with_inputs)
from vgg16 import PLACES, VGG16  # noqa: E402

from caffe_ft.data.datum import encoded_datum  # noqa: E402
from caffe_ft.data.lmdb_io import LMDBWriter  # noqa: E402
from caffe_ft.glog import setup_logging  # noqa: E402
from caffe_ft.parity import using_flags  # noqa: E402
from caffe_ft.proto import caffe_pb2  # noqa: E402
from caffe_ft.solver import Solver  # noqa: E402
from caffe_ft.solver.precision import Precision  # noqa: E402
from caffe_ft.upgrade import read_net_text  # noqa: E402

GOOGLENET = CORPUS / "bvlc_googlenet" / "train_val.prototxt"
TARGETS = {"fp32": 0.95, "bf16": 1.0, "data": 0.95}


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


def train_val(path: Path) -> Callable[[tuple[int, ...]], caffe_pb2.NetParameter]:
    return lambda shape: with_inputs(read_net_text(path), shape)


def resnet50(shape: tuple[int, ...]) -> caffe_pb2.NetParameter:
    return resnet50_train(read_net_text(RESNET50), shape)


# name: (the training net for a data shape, the handwritten module, crop, classes)
NETS: dict[str, tuple[Callable[[tuple[int, ...]], caffe_pb2.NetParameter],
                      Callable[[], nn.Module], int, int]] = {
    "googlenet": (train_val(GOOGLENET), GoogLeNet, 224, 1000),
    "caffenet": (train_val(CORPUS / "bvlc_reference_caffenet" / "train_val.prototxt"),
                 CaffeNet, 227, 1000),
    "vgg16": (train_val(CORPUS / "places365" / "train_val_vgg16.prototxt"), VGG16, 224, PLACES),
    "resnet50": (resnet50, ResNet50, 224, 1000),
}


# -- the two sides -------------------------------------------------------------
def solver_for(net: caffe_pb2.NetParameter, device: torch.device, precision: str) -> Solver:
    param = caffe_pb2.SolverParameter(
        base_lr=BASE_LR, momentum=0.9, weight_decay=0.0002, lr_policy="fixed",
        max_iter=10**9, display=0, random_seed=1, snapshot_after_train=False)
    param.net_param.CopyFrom(net)
    return Solver(param, device=device, precision=precision)


def ours(net: caffe_pb2.NetParameter, data: torch.Tensor, label: torch.Tensor, precision: str
         ) -> Callable[[], None]:
    """caffe_ft's step with its Input blobs holding one fixed batch."""
    solver = solver_for(net, data.device, precision)
    solver.net.set_blob_data("data", data)
    solver.net.set_blob_data("label", label.float())
    return lambda: solver.step(1)


def ours_from_db(source: Path, batch: int, device: torch.device, precision: str
                 ) -> Callable[[], None]:
    """caffe_ft's GoogLeNet step with its TRAIN Data layer reading `source`."""
    net = read_net_text(GOOGLENET)
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = str(source)
            layer.data_param.batch_size = batch
    solver = solver_for(net, device, precision)
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


def write_jpeg_db(path: Path, count: int) -> None:
    """`count` encoded JPEGs of 256x256 smooth random colour fields (Caffe's
    ImageNet LMDBs hold 256x256 JPEGs), written with the project's LMDBWriter."""
    rng = np.random.default_rng(0)
    with LMDBWriter(path) as writer:
        for index in range(count):
            field = rng.uniform(0, 255, (8, 8, 3)).astype(np.float32)
            image = cv2.resize(field, (256, 256), interpolation=cv2.INTER_CUBIC)
            image += rng.normal(0, 8, image.shape)
            ok, jpeg = cv2.imencode(".jpg", np.clip(image, 0, 255).astype(np.uint8),
                                    [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok, "OpenCV could not encode a JPEG"
            writer.put(b"%08d" % index,
                       encoded_datum(jpeg.tobytes(), index % 1000).SerializeToString())


# -- timing --------------------------------------------------------------------
def images_per_second(make: Callable[[], Callable[[], None]], batch: int, warmup: int,
                      steps: int, device: torch.device) -> float:
    """Images/s of the step `make` builds; the step and its net are freed
    before the next one is built, so one model at a time holds the device."""
    step = make()
    for _ in range(warmup):  # allocation, cuDNN autotuning, the data workers' start
        step()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3
    else:
        begin = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = time.perf_counter() - begin
    del step
    gc.collect()  # solvers and modules hold reference cycles
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return batch * steps / seconds


def report(name: str, batch: int, mode: str, a: float, b: float) -> None:
    ratio = a / b
    verdict = "ok" if ratio >= TARGETS[mode] else "LOW"
    print(f"{name:<10} {batch:>5} {mode:<5} {a:>9.1f} {b:>9.1f} {ratio:>6.3f} "
          f"{TARGETS[mode]:>6.2f} {verdict}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", choices=sorted(NETS), default=list(NETS))
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--data-batch", type=int, default=64,
                        help="GoogLeNet's batch for LMDB-fed against Input-fed (0: skip)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--smoke", action="store_true",
                        help="batch 1, one step and no warm-up, on CPU")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        args.batches, args.data_batch, args.warmup, args.steps = [1], 1, 0, 1
    setup_logging(level=40)  # net construction logs are not the point here
    print(f"torch {torch.__version__} on "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
          f"images/s over {args.steps} steps after {args.warmup}; ratio = caffe_ft / other")
    print(f"{'net':<10} {'batch':>5} {'mode':<5} {'caffe_ft':>9} {'other':>9} {'ratio':>6} "
          f"{'target':>6}")
    for name in args.nets:
        build, module_class, crop, classes = NETS[name]
        for batch in args.batches:
            generator = torch.Generator().manual_seed(0)
            data = torch.rand((batch, 3, crop, crop), generator=generator).to(device)
            label = torch.randint(0, classes, (batch,), generator=generator).to(device)
            for mode in ("fp32", "bf16"):
                a = images_per_second(lambda: ours(build(tuple(data.shape)), data, label, mode),
                                      batch, args.warmup, args.steps, device)
                b = images_per_second(lambda: theirs(module_class(), data, label,
                                                     Precision(mode, device.type)),
                                      batch, args.warmup, args.steps, device)
                report(name, batch, mode, a, b)
    if args.data_batch:
        batch = args.data_batch
        generator = torch.Generator().manual_seed(0)
        data = torch.rand((batch, 3, 224, 224), generator=generator).to(device)
        label = torch.randint(0, 1000, (batch,), generator=generator).to(device)
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder) / "jpeg_lmdb"
            # Enough images that the timed steps read past the warm-up's.
            write_jpeg_db(source, batch * (args.warmup + args.steps + 1))
            for mode in ("fp32", "bf16"):
                a = images_per_second(lambda: ours_from_db(source, batch, device, mode),
                                      batch, args.warmup, args.steps, device)
                b = images_per_second(lambda: ours(train_val(GOOGLENET)(tuple(data.shape)),
                                                   data, label, mode),
                                      batch, args.warmup, args.steps, device)
                report(f"lmdb/{mode}", batch, "data", a, b)


if __name__ == "__main__":
    main()

"""Benchmark: the Data layer's batches/s with worker prefetch against none.

Writes an LMDB of N encoded ~256x256 JPEGs once (crops of the test photos,
upscaled, with sensor-like noise, quality 90, sizes 240..272 so crops vary),
then times a TRAIN Data layer as GoogLeNet's train_val uses it: batch 32,
crop_size 224, mirror, mean_value 104/117/123. Two runs in one process:
(a) the default worker count, (b) no workers (batches built in the calling
process on demand, Caffe's work without its prefetch thread). Worker start-up
and the first batches are excluded (--warmup). Each run also reports the CPU
time the main process spends per batch, which a busy machine disturbs less
than the rates.

With --googlenet PATH (e.g. Caffe's models/bvlc_googlenet/train_val.prototxt)
it also times one forward+backward of that net at batch 32 on this machine's
CPU, its Data layer replaced by an Input layer, for scale. --step-ms adds an
idle wait after each pass, standing for a GPU iteration that leaves the CPU
free: prefetch overlaps it, in-process reading adds to it.

    python bench/bench_data_layer.py [--count 512] [--batches 40] [--workers N]
                                     [--step-ms 25] [--googlenet PATH]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from caffe_ft.data.datum import encoded_datum  # noqa: E402
from caffe_ft.data.lmdb_io import LMDBWriter  # noqa: E402
from caffe_ft.data.prefetch import WORKERS_ENV, default_workers  # noqa: E402
from caffe_ft.net import Net  # noqa: E402
from caffe_ft.proto import caffe_pb2  # noqa: E402
from caffe_ft.protofile import parse_text, read_text  # noqa: E402

PHOTOS = ROOT / "tests" / "fixtures" / "data" / "images" / "photos"
BATCH = 32
LAYER = """layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ mirror: true crop_size: 224 mean_value: 104 mean_value: 117
                    mean_value: 123 }}
  data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}"""


def make_db(path: Path, count: int) -> float:
    """Write the JPEG LMDB; return the mean JPEG size in bytes."""
    rng = np.random.default_rng(0)
    sources = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in sorted(PHOTOS.iterdir())]
    total = 0
    with LMDBWriter(path) as writer:
        for index in range(count):
            source = sources[index % len(sources)]
            h, w = source.shape[:2]
            top, left = rng.integers(0, h // 4 + 1), rng.integers(0, w // 4 + 1)
            crop = source[top:top + h - h // 4, left:left + w - w // 4]
            size = (int(rng.integers(240, 273)), int(rng.integers(240, 273)))
            image = cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC).astype(np.float32)
            image += rng.normal(0, 6, image.shape) + rng.uniform(-20, 20)
            ok, jpeg = cv2.imencode(".jpg", np.clip(image, 0, 255).astype(np.uint8),
                                    [cv2.IMWRITE_JPEG_QUALITY, 90])
            total += len(jpeg)
            key = b"%08d_img%05d.jpg" % (index, index)
            writer.put(key, encoded_datum(jpeg.tobytes(), index % 10).SerializeToString())
    return total / count


def batches_per_second(source: Path, workers: int, warmup: int, batches: int,
                       step_s: float) -> tuple[float, float]:
    """Forward passes of the Data layer per second, and the CPU seconds this
    process (all its threads, not the workers) spends per pass; each pass is
    followed by `step_s` of idle waiting, standing for a GPU iteration that
    leaves the CPU free (prefetch overlaps it, in-process reading does not)."""
    os.environ[WORKERS_ENV] = str(workers)
    net = Net(parse_text(LAYER.format(source=source, batch=BATCH), caffe_pb2.NetParameter()),
              caffe_pb2.TRAIN)
    for _ in range(warmup):  # starts the workers and fills their queues
        net.forward()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        net.forward()
        time.sleep(step_s)
    return batches / (time.perf_counter() - start), (time.process_time() - cpu) / batches


def googlenet_iteration(path: Path, repeats: int = 2) -> float:
    """Seconds per forward+backward of the TRAIN net at batch 32 on the CPU."""
    param = read_text(path, caffe_pb2.NetParameter())
    for layer in param.layer:
        if layer.type == "Data":
            layer.type = "Input"
            layer.ClearField("data_param")
            layer.ClearField("transform_param")
            layer.input_param.shape.add().dim.extend([BATCH, 3, 224, 224])
            layer.input_param.shape.add().dim.extend([BATCH])
    net = Net(param, caffe_pb2.TRAIN, source=str(path))
    times = []
    for _ in range(repeats + 1):  # the first pass warms the allocator
        start = time.perf_counter()
        net.forward().backward()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=512, help="images in the LMDB")
    parser.add_argument("--batches", type=int, default=40, help="batches timed per run")
    parser.add_argument("--warmup", type=int, default=4, help="batches before timing")
    parser.add_argument("--workers", type=int, default=0, help="0: the layer's default")
    parser.add_argument("--step-ms", type=float, default=0.0,
                        help="idle time per pass, standing for a GPU iteration")
    parser.add_argument("--googlenet", type=Path, help="GoogLeNet train_val.prototxt to time")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_data_layer."))
    try:
        jpeg_bytes = make_db(work / "db", args.count)
        (work / "db" / "data.mdb").read_bytes()  # both runs read from the page cache
        workers = args.workers or default_workers()
        step_s = args.step_ms / 1000
        prefetched, prefetched_cpu = batches_per_second(work / "db", workers, args.warmup,
                                                        args.batches, step_s)
        alone, alone_cpu = batches_per_second(work / "db", 0, args.warmup, args.batches, step_s)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"{args.count} JPEGs ~256x256 (mean {jpeg_bytes / 1024:.1f} KiB), batch {BATCH}, "
              f"crop 224 + mirror, {cpus} CPUs, torch threads {torch.get_num_threads()}, "
              f"{args.step_ms:g} ms idle per pass")
        print(f"prefetch, {workers} worker(s): {prefetched:7.2f} batches/s "
              f"({1000 / prefetched:6.1f} ms/batch, {prefetched * BATCH:7.1f} images/s; "
              f"main process CPU {1000 * prefetched_cpu:5.2f} ms/batch)")
        print(f"no prefetch (in-process) : {alone:7.2f} batches/s "
              f"({1000 / alone:6.1f} ms/batch, {alone * BATCH:7.1f} images/s; "
              f"main process CPU {1000 * alone_cpu:5.2f} ms/batch)")
        print(f"speed-up                 : {prefetched / alone:7.2f}x")
        if args.googlenet:
            seconds = googlenet_iteration(args.googlenet)
            print(f"GoogLeNet fwd+bwd, batch {BATCH}, this CPU: {seconds * 1000:8.1f} ms "
                  f"({1 / seconds:.2f} it/s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

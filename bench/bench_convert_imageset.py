"""Benchmark: our convert_imageset against a plain single-process loop.

Makes N realistic 500x375 JPEGs once (crops of the test photos, upscaled,
with sensor-like noise, quality 90), then times, in the same run:
  (a) a plain loop: cv2.imread, cv2.resize to 256x256, Datum, LMDB put
      (committing every 1000 puts, as Caffe does);
  (b) caffe_ft's builder with its default worker count, also to 256x256:
      called in this process, or with --cli the `caffe_ft convert_imageset`
      command in a fresh interpreter (wall time from the start of the
      process to its exit: imports, worker start and the final flush
      included, as a user would time Caffe's tool);
  (c) the work no exact builder can skip, on one thread: the decode and
      resize (Caffe's pixels come from a full-size decode), then writing the
      finished Datums to a fresh LMDB.
Both databases must hold the same Datums. Prints images/s, CPU time per
image (this process and its workers) and the ratio, --repeat times (the
median ratio last: timings on a shared machine are noisy), with the ceiling
any builder has on this machine: the loop's time over (c) spread perfectly
over every CPU.

With --caffe-model (needs g++), also a model of BVLC Caffe's own tool, which
is not installed here: its one-thread decode and resize (the same OpenCV
calls, timed in (c)), its C++ Datum copies per image (caffe_datum_copies.cpp:
CVMatToDatum's per-pixel scatter, set_data, SerializeToString, the
transaction's copies) and its LMDB writes (mdb_put and a commit with fsync,
as Caffe opens LMDB: the LMDB time in (c)). Process start and glog are left out, so the
model is if anything faster than Caffe's tool.

    python bench/bench_convert_imageset.py [--count 1000] [--images DIR] [--repeat 3] [--cli]
                                           [--caffe-model]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import lmdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from caffe_ft.data.convert_imageset import ConvertOptions, convert_imageset  # noqa: E402
from caffe_ft.data.lmdb_io import LMDBReader  # noqa: E402
from caffe_ft.proto import caffe_pb2  # noqa: E402

PHOTOS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "data" / "images" / "photos"
WIDTH, HEIGHT = 500, 375
SIZE = 256


def make_images(folder: Path, count: int) -> Path:
    """Write `count` JPEGs and their list file into `folder` (kept if present)."""
    listing = folder / "list.txt"
    if listing.is_file() and len(listing.read_text().splitlines()) == count:
        return listing
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sources = [cv2.imread(str(path), cv2.IMREAD_COLOR) for path in sorted(PHOTOS.iterdir())]
    lines = []
    for index in range(count):
        source = sources[index % len(sources)]
        h, w = source.shape[:2]
        top, left = rng.integers(0, h // 4 + 1), rng.integers(0, w // 4 + 1)
        crop = source[top:top + h - h // 4, left:left + w - w // 4]
        image = cv2.resize(crop, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        image += rng.normal(0, 6, image.shape) + rng.uniform(-20, 20)
        name = f"img{index:05d}.jpg"
        cv2.imwrite(str(folder / name), np.clip(image, 0, 255).astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        lines.append(f"{name} {index % 10}\n")
    listing.write_text("".join(lines))
    return listing


def plain_loop(root: Path, listing: Path, db: Path) -> None:
    env = lmdb.open(str(db), map_size=1 << 40)
    txn = env.begin(write=True)
    for index, line in enumerate(listing.read_text().splitlines()):
        name, label = line.rsplit(" ", 1)
        image = cv2.resize(cv2.imread(str(root / name), cv2.IMREAD_COLOR), (SIZE, SIZE))
        datum = caffe_pb2.Datum(channels=3, height=SIZE, width=SIZE,
                                data=image.transpose(2, 0, 1).tobytes(), label=int(label),
                                encoded=False)
        txn.put(b"%08d_%s" % (index, name.encode()), datum.SerializeToString())
        if (index + 1) % 1000 == 0:
            txn.commit()
            txn = env.begin(write=True)
    txn.commit()
    env.close()


def decode_and_resize(root: Path, listing: Path) -> None:
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for line in listing.read_text().splitlines():
            cv2.resize(cv2.imread(str(root / line.rsplit(" ", 1)[0]), cv2.IMREAD_COLOR),
                       (SIZE, SIZE))
    finally:
        cv2.setNumThreads(threads)


def write_only(records: list[tuple[bytes, bytes]], db: Path) -> None:
    env = lmdb.open(str(db), map_size=1 << 40)
    with env.begin(write=True) as txn:
        for key, value in records:
            txn.put(key, value)
    env.close()


def timed(run, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished children)."""
    def cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
            resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    start, start_cpu = time.perf_counter(), cpu()
    run(*args)
    return time.perf_counter() - start, cpu() - start_cpu


def builder(images: Path, listing: Path, db: Path, workers: int) -> None:
    convert_imageset(f"{images}/", listing, db,
                     ConvertOptions(resize_width=SIZE, resize_height=SIZE, workers=workers))


def builder_cli(images: Path, listing: Path, db: Path, workers: int) -> None:
    subprocess.run([sys.executable, "-m", "caffe_ft", "convert_imageset",
                    f"-resize_height={SIZE}", f"-resize_width={SIZE}", f"-workers={workers}",
                    f"{images}/", str(listing), str(db)], check=True, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})


def caffe_copies_ms(work: Path) -> float:
    """Milliseconds per image of Caffe's C++ Datum copies, compiled -O2 as
    Caffe's release build is."""
    binary = work / "caffe_datum_copies"
    subprocess.run(["g++", "-O2", "-o", str(binary),
                    str(Path(__file__).resolve().parent / "caffe_datum_copies.cpp")], check=True)
    return min(float(subprocess.run([str(binary)], check=True, capture_output=True,
                                    text=True).stdout.split()[0]) for _ in range(3))


def run_pair(images: Path, listing: Path, work: Path, count: int, workers: int,
             cpus: int, cli: bool, copies_ms: float | None) -> tuple[float, float | None]:
    """One timing of each, back to back; prints them and returns the ratio to
    the loop and, with copies_ms, to the model of Caffe's tool."""
    for name in ("plain_db", "ours_db"):
        shutil.rmtree(work / name, ignore_errors=True)
    load = os.getloadavg()[0]
    plain, plain_cpu = timed(plain_loop, images, listing, work / "plain_db")
    ours, ours_cpu = timed(builder_cli if cli else builder, images, listing, work / "ours_db",
                           workers)
    decode, _ = timed(decode_and_resize, images, listing)
    with LMDBReader(work / "plain_db") as a, LMDBReader(work / "ours_db") as b:
        records = list(a)
        assert records == list(b), "the two databases differ"
    shutil.rmtree(work / "write_db", ignore_errors=True)
    write, _ = timed(write_only, records, work / "write_db")
    floor = decode + write
    caffe = None if copies_ms is None else decode + write + copies_ms * count / 1e3
    model = "" if caffe is None else (f" | model of Caffe's tool {caffe:.2f} s: "
                                      f"caffe_ft {caffe / ours:.2f}x")
    print(f"load {load:4.2f} | plain loop {count / plain:6.1f} images/s "
          f"({plain_cpu / count * 1e3:.2f} ms CPU/image) | caffe_ft{' CLI' if cli else ''} "
          f"{count / ours:6.1f} images/s "
          f"({ours_cpu / count * 1e3:.2f} ms CPU/image) | decode+resize alone "
          f"{decode / count * 1e3:.2f} + LMDB {write / count * 1e3:.2f} ms/image | "
          f"ratio {plain / ours:.2f}x (ceiling on {cpus} CPUs {plain / (floor / cpus):.2f}x)"
          f"{model}", flush=True)
    return plain / ours, None if caffe is None else caffe / ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--images", type=Path, help="folder to keep the generated JPEGs in")
    parser.add_argument("--workers", type=int, default=0, help="0: the builder's default")
    parser.add_argument("--cli", action="store_true",
                        help="time the caffe_ft convert_imageset command in a subprocess")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timings of each; the median ratio is reported")
    parser.add_argument("--caffe-model", action="store_true",
                        help="also compare with a model of Caffe's own tool (needs g++)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_convert_imageset."))
    try:
        images = args.images or work / "images"
        listing = make_images(images, args.count)
        for path in images.iterdir():  # every run reads from the page cache
            path.read_bytes()
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"{args.count} JPEGs {WIDTH}x{HEIGHT} -> {SIZE}x{SIZE}, {cpus} CPUs, "
              f"workers={args.workers or 'default'}")
        # An untimed pair first: the first run of each pays one-off costs
        # (imports, fresh memory) that would flatter or hurt one side.
        copies_ms = caffe_copies_ms(work) if args.caffe_model else None
        if copies_ms is not None:
            print(f"Caffe's C++ Datum copies: {copies_ms:.3f} ms/image")
        print("warm-up: ", end="")
        run_pair(images, listing, work, args.count, args.workers, cpus, args.cli, copies_ms)
        ratios = [run_pair(images, listing, work, args.count, args.workers, cpus, args.cli,
                           copies_ms) for _ in range(args.repeat)]
        print(f"median ratio: {statistics.median(r for r, _ in ratios):.2f}x")
        if copies_ms is not None:
            print(f"median ratio to the model of Caffe's tool: "
                  f"{statistics.median(c for _, c in ratios if c is not None):.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

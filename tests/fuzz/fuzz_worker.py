"""A fuzz worker process: reads one job per line on stdin (JSON: kind, seed,
key), writes the mutant beside copies of the seeds, runs its kind's check
and answers one JSON line. The parent owns the clock: a worker that does not
answer in time is killed (a hang), one that dies is a crash.

    python fuzz_worker.py SEED_FOLDER SCRATCH_FOLDER MEMORY_BYTES

The address-space limit turns an absurd allocation into the MemoryError or
allocator error caffe_ft must report, instead of the machine swapping.
"""
from __future__ import annotations

import json
import os
import random
import resource
import shutil
import sys
from pathlib import Path
from typing import Any


def _answer(protocol: Any, result: dict[str, Any]) -> None:
    protocol.write(json.dumps(result) + "\n")
    protocol.flush()


def run_job(job: dict[str, str], work: Any, seeds: Path) -> dict[str, Any]:
    from fuzz_kinds import KINDS
    from fuzz_mutators import mutate

    from caffe_ft.errors import CaffeError

    kind = KINDS[job["kind"]]
    data, applied = mutate((seeds / job["seed"]).read_bytes(), kind.binary,
                           random.Random(job["key"]))
    path = work.folder / f"mutant-{Path(job['seed']).name}"
    path.write_bytes(data)
    before = sorted(os.listdir(work.folder))
    result: dict[str, Any] = {"mutations": applied, "outcome": "ok", "error": "", "message": ""}
    try:
        kind.check(path, work)
    except CaffeError as err:
        message = str(err)
        result.update(outcome="multiline" if "\n" in message.strip() else "caffe_error",
                      error=type(err).__name__, message=message)
    except Exception as err:  # noqa: BLE001 - any other exception type is the finding
        result.update(outcome="exception", error=type(err).__name__, message=str(err)[:2000])
    after = sorted(os.listdir(work.folder))
    path.unlink()
    if after != before:
        result.update(outcome="leftover", error="", message=f"files left or removed: "
                      f"{sorted(set(after) ^ set(before))}")
        _restore(work.folder, seeds, set(after) - set(before))
    return result


def _restore(folder: Path, seeds: Path, extra: set[str]) -> None:
    """Back to a clean copy of the seeds, so one mutant's mess is not the next one's."""
    for name in extra:
        target = folder / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    for seed in seeds.iterdir():
        if not (folder / seed.name).exists():
            shutil.copy2(seed, folder / seed.name)


def main(argv: list[str]) -> None:
    seeds, scratch, memory = Path(argv[1]), Path(argv[2]), int(argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # Answers go to the real stdout; anything else printed goes to stderr.
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import logging

    import torch
    from fuzz_kinds import Workspace

    from caffe_ft.glog import logger

    logger.setLevel(logging.CRITICAL)
    torch.set_num_threads(1)
    os.chdir(scratch)
    work = Workspace(scratch)
    _answer(protocol, {"ready": True})
    for line in sys.stdin:
        _answer(protocol, run_job(json.loads(line), work, seeds))


if __name__ == "__main__":
    main(sys.argv)

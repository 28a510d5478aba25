"""Runs mutants through a pool of worker processes (fuzz_worker.py) and
collects one Result each, so a hang or an interpreter crash is caught and
attributed to its mutant instead of stopping the run.

Mutant `i` of a run is fully named by its kind, its seed file and its key
"<master seed>:<i>": fuzz_mutators.mutate(seed bytes, binary,
random.Random(key)) rebuilds it.
"""
from __future__ import annotations

import json
import re
import select
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fuzz_kinds import KINDS
from fuzz_seeds import write_seeds

WORKER = Path(__file__).with_name("fuzz_worker.py")
# Outcomes that are findings: anything but running normally or one CaffeError line.
BAD_OUTCOMES = frozenset({"exception", "multiline", "leftover", "hang", "crash"})
_STARTUP_S = 120.0


@dataclass(frozen=True)
class Job:
    kind: str
    seed: str
    key: str


@dataclass(frozen=True)
class Result:
    job: Job
    outcome: str  # ok, caffe_error, or one of BAD_OUTCOMES
    error: str  # the exception type's name
    message: str
    mutations: tuple[str, ...]


def plan(count: int, master_seed: int, kinds: Sequence[str]) -> list[Job]:
    """`count` jobs taking the kinds in turn, and each kind's seeds in turn."""
    jobs = []
    for i in range(count):
        kind = KINDS[kinds[i % len(kinds)]]
        seed = kind.seeds[(i // len(kinds)) % len(kind.seeds)]
        jobs.append(Job(kind.name, seed, f"{master_seed}:{i}"))
    return jobs


class _Worker:
    def __init__(self, seeds: Path, scratch: Path, memory: int) -> None:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(seeds, scratch)
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(seeds), str(scratch), str(memory)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, cwd=scratch)
        self.job: Job | None = None
        self.deadline = 0.0
        if not self._readable(_STARTUP_S) or "ready" not in json.loads(self.proc.stdout.readline()
                                                                       or "{}"):
            self.stop()
            raise RuntimeError(f"fuzz worker did not start (exit code {self.proc.returncode})")

    def _readable(self, timeout: float) -> bool:
        return bool(select.select([self.proc.stdout], [], [], timeout)[0])

    def send(self, job: Job, timeout: float) -> None:
        self.job, self.deadline = job, time.monotonic() + timeout
        self.proc.stdin.write(json.dumps(job.__dict__) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run_fuzz(jobs: Iterable[Job], workdir: Path, workers: int = 2, timeout: float = 60.0,
             memory: int = 5 << 29) -> list[Result]:
    """Every job's Result; `timeout` seconds per mutant, `memory` bytes of
    address space per worker. Importing torch takes about 1 GiB of the
    default 2.5 GiB, so a mutant asking for a 2 GB blob fails to allocate at
    once instead of spending tens of seconds filling it."""
    seeds = workdir / "seeds"
    seeds.mkdir(parents=True, exist_ok=True)
    write_seeds(seeds)
    pending = deque(jobs)
    results: list[Result] = []
    started = 0

    def new_worker() -> _Worker:
        nonlocal started
        started += 1
        return _Worker(seeds, workdir / f"worker{started}", memory)

    pool = [new_worker() for _ in range(workers)]
    try:
        while pending or any(w.job for w in pool):
            for worker in pool:
                if worker.job is None and pending:
                    worker.send(pending.popleft(), timeout)
            busy = [w for w in pool if w.job]
            wait = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = select.select([w.proc.stdout for w in busy], [], [], wait)[0]
            for i, worker in enumerate(pool):
                if worker.job is None:
                    continue
                if worker.proc.stdout in ready:
                    line = worker.proc.stdout.readline()
                    if line:
                        answer = json.loads(line)
                        results.append(Result(worker.job, answer["outcome"], answer["error"],
                                              answer["message"], tuple(answer["mutations"])))
                        worker.job = None
                        continue
                    worker.proc.wait()
                    results.append(Result(worker.job, "crash", "",
                                          f"worker died, exit code {worker.proc.returncode}", ()))
                elif time.monotonic() >= worker.deadline:
                    results.append(Result(worker.job, "hang", "",
                                          f"no answer within {timeout:g} s", ()))
                else:
                    continue
                worker.stop()
                pool[i] = new_worker()
    finally:
        for worker in pool:
            worker.stop()
    return results


def normalize(message: str, workdir: Path) -> str:
    """A message with its paths, numbers and quoted tokens replaced, so
    messages that differ only in where they point group together."""
    text = message.splitlines()[0] if message else ""
    text = text.replace(str(workdir), "<dir>")
    text = re.sub(r"\(at '.*'\)$", "(at <token>)", text)
    text = re.sub(r"\S*/\S*", "<path>", text)
    return re.sub(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", "N", text)

"""Long fuzz run: mutated prototxts (net, solver), caffemodels and
solverstates through caffe_ft, in worker processes with a per-mutant timeout.

Every mutant must run normally or end in one CaffeError line. Prints the
counts by file kind and outcome, then by outcome and normalized message,
then every finding (an exception of another type, a hang, a crash, a
multi-line error, a file left behind) with the kind, seed file and key that
rebuild its mutant. Exit code 1 when there is a finding.

    python bench/fuzz.py [--count 10000] [--seed 0] [--workers 2] [--timeout 60]
        [--kinds net_prototxt solverstate ...] [--top 40]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

from fuzz_kinds import KINDS  # noqa: E402
from fuzz_runner import BAD_OUTCOMES, normalize, plan, run_fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant")
    parser.add_argument("--kinds", nargs="+", choices=sorted(KINDS), default=sorted(KINDS))
    parser.add_argument("--top", type=int, default=40, help="messages to list")
    args = parser.parse_args()

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="caffe_ft_fuzz.") as folder:
        workdir = Path(folder)
        results = run_fuzz(plan(args.count, args.seed, args.kinds), workdir, args.workers,
                           args.timeout)
        messages = Counter((r.outcome, r.error, normalize(r.message, workdir))
                           for r in results if r.outcome != "ok")
    elapsed = time.monotonic() - start

    print(f"{len(results)} mutants in {elapsed:.0f} s (seed {args.seed})")
    by_kind = Counter((r.job.kind, r.outcome) for r in results)
    outcomes = sorted({outcome for _, outcome in by_kind})
    print(f"\n{'kind':<18}" + "".join(f"{o:>13}" for o in outcomes))
    for kind in args.kinds:
        print(f"{kind:<18}" + "".join(f"{by_kind[kind, o]:>13}" for o in outcomes))
    totals = Counter(r.outcome for r in results)
    print(f"{'all':<18}" + "".join(f"{totals[o]:>13}" for o in outcomes))

    print(f"\nmessages ({len(messages)} distinct, top {args.top}):")
    for (outcome, error, message), n in messages.most_common(args.top):
        print(f"{n:6}  {outcome:<11} {error:<12} {message[:160]}")

    findings = [r for r in results if r.outcome in BAD_OUTCOMES]
    print(f"\nfindings: {len(findings)} ("
          + ", ".join(f"{o} {totals[o]}" for o in sorted(BAD_OUTCOMES)) + ")")
    for r in findings:
        print(f"  {r.outcome} {r.job.kind} {r.job.seed} key={r.job.key} "
              f"{list(r.mutations)}: {r.error} {r.message[:300]}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())

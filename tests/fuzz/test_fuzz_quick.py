"""A small seeded fuzz run (bench/fuzz.py runs the long one): 40 mutants of
every kind (net and solver prototxts, caffemodels, solverstates, Datums in
an LMDB, image lists) each run normally or end in one CaffeError line, with
no other exception, hang, crash or file left behind."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from fuzz_kinds import KINDS
from fuzz_runner import BAD_OUTCOMES, plan, run_fuzz


def test_40_mutants_of_each_kind_end_in_a_caffe_error_or_run(tmp_path: Path) -> None:
    count = 40 * len(KINDS)  # so that a new kind does not thin out the others
    results = run_fuzz(plan(count, 20260412, sorted(KINDS)), tmp_path)
    assert len(results) == count
    findings = [f"{r.outcome} {r.job} {list(r.mutations)}: {r.error} {r.message}"
                for r in results if r.outcome in BAD_OUTCOMES]
    assert findings == []
    # Both ends are exercised for every kind: some mutants still work, some are refused.
    outcomes = Counter((r.job.kind, r.outcome) for r in results)
    for kind in KINDS:
        assert outcomes[kind, "ok"] > 0 and outcomes[kind, "caffe_error"] > 0, outcomes
    # A stray brace or colon is a syntax error: only identifiers are called fork fields.
    forks = [r.message for r in results if "probably from a Caffe fork" in r.message]
    assert forks
    for message in forks:
        for listed in message.split("fork: ", 1)[1].split("; "):
            assert re.fullmatch(r"\w+\.[A-Za-z_]\w* \(line [\d, ]+\)", listed), message

"""A few hundred mutated headers and files of every format the runtime reads: each one is refused
cleanly or read correctly; none ends in a traceback, a crash, an unbounded allocation or a wrong
answer (tests/fuzzkit.py says how each case is judged)."""
from __future__ import annotations

from tests.fuzzkit import fuzz

CASES_PER_FORMAT = 36


def test_no_mutated_file_breaks_the_readers(tmp_path, capsys):
    report = fuzz(tmp_path, CASES_PER_FORMAT)
    with capsys.disabled():
        print("\n" + "\n".join(report.lines()))
    assert report.counts["broke"] == 0, "\n".join(report.lines())
    assert report.counts["refused"] > 0 and report.counts["same"] > 0
    assert sum(report.counts.values()) == CASES_PER_FORMAT * len(report.by_seed)

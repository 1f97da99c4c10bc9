"""Fuzzing the scan readers at scale: thousands of mutated headers and files of every format the
runtime reads (tests/fuzzkit.py makes and judges them; the test suite runs a few hundred), with the
count of each ending per format and the time per file. Run from the repository root:

    python benchmarks/fuzz_readers.py                      # 300 mutations per format, 3 seeds
    python benchmarks/fuzz_readers.py --per-format 50 --seeds 1

Exit code 1 when any case broke (a traceback, a crash, a hang, an unbounded allocation or a wrong
answer); each such case is listed with its file, kept under --keep when given.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fuzzkit import fuzz  # noqa: E402
from window_bench.host import print_machine  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-format", type=int, default=300, help="mutated files per format and seed")
    parser.add_argument("--seeds", type=int, default=3, help="random seeds, one full round each")
    parser.add_argument("--keep", type=Path, help="keep the files under this folder")
    args = parser.parse_args()
    print_machine()
    broke = 0
    for seed in range(args.seeds):
        folder = Path(tempfile.mkdtemp(prefix="medflow-fuzz-")) if args.keep is None else args.keep / f"seed{seed}"
        started = time.perf_counter()
        report = fuzz(folder, args.per_format, seed, progress=lambda text: print(f"seed {seed}: {text}", flush=True))
        elapsed = time.perf_counter() - started
        total = sum(report.counts.values())
        print(f"seed {seed}: " + "\n".join(report.lines()), flush=True)
        print(f"seed {seed}: {elapsed:.1f} s, {1000 * elapsed / total:.1f} ms per file", flush=True)
        broke += report.counts["broke"]
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{'no case broke' if not broke else f'{broke} case(s) broke'} in {args.seeds} seed(s)", flush=True)
    return 1 if broke else 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory of the window engine's mergers as the output grows: in memory, handed on by rows,
and chunked on disk.

Each merge runs in a fresh process, which stitches every window of a plan over a 2D output of
K channels (a slide's probability map) and finishes it, then reports its own peak resident
memory. The in-memory merger grows with the output; the row merger holds the open rows only and
keeps each handed-on row's argmax (uint8, what a label map needs); the chunked merger stays near
its cache bound, whatever the output's size. Each run checks that the three made the same label
map, pixel for pixel, and the in-memory and chunked mergers the same float map, bit for bit.

    python benchmarks/merger_memory.py                      # outputs of 2048² and 8192², 3 channels
    python benchmarks/merger_memory.py --sizes 4096 16384 --max-mb 64
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from runtime.window import ChunkedMerger, MemoryMerger, WindowSpec, plan  # noqa: E402
from runtime.window.stream import RowMerger  # noqa: E402
from window_bench.host import own_peak_mb, print_machine  # noqa: E402

PATCH = 512
OVERLAP = 0.25
BAND = 256


def digests(kind: str, result: object, labels: np.ndarray, size: int) -> dict[str, str | None]:
    """SHA-256 of the whole label map (each pixel's argmax) and, for the mergers that keep one, of
    the whole float32 map, read a band of rows at a time."""
    label_hash, map_hash = hashlib.sha256(), hashlib.sha256()
    for first in range(0, size, BAND):
        rows = slice(first, min(size, first + BAND))
        if kind == "rows":
            label_hash.update(labels[rows].tobytes())
            continue
        block = result[:, rows] if kind == "memory" else result.read((rows, slice(0, size)))
        map_hash.update(np.ascontiguousarray(block, np.float32).tobytes())
        label_hash.update(np.argmax(block, axis=0).astype(np.uint8).tobytes())
    return {"labels": label_hash.hexdigest(), "map": None if kind == "rows" else map_hash.hexdigest()}


def merge_once(kind: str, size: int, channels: int, max_mb: int, folder: str) -> dict[str, object]:
    """Stitch every window over a size x size output into one merger and finish it; its seconds,
    its peak memory, and the digests of what it made (taken after the peak)."""
    planned = plan((size, size), WindowSpec((PATCH, PATCH), overlap=OVERLAP, batch_size=4))
    labels = np.zeros((size, size), np.uint8)

    def keep_labels(first: int, rows: np.ndarray) -> None:
        labels[first:first + rows.shape[1]] = np.argmax(rows, axis=0)

    merger = (MemoryMerger(planned) if kind == "memory" else RowMerger(planned, keep_labels) if kind == "rows"
              else ChunkedMerger(planned, Path(folder) / "chunks", max_mb * 2**20))
    rng = np.random.default_rng(0)
    outputs = rng.random((4, channels, PATCH, PATCH), dtype=np.float32)
    started = time.perf_counter()
    for step in planned.passes:
        output = outputs[: len(step.windows)]
        merger.take(step, merger.check(output, len(step.windows)))
    result = merger.finish()
    seconds = time.perf_counter() - started
    peak_mb = own_peak_mb()
    return {"seconds": seconds, "peak_mb": peak_mb, "windows": planned.windows,
            **digests(kind, result, labels, size)}


def check_alike(memory: dict[str, object], rows: dict[str, object], chunked: dict[str, object]) -> None:
    """The three label maps equal pixel for pixel, and the in-memory and chunked float maps bit for bit."""
    if not memory["labels"] == rows["labels"] == chunked["labels"]:
        raise SystemExit("the mergers disagree: their label maps differ")
    if memory["map"] != chunked["map"]:
        raise SystemExit("the mergers disagree: the in-memory and chunked float maps differ")


def run_child(kind: str, size: int, channels: int, max_mb: int) -> dict[str, object]:
    folder = tempfile.mkdtemp(prefix="medflow-merger-")
    try:
        command = [sys.executable, __file__, "--child", kind, str(size), str(channels), str(max_mb), folder]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def baseline_mb() -> float:
    """The peak memory of a process that only imports what a merge imports."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            "import numpy, runtime.window, window_bench.host as host; print(host.own_peak_mb())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return float(done.stdout.strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--max-mb", type=int, default=64, help="the chunked merger's cache bound")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, size, channels, max_mb, folder = args.child
        print(json.dumps(merge_once(kind, int(size), int(channels), int(max_mb), folder)), flush=True)
        return
    print_machine()
    print(f"merger peak memory, {args.channels} channels, windows {PATCH}² at overlap {OVERLAP}, "
          f"chunk cache {args.max_mb} MB; a bare process (numpy and runtime.window imported): "
          f"{baseline_mb():.0f} MB", flush=True)
    print(f"{'output':>12} {'float32 map':>12} {'windows':>8} {'in memory':>18} {'rows + labels':>18} "
          f"{'chunked on disk':>20}", flush=True)
    for size in args.sizes:
        memory = run_child("memory", size, args.channels, args.max_mb)
        rows = run_child("rows", size, args.channels, args.max_mb)
        chunked = run_child("chunked", size, args.channels, args.max_mb)
        check_alike(memory, rows, chunked)
        map_mb = args.channels * size * size * 4 / 2**20
        print(f"{size:>5} x {size:<5} {map_mb:>9.0f} MB {memory['windows']:>8} "
              f"{memory['peak_mb']:>8.0f} MB {memory['seconds']:>5.1f} s "
              f"{rows['peak_mb']:>8.0f} MB {rows['seconds']:>5.1f} s "
              f"{chunked['peak_mb']:>10.0f} MB {chunked['seconds']:>5.1f} s", flush=True)


if __name__ == "__main__":
    main()

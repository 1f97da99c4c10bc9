"""Radiology sliding-window benchmark: the runtime against MONAI and TorchIO, on the same CPU budget.

Three parts, each in turns after one untimed run of every contender:

main   a synthetic BraTS-like 4-channel volume, for each backend of the runtime (--device:
       OpenVINO and onnxruntime on the CPU):
         A  runtime end to end: read four NIfTI files, `predict_scan`, write the label map atomically
         B  MONAI: SimpleITK read, z-score, `sliding_window_inference` (gaussian), softmax + argmax, write
         C  TorchIO: SimpleITK read, z-score, `GridSampler` + `GridAggregator` (hann), argmax, write
         D  that backend's compute alone: the forward passes over as many windows as A runs, gathered
            beforehand, nothing stitched, on the engine A's sliding window uses (OpenVINO's
            throughput streams with every request in flight; onnxruntime batch by batch)
         D1 OpenVINO's forward passes one batch at a time (for context)
       printing A/B (target <= 0.65) and A/D (target <= 1.10, of the medians and paired), then
       A stage by stage (read, preprocess, sliding window, labels, write; --no-stages leaves it out)
brain  a real brain MR (1 channel, resampled to 1 mm): the runtime with and without skipping
       background windows, and MONAI on the same preprocessed array
ct     a real CT series (DICOM) whose air (below -900 HU) is the background skipping leaves out

One MONAI 3D UNet (seeded, exported once to ONNX, packaged with `export.package`) and the same
thread count everywhere. Run from anywhere, with the runtime installed (`pip install -e
'.[openvino]'`) plus torch, MONAI and TorchIO:

    python benchmarks/radiology_window.py                    # the full run (about 12 minutes on 2 cores)
    python benchmarks/radiology_window.py --quick            # a smoke run
    PYTHONPATH=/path/to/older/checkout python benchmarks/radiology_window.py --no-stages

The last line times another checkout's runtime (its `runtime` and `export` packages) with these
benchmark modules: A, B, C and D use only API that older runtimes offer as well. The real data
come from --data-dir, else $TEST_DATA_DIR, else ../shared/data beside the repository.
See benchmarks/README.md for what is timed and the last figures.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if sys.path[0] != str(HERE):
    sys.path.insert(0, str(HERE))  # this folder's window_bench, never another on PYTHONPATH
if str(HERE.parent) not in sys.path:
    sys.path.append(str(HERE.parent))  # this checkout's runtime, unless one is installed or on PYTHONPATH

import datetime as dt  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Sequence  # noqa: E402

import torch  # noqa: E402

from window_bench import report, timing  # noqa: E402
from window_bench.host import machine_text  # noqa: E402
from window_bench.brain import brain_comparison  # noqa: E402
from window_bench.ct import ct_comparison  # noqa: E402
from window_bench.main_case import main_comparison  # noqa: E402
from window_bench.options import Settings, parse_args  # noqa: E402

EXPERIMENTS = {"main": main_comparison, "brain": brain_comparison, "ct": ct_comparison}


def print_header(settings: Settings) -> None:
    print(f"radiology_window benchmark, {dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {machine_text()}")
    print(f"versions: {report.versions_text()}")
    print(f"runtime: {report.runtime_text()}; backends: {', '.join(settings.devices)}; "
          f"parts: {', '.join(settings.experiments)}")
    print(f"load average before: {timing.load_text()}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv, __doc__.split("\n\n")[0])
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(settings.threads)
    settings.cache.mkdir(parents=True, exist_ok=True)
    print_header(settings)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=settings.cache))
    started, busy = time.perf_counter(), timing.busy_seconds()
    try:
        for name in settings.experiments:
            EXPERIMENTS[name](settings, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average after: {timing.load_text()}")
    print(timing.others_text(busy, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark's constants and its command-line options."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from window_bench.host import data_root

PATCH = 96
OVERLAP = 0.5
SEED = 20240611
CHANNELS = ("t1", "t1ce", "t2", "flair")
CLASSES = {0: "background", 1: "oedema", 2: "tumour"}
FULL_SHAPE_XYZ = (240, 240, 155)
QUICK_SHAPE_XYZ = (128, 128, 100)
TARGET_A_B = 0.65
TARGET_A_D = 1.10
DEVICES = ("openvino", "cpu")
ENGINES = {"openvino": "openvino", "cpu": "onnxruntime"}  # the engine behind each --device
EXPERIMENTS = ("main", "brain", "ct")

BENCHMARKS = Path(__file__).resolve().parents[1]
REPO = BENCHMARKS.parent


@dataclass(frozen=True)
class Settings:
    repeats: int
    cache: Path
    data_root: Path
    batch_size: int
    threads: int
    devices: tuple[str, ...]
    experiments: tuple[str, ...]
    quick: bool
    skip_monai: bool
    skip_torchio: bool
    stages: bool


def names_of(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: one name of `allowed`, or several separated by commas."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        if not names or any(name not in allowed for name in names):
            raise argparse.ArgumentTypeError(f"{text!r}: expected one or more of {', '.join(allowed)}, "
                                             "separated by commas")
        return names

    return parse


def joined(given: Sequence[tuple[str, ...]] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """The names of repeated list options, in order, each once; `default` where none was given."""
    if not given:
        return default
    return tuple(dict.fromkeys(name for names in given for name in names))


def make_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    add = parser.add_argument
    add("--repeats", type=int, default=3, help="timed turns per contender (default 3)")
    add("--cache-dir", type=Path, default=BENCHMARKS / "out",
        help="ONNX files, weights and synthetic scans (default benchmarks/out)")
    add("--data-dir", type=Path, default=None,
        help="the shared test data: radiology/ and dicom/ (default $TEST_DATA_DIR, else ../shared/data "
             "beside the repository)")
    add("--batch-size", type=int, default=1,
        help="windows per model call, for every contender (default 1: the runtime's faster)")
    add("--threads", type=int, default=2, help="CPU threads for every contender (default 2)")
    add("--device", action="append", type=names_of(DEVICES), metavar="{openvino,cpu}",
        help="the runtime's backend(s) for A and D: openvino, cpu (onnxruntime), or both as "
             "openvino,cpu; repeatable (default both; the first also runs the brain and CT parts)")
    add("--experiment", action="append", type=names_of(EXPERIMENTS), metavar="{main,brain,ct}",
        help="which parts to run; repeatable or a list (default all three)")
    add("--skip-monai", action="store_true", help="do not run MONAI (B, and the brain reference)")
    add("--skip-torchio", action="store_true", help="do not run TorchIO (C)")
    add("--no-stages", action="store_true",
        help="leave out A stage by stage, which needs the current window engine's API (for timing an "
             "older runtime put on PYTHONPATH)")
    add("--quick", action="store_true",
        help=f"smoke run: a {'x'.join(map(str, QUICK_SHAPE_XYZ))} volume, a cropped brain and CT, 1 turn")
    return parser


def parse_args(argv: Sequence[str] | None, description: str) -> Settings:
    parser = make_parser(description)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1 or args.threads < 1:
        parser.error("--repeats, --batch-size and --threads must be at least 1")
    return Settings(repeats=1 if args.quick else args.repeats, cache=args.cache_dir.resolve(),
                    data_root=(args.data_dir or data_root()).resolve(),
                    batch_size=args.batch_size, threads=args.threads,
                    devices=joined(args.device, DEVICES), experiments=joined(args.experiment, EXPERIMENTS),
                    quick=args.quick, skip_monai=args.skip_monai, skip_torchio=args.skip_torchio,
                    stages=not args.no_stages)

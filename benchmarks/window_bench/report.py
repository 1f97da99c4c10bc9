"""What the benchmark prints: the versions, tables of times, ratios against targets,
and how far two label maps agree."""
from __future__ import annotations

import importlib.metadata
import platform
import statistics
from pathlib import Path
from typing import Sequence

import numpy as np

from window_bench.options import CLASSES
from window_bench.timing import LABEL_WIDTH, Labels, Timed

PACKAGES = ("numpy", "SimpleITK", "openvino", "onnxruntime", "torch", "monai", "torchio")


def version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions_text() -> str:
    return ", ".join([f"python {platform.python_version()}",
                      *(f"{package} {version_of(package)}" for package in PACKAGES)])


def runtime_text() -> str:
    """Where the runtime being timed was imported from."""
    import runtime

    return str(Path(runtime.__file__).resolve().parent)


def header(title: str, first: str) -> None:
    print(f"\n== {title}: seconds (median, min over turns) ==")
    print(f"{first:<{LABEL_WIDTH}s} {'median':>9s} {'min':>9s} {'turns':>5s}")


def row(label: str, timed: Timed | None) -> str:
    if timed is None or not timed.seconds:
        return f"{label:<{LABEL_WIDTH}s} {'skipped':>9s}"
    return f"{label:<{LABEL_WIDTH}s} {timed.median:9.2f} {timed.best:9.2f} {len(timed.seconds):5d}"


def verdict(value: float, target: float) -> str:
    return f"target <= {target:.2f}: {'met' if value <= target else 'NOT met'}"


def ratio_text(name: str, a: Timed | None, b: Timed | None, target: float | None = None) -> str:
    """`name` = median(a) / median(b), with min(a) / min(b) beside it, against an optional target."""
    if a is None or b is None or not a.seconds or not b.seconds:
        return f"{name:<16s} n/a (skipped)"
    value = a.median / b.median
    text = f"{name:<16s} {value:6.3f}  (of the minima {a.best / b.best:.3f})"
    return text if target is None else f"{text}   {verdict(value, target)}"


def turn_ratios(a: Timed, b: Timed) -> list[float]:
    """a/b turn by turn, each a beside the b of its turn."""
    return [x / y for x, y in zip(a.seconds, b.seconds)]


def paired_text(name: str, a: Timed | None, b: Timed | None, target: float) -> str:
    """The median over the turns of a/b, each turn's two runs timed back to back (see
    `timing.in_turns`): the drift of the machine's speed from turn to turn is largely common to
    both runs of a turn, where the ratio of medians can take a from a fast turn and b from a slow one."""
    if a is None or b is None or not a.seconds or not b.seconds:
        return f"{name} paired n/a (skipped)"
    if len(a.seconds) != len(b.seconds):
        return f"{name} paired n/a ({len(a.seconds)} and {len(b.seconds)} turns)"
    per_turn = turn_ratios(a, b)
    value = statistics.median(per_turn)
    within = sum(x <= target for x in per_turn)
    return (f"{name} paired {value:.3f}  (median of the {len(per_turn)} turns' ratios, {within} of "
            f"{len(per_turn)} turns <= {target:.2f})   {verdict(value, target)}")


def seconds_list(values: Sequence[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


def percent_equal(a: Labels | None, b: Labels | None) -> str:
    if a is None or b is None:
        return "n/a"
    if a.shape != b.shape:
        return f"shapes differ {a.shape} vs {b.shape}"
    if a.size == 0:
        return "n/a (no voxel)"
    return f"{100.0 * np.count_nonzero(a == b) / a.size:.3f} %"


def class_fractions(labels: Labels | None) -> str:
    if labels is None:
        return "n/a"
    counts = np.bincount(labels.ravel(), minlength=len(CLASSES))
    return ", ".join(f"{CLASSES[k]} {100.0 * counts[k] / labels.size:.1f} %" for k in CLASSES)


def mm(spacing: Sequence[float]) -> str:
    return "x".join(f"{s:.2f}" for s in spacing)


def starts_text(per_axis: Sequence[Sequence[int]]) -> str:
    return "; ".join(",".join(map(str, starts)) for starts in per_axis)

"""Ensemble benchmark: one ONNX graph holding every fold against the fold graphs run one after another.

Five folds of a 3D UNet (trainer.models "unet", base_filters 16, depth 4, 1 channel in, 3 classes
out; seeds SEED, SEED + 1, ...) are exported with `export.onnx_export.export_fold` and joined with
`export.ensemble.ensemble_graph` (softmax per fold, then the mean). Per window, batch 1:

  E  the ensemble graph: one call of one backend
  S  the fold graphs one after another (one backend each), softmax in numpy, then the mean

both on onnxruntime (CPU provider) and OpenVINO through `runtime.backends.open_backend`, with the
same thread count, timed in turns (E S, E S, ...), the median of the repeats printed per window
with the ratio E/S. The folds are exported with dynamic spatial axes, with fixed ones, or both
(`--spatial`; both variants are timed in the same turns), to show what fixing the patch size in
the graph is worth. Run from the repository root:

    python benchmarks/ensemble.py            # the full run: 5 folds, patch 96^3
    python benchmarks/ensemble.py --quick    # a smoke run: 2 folds, patch 32^3

Arrays are model arrays (batch, channels, z, y, x).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

from export.ensemble import ensemble_graph  # noqa: E402
from export.onnx_export import export_fold, parity_inputs  # noqa: E402
from runtime.backends import Backend, available_backends, open_backend  # noqa: E402
from trainer.models import ModelSpec, build_model  # noqa: E402
from window_bench.host import print_machine  # noqa: E402

SEED = 20240611
CLASSES = 3
DEVICES = ("cpu", "openvino")


@dataclass(frozen=True)
class Settings:
    folds: int
    patch: int
    repeats: int
    threads: int
    spatial: tuple[str, ...]
    cache: Path


def unet_spec() -> ModelSpec:
    return ModelSpec(architecture="unet", dimensions=3, in_channels=1, out_channels=CLASSES,
                     task="segmentation", base_filters=16, depth=4)


def fold_paths(settings: Settings, spatial: str) -> tuple[list[Path], Path]:
    """The fold files and the ensemble file for one spatial variant, exported on first use."""
    folder = settings.cache / f"unet16d4_p{settings.patch}_{spatial}"
    folds = [folder / f"fold{index}.onnx" for index in range(settings.folds)]
    ensemble = folder / f"ensemble_{settings.folds}.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 1, *[settings.patch] * 3)
    for index, path in enumerate(folds):
        if not path.is_file():
            torch.manual_seed(SEED + index)
            export_fold(build_model(unet_spec()), example, path, dynamic_spatial=spatial == "dynamic")
    if not ensemble.is_file():
        graphs = [onnx.load(str(path)) for path in folds]
        onnx.save(ensemble_graph(graphs, "segmentation", activation="softmax"), str(ensemble))
    return folds, ensemble


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def one_after_another(backends: Sequence[Backend]) -> Callable[[np.ndarray], np.ndarray]:
    def run(batch: np.ndarray) -> np.ndarray:
        total = softmax(backends[0](batch))
        for backend in backends[1:]:
            total += softmax(backend(batch))
        return total / len(backends)
    return run


def timed_open(path: Path, device: str, threads: int, cache: Path) -> tuple[Backend, float]:
    started = time.perf_counter()
    backend = open_backend(path, "input", "output", device=device, threads=threads, cache_dir=cache)
    return backend, time.perf_counter() - started


def seconds_per_call(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> float:
    started = time.perf_counter()
    run(batch)
    return time.perf_counter() - started


def in_turns(contenders: dict[str, Callable[[np.ndarray], np.ndarray]], batch: np.ndarray,
             repeats: int) -> dict[str, list[float]]:
    """One untimed warm-up call each, then `repeats` timed calls each, in turns."""
    for run in contenders.values():
        run(batch)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            times[name].append(seconds_per_call(run, batch))
    return times


@dataclass(frozen=True)
class Variant:
    """One spatial variant on one device: the ensemble backend (E) and the folds run in sequence (S)."""

    spatial: str
    name: str
    ensemble: Callable[[np.ndarray], np.ndarray]
    sequential: Callable[[np.ndarray], np.ndarray]
    ensemble_load: float
    folds_load: float


def open_variant(settings: Settings, device: str, spatial: str, cache: Path) -> Variant:
    folds, ensemble_path = fold_paths(settings, spatial)
    ensemble, ensemble_load = timed_open(ensemble_path, device, settings.threads, cache / spatial / "e")
    opened = [timed_open(path, device, settings.threads, cache / spatial / "s") for path in folds]
    return Variant(spatial, ensemble.name, ensemble, one_after_another([backend for backend, _ in opened]),
                   ensemble_load, sum(seconds for _, seconds in opened))


def compare(settings: Settings, device: str, batch: np.ndarray) -> list[str]:
    """Every spatial variant's E and S on `device`, all timed in the same turns; one table row each."""
    with tempfile.TemporaryDirectory(prefix="ensemble-bench-") as cache:  # cold OpenVINO compile cache
        variants = [open_variant(settings, device, spatial, Path(cache)) for spatial in settings.spatial]
        contenders = {f"{kind} {v.spatial}": run for v in variants
                      for kind, run in (("E", v.ensemble), ("S", v.sequential))}
        differences = {v.spatial: float(np.abs(v.ensemble(batch) - v.sequential(batch)).max()) for v in variants}
        times = in_turns(contenders, batch, settings.repeats)
    rows = []
    for v in variants:
        e, s = statistics.median(times[f"E {v.spatial}"]), statistics.median(times[f"S {v.spatial}"])
        rows.append(f"{v.name:<34s} {v.spatial:<8s} {1000 * e:9.1f} {1000 * s:9.1f} {e / s:7.3f} "
                    f"{v.ensemble_load:8.2f} {v.folds_load:8.2f} {differences[v.spatial]:10.1e}")
    return rows


def load_text(settings: Settings) -> str:
    return f"load {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {settings.threads} threads per backend"


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=None, help="number of folds (default 5; --quick: 2)")
    parser.add_argument("--patch", type=int, default=None, help="patch edge, a multiple of 16 (default 96; --quick: 32)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per contender (default 5; --quick: 2)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per backend (default 2)")
    parser.add_argument("--spatial", choices=("dynamic", "fixed", "both"), default="both",
                        help="export the folds with dynamic or fixed spatial axes, or time both (default both)")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "benchmarks" / "out" / "ensemble",
                        help="where the exported folds are kept (default benchmarks/out/ensemble, git-ignored)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 folds, patch 32^3, 2 repeats")
    args = parser.parse_args(argv)
    quick = args.quick
    spatial = ("dynamic", "fixed") if args.spatial == "both" else (args.spatial,)
    return Settings(folds=args.folds or (2 if quick else 5), patch=args.patch or (32 if quick else 96),
                    repeats=args.repeats or (2 if quick else 5), threads=args.threads, spatial=spatial,
                    cache=args.cache_dir)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    torch.set_num_threads(settings.threads)
    print_machine()
    batch = parity_inputs((1, 1, *[settings.patch] * 3), seed=SEED)[1]
    print(f"{settings.folds} folds of a 3D UNet (base 16, depth 4), one window of {settings.patch}^3, batch 1, "
          f"median of {settings.repeats}; {load_text(settings)}")
    print(f"torch {torch.__version__}, onnx {onnx.__version__}")
    print(f"{'backend':<34s} {'spatial':<8s} {'E ms':>9s} {'S ms':>9s} {'E/S':>7s} {'E load s':>8s} "
          f"{'S load s':>8s} {'max|E-S|':>10s}")
    for device in [device for device in DEVICES if device in available_backends()]:
        print("\n".join(compare(settings, device, batch)), flush=True)
    print("E: the ensemble graph, one call; S: the folds one after another + numpy softmax + mean. "
          "Load: cold (empty compile cache), S summed over the folds.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

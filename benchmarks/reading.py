"""What reading a scan with every check costs: `runtime.io.read_scan` (headers parsed and checked,
stored data checked against them — gzip CRC, zlib Adler-32, exact size — geometry checked, the
float32 channels made) against the same files read by SimpleITK alone into the same float32 array
(no check), in alternating turns, the median of each printed with their ratio. Run from the
repository root:

    python benchmarks/reading.py            # a 512 × 512 × 300 CT in three formats, a 4-channel MR
    python benchmarks/reading.py --quick    # 256 × 256 × 100

The scans are synthetic (smooth tissue with noise, air at 0), written once under --cache-dir.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from runtime.io import read_scan  # noqa: E402
from window_bench.host import machine_text  # noqa: E402


def _volume(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    body = sum(g ** 2 for g in grids) < 0.8
    tissue = 40 + 300 * np.exp(-sum(g ** 2 for g in grids) / 0.2) + rng.normal(0, 20, shape).astype(np.float32)
    return np.where(body, tissue, 0).astype(np.int16)


def _cases(folder: Path, shape: tuple[int, ...]) -> dict[str, list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, list[Path]] = {}
    for name in ("ct.nii.gz", "ct.nrrd", "ct.mha"):
        path = folder / f"{'x'.join(map(str, shape))}_{name}"
        if not path.exists():
            image = sitk.GetImageFromArray(_volume(shape, 0))
            image.SetSpacing((0.8, 0.8, 1.5))
            sitk.WriteImage(image, str(path), useCompression=True)
        cases[name] = [path]
    small = (shape[0] // 2, shape[1] // 2, shape[2] // 2)
    channels = []
    for index in range(4):
        path = folder / f"{'x'.join(map(str, small))}_mr{index}.nii.gz"
        if not path.exists():
            sitk.WriteImage(sitk.GetImageFromArray(_volume(small, index + 1)), str(path), useCompression=True)
        channels.append(path)
    cases["4 channels .nii.gz"] = channels
    return cases


def _unchecked(paths: list[Path]) -> np.ndarray:
    images = [sitk.ReadImage(str(p)) for p in paths]
    array = np.empty((len(images), *reversed(images[0].GetSize())), dtype=np.float32)
    for index, image in enumerate(images):
        np.copyto(array[index], sitk.GetArrayViewFromImage(image), casting="unsafe")
    return array


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "benchmarks" / "out" / "reading")
    args = parser.parse_args()
    shape = (100, 256, 256) if args.quick else (300, 512, 512)
    print(f"machine: {machine_text()}; "
          f"SimpleITK {sitk.Version.VersionString()}", flush=True)
    print(f"{'case':<20} {'checked s':>10} {'ITK alone s':>12} {'ratio':>7}", flush=True)
    for name, paths in _cases(args.cache_dir, shape).items():
        checked, alone = [], []
        assert np.array_equal(read_scan(paths).array_zyx, _unchecked(paths))
        for turn in range(args.repeats):
            pair = [("checked", lambda: read_scan(paths)), ("alone", lambda: _unchecked(paths))]
            for label, work in pair if turn % 2 == 0 else reversed(pair):
                (checked if label == "checked" else alone).append(_timed(work))
        a, b = statistics.median(checked), statistics.median(alone)
        print(f"{name:<20} {a:>10.3f} {b:>12.3f} {a / b:>7.2f}", flush=True)


if __name__ == "__main__":
    main()

"""What `resample: {method: nnunet}` costs against the default `linear`, and against nnU-Net's own
function on the same volume.

    python benchmarks/resampling.py                 # a 512 x 512 x 200 CT-sized volume (about 2 minutes on 2 cores)
    python benchmarks/resampling.py --depth 100     # half of it

The volume is synthetic (float32 noise over a smooth field). Two cases, each as `run_steps` runs it
(forward) and as `invert` brings three channels of outputs back:

1. isotropic: 0.8 x 0.8 x 1.0 mm to 1.5 mm on every axis (nnunet: a cubic spline in 3D, a slab at a
   time);
2. anisotropic: 0.7 x 0.7 x 5.0 mm to 1 x 1 x 3 mm (nnunet: each slice on its own, nearest along z).

Printed per case and direction: seconds for linear, nnunet and nnU-Net's own
`resample_data_or_seg_to_shape` (where nnunetv2 is installed), the ratios to linear, and the largest
difference between nnunet and nnU-Net's result.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from window_bench.host import print_machine  # noqa: E402


def volume(depth: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.linspace(0, 3, depth), np.linspace(0, 3, 512), np.linspace(0, 3, 512), indexing="ij")
    field = 400 * np.sin(z) * np.cos(y) * np.sin(x + 0.5)
    return (field + rng.normal(0, 30, field.shape)).astype(np.float32)


def timed(run):
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def case(name: str, array: np.ndarray, spacing: tuple[float, ...], target: tuple[float, ...]) -> None:
    from runtime.manifest import Step
    from runtime.preprocess import Volume, invert, run_steps

    results = {}
    for method in ("linear", "nnunet"):
        step = Step("resample", {"spacing": list(target), "method": method})
        seconds, (prepared, record) = timed(lambda: run_steps(Volume.from_array(array[None], spacing), [step]))
        outputs = np.repeat(prepared.array, 3, axis=0)
        back_seconds, back = timed(lambda: invert(record, outputs, np.zeros(3, np.float32)))
        results[method] = (seconds, back_seconds, prepared.array, back)
        print(f"{name}: {method:6s} forward {seconds:6.2f} s to {prepared.array.shape[1:]}, back (3 channels) "
              f"{back_seconds:6.2f} s", flush=True)
    linear, ours = results["linear"], results["nnunet"]
    print(f"{name}: nnunet / linear: forward {ours[0] / linear[0]:.2f}x, back {ours[1] / linear[1]:.2f}x", flush=True)
    try:
        from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape
    except ImportError:
        print(f"{name}: nnunetv2 is not installed: no comparison with nnU-Net's own function", flush=True)
        return
    shape = ours[2].shape[1:]
    seconds, theirs = timed(lambda: resample_data_or_seg_to_shape(array[None], shape, spacing, target, is_seg=False,
                                                                  order=3, order_z=0, force_separate_z=None))
    outputs = np.repeat(theirs, 3, axis=0)
    back_seconds, theirs_back = timed(lambda: resample_data_or_seg_to_shape(
        outputs, array.shape, target, spacing, is_seg=False, order=1, order_z=0, force_separate_z=None))
    print(f"{name}: nnU-Net's own: forward {seconds:6.2f} s, back {back_seconds:6.2f} s; nnunet / nnU-Net: "
          f"forward {ours[0] / seconds:.2f}x, back {ours[1] / back_seconds:.2f}x; largest difference "
          f"{float(np.abs(ours[2] - theirs).max()):.2g} forward, {float(np.abs(ours[3] - theirs_back).max()):.2g} "
          f"back (values up to {float(np.abs(theirs).max()):.0f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=200, help="slices of the 512 x 512 volume")
    args = parser.parse_args()
    print_machine()
    array = volume(args.depth)
    print(f"volume 512 x 512 x {args.depth} float32 ({array.nbytes / 2**20:.0f} MiB)", flush=True)
    case("isotropic", array, (1.0, 0.8, 0.8), (1.5, 1.5, 1.5))
    case("anisotropic", array, (5.0, 0.7, 0.7), (3.0, 1.0, 1.0))


if __name__ == "__main__":
    main()

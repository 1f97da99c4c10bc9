"""Peak memory and time of `runtime predict` on a whole-body-sized CT: per class count, with
probabilities, and as the volume grows.

    python benchmarks/volume_memory.py                      # 512 x 512 x 1000 (about 5 minutes on 2 cores)
    python benchmarks/volume_memory.py --depth 250          # a quarter of it

The scan is synthetic (int16, 0.8 x 0.8 x 1.5 mm, written uncompressed). Each model is one 1 x 1 x 1
convolution from the CT channel to K logits (made here with onnx), packaged with a resample to
1.5 x 1.5 x 2 mm and a z-score, so that the outputs must be brought back through an interpolation,
as with most CT models. Each run is a fresh `runtime predict` process; printed: its peak resident
memory (the kernel's), the bytes per input voxel, and the seconds. Three parts:

1. labels alone (`--output`) for 1, 3 and 14 classes (target for 3 classes on 512 x 512 x 1000:
   under 4 GB);
2. labels and probabilities (`--probabilities`, float32) for 3 classes: the probability map is
   written from the array the runtime holds, without a second whole copy;
3. cost as work grows: 3 classes on 1x, 2x and 4x the voxels (depth / 4, depth / 2, depth), with
   time and peak memory as ratios to the 1x run.
"""
from __future__ import annotations

import argparse
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

from window_bench.host import print_machine  # noqa: E402


def conv_model(classes: int, path: Path) -> Path:
    """logits_k = (k / classes) * x - k / (2 * classes): higher classes win on brighter voxels."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = (np.arange(classes, dtype=np.float32) / classes).reshape(classes, 1, 1, 1, 1)
    bias = -(np.arange(classes, dtype=np.float32) / (2 * classes))
    node = helper.make_node("Conv", ["input", "weight", "bias"], ["output"], kernel_shape=[1, 1, 1])
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, "z", "y", "x"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", classes, "z", "y", "x"])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def package(classes: int, work: Path) -> Path:
    from export.package import build_from_onnx
    from export.spec import parse_spec

    names = {0: "background", **{k: f"class{k}" for k in range(1, max(2, classes))}}
    output = ({"activation": "softmax", "label_rule": "argmax"} if classes > 1
              else {"activation": "sigmoid", "label_rule": "threshold"})      # one channel: foreground or not
    spec = parse_spec({
        "name": f"conv{classes}", "task": "segmentation", "modality": "radiology", "dimensions": 3,
        "axis_order": "zyx", "channels": ["ct"], "classes": names,
        "preprocessing": [{"resample": {"spacing": [2.0, 1.5, 1.5]}}, {"zscore": {"region": "nonzero"}}],
        "patch": {"size": [64, 128, 128]},
        "window": {"overlap": 0.25, "blending": "gaussian", "batch_size": 2, "skip_background": False},
        "output": output,
        "provenance": {"description": "memory benchmark: a 1x1x1 convolution"},
    }, source="memory benchmark")
    return build_from_onnx(conv_model(classes, work / f"conv{classes}.onnx"), spec, work / "models")


def write_ct(path: Path, depth: int) -> int:
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:depth, :512, :512]
    body = ((y - 256) ** 2 + (x - 256) ** 2 < 200 ** 2)
    volume = np.where(body, 40, -1000).astype(np.int16) + rng.integers(-20, 20, (1, 512, 512), dtype=np.int16)
    volume = np.broadcast_to(volume, (depth, 512, 512)).copy()
    volume[:, 240:272, 240:272] = 700                                    # a spine
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.8, 0.8, 1.5))
    sitk.WriteImage(image, str(path), useCompression=False)
    return volume.size


def peak_run(model: Path, scan: Path, out: Path, probabilities: Path | None = None) -> tuple[float, float]:
    """Seconds and peak RSS (bytes) of one `runtime predict` process, read by a process of its own
    that starts it and waits for it (the peak of its only child)."""
    command = [sys.executable, "-c", "from runtime.commands.cli import main; main()", "predict", str(scan),
               "--model", str(model), "--output", str(out), "--quiet", "--device", "openvino"]
    if probabilities is not None:
        command += ["--probabilities", str(probabilities)]
    watcher = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", watcher, *command], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stdout + done.stderr)
    return time.perf_counter() - started, float(done.stdout.strip().splitlines()[-1]) * 1024.0


def line(label: str, seconds: float, peak: float, voxels: int) -> str:
    return f"{label}: peak {peak / 2**30:.2f} GiB = {peak / voxels:.1f} bytes per voxel, {seconds:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--classes", type=int, nargs="+", default=[1, 3, 14], help="output channels of each model")
    parser.add_argument("--skip-probabilities", action="store_true", help="leave part 2 out")
    parser.add_argument("--skip-growth", action="store_true", help="leave part 3 out")
    args = parser.parse_args()
    print_machine()
    work = Path(tempfile.mkdtemp(prefix="volume-memory-"))
    try:
        scan = work / "ct.nii"
        voxels = write_ct(scan, args.depth)
        print(f"scan 512 x 512 x {args.depth} ({voxels:,} voxels, int16)", flush=True)
        models = {classes: package(classes, work).parent for classes in sorted({*args.classes, 3})}
        print("labels alone (--output)", flush=True)
        for classes in args.classes:
            seconds, peak = peak_run(models[classes], scan, work / f"labels{classes}.nii")
            print(line(f"{classes:3d} classes", seconds, peak, voxels), flush=True)
        if not args.skip_probabilities:
            seconds, peak = peak_run(models[3], scan, work / "labels.nii", work / "probabilities.nii")
            written = (work / "probabilities.nii").stat().st_size
            print(f"labels and probabilities (--probabilities, {written / 2**30:.2f} GiB written)", flush=True)
            print(line("  3 classes", seconds, peak, voxels), flush=True)
        if not args.skip_growth:
            growth(models[3], work, args.depth)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def growth(model: Path, work: Path, depth: int) -> None:
    """The 3-class model on 1x, 2x and 4x the voxels: seconds and peak, and both as ratios to 1x."""
    print("cost as work grows (3 classes, labels alone)", flush=True)
    base: tuple[float, float] | None = None
    for factor in (1, 2, 4):
        scan = work / f"ct{factor}.nii"
        voxels = write_ct(scan, max(1, depth * factor // 4))
        seconds, peak = peak_run(model, scan, work / f"grow{factor}.nii")
        scan.unlink()
        base = base or (seconds, peak)
        print(f"{line(f'  {factor}x ({voxels:,} voxels)', seconds, peak, voxels)}; "
              f"time {seconds / base[0]:.2f}x, memory {peak / base[1]:.2f}x of 1x", flush=True)


if __name__ == "__main__":
    main()

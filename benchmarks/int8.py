"""int8 against float on the CPU: `python -m export quantize` on the radiology benchmark's UNet.

    python benchmarks/int8.py                   # five CT subjects, four to calibrate on, one held out

The model is the benchmark's MONAI 3D UNet (random weights: the compute of a real segmentation
network), packaged for CT (resampled to 2 x 1.5 x 1.5 mm, z-scored). The subjects are cut from the
shared CT (../shared/data/radiology/totalseg_example_ct_sm.nii.gz): five overlapping slabs, some
mirrored. `export quantize` calibrates on four and checks the fifth, here with the agreement gate off so that
the version is written whatever it finds; printed: the held-out label agreement (target >= 99.5 %),
the model's time float against int8 as `quantize` measures it (warm, in process), and `runtime
predict` on the held-out subject with each version in a fresh process (load included; target:
int8 >= 1.5x faster).
Needs torch and MONAI (the benchmark's network is exported once into benchmarks/out/) and NNCF.
"""
from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.append(str(path))

CT = REPO.parent / "shared" / "data" / "radiology" / "totalseg_example_ct_sm.nii.gz"


def subjects(work: Path) -> Path:
    """Five slabs of the CT as NIfTI files and the CSV that lists them."""
    image = sitk.ReadImage(str(CT))
    depth = image.GetSize()[2]
    rows = ["subject_id,ct"]
    for index in range(5):
        start = index * depth // 10
        slab = image[:, :, start:start + depth // 2]
        if index % 2:
            slab = sitk.Flip(slab, [True, False, False])
        sitk.WriteImage(slab, str(work / f"ct{index}.nii.gz"))
        rows.append(f"ct{index},ct{index}.nii.gz")
    (work / "subjects.csv").write_text("\n".join(rows) + "\n")
    return work / "subjects.csv"


def timed_run(model: Path, scan: Path, out: Path, repeats: int = 3) -> float:
    """Median seconds of `runtime predict` on OpenVINO, a fresh process each time (load included)."""
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "from runtime.commands.cli import main; main()", "predict", str(scan),
                        "--model", str(model), "--output", str(out), "--device", "openvino", "--quiet"],
                       check=True, capture_output=True)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    from export.quantize import quantize_version
    from window_bench.networks import ensure_network, package

    work = Path(tempfile.mkdtemp(prefix="int8-bench-"))
    try:
        _, onnx_path = ensure_network(REPO / "benchmarks" / "out", 1)
        steps = [{"resample": {"spacing": [2.0, 1.5, 1.5]}}, {"zscore": {"region": "nonzero"}}]
        model = package(onnx_path, work / "models", "unet_ct", ["ct"], steps, batch_size=2)
        csv_path = subjects(work)
        lines: list[str] = []

        def say(line: str) -> None:
            lines.append(line)
            print(line, flush=True)

        int8 = quantize_version(model / "1", csv_path, min_agreement=0.0, say=say)   # kept whatever agrees
        found = next(line for line in lines if line.startswith("label agreement"))
        agreement = float(found.split(": ")[1].split(" %")[0])
        verdict = "met" if agreement >= 99.5 else "NOT met"
        print(f"held-out label agreement {agreement:.3f} % (target >= 99.5 %: {verdict})", flush=True)
        held_out = work / "ct4.nii.gz"
        float_s = timed_run(model / "1", held_out, work / "f.nii.gz")
        int8_s = timed_run(int8, held_out, work / "i.nii.gz")
        agree = np.mean(sitk.GetArrayFromImage(sitk.ReadImage(str(work / "f.nii.gz")))
                        == sitk.GetArrayFromImage(sitk.ReadImage(str(work / "i.nii.gz"))))
        print(f"runtime predict on the held-out subject (fresh process, load included, medians of 3): float "
              f"{float_s:.2f} s, int8 {int8_s:.2f} s, {float_s / int8_s:.2f}x (target >= 1.5x: "
              f"{'met' if float_s / int8_s >= 1.5 else 'NOT met'}); labels agree on {100 * agree:.3f} %", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

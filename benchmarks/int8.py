"""int8 against float on the CPU: `python -m export quantize` on the radiology benchmark's UNet.

    python benchmarks/int8.py                   # five CT subjects, four to calibrate on, one held out
    python benchmarks/int8.py --trained 1200    # the UNet trained first (1200 steps, about 20 minutes, cached)

The model is the benchmark's MONAI 3D UNet (random weights: the compute of a real segmentation
network), packaged for CT (resampled to 2 x 1.5 x 1.5 mm, z-scored) with the classes of its data:
background, the liver, spleen and kidneys. The subjects are cut from the shared CT
(radiology/totalseg_example_ct_sm.nii.gz of the shared test data, `$TEST_DATA_DIR` else
../shared/data): five overlapping slabs, some mirrored. `export quantize` calibrates on four and
checks the fifth on each CPU backend, here with its gates off so that the version is written
whatever it finds; printed per backend: the held-out label agreement and each class's Dice int8
against float (targets >= 99.5 % and 0.99), the model's time float against int8 as `quantize`
measures it (warm, in process), the sample tolerance recorded, and `runtime predict` with each
version in a fresh process (load included) on OpenVINO and on onnxruntime: on the held-out subject,
whose 15 slices leave the process's start and the model's load a large share, and on a CT of a whole
abdomen's extent (the shared CT and its mirror image stacked to 360 mm; target on OpenVINO: int8 >=
1.5x faster). Needs torch and MONAI (the benchmark's network is exported once into benchmarks/out/)
and NNCF.

Random weights put a network's classes within a hair of each other, so int8's rounding flips
labels no trained network would lose. `--trained STEPS` first trains the same UNet (Adam, Dice +
cross-entropy, random 96-voxel crops with flips) on the shared CT against three classes of its
label map (background; the liver; spleen and kidneys), on the grid the packaged model sees, and
quantizes that: it has seen the held-out slab, which does not matter for comparing int8 with
float on it. The trained weights and their ONNX file are cached in benchmarks/out/.
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

from window_bench.host import data_root  # noqa: E402

CT = data_root() / "radiology" / "totalseg_example_ct_sm.nii.gz"
LABELS = CT.with_name("totalseg_example_seg.nii.gz")
CLASSES = {1: (5,), 2: (1, 2, 3)}     # class -> TotalSegmentator labels: the liver; spleen and kidneys
CLASS_NAMES = {0: "background", 1: "liver", 2: "spleen and kidneys"}
SPACING_ZYX = (2.0, 1.5, 1.5)


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


def abdomen_extent(work: Path) -> Path:
    """A CT of a whole abdomen's extent (360 mm along z): the shared CT (90 mm) and its mirror image,
    stacked twice, on the CT's grid. The model resamples every input to its own spacing, so what it
    computes grows with the body's extent, not with the input's voxels."""
    image = sitk.ReadImage(str(CT))
    array = sitk.GetArrayFromImage(image)
    stacked = sitk.GetImageFromArray(np.concatenate([array, array[::-1], array, array[::-1]], axis=0))
    stacked.SetSpacing(image.GetSpacing())
    stacked.SetOrigin(image.GetOrigin())
    stacked.SetDirection(image.GetDirection())
    sitk.WriteImage(stacked, str(work / "abdomen.nii.gz"))
    return work / "abdomen.nii.gz"


def timed_run(model: Path, scan: Path, out: Path, device: str, repeats: int = 3) -> float:
    """Median seconds of `runtime predict` on `device`, a fresh process each time (load included)."""
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "from runtime.commands.cli import main; main()", "predict", str(scan),
                        "--model", str(model), "--output", str(out), "--device", device, "--quiet"],
                       check=True, capture_output=True)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def training_pair() -> tuple[np.ndarray, np.ndarray]:
    """The CT z-scored over its non-zero voxels and its three-class labels, both on the packaged
    model's grid (resampled to SPACING_ZYX as the runtime does), (1, z, y, x) and (z, y, x)."""
    from runtime.io import read_label, read_scan
    from runtime.preprocess import Step, Volume, run_steps, transfer

    scan = read_scan([CT])
    volume, record = run_steps(Volume.from_array(scan.array_zyx, scan.spacing_zyx),
                               [Step("resample", {"spacing": list(SPACING_ZYX)}),
                                Step("zscore", {"region": "nonzero"})])
    source = read_label(LABELS, scan)
    labels = np.zeros(source.shape, np.int64)
    for value, members in CLASSES.items():
        labels[np.isin(source, members)] = value
    moved = transfer(record, labels[np.newaxis].astype(np.float32), "nearest")[0].astype(np.int64)
    image = np.pad(volume.array, [(0, 0)] + [(0, max(0, 96 - n)) for n in volume.array.shape[1:]])
    moved = np.pad(moved, [(0, max(0, 96 - n)) for n in moved.shape])
    return image, moved


def trained_network(cache: Path, steps: int) -> Path:
    """The benchmark's 1-channel UNet trained for `steps` steps (cached with its ONNX file)."""
    import torch
    from window_bench.networks import export_onnx, make_unet

    onnx_path = cache / f"unet3d_1ch_trained_{steps}.onnx"
    if onnx_path.is_file():
        return onnx_path
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = make_unet(1)
    image, labels = training_pair()
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    weights = torch.tensor([1.0, 2.0, 4.0])
    started = time.perf_counter()
    net.train()
    for step in range(steps):
        start = [int(rng.integers(0, n - 96 + 1)) for n in labels.shape]
        crop = tuple(slice(s, s + 96) for s in start)
        x, y = image[(slice(None), *crop)], labels[crop]
        for axis in range(3):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis + 1), np.flip(y, axis)
        inputs, target = torch.from_numpy(x.copy())[None], torch.from_numpy(y.copy())[None]
        logits = net(inputs)
        probabilities = torch.softmax(logits, dim=1)
        one_hot = torch.nn.functional.one_hot(target, 3).permute(0, 4, 1, 2, 3).float()
        dice = 1 - (2 * (probabilities * one_hot).sum((2, 3, 4)) + 1) / (probabilities.sum((2, 3, 4))
                                                                        + one_hot.sum((2, 3, 4)) + 1)
        loss = torch.nn.functional.cross_entropy(logits, target, weight=weights) + dice.mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"training step {step + 1}/{steps}: loss {loss.item():.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    net.eval()
    export_onnx(net, 1, onnx_path)
    return onnx_path


def main() -> None:
    import argparse

    from export.quantize import quantize_version
    from runtime.manifest import load_manifest
    from window_bench.host import exit_on_sigterm, print_machine
    from window_bench.networks import ensure_network, package

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trained", type=int, metavar="STEPS", help="train the UNet for STEPS steps first")
    args = parser.parse_args()
    print_machine()
    exit_on_sigterm()
    if not CT.is_file():
        raise SystemExit(f"{CT} not found: set TEST_DATA_DIR to the shared data folder")
    work = Path(tempfile.mkdtemp(prefix="int8-bench-"))
    try:
        cache = REPO / "benchmarks" / "out"
        cache.mkdir(parents=True, exist_ok=True)
        onnx_path = trained_network(cache, args.trained) if args.trained else ensure_network(cache, 1)[1]
        print(f"network: {'trained for %d steps' % args.trained if args.trained else 'random weights'}", flush=True)
        steps = [{"resample": {"spacing": list(SPACING_ZYX)}}, {"zscore": {"region": "nonzero"}}]
        model = package(onnx_path, work / "models", "unet_ct", ["ct"], steps, batch_size=2, classes=CLASS_NAMES)
        csv_path = subjects(work)
        int8 = quantize_version(model / "1", csv_path, min_agreement=0.0, min_dice=0.0)   # kept whatever it finds
        record = load_manifest(int8)[0].provenance["quantization"]
        for backend, figures in record["backends"].items():
            dice = [value for value in figures["dice"].values() if value is not None]
            verdict = "met" if figures["label_agreement"] >= 0.995 and min(dice, default=1.0) >= 0.99 else "NOT met"
            print(f"{backend}: held-out labels {100 * figures['label_agreement']:.3f} % alike, Dice int8 vs float "
                  f"{figures['dice']} (targets >= 99.5 % and 0.99: {verdict}); sample tolerance "
                  f"{figures.get('sample_tolerance')}", flush=True)
        for what, scan, judged in (("the held-out subject (15 slices of 3 mm: the process's start and the "
                                    "model's load weigh)", work / "ct4.nii.gz", False),
                                   ("a whole abdomen's extent (360 mm along z)", abdomen_extent(work), True)):
            for device in ("openvino", "cpu"):
                float_s = timed_run(model / "1", scan, work / "f.nii.gz", device)
                int8_s = timed_run(int8, scan, work / "i.nii.gz", device)
                agree = np.mean(sitk.GetArrayFromImage(sitk.ReadImage(str(work / "f.nii.gz")))
                                == sitk.GetArrayFromImage(sitk.ReadImage(str(work / "i.nii.gz"))))
                verdict = f" (target >= 1.5x: {'met' if float_s / int8_s >= 1.5 else 'NOT met'})" \
                    if judged and device == "openvino" else ""
                print(f"runtime predict --device {device} on {what}, a fresh process each, load included, medians "
                      f"of 3: float {float_s:.2f} s, int8 {int8_s:.2f} s, {float_s / int8_s:.2f}x{verdict}; labels "
                      f"agree on {100 * agree:.3f} %", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The runtime on an NVIDIA GPU against MONAI on torch CUDA, with the same weights.

    python benchmarks/gpu.py                        # the synthetic 240 x 240 x 155 case, 5 turns
    python benchmarks/gpu.py --quick                # 128 x 128 x 100, 2 turns
    python benchmarks/gpu.py --wheels DIR           # install onnxruntime-gpu from wheels in DIR first

One short script for a machine with an NVIDIA GPU: it checks onnxruntime-gpu's CUDA and TensorRT
providers, then times, in one process and in turns, on the radiology benchmark's case and network
(benchmarks/window_bench: a seeded MONAI 3D UNet, 4 channels, 3 classes, 96^3 patches, overlap
0.5, gaussian blending, 4 windows per call):

  A  the runtime end to end (read, z-score, sliding window, labels written) on --device cuda, and
     on tensorrt in fp32 and, where the model's manifest allows it, fp16
  B  MONAI `sliding_window_inference` on torch CUDA (read, z-score, windows, softmax, argmax,
     write), fp32 and under autocast fp16
  D  the model's compute alone on each of A's engines, the same number of windows, batch by batch

and prints the ratio table of the CPU benchmark: A/B (target <= 0.5) and A/D (target <= 1.10),
with the card's name, the label agreement of each A with B, and versions. The case and the ONNX
file are made on first use under --cache-dir (benchmarks/out/), as radiology_window.py makes them.

Needs the runtime with the export extra, torch with CUDA, MONAI, and onnxruntime-gpu (with
TensorRT's libraries for the tensorrt rows; a provider that does not start is reported and left
out). Without a GPU it says so and stops, before it installs or changes anything.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from window_bench.host import exit_on_sigterm, print_machine  # noqa: E402

TARGET_A_B = 0.5
TARGET_A_D = 1.10
BATCH = 4


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 128 x 128 x 100 case, 2 turns")
    parser.add_argument("--repeats", type=int, default=5, help="timed turns per contender (default 5)")
    parser.add_argument("--cache-dir", type=Path, default=HERE / "out")
    parser.add_argument("--wheels", type=Path, help="a folder of wheels to install onnxruntime-gpu from first")
    parser.add_argument("--gpu", type=int, default=0, help="the CUDA device number")
    parser.add_argument("--check-on-cpu", action="store_true",
                        help="run the script's whole path on the CPU instead (onnxruntime's CPU provider for A and "
                             "D, torch on the CPU for B), on the quick case, one turn: to check the script "
                             "itself on a machine without a GPU; its figures say nothing about a GPU")
    return parser.parse_args()


def install_onnxruntime_gpu(wheels: Path) -> None:
    """Replace the CPU build of onnxruntime by the GPU build, from the wheels in `wheels`."""
    print(f"installing onnxruntime-gpu from {wheels} ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "onnxruntime"], check=False)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
                    "onnxruntime-gpu"], check=True)


def card(gpu: int) -> str:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU is visible to torch here: this benchmark needs an NVIDIA GPU "
                         "(the CPU benchmark is benchmarks/radiology_window.py)")
    properties = torch.cuda.get_device_properties(gpu)
    return f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"


GPU_ENGINES = (("cuda fp32", "cuda", False), ("tensorrt fp32", "tensorrt", False), ("tensorrt fp16", "tensorrt", True))
CPU_ENGINES = (("cpu fp32", "cpu", False),)


def engines(model_dir: Path, gpu: int, choices: tuple[tuple[str, str, bool], ...]) -> dict[str, object]:
    """The runtime's model loaded on each engine that starts: cuda, tensorrt fp32, tensorrt fp16
    (where the manifest allows it). A provider that does not start is said and left out."""
    from runtime.predict import load_model

    loaded: dict[str, object] = {}
    for label, device, half in choices:
        try:
            model = load_model(model_dir, device=device, gpu=gpu, fp16=half)
        except Exception as error:  # a provider that cannot start, or a manifest that does not allow fp16
            print(f"  {label}: left out ({str(error).splitlines()[0][:200]})", flush=True)
            continue
        loaded[label] = model
        print(f"  {label}: {model.backend.name}", flush=True)
    return loaded


def monai_on_device(net, device, half: bool, inputs: list[Path], output: Path):
    """B as a MONAI user runs it on a GPU: SimpleITK read, z-score, the whole image on the device,
    `sliding_window_inference` stitching there (gaussian, sigma = patch / 8), softmax and argmax
    there, the labels copied back and written."""
    import torch
    from monai.inferers import sliding_window_inference

    from window_bench.data import read_sitk, write_labels, zscore_nonzero
    from window_bench.options import OVERLAP, PATCH

    reference, array = read_sitk(inputs)
    image = torch.from_numpy(zscore_nonzero(array))[None].to(device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=half):
        logits = sliding_window_inference(image, roi_size=(PATCH,) * 3, sw_batch_size=BATCH, predictor=net,
                                          overlap=OVERLAP, mode="gaussian", sigma_scale=0.125, sw_device=device,
                                          device=device)
        labels = torch.softmax(logits.float(), dim=1).argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
    write_labels(labels, reference, output)
    return labels


def main() -> None:
    args = options()
    print_machine()
    exit_on_sigterm()
    name = "no GPU: --check-on-cpu" if args.check_on_cpu else card(args.gpu)   # before anything is changed
    if args.wheels is not None:
        install_onnxruntime_gpu(args.wheels)
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    try:
        run(args, name, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, name: str, work: Path) -> None:
    """Time the contenders on the card `name`, their outputs and model folder under `work`."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from window_bench.compute import gathered_windows
    from window_bench.contenders import runtime_end_to_end
    from window_bench.data import ensure_synthetic
    from window_bench.networks import ensure_network, package
    from window_bench.options import CHANNELS, FULL_SHAPE_XYZ, QUICK_SHAPE_XYZ
    from window_bench.report import percent_equal
    from window_bench.timing import Timed, in_turns, warm_up

    print(f"GPU: {name}", flush=True)
    print(f"onnxruntime {ort.__version__} providers: {', '.join(ort.get_available_providers())}", flush=True)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    shape = QUICK_SHAPE_XYZ if args.quick or args.check_on_cpu else FULL_SHAPE_XYZ
    repeats = 1 if args.check_on_cpu else 2 if args.quick else args.repeats
    inputs = ensure_synthetic(args.cache_dir, shape)
    net, onnx_path = ensure_network(args.cache_dir, len(CHANNELS))
    steps = [{"zscore": {"region": "nonzero"}}]
    model_dir = package(onnx_path, work / "repo", "unet_gpu", CHANNELS, steps, BATCH)
    print("engines:", flush=True)
    loaded = engines(model_dir, args.gpu, CPU_ENGINES if args.check_on_cpu else GPU_ENGINES)
    device = torch.device("cpu" if args.check_on_cpu else f"cuda:{args.gpu}")
    net = net.to(device).eval()
    peer = f"B MONAI torch {'CUDA' if device.type == 'cuda' else 'CPU'}"
    contenders: list[Timed] = []
    for label, model in loaded.items():
        contenders.append(Timed(f"A runtime ({label})", lambda m=model, l=label: runtime_end_to_end(
            m, inputs, work / f"a_{l.replace(' ', '_')}.nii.gz")))
    for half in (False, True):
        contenders.append(Timed(f"{peer} ({'fp16 autocast' if half else 'fp32'})",
                                lambda h=half: monai_on_device(net, device, h, inputs, work / "b.nii.gz")))
    windows = gathered_windows(inputs, BATCH)

    def compute(model) -> None:
        for index in range(windows.calls(BATCH)):
            model.backend.borrow(windows.batch(index))

    for label, model in loaded.items():
        contenders.append(Timed(f"D compute alone ({label})", lambda m=model: compute(m)))
    print(f"case {shape} (x, y, z), {windows.count} windows of 96^3, {BATCH} per call; "
          f"warm-up, then {repeats} turns ...", flush=True)
    started = time.perf_counter()
    warm_up(contenders)
    in_turns(contenders, repeats)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"timed in {time.perf_counter() - started:.0f} s\n", flush=True)
    by_label = {timed.label: timed for timed in contenders}
    print(f"{'contender':<44s} {'median s':>9s} {'min s':>8s}")
    for timed in contenders:
        print(f"{timed.label:<44s} {timed.median:9.3f} {timed.best:8.3f}")
    reference = by_label[f"{peer} (fp32)"]
    print(f"\n{'ratio':<44s} {'value':>9s} {'target':>8s}")
    for label in loaded:
        a, d = by_label[f"A runtime ({label})"], by_label[f"D compute alone ({label})"]
        b = by_label[f"{peer} (fp16 autocast)"] if "fp16" in label else reference
        for what, ratio, target in ((f"A/B {label} vs {b.label[2:]}", a.median / b.median, TARGET_A_B),
                                    (f"A/D {label}", a.median / d.median, TARGET_A_D)):
            verdict = "met" if ratio <= target else "NOT met"
            print(f"{what:<44s} {ratio:9.2f} {target:8.2f}  {verdict}")
        print(f"{'  labels equal to MONAI fp32':<44s} {percent_equal(a.labels, reference.labels):>9s}")
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("torch", "monai", "onnxruntime-gpu")
                         if _installed(p))
    print(f"\n{name}; {versions}; numpy {np.__version__}")


def _installed(package: str) -> bool:
    try:
        importlib.metadata.version(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()

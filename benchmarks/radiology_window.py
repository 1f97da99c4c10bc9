"""Radiology sliding-window benchmark: the runtime against MONAI and TorchIO, on the same CPU budget.

One process times, in turns after one untimed run of each (A B C D D1, A B C D D1, ...), on a
synthetic BraTS-like 4-channel volume:

  A  runtime end to end: read four NIfTI files, `predict_scan`, write the label map atomically
  B  MONAI: SimpleITK read, z-score, `sliding_window_inference` (gaussian), softmax + argmax, write
  C  TorchIO: SimpleITK read, z-score, `GridSampler` + `GridAggregator` (hann), argmax, write
  D  the model's compute alone: the forward passes over as many windows as A runs, windows
     gathered beforehand, nothing stitched, on the engine A's sliding window uses (OpenVINO's
     throughput streams with every request in flight, as A keeps them)
  D1 the same forward passes called one batch at a time on the backend's latency configuration
     (for context: the way a plain loop would call the model)

with one MONAI 3D UNet (seeded, exported once to ONNX) and the same thread count everywhere.
A second part runs a 1-channel version on a real brain MR (resampled to 1 mm) with and without
skipping background windows, and against MONAI; a third on a real CT series (DICOM), whose air
(below -900 HU, given by a `foreground` step) is the background that skipped windows leave out.
Run from the repository root:

    /work/venv/bin/python benchmarks/radiology_window.py            # the full run
    /work/venv/bin/python benchmarks/radiology_window.py --quick    # a small smoke run

Frames: arrays are (C, z, y, x) as SimpleITK gives them; the packaged models use axis_order zyx.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from export.package import build_from_onnx  # noqa: E402
from export.spec import parse_spec  # noqa: E402
from runtime.io import OutputSet, from_model_axes, read_scan, to_model_axes  # noqa: E402
from runtime.outputs import channel_argmax, class_values  # noqa: E402
from runtime.io.scan import Scan  # noqa: E402
from runtime.manifest import Step  # noqa: E402
from runtime.predict import Model, load_model, predict_scan  # noqa: E402
from runtime.predict import _Predictor  # noqa: E402  (the predictor predict_scan uses)
from runtime.preprocess import Volume, invert, run_steps  # noqa: E402
from runtime.window import sliding_window, window_grid, window_starts  # noqa: E402
from runtime.window.pipeline import Pass, gather  # noqa: E402

PATCH = 96
OVERLAP = 0.5
SEED = 20240611
CHANNELS = ("t1", "t1ce", "t2", "flair")
CLASSES = {0: "background", 1: "oedema", 2: "tumour"}
FULL_SHAPE_XYZ = (240, 240, 155)
QUICK_SHAPE_XYZ = (128, 128, 100)
BRAIN_FILE = "radiology/pyradiomics_brain1_image.nrrd"
CT_SERIES = "dicom/totalseg_ct_series"
CT_AIR_BELOW = -900.0
QUICK_CT_CROP_XY = 192
QUICK_BRAIN_CROP_XY = 140
TARGET_A_B = 0.65
TARGET_A_D = 1.10

Labels = np.ndarray


# --------------------------------------------------------------------------- the network


def make_unet(in_channels: int) -> torch.nn.Module:
    """The MONAI 3D UNet of the benchmark; its weights come from the seed or a state file."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=len(CLASSES),
                channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)


def _model_paths(cache: Path, in_channels: int) -> tuple[Path, Path]:
    stem = "unet3d" if in_channels == 4 else f"unet3d_{in_channels}ch"
    return cache / f"{stem}.onnx", cache / f"{stem}_state.pt"


def _export_onnx(net: torch.nn.Module, in_channels: int, path: Path) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    example = torch.zeros(1, in_channels, PATCH, PATCH, PATCH)
    torch.onnx.export(net, (example,), str(partial), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    os.replace(partial, path)


def ensure_network(cache: Path, in_channels: int) -> tuple[torch.nn.Module, Path]:
    """The eval-mode torch UNet and its ONNX file, made (seeded) and cached when missing."""
    onnx_path, state_path = _model_paths(cache, in_channels)
    torch.manual_seed(SEED + in_channels)
    net = make_unet(in_channels)
    if state_path.is_file():
        net.load_state_dict(torch.load(state_path, weights_only=True))
    else:
        partial = state_path.with_name(f".{state_path.name}.partial")
        torch.save(net.state_dict(), partial)
        os.replace(partial, state_path)
        onnx_path.unlink(missing_ok=True)
    net.eval()
    if not onnx_path.is_file():
        print(f"exporting {onnx_path.name} (opset 17, dynamic batch) ...", flush=True)
        _export_onnx(net, in_channels, onnx_path)
    return net, onnx_path


def package(onnx_path: Path, repository: Path, name: str, channels: Sequence[str],
            steps: list[Any], batch_size: int) -> Path:
    """Package the ONNX file as a model folder (export.package) and return that folder."""
    spec = parse_spec({
        "name": name, "task": "segmentation", "modality": "radiology", "dimensions": 3,
        "axis_order": "zyx", "channels": list(channels), "classes": dict(CLASSES),
        "preprocessing": steps, "patch": {"size": [PATCH] * 3},
        "window": {"overlap": OVERLAP, "blending": "gaussian", "batch_size": batch_size,
                   "skip_background": False},
        "output": {"activation": "softmax", "label_rule": "argmax"},
        "provenance": {"description": "benchmark UNet, random weights (not trained)"},
    }, source=f"benchmark spec {name}")
    return build_from_onnx(onnx_path, spec, repository).parent


def with_window(model: Model, **changes: Any) -> Model:
    """The same loaded model with other window settings (batch size, background skipping)."""
    manifest = model.manifest
    window = dataclasses.replace(manifest.window, **changes)
    return dataclasses.replace(model, manifest=dataclasses.replace(manifest, window=window))


# --------------------------------------------------------------------------- synthetic data


def _ellipsoid(grid: Sequence[np.ndarray], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def _texture(shape_zyx: tuple[int, ...], sigma: float, seed: int) -> np.ndarray:
    """Smooth random texture, zero mean and unit standard deviation."""
    noise = sitk.GetImageFromArray(np.random.default_rng(seed).normal(size=shape_zyx).astype(np.float32))
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, sigma))
    return (smooth - smooth.mean()) / max(float(smooth.std()), 1e-6)


def _tissues(shape_zyx: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Boolean maps of a head: scalp/skull shell, brain, ventricles, oedema and tumour core."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape_zyx)]
    size = np.array(shape_zyx, dtype=float)
    centre = size / 2.0
    head = _ellipsoid(grid, centre, size * (0.45, 0.42, 0.36))
    brain = _ellipsoid(grid, centre, size * (0.39, 0.36, 0.30))
    ventricles = _ellipsoid(grid, centre + size * (0.02, 0.0, 0.0), size * (0.08, 0.10, 0.03))
    lesion_centre = centre + size * (0.06, -0.10, 0.10)
    oedema = _ellipsoid(grid, lesion_centre, size * (0.12, 0.11, 0.10)) & brain
    core = _ellipsoid(grid, lesion_centre, size * (0.06, 0.055, 0.05)) & brain
    return {"skull": head & ~brain, "brain": brain & ~ventricles, "ventricles": ventricles & brain,
            "oedema": oedema & ~core, "core": core}


# Mean intensity of each tissue per channel (t1, t1ce, t2, flair): different contrast per channel.
_CONTRAST = {
    "skull": (900, 850, 300, 350),
    "brain": (600, 620, 450, 500),
    "ventricles": (200, 210, 1400, 150),
    "oedema": (480, 500, 1000, 1100),
    "core": (350, 1300, 800, 700),
}


def synthetic_channels(shape_xyz: tuple[int, int, int], seed: int = SEED) -> list[np.ndarray]:
    """Four int16 (z, y, x) volumes of a textured head on an exactly-zero background."""
    shape_zyx = tuple(reversed(shape_xyz))
    tissues = _tissues(shape_zyx)
    head = np.zeros(shape_zyx, dtype=bool)
    for region in tissues.values():
        head |= region
    channels = []
    for index in range(len(CHANNELS)):
        volume = np.zeros(shape_zyx, dtype=np.float32)
        for name, region in tissues.items():
            volume[region] = _CONTRAST[name][index]
        volume *= 1.0 + 0.12 * _texture(shape_zyx, 4.0, seed + index)
        volume += 15.0 * np.random.default_rng(seed + 10 + index).normal(size=shape_zyx).astype(np.float32)
        volume = np.where(head, np.clip(volume, 1, 32000), 0)
        channels.append(volume.astype(np.int16))
    return channels


def ensure_synthetic(cache: Path, shape_xyz: tuple[int, int, int]) -> list[Path]:
    """The four NIfTI files (1 mm spacing) of the synthetic case, written once into the cache."""
    folder = cache / f"synthetic_{'x'.join(map(str, shape_xyz))}"
    paths = [folder / f"{name}.nii.gz" for name in CHANNELS]
    if all(p.is_file() for p in paths):
        return paths
    print(f"writing the synthetic {shape_xyz} case into {folder} ...", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    for array, path in zip(synthetic_channels(shape_xyz), paths):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 1.0, 1.0))
        partial = path.with_name(f".{path.name}.partial.nii.gz")
        sitk.WriteImage(image, str(partial), useCompression=True)
        os.replace(partial, path)
    return paths


# --------------------------------------------------------------------------- the contenders


def runtime_end_to_end(model: Model, inputs: Sequence[Path], output: Path) -> Labels:
    """A: what `runtime predict` does once the model is loaded (as runtime.single.run_one)."""
    scan = read_scan(inputs)
    prediction = predict_scan(model, scan, probabilities=False, overwrite=True)
    with OutputSet() as outputs:
        outputs.image(prediction.labels_zyx, scan.reference, output)
    return prediction.labels_zyx


def read_sitk(inputs: Sequence[Path]) -> tuple[sitk.Image, np.ndarray]:
    """The first image (for its grid) and a float32 (C, z, y, x) array of every channel."""
    images = [sitk.ReadImage(str(path)) for path in inputs]
    array = np.stack([sitk.GetArrayFromImage(image).astype(np.float32) for image in images])
    return images[0], array


def zscore_nonzero(array: np.ndarray) -> np.ndarray:
    """Per channel (x - mean) / std over voxels non-zero in any channel; 0 elsewhere (in place)."""
    foreground = np.any(array != 0, axis=0)
    for channel in array:
        values = channel[foreground]
        channel -= np.float32(values.mean(dtype=np.float64))
        channel /= np.float32(max(float(values.std(dtype=np.float64)), 1e-8))
        channel[~foreground] = 0
    return array


def write_labels(labels: Labels, reference: sitk.Image, output: Path) -> None:
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(output), useCompression=True)


def monai_labels(net: torch.nn.Module, array: np.ndarray, batch_size: int) -> Labels:
    """MONAI's sliding window (gaussian, sigma = patch/8) over (C, *S), softmax, argmax."""
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        logits = sliding_window_inference(
            torch.from_numpy(array)[None], roi_size=(PATCH,) * 3, sw_batch_size=batch_size,
            predictor=net, overlap=OVERLAP, mode="gaussian", sigma_scale=0.125)
        return torch.softmax(logits, dim=1).argmax(dim=1)[0].to(torch.uint8).numpy()


def monai_end_to_end(net: torch.nn.Module, inputs: Sequence[Path], output: Path, batch_size: int) -> Labels:
    """B: SimpleITK read, z-score, MONAI sliding window, SimpleITK write."""
    reference, array = read_sitk(inputs)
    labels = monai_labels(net, zscore_nonzero(array), batch_size)
    write_labels(labels, reference, output)
    return labels


def torchio_end_to_end(net: torch.nn.Module, inputs: Sequence[Path], output: Path, batch_size: int) -> Labels:
    """C: SimpleITK read, z-score, TorchIO grid sampler + hann aggregator, argmax, write."""
    import torchio as tio

    reference, array = read_sitk(inputs)
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(zscore_nonzero(array))))
    sampler = tio.inference.GridSampler(subject, PATCH, PATCH // 2)
    loader = torch.utils.data.DataLoader(sampler, batch_size=batch_size)
    aggregator = tio.inference.GridAggregator(sampler, overlap_mode="hann")
    with torch.inference_mode():
        for batch in loader:
            aggregator.add_batch(net(batch["image"][tio.DATA]), batch[tio.LOCATION])
        labels = aggregator.get_output_tensor().argmax(dim=0).to(torch.uint8).numpy()
    write_labels(labels, reference, output)
    return labels


@dataclasses.dataclass(frozen=True)
class Windows:
    """Real preprocessed windows to feed the model alone, and how many windows a case has."""

    batches: list[np.ndarray]   # float32 (B, C, P, P, P), a few distinct ones, used in turn
    count: int                  # windows the sliding window runs on the case


def real_windows(model: Model, inputs: Sequence[Path], batch_size: int, distinct: int = 4) -> Windows:
    scan = read_scan(inputs)
    volume, _ = run_steps(Volume.from_array(scan.array_zyx, scan.spacing_zyx), model.manifest.preprocessing,
                          min_shape=(PATCH,) * 3)
    grid = window_grid(volume.array.shape[1:], (PATCH,) * 3, OVERLAP)
    step = max(1, len(grid) // (distinct * batch_size))
    chosen = grid[::step][: distinct * batch_size]
    batches = [gather(volume.array, Pass(tuple(chosen[i:i + batch_size]), (), True, True))
               for i in range(0, len(chosen) - batch_size + 1, batch_size)]
    return Windows(batches=batches, count=len(grid))


def backend_compute(model: Model, windows: Windows, batch_size: int) -> None:
    """D1: the backend's forward passes over as many windows as the case has, nothing else, one
    batch at a time (output lent, not copied)."""
    for index in range(math.ceil(windows.count / batch_size)):
        model.backend.borrow(windows.batches[index % len(windows.batches)])


class StreamsCompute:
    """D: the forward passes on OpenVINO's throughput streams, as A's sliding window runs them
    (the same hint, threads and precision, two requests per stream, all kept in flight), on
    windows gathered beforehand: the model's compute with nothing cut or stitched."""

    def __init__(self, onnx_path: Path, backend: Any) -> None:
        from runtime.backends.openvino_backend import DEVICE, shared_core

        core = shared_core()
        self.compiled = core.compile_model(core.read_model(str(onnx_path)), DEVICE, backend.streams_config)
        count = 2 * int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.requests = [self.compiled.create_infer_request() for _ in range(count)]
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))

    def __call__(self, windows: Windows, batch_size: int) -> None:
        import openvino as ov

        tensors = [ov.Tensor(batch, shared_memory=True) for batch in windows.batches]
        for index in range(math.ceil(windows.count / batch_size)):
            request = self.requests[index % len(self.requests)]
            if index >= len(self.requests):
                request.wait()
            request.set_input_tensor(tensors[index % len(tensors)])
            request.start_async()
        for request in self.requests:
            request.wait()


def engine_compute(model: Model, onnx_path: Path) -> tuple[str, Callable[[Windows, int], None]]:
    """D's label and function: the streams A's sliding window uses where the backend cuts its own
    windows (OpenVINO), else the backend called one batch at a time as A calls it."""
    probe = np.zeros((len(model.manifest.channels), *(PATCH,) * 3), dtype=np.float32)
    if model.backend.windows_of(probe, (PATCH,) * 3, model.manifest.window.batch_size) is None:
        return "D compute alone (one batch at a time)", lambda w, size: backend_compute(model, w, size)
    streams = StreamsCompute(onnx_path, model.backend)
    return (f"D compute alone ({streams.streams} streams, {len(streams.requests)} in flight)",
            streams)


def torch_compute(net: torch.nn.Module, windows: Windows, batch_size: int) -> None:
    with torch.inference_mode():
        for index in range(math.ceil(windows.count / batch_size)):
            net(torch.from_numpy(windows.batches[index % len(windows.batches)]))


SLIDING_STAGE = "sliding window (model, cutting, stitching)"


def runtime_stages(model: Model, inputs: Sequence[Path], output: Path) -> dict[str, float]:
    """Seconds of each stage of A, run one after the other as `predict_scan(probabilities=False)`
    runs them for this model (argmax labels of a softmax, no geometric step to invert)."""
    manifest, window = model.manifest, model.manifest.window
    clock = _Clock()
    scan = read_scan(inputs)
    clock.lap("read (read_scan)")
    array, spacing = to_model_axes(scan.array_zyx, scan.spacing_zyx, manifest.axis_order)
    volume, record = run_steps(Volume.from_array(array, spacing), manifest.preprocessing, min_shape=window.patch_size,
                               overwrite=True)
    clock.lap("preprocess (foreground, steps)")
    sums = sliding_window(volume.array, _Predictor(model, borrow=True), window.patch_size, overlap=window.overlap,
                          blending=window.blending, batch_size=window.batch_size, normalise=False)
    clock.lap(SLIDING_STAGE)
    index = channel_argmax(sums)[np.newaxis]
    labels = class_values(from_model_axes(invert(record, index, np.zeros(1, np.uint8), "nearest"),
                                          manifest.axis_order)[0], manifest)
    clock.lap("labels (argmax of the sums)")
    with OutputSet() as outputs:
        outputs.image(labels, scan.reference, output)
    clock.lap("write (atomic .nii.gz)")
    return clock.laps


class _Clock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now


# --------------------------------------------------------------------------- timing


def steal_seconds() -> float | None:
    """CPU time the VM's host has taken from this machine since boot (all CPUs, /proc/stat);
    None where the system does not say."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


@dataclasses.dataclass
class Timed:
    label: str
    run: Callable[[], Labels | None]
    seconds: list[float] = dataclasses.field(default_factory=list)
    labels: Labels | None = None
    cpu: list[float] = dataclasses.field(default_factory=list)    # CPU-s of this process's threads
    steal: list[float] = dataclasses.field(default_factory=list)  # CPU-s the host took meanwhile

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)


def time_once(timed: Timed) -> None:
    gc.collect()
    stolen, cpu, started = steal_seconds(), time.process_time(), time.perf_counter()
    result = timed.run()
    timed.seconds.append(time.perf_counter() - started)
    timed.cpu.append(time.process_time() - cpu)
    stolen_after = steal_seconds()
    if stolen is not None and stolen_after is not None:
        timed.steal.append(stolen_after - stolen)
    if result is not None:
        timed.labels = result


def warm_up(contenders: Sequence[Timed]) -> None:
    """One untimed run of each contender first: every engine's first forward passes set up its
    kernels and memory (OpenVINO's streams about 0.25 s, torch its allocator), which the first
    timed turn would otherwise pay. The CLI row shows a whole cold process."""
    for timed in contenders:
        started = time.perf_counter()
        timed.run()
        print(f"  warm-up    {timed.label:<44s} {time.perf_counter() - started:8.2f} s (not counted)", flush=True)


def in_turns(contenders: Sequence[Timed], repeats: int, pair: tuple[Timed, Timed] | None = None) -> None:
    """Time every contender `repeats` times, interleaved turn by turn.

    A `pair` (two of the contenders whose ratio matters most) runs first in every turn, back to
    back and in alternating order (x y, then y x, ...), the others after it: this VM's speed
    drifts over the tens of seconds the others take, and a pair timed side by side sees closer
    machine states, while alternating balances any effect of going first or second (exactly so
    over an even number of turns). Without a pair every turn runs the contenders in order."""
    for round_index in range(repeats):
        for timed in turn_order(contenders, round_index, pair):
            time_once(timed)
            steal = f", host took {timed.steal[-1]:.2f}" if timed.steal else ""
            print(f"  round {round_index + 1}/{repeats}  {timed.label:<44s} {timed.seconds[-1]:8.2f} s"
                  f"  (CPU {timed.cpu[-1]:.2f} s{steal})", flush=True)


def turn_order(contenders: Sequence[Timed], round_index: int,
               pair: tuple[Timed, Timed] | None) -> list[Timed]:
    """The contenders in the order of one turn: the pair first (swapped in odd turns), then the rest."""
    if pair is None:
        return list(contenders)
    first = list(pair) if round_index % 2 == 0 else list(reversed(pair))
    return first + [timed for timed in contenders if all(timed is not paired for paired in pair)]


def percent_equal(a: Labels | None, b: Labels | None) -> str:
    if a is None or b is None:
        return "n/a"
    if a.shape != b.shape:
        return f"shapes differ {a.shape} vs {b.shape}"
    if a.size == 0:
        return "n/a (no voxel)"
    return f"{100.0 * np.count_nonzero(a == b) / a.size:.3f} %"


def class_fractions(labels: Labels) -> str:
    counts = np.bincount(labels.ravel(), minlength=len(CLASSES))
    return ", ".join(f"{CLASSES[k]} {100.0 * counts[k] / labels.size:.1f} %" for k in CLASSES)


def row(label: str, timed: Timed | None) -> str:
    if timed is None or not timed.seconds:
        return f"{label:<46s} {'skipped':>9s}"
    return f"{label:<46s} {timed.median:9.2f} {timed.best:9.2f} {len(timed.seconds):5d}"


def ratio_text(name: str, a: Timed | None, b: Timed | None, target: float | None = None) -> str:
    """`name` = median(a) / median(b), with min(a) / min(b) beside it, against an optional target."""
    if a is None or b is None or not a.seconds or not b.seconds:
        return f"{name:<6s} n/a (skipped)"
    value = a.median / b.median
    text = f"{name:<6s} {value:6.3f}  (of the minima {a.best / b.best:.3f})"
    if target is not None:
        text += f"   target <= {target:.2f}: {'met' if value <= target else 'NOT met'}"
    return text


def turn_ratios(a: Timed, b: Timed) -> list[float]:
    """a/b turn by turn, each a beside the b of its turn."""
    return [x / y for x, y in zip(a.seconds, b.seconds)]


def paired_text(name: str, a: Timed | None, b: Timed | None, target: float) -> str:
    """The median over the turns of a/b, each turn's two runs timed back to back (see `in_turns`):
    the drift of the machine's speed from turn to turn is largely common to both runs of a turn,
    where the ratio of medians can take a from a fast turn and b from a slow one."""
    if a is None or b is None or not a.seconds or not b.seconds:
        return f"{name} paired n/a (skipped)"
    if len(a.seconds) != len(b.seconds):
        return f"{name} paired n/a ({len(a.seconds)} and {len(b.seconds)} turns)"
    per_turn = turn_ratios(a, b)
    value = statistics.median(per_turn)
    within = sum(x <= target for x in per_turn)
    return (f"{name} paired {value:.3f}  (median of the {len(per_turn)} turns' ratios, {within} of "
            f"{len(per_turn)} turns <= {target:.2f})   target <= {target:.2f}: "
            f"{'met' if value <= target else 'NOT met'}")


# --------------------------------------------------------------------------- setup and report


def machine_text() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def versions_text() -> str:
    import monai
    import openvino
    import torchio

    return (f"python {platform.python_version()}, numpy {np.__version__}, SimpleITK {sitk.Version_VersionString()}, "
            f"openvino {openvino.__version__}, torch {torch.__version__}, monai {monai.__version__}, "
            f"torchio {torchio.__version__}")


def busy_seconds() -> tuple[float, float] | None:
    """(CPU seconds busy on the whole machine, CPU seconds used by this process and its children)
    so far, or None where /proc/stat cannot be read."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(value) for value in fields[:8]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    own = os.times()
    return busy, own.user + own.system + own.children_user + own.children_system


def others_text(start: tuple[float, float] | None, wall: float) -> str:
    """CPU time other processes took while this run went on, the benchmark's noise."""
    end = busy_seconds()
    if start is None or end is None:
        return "CPU use of other processes: unknown (no /proc/stat)"
    others = max(0.0, (end[0] - start[0]) - (end[1] - start[1]))
    share = 100.0 * others / (wall * (os.cpu_count() or 1))
    return f"CPU used by other processes during the run: {others:.0f} CPU-s, {share:.1f} % of the machine"


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def timed_load(model_dir: Path, xdg_cache: Path, threads: int) -> tuple[Model, float]:
    """Load the model with OpenVINO's compiled-model cache under `xdg_cache`."""
    os.environ["XDG_CACHE_HOME"] = str(xdg_cache)
    started = time.perf_counter()
    model = load_model(model_dir, device="auto", threads=threads)
    return model, time.perf_counter() - started


def cli_seconds(inputs: Sequence[Path], model_dir: Path, output: Path, threads: int, xdg_cache: Path) -> float:
    """`runtime predict ... --output` as a fresh process: start, imports, model load, the run."""
    command = [sys.executable, "-c", "from runtime.cli import main; main()", "predict", *map(str, inputs),
               "--model", str(model_dir), "--output", str(output), "--threads", str(threads), "--quiet"]
    env = {**os.environ, "XDG_CACHE_HOME": str(xdg_cache), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def batch_trial(model: Model, net: torch.nn.Module, inputs: Sequence[Path],
                windows: int) -> dict[str, dict[int, float]]:
    """Seconds per window, best of two interleaved turns, of each engine alone at batch 1 and 2,
    called one batch at a time (D1's way)."""
    engines = {"runtime backend": backend_compute, "torch": torch_compute}
    runs: dict[str, dict[int, list[float]]] = {name: {1: [], 2: []} for name in engines}
    sources = {size: dataclasses.replace(real_windows(model, inputs, size, distinct=2), count=windows)
               for size in (1, 2)}
    for _ in range(2):
        for name, compute in engines.items():
            for size, source in sources.items():
                started = time.perf_counter()
                compute(model if name == "runtime backend" else net, source, size)
                runs[name][size].append((time.perf_counter() - started) / windows)
    return {name: {size: min(values) for size, values in sizes.items()} for name, sizes in runs.items()}


def forward_difference(model: Model, net: torch.nn.Module, windows: Windows) -> tuple[float, float]:
    """Largest |logit| difference between the runtime backend and torch on one real batch, and
    the largest |logit| there."""
    batch = windows.batches[0]
    ours = model.backend(batch)
    with torch.inference_mode():
        theirs = net(torch.from_numpy(batch)).numpy()
    return float(np.abs(ours - theirs).max()), float(np.abs(theirs).max())


def monai_starts(size: int) -> list[int]:
    """Window starts along one axis as MONAI's sliding_window_inference places them."""
    interval = int(PATCH * (1 - OVERLAP))
    count = math.ceil((size - PATCH) / interval) + 1 if size > PATCH else 1
    return sorted({min(index * interval, size - PATCH) for index in range(count)})


def torchio_starts(shape: Sequence[int]) -> list[list[int]]:
    """Window starts along each axis as TorchIO's GridSampler places them."""
    import torchio as tio

    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.zeros(1, *shape)))
    locations = np.asarray(tio.inference.GridSampler(subject, PATCH, PATCH // 2).locations)
    return [sorted({int(v) for v in locations[:, axis]}) for axis in range(len(shape))]


@dataclasses.dataclass(frozen=True)
class Settings:
    repeats: int
    cache: Path
    batch_size: int
    threads: int
    quick: bool
    skip_monai: bool
    skip_torchio: bool
    data_root: Path


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed turns per contender (default 3)")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "benchmarks" / "out",
                        help="ONNX files, weights and synthetic scans (default benchmarks/out)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="windows per model call, for every contender (default 1: the runtime's faster)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every contender (default 2)")
    parser.add_argument("--skip-monai", action="store_true", help="do not run MONAI (B, and the brain reference)")
    parser.add_argument("--skip-torchio", action="store_true", help="do not run TorchIO (C)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: a {'x'.join(map(str, QUICK_SHAPE_XYZ))} volume, a cropped brain, 1 repeat")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1 or args.threads < 1:
        parser.error("--repeats, --batch-size and --threads must be at least 1")
    data_root = Path(os.environ.get("TEST_DATA_DIR", REPO.parent / "shared" / "data"))
    return Settings(repeats=1 if args.quick else args.repeats, cache=args.cache_dir.resolve(),
                    batch_size=args.batch_size, threads=args.threads, quick=args.quick,
                    skip_monai=args.skip_monai, skip_torchio=args.skip_torchio, data_root=data_root)


# --------------------------------------------------------------------------- part 1: synthetic BraTS-like case


def main_comparison(settings: Settings, work: Path) -> None:
    shape_xyz = QUICK_SHAPE_XYZ if settings.quick else FULL_SHAPE_XYZ
    inputs = ensure_synthetic(settings.cache, shape_xyz)
    net, onnx_path = ensure_network(settings.cache, len(CHANNELS))
    model_dir = package(onnx_path, work / "models", "bench_unet_brats", CHANNELS,
                        [{"zscore": {"region": "nonzero"}}], settings.batch_size)
    _, cold = timed_load(model_dir, work / "xdg_cold", settings.threads)
    model, warm = timed_load(model_dir, work / "xdg_cold", settings.threads)
    windows = real_windows(model, inputs, settings.batch_size)
    print(f"\nmodel loaded on {model.backend.name}: cold {cold:.2f} s (empty OpenVINO cache), warm {warm:.2f} s")
    _report_trial(batch_trial(model, net, inputs, 8 if settings.quick else 12))
    _report_parity(model, net, windows, shape_xyz)
    contenders = _contenders(settings, model, net, inputs, windows, work, onnx_path)
    print(f"\n{windows.count} windows of {PATCH}^3 on a {'x'.join(map(str, shape_xyz))} (x y z) volume, "
          f"batch {settings.batch_size}, {settings.threads} threads; timing {settings.repeats} turn(s) ...", flush=True)
    warm_up(list(contenders.values()))
    in_turns(list(contenders.values()), settings.repeats, (contenders["A"], contenders["D"]))
    torch_alone = Timed("torch compute alone (1 run, for context)",
                        lambda: torch_compute(net, windows, settings.batch_size))
    time_once(torch_alone)
    other = _other_batch_monai(settings, net, inputs, work)
    cli = cli_seconds(inputs, model_dir, work / "cli_labels.nii.gz", settings.threads, work / "xdg_cold")
    cli_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "cli_labels.nii.gz")))
    gc.collect()
    stages = runtime_stages(model, inputs, work / "stages.nii.gz")
    _report_main(settings, contenders, [torch_alone, *other], windows, cold, warm, cli, cli_labels)
    _report_stages(stages, contenders["D"])


def _report_stages(stages: dict[str, float], compute: Timed) -> None:
    total = sum(stages.values())
    print(f"\nA stage by stage (one more run, {total:.2f} s in all):")
    for name, seconds in stages.items():
        print(f"  {name:<44s} {seconds:7.2f} s  {100.0 * seconds / total:5.1f} %")
    window = stages[SLIDING_STAGE]
    print(f"  {'sliding window minus D (cutting, stitching)':<44s} {window - compute.median:7.2f} s")


def _report_trial(trial: dict[str, dict[int, float]]) -> None:
    print("batch-size trial, each engine alone (s/window, best of 2 turns):")
    for name, sizes in trial.items():
        faster = min(sizes, key=sizes.__getitem__)
        print(f"  {name:<16s} " + ", ".join(f"batch {size}: {seconds:.3f}" for size, seconds in sizes.items())
              + f"  (faster: batch {faster})")


def _report_parity(model: Model, net: torch.nn.Module, windows: Windows, shape_xyz: tuple[int, ...]) -> None:
    shape_zyx = tuple(reversed(shape_xyz))
    ours = [window_starts(size, PATCH, OVERLAP) for size in shape_zyx]
    difference, largest = forward_difference(model, net, windows)
    print(f"same weights: one real batch through {model.backend.name} and torch differs by at most "
          f"{difference:.2e} in the logits (largest |logit| {largest:.2f})")
    print(f"window starts (z; y; x): runtime {_starts(ours)}; MONAI {_starts([monai_starts(n) for n in shape_zyx])}; "
          f"TorchIO {_starts(torchio_starts(shape_zyx))}")


def _starts(per_axis: Sequence[Sequence[int]]) -> str:
    return "; ".join(",".join(map(str, starts)) for starts in per_axis)


def _other_batch_monai(settings: Settings, net: torch.nn.Module, inputs: Sequence[Path], work: Path) -> list[Timed]:
    """B once at the other batch size (1 <-> 2), for context."""
    if settings.skip_monai or settings.batch_size > 2:
        return []
    size = 3 - settings.batch_size
    timed = Timed(f"B MONAI at batch {size} (1 run, for context)",
                  lambda: monai_end_to_end(net, inputs, work / "b2_labels.nii.gz", size))
    time_once(timed)
    return [timed]


def _contenders(settings: Settings, model: Model, net: torch.nn.Module, inputs: Sequence[Path],
                windows: Windows, work: Path, onnx_path: Path) -> dict[str, Timed]:
    size = settings.batch_size
    contenders = {"A": Timed("A runtime end to end (" + model.backend.name + ")",
                             lambda: runtime_end_to_end(model, inputs, work / "a_labels.nii.gz"))}
    if not settings.skip_monai:
        contenders["B"] = Timed("B MONAI sliding_window_inference (torch)",
                                lambda: monai_end_to_end(net, inputs, work / "b_labels.nii.gz", size))
    if not settings.skip_torchio:
        contenders["C"] = Timed("C TorchIO GridSampler + GridAggregator",
                                lambda: torchio_end_to_end(net, inputs, work / "c_labels.nii.gz", size))
    label, compute = engine_compute(model, onnx_path)
    contenders["D"] = Timed(label, lambda: compute(windows, size))
    if isinstance(compute, StreamsCompute):
        contenders["D1"] = Timed("D1 compute, one batch at a time",
                                 lambda: backend_compute(model, windows, size))
    return contenders


def _report_main(settings: Settings, timed: dict[str, Timed], context: list[Timed], windows: Windows,
                 cold: float, warm: float, cli: float, cli_labels: Labels) -> None:
    a, b, c, d, d1 = (timed.get(key) for key in ("A", "B", "C", "D", "D1"))
    print("\n== synthetic BraTS-like case: seconds (median, min over turns) ==")
    print(f"{'contender':<46s} {'median':>9s} {'min':>9s} {'turns':>5s}")
    for key, label in (("A", a), ("B", b), ("C", c), ("D", d), ("D1", d1)):
        print(row(label.label if label else f"{key} (skipped)", label))
    for extra in context:
        print(row(extra.label, extra))
    print(f"runtime model load: cold {cold:.2f} s (empty OpenVINO cache), warm {warm:.2f} s (cached)")
    print(f"runtime predict CLI, one whole process (start, imports, load with warm cache, run, write): {cli:.2f} s")
    print(f"windows per case: {windows.count} (batch {settings.batch_size}, "
          f"{math.ceil(windows.count / settings.batch_size)} model calls)")
    print(ratio_text("A/B", a, b, TARGET_A_B))
    print(ratio_text("A/D", a, d, TARGET_A_D))
    print(paired_text("A/D", a, d, TARGET_A_D))
    print(ratio_text("A/C", a, c))
    print(ratio_text("A/D1", a, d1))
    print(ratio_text("D/D1", d, d1))
    if a is not None and d is not None:
        per_turn = turn_ratios(a, d)
        print("A/D turn by turn (each A timed back to back with the D of its turn): "
              + ", ".join(f"{x:.3f}" for x in per_turn))
        print(f"CPU seconds of this process's threads (median): A {statistics.median(a.cpu):.2f}, "
              f"D {statistics.median(d.cpu):.2f}, A/D {statistics.median(a.cpu) / statistics.median(d.cpu):.3f} "
              "(the work each did; it leaves out time the VM's host took, which moves wall times)")
        if a.steal and d.steal:
            print(f"CPU seconds the host took during each A: {', '.join(f'{x:.2f}' for x in a.steal)}; "
                  f"during each D: {', '.join(f'{x:.2f}' for x in d.steal)}")
    print(f"labels equal A vs B: {percent_equal(a.labels, b.labels if b else None)}; "
          f"A vs C: {percent_equal(a.labels, c.labels if c else None)}; "
          f"A vs CLI: {percent_equal(a.labels, cli_labels)}")
    print(f"A's label map: {class_fractions(a.labels)}")
    print("(the weights are the same (see above); labels differ where the windows are placed or blended "
          "differently, since an untrained network's output depends on where a window starts)")


# --------------------------------------------------------------------------- part 2: real brain MR


def brain_input(settings: Settings, work: Path) -> Path | None:
    """The real brain MR, cropped in plane for --quick; None when the data folder is missing."""
    path = settings.data_root / BRAIN_FILE
    if not path.is_file():
        print(f"\nreal brain MR not found at {path}; set TEST_DATA_DIR to the shared data folder. Skipped.")
        return None
    if not settings.quick:
        return path
    image = sitk.ReadImage(str(path))
    start = (image.GetSize()[0] - QUICK_BRAIN_CROP_XY) // 2
    stop = start + QUICK_BRAIN_CROP_XY
    cropped = work / "brain_quick.nrrd"
    sitk.WriteImage(image[start:stop, start:stop, :], str(cropped))
    return cropped


def brain_comparison(settings: Settings, work: Path) -> None:
    path = brain_input(settings, work)
    if path is None:
        return
    net, onnx_path = ensure_network(settings.cache, 1)
    steps = [{"resample": {"spacing": [1.0, 1.0, 1.0]}}, {"zscore": {"region": "nonzero"}}]
    model_dir = package(onnx_path, work / "models", "bench_unet_brain", ["image"], steps, settings.batch_size)
    model, _ = timed_load(model_dir, work / "xdg_cold", settings.threads)
    scan = read_scan([path])
    volume, _ = run_steps(Volume.from_array(scan.array_zyx, scan.spacing_zyx), model.manifest.preprocessing,
                          min_shape=(PATCH,) * 3)
    print(f"\nreal brain MR {path.name}: {scan.array_zyx.shape[1:]} (z y x) at {_mm(scan.spacing_zyx)} mm -> "
          f"{volume.array.shape[1:]} at 1 mm; timing {settings.repeats} turn(s) ...", flush=True)
    runs = _skip_runs(model, path, work)
    monai = None
    if not settings.skip_monai:
        monai = Timed("MONAI on the resampled, z-scored array",
                      lambda: monai_labels(net, volume.array.copy(), settings.batch_size))
    in_turns([*runs, monai] if monai else runs, settings.repeats)
    _report_brain(runs, monai, scan, volume)


def _skip_runs(model: Model, path: Path, work: Path, prefix: str = "brain") -> list[Timed]:
    """The runtime end to end on one file with and without skipping background windows."""
    runs = []
    for skip in (True, False):
        changed = with_window(model, skip_background=skip)
        output = work / f"{prefix}_skip_{skip}.nii.gz"
        runs.append(Timed(f"runtime end to end, skip_background {str(skip).lower()}",
                          lambda m=changed, out=output: runtime_end_to_end(m, [path], out)))
    return runs


def _mm(spacing: Sequence[float]) -> str:
    return "x".join(f"{s:.2f}" for s in spacing)


def window_counts(foreground: np.ndarray, patch: int) -> tuple[int, int]:
    """Windows (patch^3, the benchmark's overlap) holding some foreground voxel, and all windows."""
    grid = window_grid(foreground.shape, (patch,) * 3, OVERLAP)
    return sum(1 for window in grid if foreground[window].any()), len(grid)


def _report_brain(runs: list[Timed], monai: Timed | None, scan: Scan, volume: Volume) -> None:
    kept, total = window_counts(volume.foreground, PATCH)
    raw_zero = 100.0 * float(np.mean(scan.array_zyx == 0))
    resampled_zero = 100.0 * (1.0 - float(np.mean(volume.foreground)))
    skip, full = runs
    print("\n== real brain MR (1 channel, resampled to 1 mm): seconds (median, min over turns) ==")
    print(f"{'run':<46s} {'median':>9s} {'min':>9s} {'turns':>5s}")
    for timed in (*runs, monai):
        print(row(timed.label if timed else "MONAI (skipped)", timed))
    print(f"windows run with skip_background: {kept} of {total}; time skip/full = {skip.median / full.median:.3f}")
    print(f"exact-zero voxels: {raw_zero:.1f} % of the input, {resampled_zero:.1f} % of the resampled grid")
    if kept == total:
        print("every window holds some non-zero voxel: this scan has too little exact-zero background "
              "for skipping to save any window, so the two runs do the same work.")
    elif kept > 0.9 * total:
        print(f"only {total - kept} of {total} windows are pure background: skipping saves little on this scan.")
    if skip.labels is not None and full.labels is not None:
        print(f"labels equal skip vs full: {percent_equal(skip.labels, full.labels)}")
    _report_skippable(scan, volume)


def head_masked(scan: Scan) -> np.ndarray:
    """The scan with everything outside the head set to exactly 0, the way brain-extracted inputs
    (BraTS, say) come: Otsu threshold, the largest connected part, holes filled."""
    image = sitk.GetImageFromArray(scan.array_zyx[0])
    head = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.OtsuThreshold(image, 0, 1)),
                                 sortByObjectSize=True) == 1
    head = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(head, [3, 3, 1]))
    return scan.array_zyx * sitk.GetArrayFromImage(head).astype(bool)


def _report_skippable(scan: Scan, volume: Volume) -> None:
    """How many windows skipping would leave out, for this scan and for it with a zero background,
    at the benchmark's patch and at smaller ones (window counts only, nothing timed), and how far
    the head reaches."""
    masked = head_masked(scan)
    steps = [Step(name="resample", params={"spacing": [1.0, 1.0, 1.0]})]
    print("windows holding some non-zero voxel / all windows, overlap 0.5 (counts only):")
    for name, array in (("as stored", scan.array_zyx), ("background outside the head set to 0", masked)):
        counts = []
        for patch in (PATCH, 64, 48):
            grid_volume, _ = run_steps(Volume.from_array(array, scan.spacing_zyx), steps, min_shape=(patch,) * 3)
            counts.append("{}^3: {}/{}".format(patch, *window_counts(grid_volume.foreground, patch)))
        print(f"  {name:<38s} " + ", ".join(counts))
    head = masked[0] != 0
    reach = [(int(np.flatnonzero(head.any(axis=tuple(a for a in range(3) if a != axis))).min()),
              int(np.flatnonzero(head.any(axis=tuple(a for a in range(3) if a != axis))).max()))
             for axis in range(3)]
    print("the head reaches " + ", ".join(f"{name} {lo}..{hi} of {size}" for name, (lo, hi), size in
                                      zip("zyx", reach, head.shape)) + " (voxels of the scan as stored)")


# --------------------------------------------------------------------------- part 3: real CT series


def ct_input(settings: Settings, work: Path) -> Path | None:
    """The real CT series folder; for --quick an in-plane crop of it (air above the body, and the body) as NRRD."""
    folder = settings.data_root / CT_SERIES
    if not folder.is_dir():
        print(f"\nreal CT series not found at {folder}; set TEST_DATA_DIR to the shared data folder. Skipped.")
        return None
    if not settings.quick:
        return folder
    scan = read_scan([folder])
    start = 40  # rows 40.. hold air above the body (which starts near row 136) and then the body
    image = sitk.GetImageFromArray(scan.array_zyx[0, :, start:start + QUICK_CT_CROP_XY, :QUICK_CT_CROP_XY])
    cropped = work / "ct_quick.nrrd"
    sitk.WriteImage(image, str(cropped))
    return cropped


def ct_comparison(settings: Settings, work: Path) -> None:
    path = ct_input(settings, work)
    if path is None:
        return
    _, onnx_path = ensure_network(settings.cache, 1)
    steps = [{"foreground": {"min": CT_AIR_BELOW}}, {"clip": {"min": -1000, "max": 1000}},
             {"zscore": {"region": "nonzero"}}]
    model_dir = package(onnx_path, work / "models", "bench_unet_ct", ["ct"], steps, settings.batch_size)
    model, _ = timed_load(model_dir, work / "xdg_cold", settings.threads)
    scan = read_scan([path])
    volume, _ = run_steps(Volume.from_array(scan.array_zyx, scan.spacing_zyx), model.manifest.preprocessing,
                          min_shape=(PATCH,) * 3)
    print(f"\nreal CT {path.name}: {scan.array_zyx.shape[1:]} (z y x) at {_mm(scan.spacing_zyx)} mm, "
          f"air below {CT_AIR_BELOW:g} HU is background; timing {settings.repeats} turn(s) ...", flush=True)
    runs = _skip_runs(model, path, work, prefix="ct")
    in_turns(runs, settings.repeats)
    kept, total = window_counts(volume.foreground, PATCH)
    skip, full = runs
    body = scan.array_zyx[0] >= CT_AIR_BELOW
    print(f"\n== real CT (1 channel, native grid, padded to {PATCH} slices): seconds (median, min over turns) ==")
    print(f"{'run':<46s} {'median':>9s} {'min':>9s} {'turns':>5s}")
    for timed in runs:
        print(row(timed.label, timed))
    print(f"windows run with skip_background: {kept} of {total} ({kept / total:.3f}); "
          f"time skip/full = {skip.median / full.median:.3f} (of the minima {skip.best / full.best:.3f})")
    print(f"body (>= {CT_AIR_BELOW:g} HU): {100.0 * float(np.mean(body)):.1f} % of the voxels")
    if skip.labels is not None and full.labels is not None:
        print(f"labels equal skip vs full: inside the body {percent_equal(skip.labels[body], full.labels[body])}, "
              f"everywhere {percent_equal(skip.labels, full.labels)}")
        print("(in the air no kept window reaches, the skipping run says background; the full run gives the "
              "untrained network's guess there)")


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(settings.threads)
    settings.cache.mkdir(parents=True, exist_ok=True)
    print(f"radiology_window benchmark, {dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {machine_text()}")
    print(f"versions: {versions_text()}")
    print(f"load average before: {load_text()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=settings.cache))
    started, busy = time.perf_counter(), busy_seconds()
    try:
        main_comparison(settings, work)
        brain_comparison(settings, work)
        ct_comparison(settings, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average after: {load_text()}")
    print(others_text(busy, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())

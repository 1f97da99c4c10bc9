"""Whole-slide inference: the runtime's pipeline against the model alone on the same tiles, its
peak memory on two slide sizes, and a plain OpenSlide + onnxruntime loop on the same work.

The benchmark makes its own slides: a synthetic H&E-like slide of 50,000 x 50,000 pixels at
0.25 um/pixel (a 40x scan), mostly glass with a few tissue islands, written as a tiled pyramidal
TIFF (levels 1, 1/2, 1/4, ... , zlib); and the same at 25,000 x 25,000 (a quarter of the area,
for the memory comparison). The real slide of the shared test data is run too. The model is a
small per-pixel CNN (five 3x3 convolutions of 32 channels, then 1x1 to 3 classes; random,
seeded weights, 2.4 GMAC per window) at 1 um/pixel on 256 x 256 windows, overlap 0.25, batch 4: about the cost per
pixel of a light segmentation network.

    python benchmarks/slide.py                  # everything (about 5 minutes on 2 cores)
    python benchmarks/slide.py --side 20000     # a smaller large slide (the memory pair is side and side / 2)

Rows:
  A   the runtime in process: `predict_slide` with labels alone (tissue mask, windows read between
      the model's calls, the model, chunked stitching, each chunk's labels) and the label map
      written as a pyramidal TIFF; the model loaded beforehand
  D   the model alone: the backend called on the same windows' batches, read into memory beforehand
  P   a plain loop a user would write: OpenSlide read_region per window of the same plan, resize,
      normalise, onnxruntime, sums and counts of the whole map in memory, argmax, tifffile write
  M   MONAI's whole-slide path: PatchInferer over WSISlidingWindowSplitter (OpenSlide, the same
      level, patch, overlap and batch), a filter that keeps the windows on the same tissue mask,
      AvgMerger, argmax, tifffile write; the torch network has the ONNX model's weights
  RSS the whole `runtime predict ... --output` command as a new process on each slide size, and P
      and M likewise, each reporting its own seconds and peak resident memory
"""
from __future__ import annotations

import argparse
import json
import math
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

from window_bench.host import data_root, machine_text, own_peak_mb  # noqa: E402

SLIDE_MPP = 0.25
MODEL_MPP = 1.0
PATCH = 256
OVERLAP = 0.25
BATCH = 4
TILE = 512
GLASS = np.array([242, 241, 239], np.int16)
CLASSES = {0: "background", 1: "nuclei", 2: "stroma"}


# ----------------------------------------------------------------------------- the slides


def islands(side: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """Tissue islands (centre y, centre x, radius) covering about 6 % of a side x side slide."""
    rng = np.random.default_rng(seed)
    count = 6
    radius = int(side * math.sqrt(0.06 / (count * math.pi)))
    return [(int(rng.integers(radius, side - radius)), int(rng.integers(radius, side - radius)), radius)
            for _ in range(count)]


def tissue_tile(top: int, left: int, size: int, step: int, blobs: list[tuple[int, int, int]]) -> np.ndarray:
    """One (size, size, 3) uint8 tile of the slide's level with downsample `step`: glass, and
    pink stroma with purple nuclei inside the islands."""
    rows = (top + np.arange(size))[:, None] * step
    cols = (left + np.arange(size))[None, :] * step
    inside = np.zeros((size, size), bool)
    for cy, cx, radius in blobs:
        if abs(top * step + size * step / 2 - cy) < radius + size * step and abs(left * step + size * step / 2 - cx) < radius + size * step:
            inside |= (rows - cy) ** 2 + (cols - cx) ** 2 <= radius ** 2
    tile = np.broadcast_to(GLASS, (size, size, 3)).copy()
    if inside.any():
        nuclei = (np.sin(rows / 37.0) * np.cos(cols / 41.0)) > 0.55
        tile[inside] = (225, 140, 190)
        tile[inside & nuclei] = (110, 70, 160)
        noise = ((rows * 7 + cols * 13) % 11 - 5).astype(np.int16)
        tile[inside] += noise[inside][:, None]
    return np.clip(tile, 0, 255).astype(np.uint8)


def write_synthetic(path: Path, side: int) -> Path:
    """The side x side slide at SLIDE_MPP as a tiled pyramidal TIFF, tile by tile."""
    import tifffile

    if path.is_file():
        return path
    blobs = islands(side)
    partial = path.with_name(path.name + ".partial")
    with tifffile.TiffWriter(partial, bigtiff=True) as writer:
        step = 1
        while True:
            height = width = math.ceil(side / step)

            def tiles(step: int = step, height: int = height, width: int = width):
                for top in range(0, height, TILE):
                    for left in range(0, width, TILE):
                        yield tissue_tile(top, left, TILE, step, blobs)

            mpp = SLIDE_MPP * step
            writer.write(tiles(), shape=(height, width, 3), dtype=np.uint8, tile=(TILE, TILE), compression="zlib",
                         photometric="rgb", subfiletype=1 if step > 1 else 0,
                         resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
            if max(height, width) <= TILE:
                break
            step *= 2
    partial.replace(path)
    return path


# ----------------------------------------------------------------------------- the model


def make_model(repository: Path) -> Path:
    """The small CNN packaged as a histology model folder."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from export.package import build_from_onnx
    from export.spec import parse_spec

    rng = np.random.default_rng(7)
    layers = [(3, 32, 3), (32, 32, 3), (32, 32, 3), (32, 32, 3), (32, 32, 3), (32, 3, 1)]
    nodes, initializers, source = [], [], "input"
    for index, (cin, cout, k) in enumerate(layers):
        weight = (rng.normal(size=(cout, cin, k, k)) / math.sqrt(cin * k * k)).astype(np.float32)
        initializers += [numpy_helper.from_array(weight, f"w{index}"),
                         numpy_helper.from_array(np.zeros(cout, np.float32), f"b{index}")]
        out = "output" if index == len(layers) - 1 else f"c{index}"
        nodes.append(helper.make_node("Conv", [source, f"w{index}", f"b{index}"], [out], kernel_shape=[k, k],
                                      pads=[k // 2] * 4))
        if index < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{index}"]))
            source = f"r{index}"
    graph = helper.make_graph(nodes, "slide_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 3, "y", "x"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 3, "y", "x"])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx_path = repository / "slide_cnn.onnx"
    repository.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(onnx_path))
    spec = parse_spec({
        "name": "bench_slide_cnn", "task": "segmentation", "modality": "histology", "dimensions": 2,
        "axis_order": "yx", "channels": ["red", "green", "blue"], "classes": CLASSES,
        "preprocessing": [{"normalize": {"mean": [180.0, 140.0, 180.0], "std": [50.0, 50.0, 50.0]}}],
        "patch": {"size": [PATCH, PATCH]},
        "window": {"overlap": OVERLAP, "batch_size": BATCH, "blending": "gaussian"},
        "output": {"activation": "softmax", "label_rule": "argmax"},
        "slide": {"mpp": MODEL_MPP, "min_object_um2": 2000.0, "min_hole_um2": 2000.0},
    }, source="benchmark slide spec")
    return build_from_onnx(onnx_path, spec, repository / "models").parent


# ----------------------------------------------------------------------------- the contenders


def runtime_in_process(model, slide: Path, out_dir: Path, mpp: float | None) -> tuple[float, object]:
    """A: predict_slide and the label map written, in seconds; and the map."""
    from runtime.io.write import OutputSet
    from runtime.slide import outputs
    from runtime.slide.predict import predict_slide

    started = time.perf_counter()
    slide_map, scratch = predict_slide(model, slide, mpp=mpp, work_dir=out_dir, probabilities=False)
    try:
        with OutputSet() as staged:
            staged.file(out_dir / "a_labels.tif", lambda tmp: outputs.write_pyramid(
                tmp, lambda region, step: slide_map.labels(region, step).astype(np.uint8), slide_map.shape,
                np.uint8, slide_map.mpp))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return time.perf_counter() - started, slide_map


def planned_windows(model, slide_path: Path, mpp: float | None):
    """The plan A runs, and the slide source's reader for it."""
    from runtime.slide.predict import plan_slide
    from runtime.slide.reader import Slide
    from runtime.slide.source import SlideSource

    manifest = model.manifest
    slide = Slide(slide_path, mpp)
    sampling, _, planned = plan_slide(manifest, slide)
    return slide, sampling, planned, SlideSource(slide, sampling, planned, manifest.preprocessing, ahead=1)


def model_alone(model, slide_path: Path, mpp: float | None) -> tuple[float, int, int]:
    """D: the backend on the plan's batches, read beforehand; seconds, windows run, windows in all."""
    slide, sampling, planned, source = planned_windows(model, slide_path, mpp)
    try:
        batches = [np.stack([source.read_window(w) for w in step.windows]) for step in planned.passes]
    finally:
        source.close()
        slide.close()
    backend = model.backend
    started = time.perf_counter()
    for batch in batches:
        backend(batch)
    return time.perf_counter() - started, planned.windows, planned.total


def plain_loop(model_dir: Path, slide_path: Path, mpp: float | None, out: Path) -> float:
    """P: the loop without the runtime's engine, over the same windows, whole map in memory."""
    import onnxruntime as ort
    import openslide
    import tifffile
    from PIL import Image

    from runtime.manifest import load_manifest
    from runtime.predict import load_model

    started = time.perf_counter()
    model = load_model(model_dir, device="cpu")
    slide, sampling, planned, source = planned_windows(model, slide_path, mpp)
    source.close()
    slide.close()
    manifest, folder = load_manifest(model_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(folder / manifest.onnx.file), options, providers=["CPUExecutionProvider"])
    handle = openslide.OpenSlide(str(slide_path))
    scale, level = sampling.l0_per_pixel, sampling.level
    per_level = scale / handle.level_downsamples[level]
    mean = np.array([180.0, 140.0, 180.0], np.float32)[:, None, None]
    height, width = planned.shape
    sums = np.zeros((3, height, width), np.float32)
    counts = np.zeros((height, width), np.float32)
    for step in planned.passes:
        tiles = []
        for rows, cols in step.windows:
            size = (round(PATCH * per_level),) * 2
            region = handle.read_region((round(cols.start * scale), round(rows.start * scale)), level, size)
            rgb = np.asarray(region.convert("RGB").resize((PATCH, PATCH), Image.Resampling.BILINEAR))
            tiles.append((rgb.transpose(2, 0, 1).astype(np.float32) - mean) / 50.0)
        (logits,) = session.run(None, {"input": np.stack(tiles)})
        for (rows, cols), output in zip(step.windows, logits):
            sums[:, rows, cols] += output
            counts[rows, cols] += 1
    labels = np.where(counts > 0, sums.argmax(axis=0), 0).astype(np.uint8)
    tifffile.imwrite(out, labels[: sampling.shape[0], : sampling.shape[1]], tile=(256, 256), compression="zlib")
    return time.perf_counter() - started


def torch_network(model_dir: Path):
    """The ONNX CNN as a torch module with the same weights, preprocessing included (the
    manifest's normalize step), for MONAI."""
    import onnx
    import torch
    from onnx import numpy_helper

    from runtime.manifest import load_manifest

    manifest, folder = load_manifest(model_dir)
    graph = onnx.load(str(folder / manifest.onnx.file)).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    layers: list[torch.nn.Module] = []
    convs = [node for node in graph.node if node.op_type == "Conv"]
    for index, node in enumerate(convs):
        weight, bias = weights[node.input[1]], weights[node.input[2]]
        conv = torch.nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], padding=weight.shape[2] // 2)
        conv.weight.data = torch.from_numpy(weight.copy())
        conv.bias.data = torch.from_numpy(bias.copy())
        layers.append(conv)
        if index < len(convs) - 1:
            layers.append(torch.nn.ReLU())
    step = manifest.preprocessing[0].params
    mean = torch.tensor(step["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(step["std"], dtype=torch.float32).view(1, 3, 1, 1)
    body = torch.nn.Sequential(*layers).eval()

    def network(batch: "torch.Tensor") -> "torch.Tensor":
        return body((batch.float() - mean) / std)

    return network


def monai_patch_inferer(model_dir: Path, slide_path: Path, mpp: float | None, out: Path) -> float:
    """M: MONAI's whole-slide path: PatchInferer over WSISlidingWindowSplitter (OpenSlide, the
    same level and patch), skipping windows outside the same tissue mask, AvgMerger, argmax."""
    import tifffile
    import torch
    from monai.inferers import AvgMerger, PatchInferer, WSISlidingWindowSplitter

    from runtime.predict import load_model
    from runtime.slide.predict import plan_slide
    from runtime.slide.reader import Slide
    from runtime.window import CoarseMask

    torch.set_num_threads(2)
    started = time.perf_counter()
    model = load_model(model_dir, device="cpu")
    with Slide(slide_path, mpp) as opened:
        sampling, tissue, _ = plan_slide(model.manifest, opened)
    mask = CoarseMask(tissue.mask, tuple(l0 / sampling.l0_per_pixel for l0 in tissue.l0_per_pixel))

    def on_tissue(patch: "torch.Tensor", location) -> bool:
        rows, cols = location
        return mask.any_in((slice(rows, rows + PATCH), slice(cols, cols + PATCH)))

    network = torch_network(model_dir)
    splitter = WSISlidingWindowSplitter(patch_size=PATCH, overlap=OVERLAP, reader="OpenSlide", level=sampling.level,
                                        filter_fn=on_tissue)
    inferer = PatchInferer(splitter=splitter, merger_cls=AvgMerger, batch_size=BATCH)
    with torch.inference_mode():
        merged = inferer(str(slide_path), network)
    labels = merged[0].argmax(dim=0).to(torch.uint8).numpy()
    tifffile.imwrite(out, labels, tile=(256, 256), compression="zlib")
    return time.perf_counter() - started


# ----------------------------------------------------------------------------- the children


def child(kind: str, model_dir: str, slide: str, out: str, mpp: str) -> dict[str, float]:
    """One contender in a fresh process, reporting its seconds and its own peak memory (VmHWM:
    `ru_maxrss` would carry the peak of the parent that started it)."""
    given = None if mpp == "none" else float(mpp)
    if kind == "runtime":
        from click.testing import CliRunner

        from runtime.commands.cli import main

        args = ["predict", slide, "--model", model_dir, "--output", out, "--quiet", "--device", "cpu"]
        if given is not None:
            args += ["--mpp", str(given)]
        started = time.perf_counter()
        result = CliRunner().invoke(main, args)
        if result.exit_code:
            raise SystemExit(result.output)
        seconds = time.perf_counter() - started
    elif kind == "monai":
        seconds = monai_patch_inferer(Path(model_dir), Path(slide), given, Path(out))
    else:
        seconds = plain_loop(Path(model_dir), Path(slide), given, Path(out))
    return {"seconds": seconds, "peak_mb": own_peak_mb()}


def in_child(kind: str, model_dir: Path, slide: Path, out: Path, mpp: float | None) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", kind, str(model_dir), str(slide), str(out),
               "none" if mpp is None else str(mpp)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{kind} on {slide} failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main


def report(line: str) -> None:
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=50000, help="level-0 pixels a side of the large synthetic slide")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "benchmarks" / "out" / "slides")
    parser.add_argument("--data-dir", type=Path, default=data_root(),
                        help="the shared test data (default $TEST_DATA_DIR, else ../shared/data)")
    parser.add_argument("--skip-monai", action="store_true", help="leave MONAI's PatchInferer out")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    import openvino  # noqa: F401  (the runtime's CPU backend; refuse early when it is missing)

    from runtime.predict import load_model

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="medflow-slide-bench-"))
    report(f"slide benchmark, {time.strftime('%Y-%m-%dT%H:%M:%S')}")
    report(f"machine: {machine_text()}")
    try:
        sides = (args.side // 2, args.side)
        slides = {}
        for side in sides:
            started = time.perf_counter()
            slides[side] = write_synthetic(args.cache_dir / f"synthetic_{side}.tif", side)
            report(f"slide {side} x {side} at {SLIDE_MPP} um/pixel: {slides[side].stat().st_size / 2**20:.0f} MB "
                   f"({time.perf_counter() - started:.0f} s to make or find)")
        model_dir = make_model(work)
        cases = [(f"synthetic {args.side}^2", slides[args.side], None)]
        real = args.data_dir / "wsi" / "TCGA-CR-7395-01A-01-TS1.svs"
        if real.is_file():
            cases.append(("real TCGA slide (4443 x 3567, --mpp 0.5)", real, 0.5))
        else:
            report(f"real slide left out: {real} not found")
        for device in ("openvino", "cpu"):
            model = load_model(model_dir, device=device, threads=2)
            report(f"\nbackend {model.backend.name}")
            for name, slide, mpp in cases:
                d, run, total = model_alone(model, slide, mpp)
                a, _ = runtime_in_process(model, slide, work, mpp)
                a2, _ = runtime_in_process(model, slide, work, mpp)
                d2, _, _ = model_alone(model, slide, mpp)
                a, d = min(a, a2), min(d, d2)
                report(f"  {name}: {run} of {total} windows run ({100 * (total - run) / total:.1f} % skipped as "
                       f"background)")
                report(f"    A pipeline {a:6.2f} s = {run / a:6.1f} windows/s;  D model alone {d:6.2f} s = "
                       f"{run / d:6.1f} windows/s;  A/D throughput {d / a:.3f}  (target >= 0.9: "
                       f"{'met' if d / a >= 0.9 else 'NOT met'})")
        report("\neach a new process, peak memory and seconds (the runtime: runtime predict --output on onnxruntime, "
               "CPU; P: the plain loop; M: MONAI's PatchInferer)")
        peaks = {}
        for side in sides:
            r = in_child("runtime", model_dir, slides[side], work / f"r{side}.tif", None)
            p = in_child("plain", model_dir, slides[side], work / f"p{side}.tif", None)
            peaks[side] = r["peak_mb"]
            line = (f"  {side} x {side}: runtime {r['peak_mb']:6.0f} MB {r['seconds']:6.1f} s;  P {p['peak_mb']:6.0f} MB "
                    f"{p['seconds']:6.1f} s (time {p['seconds'] / r['seconds']:.2f}x the runtime's)")
            if not args.skip_monai:
                m = in_child("monai", model_dir, slides[side], work / f"m{side}.tif", None)
                line += f";  M {m['peak_mb']:6.0f} MB {m['seconds']:6.1f} s (time {m['seconds'] / r['seconds']:.2f}x)"
            report(line)
        small, large = peaks[sides[0]], peaks[sides[1]]
        ratio = large / small
        report(f"  runtime peak, 4x the area: {ratio:.2f}x (target within 1.20x: {'met' if ratio <= 1.2 else 'NOT met'}; "
               f"under 2 GB: {'met' if large < 2048 else 'NOT met'})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

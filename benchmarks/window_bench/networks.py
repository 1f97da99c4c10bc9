"""The network every contender runs: a seeded MONAI 3D UNet, its ONNX export, the model folder
`export.package` makes of it, and loading that folder on one of the runtime's backends."""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from export.package import build_from_onnx
from export.spec import parse_spec
from runtime.predict import Model, load_model

from window_bench.options import CLASSES, OVERLAP, PATCH, SEED


def make_unet(in_channels: int) -> torch.nn.Module:
    """The MONAI 3D UNet of the benchmark; its weights come from the seed or a state file."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=len(CLASSES),
                channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)


def model_paths(cache: Path, in_channels: int) -> tuple[Path, Path]:
    stem = "unet3d" if in_channels == 4 else f"unet3d_{in_channels}ch"
    return cache / f"{stem}.onnx", cache / f"{stem}_state.pt"


def export_onnx(net: torch.nn.Module, in_channels: int, path: Path) -> None:
    """Opset 17, `input` -> `output`, a dynamic batch axis."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    example = torch.zeros(1, in_channels, PATCH, PATCH, PATCH)
    torch.onnx.export(net, (example,), str(partial), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    os.replace(partial, path)


def seeded_unet(state_path: Path, in_channels: int) -> tuple[torch.nn.Module, bool]:
    """The UNet with the weights of `state_path`, or seeded ones saved there; and whether they are new."""
    torch.manual_seed(SEED + in_channels)
    net = make_unet(in_channels)
    if state_path.is_file():
        net.load_state_dict(torch.load(state_path, weights_only=True))
        return net, False
    partial = state_path.with_name(f".{state_path.name}.{os.getpid()}.partial")
    torch.save(net.state_dict(), partial)
    os.replace(partial, state_path)
    return net, True


def ensure_network(cache: Path, in_channels: int) -> tuple[torch.nn.Module, Path]:
    """The eval-mode torch UNet and its ONNX file, made (seeded) and cached when missing."""
    onnx_path, state_path = model_paths(cache, in_channels)
    net, new = seeded_unet(state_path, in_channels)
    net.eval()
    if new or not onnx_path.is_file():
        print(f"exporting {onnx_path.name} (opset 17, dynamic batch) ...", flush=True)
        export_onnx(net, in_channels, onnx_path)
    return net, onnx_path


def package(onnx_path: Path, repository: Path, name: str, channels: Sequence[str],
            steps: list[Any], batch_size: int, classes: Mapping[int, str] = CLASSES) -> Path:
    """Package the ONNX file as a model folder (export.package) and return that folder; `classes`
    names the network's three output channels (by default the synthetic case's)."""
    spec = parse_spec({
        "name": name, "task": "segmentation", "modality": "radiology", "dimensions": 3,
        "axis_order": "zyx", "channels": list(channels), "classes": dict(classes),
        "preprocessing": steps, "patch": {"size": [PATCH] * 3},
        "window": {"overlap": OVERLAP, "blending": "gaussian", "batch_size": batch_size,
                   "skip_background": False},
        "output": {"activation": "softmax", "label_rule": "argmax"},
        "provenance": {"description": "benchmark UNet, random weights (not trained)"},
    }, source=f"benchmark spec {name}")
    return build_from_onnx(onnx_path, spec, repository).parent


def with_window(model: Model, **changes: Any) -> Model:
    """The same loaded model with other settings of its manifest's window section."""
    manifest = model.manifest
    window = dataclasses.replace(manifest.window, **changes)
    return dataclasses.replace(model, manifest=dataclasses.replace(manifest, window=window))


def load_timed(model_dir: Path, xdg_cache: Path, threads: int, device: str) -> tuple[Model, float]:
    """The model loaded on `device`, with OpenVINO's compiled-model cache under `xdg_cache`, and
    the seconds the load took."""
    os.environ["XDG_CACHE_HOME"] = str(xdg_cache)
    started = time.perf_counter()
    model = load_model(model_dir, device=device, threads=threads)
    return model, time.perf_counter() - started

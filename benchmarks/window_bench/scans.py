"""A real scan and the 1-channel network packaged for it, as the brain and CT parts use them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.io import Scan, read_scan
from runtime.predict import Model
from runtime.preprocess import Volume, run_steps

from window_bench.networks import ensure_network, load_timed, package
from window_bench.options import PATCH, Settings


@dataclass(frozen=True)
class RealCase:
    """The scan as read, the model loaded on the first --device, and the scan preprocessed by it."""

    path: Path
    net: torch.nn.Module
    model: Model
    scan: Scan
    volume: Volume


def through_steps(model: Model, array: np.ndarray, spacing: tuple[float, ...], patch: int = PATCH,
                 steps: int | None = None) -> Volume:
    """An image (C, z, y, x) through the model's preprocessing (its first `steps` steps; all by
    default), padded to `patch` where shorter."""
    chosen = model.manifest.preprocessing[:steps]
    volume, _ = run_steps(Volume.from_array(array, spacing), chosen, min_shape=(patch,) * 3)
    return volume


def real_case(settings: Settings, work: Path, path: Path, name: str, channel: str,
              steps: list[dict[str, Any]]) -> RealCase:
    """The 1-channel network packaged as `name` with preprocessing `steps`, and the scan at `path`."""
    net, onnx_path = ensure_network(settings.cache, 1)
    model_dir = package(onnx_path, work / "models", name, [channel], steps, settings.batch_size)
    model, _ = load_timed(model_dir, work / f"xdg_{name}", settings.threads, settings.devices[0])
    scan = read_scan([path])
    return RealCase(path, net, model, scan, through_steps(model, scan.array_zyx, scan.spacing_zyx))

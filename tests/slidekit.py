"""Slides for tests: synthetic H&E-like tissue written as tiled pyramidal TIFFs that OpenSlide
opens, and the slide model of export.graphs packaged with a manifest."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from export import graphs
from tests.modelkit import make_model

GLASS = (242, 242, 240)
NUCLEI = (110, 70, 160)
STROMA = (225, 140, 190)


def tissue_image(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(height, width, 3) uint8 RGB: glass with a stroma rectangle holding nuclei discs, and the
    truth (height, width) class indices (0 glass, 1 nuclei, 2 stroma)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((height, width), dtype=np.uint8)
    top, left = height // 5, width // 6
    truth[top:height - top, left:width // 2 + width // 5] = 2
    rows, cols = np.ogrid[:height, :width]
    radius = max(3, min(height, width) // 40)
    for _ in range(12):
        cy = rng.integers(top + radius, height - top - radius)
        cx = rng.integers(left + radius, width // 2 + width // 5 - radius)
        truth[(rows - cy) ** 2 + (cols - cx) ** 2 <= radius ** 2] = 1
    colours = np.array([GLASS, NUCLEI, STROMA], dtype=np.int16)
    image = colours[truth] + rng.integers(-6, 7, size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), truth


def write_slide(path: Path, image: np.ndarray, mpp: float | None = 0.5, levels: int = 3, tile: int = 256) -> Path:
    """`image` as a tiled pyramidal TIFF (one page per level, each half the one before, zlib),
    with its resolution in the TIFF tags when `mpp` is given."""
    with tifffile.TiffWriter(path, bigtiff=False) as writer:
        for level in range(levels):
            step = 2 ** level
            extra: dict[str, Any] = {}
            if mpp is not None:
                extra = {"resolution": (1e4 / (mpp * step), 1e4 / (mpp * step)), "resolutionunit": "CENTIMETER"}
            writer.write(np.ascontiguousarray(image[::step, ::step]), tile=(tile, tile), compression="zlib",
                         photometric="rgb", subfiletype=1 if level else 0, **extra)
    return path


def stain_model(repository: Path, mpp: float = 1.0, patch: int = 128, **window: Any) -> Path:
    """The per-pixel stain model (export.graphs.stain_classes) as a histology model folder."""
    return make_model(
        repository, graphs.stain_classes(), name="stain", modality="histology", dimensions=2, axis_order="yx",
        channels=["red", "green", "blue"],
        classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "nuclei"}, {"value": 2, "name": "stroma"}],
        preprocessing=[{"name": "normalize", "params": {"mean": [0, 0, 0], "std": [255, 255, 255]}}],
        window={"mode": "sliding", "patch_size": [patch, patch], "overlap": 0.25, "blending": "gaussian",
                "batch_size": 4, "mirror_axes": [], "skip_background": True, **window},
        slide={"mpp": mpp, "tissue_mpp": 8.0, "min_object_um2": 2000.0, "min_hole_um2": 2000.0},
    )


def stain_logits(rgb: np.ndarray) -> np.ndarray:
    """The stain model's logits (3, h, w) computed directly on (h, w, 3) uint8."""
    scaled = rgb.astype(np.float32) / 255.0
    return np.einsum("kc,hwc->khw", graphs.STAIN_WEIGHT, scaled) + graphs.STAIN_BIAS[:, None, None]

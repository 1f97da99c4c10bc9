"""Slides for tests: synthetic H&E-like tissue written as tiled pyramidal TIFFs that OpenSlide
opens, and the slide model of export.graphs packaged with a manifest."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from export import graphs
from runtime.commands.demo import slide_phantom as tissue_image, write_slide
from tests.modelkit import make_model

__all__ = ["stain_logits", "stain_model", "tissue_image", "without_tiles", "write_slide"]


def stain_model(repository: Path, mpp: float = 1.0, patch: int = 128, provenance: dict[str, Any] | None = None,
                names: tuple[str, str] = ("nuclei", "stroma"), **window: Any) -> Path:
    """The per-pixel stain model (export.graphs.stain_classes) as a histology model folder, with
    `provenance` added to its manifest's, its classes 1 and 2 named `names`."""
    return make_model(
        repository, graphs.stain_classes(), name="stain", modality="histology", dimensions=2, axis_order="yx",
        provenance={"description": "test model", **(provenance or {})},
        channels=["red", "green", "blue"],
        classes=[{"value": 0, "name": "background"}, {"value": 1, "name": names[0]}, {"value": 2, "name": names[1]}],
        preprocessing=[{"name": "normalize", "params": {"mean": [0, 0, 0], "std": [255, 255, 255]}}],
        window={"mode": "sliding", "patch_size": [patch, patch], "overlap": 0.25, "blending": "gaussian",
                "batch_size": 4, "mirror_axes": [], "skip_background": True, **window},
        slide={"mpp": mpp, "tissue_mpp": 8.0, "min_object_um2": 2000.0, "min_hole_um2": 2000.0},
    )


def stain_logits(rgb: np.ndarray) -> np.ndarray:
    """The stain model's logits (3, h, w) computed directly on (h, w, 3) uint8."""
    scaled = rgb.astype(np.float32) / 255.0
    return np.einsum("kc,hwc->khw", graphs.STAIN_WEIGHT, scaled) + graphs.STAIN_BIAS[:, None, None]


def tile_classifier(repository: Path, task: str = "classification", mpp: float = 1.0, patch: int = 128,
                    threshold: float = 0.5, provenance: dict[str, Any] | None = None) -> Path:
    """A per-tile model on RGB scaled to [0, 1]: export.graphs.channel_classifier (classification,
    classes glass and tissue; "binary": one sigmoid channel for them, read at `threshold`) or mean_regressor
    (regression: the tile's mean red), or channel_classifier's two raw outputs as regression
    targets listed out of their order ("two targets": second of value 1, first of value 0)."""
    if task in ("classification", "binary"):
        graph = graphs.channel_classifier(3, 2, 2 if task == "classification" else 1)
        classes = [{"value": 0, "name": "glass"}, {"value": 1, "name": "tissue"}]
        output = {"activation": "softmax", "label_rule": "argmax", "threshold": 0.5, "ensemble": "mean"} \
            if task == "classification" else {"activation": "sigmoid", "label_rule": "threshold",
                                              "threshold": threshold, "ensemble": "mean"}
    else:
        graph = graphs.mean_regressor(3, 2) if task == "regression" else graphs.channel_classifier(3, 2, 2)
        classes = [{"value": 0, "name": "red"}] if task == "regression" else \
            [{"value": 1, "name": "second"}, {"value": 0, "name": "first"}]
        output = {"activation": "none", "label_rule": "argmax", "threshold": 0.5, "ensemble": "mean"}
    return make_model(
        repository, graph, name=f"tiles_{task.replace(' ', '_')}",
        task={"binary": "classification", "two targets": "regression"}.get(task, task),
        modality="histology", dimensions=2, axis_order="yx",
        channels=["red", "green", "blue"], classes=classes, output=output,
        preprocessing=[{"name": "normalize", "params": {"mean": [0, 0, 0], "std": [255, 255, 255]}}],
        window={"mode": "sliding", "patch_size": [patch, patch], "overlap": 0.0, "blending": "constant",
                "batch_size": 4, "mirror_axes": [], "skip_background": True},
        slide={"mpp": mpp, "tissue_mpp": 8.0, "min_object_um2": 2000.0, "min_hole_um2": 2000.0},
        **({"provenance": provenance} if provenance else {}),
    )


def without_tiles(slide: Path, damaged: Path, tiles_by_level: dict[int, list[int]]) -> Path:
    """A copy of `slide` whose tiles (level -> tile indices) are stored with no bytes, which OpenSlide
    reads as transparent: a tile missing from the file, or an area its scanner left out."""
    import tifffile

    data = bytearray(slide.read_bytes())
    with tifffile.TiffFile(slide) as tiff:
        for level, tiles in tiles_by_level.items():
            tag = tiff.pages[level].tags["TileByteCounts"]
            size = struct.calcsize({3: "<H", 4: "<I", 16: "<Q"}[int(tag.dtype)])    # SHORT, LONG or LONG8
            for tile in tiles:
                at = tag.valueoffset + tile * size
                data[at:at + size] = bytes(size)
    damaged.write_bytes(bytes(data))
    return damaged

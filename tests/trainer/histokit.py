"""Helpers for the histology trainer tests: a histology training config, and synthetic slides with
their truth written as label images and listed in a slide table."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.slidekit import tissue_image, write_slide

CLASSES = {0: "background", 1: "nuclei", 2: "stroma"}

HISTOLOGY: dict[str, Any] = {
    "name": "stain_seg", "task": "segmentation", "modality": "histology", "dimensions": 2, "seed": 0,
    "output_dir": "run",
    "slide": {"mpp": 1.0, "tissue_mpp": 4.0, "min_object_um2": 2000, "min_hole_um2": 2000},
    "data": {"csv": "patches/patches.csv", "subject_column": "patch_id", "group_column": "subject_id",
             "channels": ["red", "green", "blue"], "label": "label", "classes": CLASSES},
    "preprocessing": [{"normalize": {"mean": [128, 128, 128], "std": [64, 64, 64]}}],
    "patch": {"size": [64, 64], "sampler": "uniform", "per_volume": 1, "queue_length": 16},
    "model": {"architecture": "unet", "base_filters": 8, "depth": 2, "norm": "batch"},
    "training": {"epochs": 8, "batch_size": 8, "optimizer": {"name": "adam", "lr": 0.01},
                 "early_stopping": {"patience": None}},
    "cross_validation": {"testing_folds": 0, "validation_fraction": 0.34},
    "inference": {"overlap": 0.25, "batch_size": 4},
}


def write_slides(folder: Path, seeds: list[int], size: tuple[int, int] = (768, 1024)) -> list[np.ndarray]:
    """One 0.5 um/pixel synthetic slide per seed (slide<seed>.tif) with its truth as a label PNG
    (slide<seed>_truth.png), listed in folder/slides.csv; the truths (class indices = class values)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, truths = ["slide,subject_id,label"], []
    for seed in seeds:
        image, truth = tissue_image(*size, seed=seed)
        write_slide(folder / f"slide{seed}.tif", image)
        Image.fromarray(truth).save(folder / f"slide{seed}_truth.png")
        rows.append(f"slide{seed}.tif,case{seed},slide{seed}_truth.png")
        truths.append(truth)
    (folder / "slides.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return truths


def rgb_patches(folder: Path, count: int = 4) -> None:
    """`count` 64 x 64 RGB patches (nuclei purple on the left, stroma pink on the right) with their
    labels, listed in folder/patches/patches.csv as `trainer patches` writes it; patch i belongs to
    subject s<i // 2>."""
    (folder / "patches").mkdir(parents=True)
    rows = ["patch_id,subject_id,red,green,blue,label"]
    for i in range(count):
        rgb = np.zeros((64, 64, 3), np.uint8)
        rgb[:, :32], rgb[:, 32:] = (110, 70, 160), (225, 140, 190)
        label = np.zeros((64, 64), np.uint8)
        label[:, :32], label[:, 32:] = 1, 2
        Image.fromarray(rgb).save(folder / "patches" / f"p{i}.png")
        Image.fromarray(label).save(folder / "patches" / f"p{i}_label.png")
        rows.append(f"p{i},s{i // 2},p{i}.png,p{i}.png,p{i}.png,p{i}_label.png")
    (folder / "patches" / "patches.csv").write_text("\n".join(rows) + "\n")

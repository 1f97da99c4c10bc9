"""Helpers for the trainer tests: training configs, and tiny subject tables made on disk."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.modelkit import blob_volume, write_scan
from trainer.config import ConfigError, load_config

SEGMENTATION: dict[str, Any] = {
    "name": "brain_lesion", "task": "segmentation", "modality": "radiology", "dimensions": 3,
    "data": {"csv": "subjects.csv", "channels": ["t1", "flair"], "label": "label",
             "classes": {0: "background", 1: "lesion"}},
    "preprocessing": [{"resample": {"spacing": [3.0, 1.5, 1.5]}}, {"zscore": {"region": "nonzero"}}],
    "patch": {"size": [16, 64, 64]},
}
TINY_RUN: dict[str, Any] = {
    "name": "tiny", "task": "segmentation", "modality": "radiology", "dimensions": 3, "output_dir": "run",
    "seed": 3,
    "data": {"csv": "subjects.csv", "channels": ["image"], "label": "label",
             "classes": {0: "background", 1: "blob"}},
    "preprocessing": [{"zscore": {"region": "nonzero"}}],
    "patch": {"size": [16, 16, 16], "sampler": "label", "per_volume": 2, "queue_length": 8, "workers": 0},
    "augmentation": {"flip": {"probability": 0.5, "axes": [0, 1, 2]}},
    "model": {"architecture": "unet", "base_filters": 4, "depth": 2},
    "training": {"epochs": 2, "batch_size": 2, "loss": "dice_ce", "optimizer": {"name": "adam", "lr": 0.01}},
    "cross_validation": {"testing_folds": 3, "validation_folds": 2},
    "inference": {"overlap": 0.25, "batch_size": 2},
}


def write_config(folder: Path, data: dict[str, Any], name: str = "config.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def changed(base: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A deep copy of `base` with top-level keys replaced; nested ones are written section__key."""
    data = copy.deepcopy(base)
    for dotted, value in sections.items():
        *parents, key = dotted.split("__")
        target = data
        for parent in parents:
            target = target.setdefault(parent, {})
        target[key] = value
    return data


def problems_of(folder: Path, data: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(folder, data))
    return caught.value.problems


def blob_subjects(folder: Path, count: int = 6) -> None:
    """`count` 3D scans with a bright blob and its label, listed in folder/subjects.csv."""
    rows = ["subject_id,image,label"]
    for i in range(count):
        array = blob_volume((16, 24, 24), seed=i)
        write_scan(folder / f"s{i}.nii.gz", array)
        write_scan(folder / f"s{i}_seg.nii.gz", (array > 100).astype(np.uint8))
        rows.append(f"s{i},s{i}.nii.gz,s{i}_seg.nii.gz")
    (folder / "subjects.csv").write_text("\n".join(rows) + "\n")


# The label value of unannotated voxels in sparse_blobs' label maps.
UNANNOTATED = 255


def sparse_blobs(folder: Path, count: int = 3) -> list[Path]:
    """The blob subjects (`blob_subjects`) with every label voxel but those of the four middle
    slices UNANNOTATED; their label map paths."""
    import SimpleITK as sitk

    blob_subjects(folder, count)
    paths = sorted(folder.glob("*_seg.nii.gz"))
    for path in paths:
        image = sitk.ReadImage(str(path))
        values = sitk.GetArrayFromImage(image).astype(np.uint8)
        middle = values.shape[0] // 2
        values[:middle - 2], values[middle + 2:] = UNANNOTATED, UNANNOTATED
        out = sitk.GetImageFromArray(values)
        out.CopyInformation(image)
        sitk.WriteImage(out, str(path))
    return paths


def score_subjects(folder: Path, task: str) -> None:
    """Eight 2D scans in two intensity levels, labelled by level (classification) or mean (regression)."""
    rows = ["subject_id,image,label"]
    rng = np.random.default_rng(0)
    for i in range(8):
        level = i % 2
        array = (rng.normal(0, 1, (24, 24)) + 3 * level + 5).astype(np.float32)
        write_scan(folder / f"s{i}.nrrd", array, (1.0, 1.0))
        rows.append(f"s{i},s{i}.nrrd,{level if task == 'classification' else float(array.mean())}")
    (folder / "subjects.csv").write_text("\n".join(rows) + "\n")

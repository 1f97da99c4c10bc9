"""The model spec: everything needed to rebuild a network, saved in checkpoints as a plain dict."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.contract import TASKS
from runtime.errors import MedflowError
from runtime.validation import Problems, is_int, is_number, join_key

SEGMENTATION_ARCHITECTURES = ("unet", "resunet", "uinc", "fcn", "segresnet", "dynunet", "swinunetr")
MONAI_ARCHITECTURES = ("segresnet", "dynunet", "swinunetr")     # MONAI's implementations (the monai extra)
SWIN_FEATURES = 12                 # SwinUNETR's feature size must be a multiple of this
GLOBAL_ARCHITECTURES = ("vgg16", "resnet18", "densenet121", "efficientnet_b0")
MONAI_BACKBONES = ("resnet18", "densenet121", "efficientnet_b0")   # MONAI's, fixed layouts (the monai extra)
ARCHITECTURE_NAMES = SEGMENTATION_ARCHITECTURES + GLOBAL_ARCHITECTURES
NORMS = ("batch", "instance", "none")
BASE_FILTERS_RANGE = (4, 512)
DEPTH_RANGE = (1, 6)


class ModelSpecError(MedflowError, ValueError):
    """A model spec, or a patch size given to a model, that cannot build or run the network."""


@dataclass(frozen=True)
class ModelSpec:
    """One network: its family, its grid (2D or 3D), its channels and its width.

    `depth` is the number of down-sampling steps of the U-Net family and FCN; vgg16 has its
    fixed five stages and ignores it. `dropout` acts at the bottleneck of the segmentation
    networks and in the head of vgg16.
    """

    architecture: str
    dimensions: int
    in_channels: int
    out_channels: int
    task: str
    base_filters: int = 16
    depth: int = 4
    norm: str = "instance"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        problems = Problems("model spec")
        check_spec_values(dataclasses.asdict(self), "", problems)
        problems.raise_if_any(ModelSpecError, "invalid model spec: ")
        object.__setattr__(self, "dropout", float(self.dropout))

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain str/int/float values (safe for JSON and torch.load(weights_only=True))."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> ModelSpec:
        """Validate `data` (keys and values, every problem at once) and build the spec.

        `where` prefixes each problem's location, e.g. "model" gives `model.depth: ...`.
        """
        problems = Problems(where or "model spec")
        if _check_spec_keys(data, where, problems):
            check_spec_values(data, where, problems)
        problems.raise_if_any(ModelSpecError, "invalid model spec: ")
        return cls(**data)


def _field_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) field names of ModelSpec."""
    fields = dataclasses.fields(ModelSpec)
    required = tuple(f.name for f in fields if f.default is dataclasses.MISSING)
    optional = tuple(f.name for f in fields if f.default is not dataclasses.MISSING)
    return required, optional


def _check_spec_keys(data: Any, where: str, problems: Problems) -> bool:
    """Record a non-mapping, unknown and missing keys; True when the values can be checked."""
    if not isinstance(data, Mapping):
        problems.add(where, f"must be a mapping of model settings, got {data!r}")
        return False
    required, optional = _field_names()
    unknown = sorted(str(key) for key in data if key not in required + optional)
    for key in unknown:
        problems.add(join_key(where, key), f"unknown key; expected one of {', '.join(required + optional)}")
    for key in required:
        if key not in data:
            problems.add(join_key(where, key), "is required")
    return not unknown and all(key in data for key in required)


def _int_in(data: Mapping[str, Any], key: str, low: int, high: int | None, where: str, problems: Problems) -> None:
    value = data[key]
    if is_int(value) and value >= low and (high is None or value <= high):
        return
    bounds = f"between {low} and {high}" if high is not None else f">= {low}"
    problems.add(join_key(where, key), f"must be an integer {bounds}, got {value!r}")


def _one_of(data: Mapping[str, Any], key: str, options: tuple[Any, ...], where: str, problems: Problems) -> bool:
    value = data[key]
    if isinstance(value, bool) or value not in options:
        problems.add(join_key(where, key), f"must be one of {', '.join(map(str, options))}, got {value!r}")
        return False
    return True


def _check_dropout(value: Any, where: str, problems: Problems) -> None:
    if not (is_number(value) and 0.0 <= value < 1.0):
        problems.add(join_key(where, "dropout"), f"must be a number >= 0 and < 1, got {value!r}")


def _check_task_fits(architecture: str, task: str, where: str, problems: Problems) -> None:
    """Segmentation networks give a map per voxel; vgg16 gives one vector per image."""
    if architecture in GLOBAL_ARCHITECTURES and task == "segmentation":
        problems.add(join_key(where, "architecture"),
                     f"{architecture} predicts one vector per image (classification or regression), "
                     f"not a segmentation map; use one of {', '.join(SEGMENTATION_ARCHITECTURES)}")
    if architecture in SEGMENTATION_ARCHITECTURES and task != "segmentation":
        problems.add(join_key(where, "architecture"),
                     f"{architecture} predicts a segmentation map, not a {task} output; "
                     f"use one of {', '.join(GLOBAL_ARCHITECTURES)} for {task}")


def check_spec_values(data: Mapping[str, Any], where: str, problems: Problems) -> None:
    """Record every bad value among the spec fields present in `data`, located under `where`."""
    choices = {"architecture": ARCHITECTURE_NAMES, "task": TASKS, "dimensions": (2, 3), "norm": NORMS}
    valid = {key: _one_of(data, key, options, where, problems) for key, options in choices.items() if key in data}
    ranges = {"in_channels": (1, None), "out_channels": (1, None),
              "base_filters": BASE_FILTERS_RANGE, "depth": DEPTH_RANGE}
    for key, (low, high) in ranges.items():
        if key in data:
            _int_in(data, key, low, high, where, problems)
    if "dropout" in data:
        _check_dropout(data["dropout"], where, problems)
    if valid.get("architecture") and valid.get("task"):
        _check_task_fits(data["architecture"], data["task"], where, problems)
    if valid.get("architecture") and data["architecture"] in MONAI_ARCHITECTURES and data.get("norm") == "none":
        problems.add(join_key(where, "norm"), f"{data['architecture']} needs a normalisation; use instance or batch")
    filters = data.get("base_filters")
    if valid.get("architecture") and data["architecture"] == "swinunetr" and is_int(filters) and filters % SWIN_FEATURES:
        problems.add(join_key(where, "base_filters"),
                     f"swinunetr's feature size must be a multiple of {SWIN_FEATURES} (12, 24, 48), got {filters}")

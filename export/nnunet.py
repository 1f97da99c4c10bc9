"""`export build --from-nnunet FOLDER`: an nnU-Net v2 trained model folder (its plans.json,
dataset.json and fold_*/checkpoint_*.pth) becomes a version of a model repository that computes what
nnU-Net's own predictor computes.

The folds' networks are built from the plans with nnU-Net's `get_network_from_plans` and exported
as one ONNX graph that averages their logits (nnU-Net's ensemble), with the axes put in the plans'
`transpose_forward` order inside the graph and back; the spec is written from the plans: crop to
the non-zero region, each channel's normalisation, `resample: {method: nnunet}` to the plans'
spacing, padding to the patch, nnU-Net's window (step 0.5, its Gaussian, the checkpoint's
mirror axes) and the logits read by argmax (by threshold 0, a sigmoid's 0.5, for region models),
their softmax (sigmoid) once brought back to the scan's grid written as the probabilities.
A 2d configuration's network runs on each slice of the plans' first axis: its windows are one slice
thick, and the slices keep the scan's spacing. What the runtime cannot compute as nnU-Net does is
refused, naming the field.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import pickle
import pkgutil
import re
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from export.versions import VersionCheck
from runtime import jsonfile, limits
from runtime.errors import InputError, brief, install_hint
from runtime.manifest import LABEL_IGNORE
from runtime.validation import is_int

log = logging.getLogger(__name__)

CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_CHECKPOINT_BYTES = 16 * 1024 ** 3
# image_reader_writer -> the orientation it turns every image to before nnU-Net sees it
READERS = {"SimpleITKIO": None, "NibabelIO": None, "SimpleITKIOWithReorient": "RAS", "NibabelIOWithReorient": "RAS"}
RESAMPLING_FN = "resample_data_or_seg_to_shape"
RESAMPLING = {"resampling_fn_data": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
              "resampling_fn_probabilities": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}}
ARCHITECTURES = "dynamic_network_architectures."
BUILDING_BLOCKS = "torch.nn."
STD_EPS = 1e-8
MAX_STAGES = 16                    # resolution stages of a network: nnU-Net plans 5 to 8
MAX_LAYERS = 64                    # convolutions or residual blocks in one stage: nnU-Net plans 1 to 6
REMEDY = "give the folder nnU-Net v2 trained (nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>)"


@dataclass(frozen=True)
class Fold:
    name: str                       # "0" or "all", as nnU-Net names fold_0, fold_all
    path: Path                      # its checkpoint
    weights: dict[str, torch.Tensor]
    trainer: str
    configuration: str
    mirror_axes: tuple[int, ...]    # in the plans' (transposed) axis order


@dataclass(frozen=True)
class Trained:
    folder: Path
    plans: dict[str, Any]
    dataset: dict[str, Any]
    folds: tuple[Fold, ...]

    @property
    def configuration(self) -> str:
        return self.folds[0].configuration


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object of an nnU-Net folder, its size bounded before it is read."""
    try:
        data = jsonfile.read_json(path, MAX_JSON_BYTES)
    except jsonfile.Unreadable as error:
        remedy = REMEDY if error.kind == "missing" else "give the file nnU-Net wrote"
        raise InputError(f"{path}: {error.reason}; {remedy}.") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} holds a {type(data).__name__}, not an object; give the file nnU-Net wrote.")
    return data


def read_trained(folder: Path, folds: str = "all", checkpoint: str = "final") -> Trained:
    """The plans, the dataset description and the chosen folds' checkpoints of a trained model folder;
    `folds` is "all" (every fold_* folder holding the checkpoint, as nnU-Net finds them) or a comma list
    of fold names (0, 1, ..., all)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; {REMEDY}.")
    if folder.name.startswith("fold_") and (folder.parent / "plans.json").is_file():
        raise InputError(f"{folder} is one fold of a trained model; give the folder above it, {folder.parent}, and "
                         f"--folds {folder.name} for this fold alone.")
    plans, dataset = read_json(folder / "plans.json"), read_json(folder / "dataset.json")
    name = CHECKPOINTS[checkpoint]
    chosen = tuple(_load_fold(folder, fold, name) for fold in _fold_names(folder, folds, name))
    configurations = sorted({fold.configuration for fold in chosen})
    if len(configurations) > 1:
        raise InputError(f"{folder}: the folds' checkpoints were trained for different configurations "
                         f"({', '.join(configurations)}); choose the folds of one with --folds.")
    return Trained(folder=folder, plans=plans, dataset=dataset, folds=chosen)


def _fold_names(folder: Path, folds: str, checkpoint: str) -> list[str]:
    """The folds to load: by default the numbered ones that hold the checkpoint, as nnU-Net's
    predictor finds them (fold_all where there are none); else the comma list given."""
    found = sorted((p.name[len("fold_"):] for p in folder.iterdir()
                    if p.name.startswith("fold_") and (p / checkpoint).is_file()), key=_fold_order)
    if folds.strip() == "all":
        numbered = [fold for fold in found if fold.isdigit()]
        if not found:
            other = next(option for option, file in CHECKPOINTS.items() if file != checkpoint)
            raise InputError(f"{folder} holds no fold_*/{checkpoint}; {REMEDY}, or choose --checkpoint {other}.")
        lacking = sorted((p.name for p in folder.iterdir() if p.name.startswith("fold_") and p.name[5:].isdigit()
                          and p.is_dir() and not (p / checkpoint).is_file()), key=lambda name: _fold_order(name[5:]))
        if lacking:
            taken = f"fold(s) {','.join(numbered)} alone" if numbered else "fold_all alone, a single model"
            log.warning("%s hold(s) no %s and is left out, as nnU-Net's predictor leaves it: the ensemble is of %s "
                        "(--checkpoint %s takes the other checkpoint)", ", ".join(lacking), checkpoint, taken,
                        "best" if checkpoint == CHECKPOINTS["final"] else "final")
        if numbered and len(numbered) < len(found):
            log.warning("fold(s) %s taken, as nnU-Net's predictor takes them by default; fold_all is left out "
                        "(--folds fold_all takes it alone; nnUNetv2_predict -f all means fold_all)", ",".join(numbered))
        return numbered or found
    wanted = [part.strip().removeprefix("fold_") for part in folds.split(",") if part.strip()]
    missing = [fold for fold in wanted if fold not in found]
    if not wanted or missing or len(set(wanted)) != len(wanted):
        raise InputError(f"--folds {folds}: {folder} holds {checkpoint} for fold(s) "
                         f"{', '.join(f'fold_{fold}' for fold in found) or 'none'}; give a comma list of those, each "
                         f"once (here {','.join(found) or 'none'}), or all (every numbered fold; fold_all is "
                         "nnU-Net's -f all).")
    return wanted


def _fold_order(name: str) -> tuple[int, str]:
    return (0, f"{int(name):09d}") if name.isdigit() else (1, name)


def _safe_globals() -> list[Any]:
    """What an nnU-Net checkpoint holds beyond tensors and plain values: numpy scalars (its log of
    Dice figures) and their dtypes. Nothing else is unpickled (`weights_only`)."""
    scalar = getattr(getattr(np, "_core", np.core), "multiarray").scalar
    dtypes = {type(np.dtype(kind)) for kind in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)}
    return [scalar, np.dtype, *dtypes]


def _unsafe(path: Path) -> str:
    """The names of what a checkpoint would import to unpickle, beyond what is loaded (read from the
    pickle, not run)."""
    allowed = {f"{kind.__module__}.{kind.__qualname__}" for kind in _safe_globals()}
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - a pickle damaged past the refused global
        return "unnamed"
    return ", ".join(sorted(set(names) - allowed)[:5]) or "unnamed"


def _load_fold(folder: Path, fold: str, checkpoint: str) -> Fold:
    path = folder / f"fold_{fold}" / checkpoint
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise InputError(f"{path} is {size:,} bytes, more than the {MAX_CHECKPOINT_BYTES:,} a checkpoint of "
                         "nnU-Net's networks holds; give the checkpoint nnU-Net wrote.")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                saved = torch.load(path, map_location="cpu", weights_only=True)      # torch's legacy format
    except pickle.UnpicklingError:
        raise InputError(f"{path} holds objects that are not tensors or plain values ({_unsafe(path)}), which are not "
                         "loaded (loading them could run code); give the checkpoint nnU-Net wrote.") from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path} is not a readable checkpoint ({brief(exc)}); it is "
                         "truncated or damaged: copy it again.") from None
    return _fold_of(path, fold, saved)


def _fold_of(path: Path, fold: str, saved: Any) -> Fold:
    if not isinstance(saved, dict):
        raise InputError(f"{path} holds a {type(saved).__name__}, not an nnU-Net checkpoint; give the checkpoint "
                         "nnU-Net wrote.")
    weights, init = saved.get("network_weights"), saved.get("init_args")
    configuration = init.get("configuration") if isinstance(init, dict) else None
    trainer = saved.get("trainer_name")
    if not (isinstance(weights, dict) and weights and all(isinstance(v, torch.Tensor) for v in weights.values())):
        raise InputError(f"{path}: network_weights is missing or not a dict of tensors; give the checkpoint nnU-Net "
                         "wrote.")
    if not isinstance(configuration, str) or not isinstance(trainer, str):
        raise InputError(f"{path}: init_args.configuration or trainer_name is missing; give the checkpoint nnU-Net "
                         "wrote.")
    axes = saved.get("inference_allowed_mirroring_axes")
    if axes is None:
        axes = ()
    if not (isinstance(axes, (tuple, list)) and all(isinstance(a, int) and 0 <= a < 3 for a in axes)):
        raise InputError(f"{path}: inference_allowed_mirroring_axes is {axes!r}, not a list of axes 0 to 2; give the "
                         "checkpoint nnU-Net wrote.")
    return Fold(fold, path, weights, trainer, configuration, tuple(sorted(set(axes))))


# ----------------------------------------------------------------------------- the plans, read


@dataclass(frozen=True)
class Plan:
    """What the plans and dataset.json say the model computes, in the runtime's terms (z, y, x)."""

    transpose: tuple[int, ...]         # transpose_forward
    patch_zyx: tuple[int, ...]         # 1 across the slices for a 2D configuration
    spacing_zyx: tuple[float | None, ...]   # None: the scan's own (between a 2D configuration's slices)
    flat: bool                         # a 2D configuration: its network runs on each slice of the plans' axis 0
    channels: tuple[str, ...]
    classes: dict[int, str]
    regions: bool
    heads: int
    architecture: dict[str, Any]
    orientation: str | None
    schemes: tuple[str, ...]           # normalization_schemes, one per channel
    masked: tuple[bool, ...]           # use_mask_for_norm
    ignore: int | None = None          # dataset.json's "ignore" label: the value of unannotated voxels


def _manager(trained: Trained) -> tuple[Any, Any, Any]:
    """nnU-Net's own reading of the plans: the plans, the configuration (inheritance resolved) and the
    labels."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_path = trained.folder / "plans.json"
    try:
        with warnings.catch_warnings():              # nnU-Net's notes on old plan formats: the refusal says it
            warnings.simplefilter("ignore")
            plans = PlansManager(trained.plans)
            configuration = plans.get_configuration(trained.configuration)
            labels = plans.get_label_manager(trained.dataset)
    except (KeyError, TypeError, ValueError, RuntimeError, AssertionError, AttributeError) as exc:
        raise InputError(f"{plans_path} or dataset.json: nnU-Net cannot read configuration {trained.configuration} "
                         f"({type(exc).__name__}: {brief(exc)}); give the files nnU-Net "
                         "wrote.") from None
    return plans, configuration, labels


def _is_list(value: Any, item: Any, lengths: Sequence[int] | None = None) -> bool:
    return isinstance(value, list) and all(item(v) for v in value) and (lengths is None or len(value) in lengths)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")


def _check_types(plans: dict[str, Any], configuration: dict[str, Any], plans_path: Path, where: str) -> None:
    """The fields read below have the types nnU-Net writes (the plans are read, not trusted)."""
    fields = (
        (plans_path, "transpose_forward", plans.get("transpose_forward"),
         lambda v: _is_list(v, lambda a: isinstance(a, int) and not isinstance(a, bool), (2, 3))),
        (plans_path, "foreground_intensity_properties_per_channel",
         plans.get("foreground_intensity_properties_per_channel", {}),
         lambda v: isinstance(v, dict) and all(isinstance(item, dict) for item in v.values())),
        (where, "patch_size", configuration.get("patch_size"), lambda v: _is_list(v, _positive_int, (2, 3))),
        (where, "spacing", configuration.get("spacing"), lambda v: _is_list(v, _positive_number, (2, 3))),
        (where, "normalization_schemes", configuration.get("normalization_schemes"), lambda v: _is_list(v, _is_str)),
        (where, "use_mask_for_norm", configuration.get("use_mask_for_norm"),
         lambda v: _is_list(v, lambda a: isinstance(a, bool))),
        (where, "architecture", configuration.get("architecture"),
         lambda v: isinstance(v, dict) and isinstance(v.get("network_class_name"), str)
         and isinstance(v.get("arch_kwargs"), dict) and _is_list(v.get("_kw_requires_import", []), _is_str)),
    )
    _check_sizes(configuration, where)
    for place, key, value, fits in fields:
        if not fits(value):
            raise InputError(f"{place}.{key} is {str(value)[:100]!r}, not what nnU-Net writes there; give the "
                             "plans nnU-Net wrote.")


def _check_sizes(configuration: dict[str, Any], where: str) -> None:
    """The network's stage and layer counts bounded before it is built (each layer is an object, even
    on the meta device): 1 to MAX_STAGES stages, at most MAX_LAYERS convolutions or blocks a stage."""
    architecture = configuration.get("architecture")
    kwargs = architecture.get("arch_kwargs") if isinstance(architecture, dict) else None
    if not isinstance(kwargs, dict):
        return
    place = f"{where}.architecture.arch_kwargs"
    stages = kwargs.get("n_stages")
    if stages is not None and not (_positive_int(stages) and stages <= MAX_STAGES):
        raise InputError(f"{place}.n_stages is {str(stages)[:40]}; nnU-Net's networks have 1 to {MAX_STAGES} stages.")
    for key in ("n_conv_per_stage", "n_conv_per_stage_decoder", "n_blocks_per_stage"):
        counts = kwargs.get(key)
        if counts is not None and not _is_list(counts, lambda n: _positive_int(n) and n <= MAX_LAYERS,
                                               range(1, MAX_STAGES + 1)):
            raise InputError(f"{place}.{key} is {str(counts)[:60]}; nnU-Net's networks have up to {MAX_STAGES} "
                             f"stages of 1 to {MAX_LAYERS} each.")


def read_plan(trained: Trained) -> Plan:
    plans_path = trained.folder / "plans.json"
    plans, configuration, labels = _manager(trained)
    where = f"{plans_path}: configurations.{trained.configuration}"
    _check_types(trained.plans, configuration.configuration, plans_path, where)
    patch, spacing = list(configuration.patch_size), list(configuration.spacing)
    if len(patch) != len(spacing):
        raise InputError(f"{where}: patch_size {patch} and spacing {spacing} differ in length; give the plans "
                         "nnU-Net wrote.")
    _check_dimensions(trained, configuration.configuration, len(patch), where)
    flat = len(patch) == 2
    if flat:                     # nnU-Net runs a 2D network on each slice of the plans' first axis, left as it is
        patch, spacing = [1, *patch], [None, *spacing]
    if configuration.previous_stage_name is not None:
        raise InputError(f"{where} is a cascade stage that reads {configuration.previous_stage_name}'s "
                         "segmentation as an input; import 3d_fullres, 3d_lowres or 2d instead.")
    transpose = tuple(int(a) for a in plans.transpose_forward)
    if sorted(transpose) != [0, 1, 2]:
        raise InputError(f"{plans_path}: transpose_forward is {list(transpose)}, not an order of the axes 0, 1, 2.")
    _check_resampling(configuration.configuration, where)
    reader = plans.plans.get("image_reader_writer", "SimpleITKIO")
    if not isinstance(reader, str) or reader not in READERS:
        raise InputError(f"{plans_path}: image_reader_writer {str(reader)[:60]} reads images otherwise than the "
                         f"runtime does; the runtime matches {', '.join(READERS)}.")
    back = np.argsort(transpose)
    classes = _classes(trained.dataset, labels, trained.folder / "dataset.json")
    return Plan(
        transpose=transpose,
        patch_zyx=tuple(int(patch[i]) for i in back),
        spacing_zyx=tuple(None if spacing[i] is None else float(spacing[i]) for i in back), flat=flat,
        channels=_channel_names(trained.dataset, trained.folder / "dataset.json"),
        classes=classes,
        regions=bool(labels.has_regions), heads=int(labels.num_segmentation_heads),
        architecture=_architecture(configuration, where), orientation=READERS[reader],
        schemes=tuple(configuration.normalization_schemes), masked=tuple(map(bool, configuration.use_mask_for_norm)),
        ignore=_ignore_label(labels, classes, trained.folder / "dataset.json"),
    )


def _check_dimensions(trained: Trained, configuration: dict[str, Any], dims: int, where: str) -> None:
    """The network's layers and each fold's mirror axes have the patch's dimensions."""
    kwargs = configuration["architecture"]["arch_kwargs"]
    layers = [re.search(r"(\d)d$", str(kwargs.get(key) or "")) for key in ("conv_op", "norm_op", "dropout_op")]
    kernels = [kwargs.get(key) for key in ("kernel_sizes", "strides")]
    if any(found and int(found.group(1)) != dims for found in layers) or any(isinstance(sizes, list) and any(
            not isinstance(k, list) or len(k) != dims for k in sizes) for sizes in kernels):
        raise InputError(f"{where}.architecture.arch_kwargs: conv_op {kwargs.get('conv_op')}, norm_op "
                         f"{kwargs.get('norm_op')} and kernel_sizes {str(kernels[0])[:60]} do not all fit its {dims}D "
                         "patch_size; give the plans nnU-Net wrote.")
    for fold in trained.folds:
        if any(axis >= dims for axis in fold.mirror_axes):
            raise InputError(f"{fold.path}: inference_allowed_mirroring_axes {list(fold.mirror_axes)} name axes a "
                             f"{dims}D configuration does not have; give the checkpoint nnU-Net trained for it.")


def _check_resampling(configuration: dict[str, Any], where: str) -> None:
    for key, expected in RESAMPLING.items():
        function, kwargs = configuration.get(key), configuration.get(f"{key}_kwargs")
        if function != RESAMPLING_FN or not isinstance(kwargs, dict) or \
                {k: kwargs.get(k) for k in expected} != expected:
            raise InputError(f"{where}.{key} is {function} with {kwargs}; the runtime resamples as nnU-Net's default "
                             f"({RESAMPLING_FN} with {expected}) only.")


def _channel_names(dataset: dict[str, Any], path: Path) -> tuple[str, ...]:
    names = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(names, dict) or not names or not all(str(k).isdigit() for k in names) or \
            sorted(int(k) for k in names) != list(range(len(names))):
        raise InputError(f"{path}: channel_names must map 0, 1, ... to the channels' names, got {names!r}.")
    ordered = [str(names[k]) for k in sorted(names, key=int)]
    return tuple(name if ordered.count(name) == 1 else f"{name}_{index}" for index, name in enumerate(ordered))


def _classes(dataset: dict[str, Any], labels: Any, path: Path) -> dict[int, str]:
    """Class value -> name: the labels' values, or for a region model background and each region's
    label in regions_class_order (its channels' order, the later region painted over the earlier)."""
    named = {name: _single(value) for name, value in dataset["labels"].items() if name != "ignore"}
    if not labels.has_regions:
        values = sorted(named.values()) if all(isinstance(v, int) for v in named.values()) else None
        if values != list(range(len(named))):
            raise InputError(f"{path}: labels must be 0, 1, ... without gaps, as nnU-Net trains them (its network's "
                             f"channel k is label k), got {sorted(named.items(), key=lambda item: str(item[1]))}.")
        return {int(value): str(name) for name, value in sorted(named.items(), key=lambda item: item[1])}
    order = [int(v) for v in labels.regions_class_order]
    if order != sorted(set(order)) or 0 in order:
        raise InputError(f"{path}: regions_class_order {order} paints its regions in an order other than their "
                         "labels' (the runtime gives a voxel the label of the last class, by value, over the "
                         "threshold): renumber the labels in that order.")
    regions = [tuple(int(v) for v in np.atleast_1d(region)) for region in labels.foreground_regions]
    names = {tuple(int(v) for v in np.atleast_1d(value)): str(name) for name, value in named.items()}
    background = next((str(name) for name, value in named.items() if tuple(np.atleast_1d(value)) == (0,)),
                      "background")
    called = [names.get(region, f"region_{label}") for label, region in zip(order, regions)]
    # A voxel takes the last region it lies in: a class holds its region less the later ones it meets.
    shown = []
    for index, region in enumerate(regions):
        later = [called[j] for j in range(index + 1, len(regions)) if set(regions[j]) & set(region)]
        shown.append(f"{called[index]} without {', '.join(later)}" if later else called[index])
    return {0: background, **dict(zip(order, shown))}


def _ignore_label(labels: Any, classes: dict[int, str], path: Path) -> int | None:
    """The value of the labels' unannotated voxels (dataset.json's "ignore" label), None without one."""
    value = labels.ignore_label
    if value is None:
        return None
    if not (is_int(value) and 0 < value <= limits.MAX_CLASS_VALUE) or value in classes:
        raise InputError(f"{path}: the ignore label {value!r} is not a label value (an integer 1 to "
                         f"{limits.MAX_CLASS_VALUE}) that no class has; give the dataset.json nnU-Net trained with.")
    return int(value)


def _single(value: Any) -> Any:
    """A label written as a list of one value is that value, as nnU-Net reads it."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def _architecture(configuration: Any, where: str) -> dict[str, Any]:
    """The network's class and arguments, every name to be imported checked against the packages
    nnU-Net's networks come from (the plans are read, not trusted)."""
    name = configuration.network_arch_class_name
    kwargs = dict(configuration.network_arch_init_kwargs)
    imports = list(configuration.network_arch_init_kwargs_req_import)
    if not isinstance(name, str) or not name.startswith(ARCHITECTURES):
        raise InputError(f"{where}.architecture.network_class_name is {name!r}; the importer builds the networks of "
                         f"{ARCHITECTURES.rstrip('.')} only.")
    for key in imports:
        value = kwargs.get(key)
        if value is not None and not (isinstance(value, str) and value.startswith(BUILDING_BLOCKS)):
            raise InputError(f"{where}.architecture.arch_kwargs.{key} is {value!r}; the importer builds networks of "
                             f"{BUILDING_BLOCKS.rstrip('.')} layers only.")
    return {"name": name, "kwargs": kwargs, "imports": imports}


# ----------------------------------------------------------------------------- the spec


def spec_data(trained: Trained, plan: Plan, name: str | None, mirroring: bool = True) -> dict[str, Any]:
    """The model spec (docs/spec.md) that computes what nnU-Net's predictor computes (with its
    mirrored windows, or without them as `--disable_tta` runs it)."""
    mirror_axes = sorted(plan.transpose[a + plan.flat] for a in trained.folds[0].mirror_axes) if mirroring else []
    plans = trained.plans
    dataset_name = str(plans.get("dataset_name") or trained.folder.parent.name)
    return {
        "name": name or re.sub(r"[^A-Za-z0-9_-]", "_", f"{dataset_name}_{trained.configuration}"),
        "task": "segmentation", "modality": "radiology", "dimensions": 3, "axis_order": "zyx",
        "channels": list(plan.channels),
        "classes": plan.classes,
        "preprocessing": _steps(trained, plan),
        "patch": {"size": list(plan.patch_zyx)},
        "window": {"overlap": 0.5, "blending": "nnunet", "skip_background": False,
                   "mirror_axes": mirror_axes},
        "output": {"activation": "none", "label_rule": "threshold", "threshold": 0.0, "probabilities": "sigmoid"}
        if plan.regions else {"activation": "none", "label_rule": "argmax", "probabilities": "softmax"},
        "provenance": {
            "description": f"nnU-Net v2 {trained.folder.name}, fold(s) {', '.join(f.name for f in trained.folds)}",
            "nnunet": {"dataset": dataset_name, "trainer": trained.folds[0].trainer,
                       "plans": str(plans.get("plans_name", "")), "configuration": trained.configuration,
                       "folds": [f.name for f in trained.folds], "checkpoint": trained.folds[0].path.name,
                       "tta": mirroring},
            **({LABEL_IGNORE: plan.ignore} if plan.ignore is not None else {}),
        },
    }


def _steps(trained: Trained, plan: Plan) -> list[dict[str, Any]]:
    """nnU-Net's DefaultPreprocessor as steps: crop to the non-zero region (its mask's holes filled
    where a z-score reads it), each channel normalised, resampled, padded to the patch."""
    schemes, masked = plan.schemes, plan.masked
    where = f"{trained.folder / 'plans.json'}: configurations.{trained.configuration}"
    if len(schemes) != len(plan.channels) or len(masked) != len(plan.channels):
        raise InputError(f"{where}: normalization_schemes and use_mask_for_norm must give one entry per channel "
                         f"({len(plan.channels)}), got {len(schemes)} and {len(masked)}.")
    steps: list[dict[str, Any]] = [{"reorient": {"orientation": plan.orientation}}] if plan.orientation else []
    if any(scheme == "ZScoreNormalization" and mask for scheme, mask in zip(schemes, masked)):
        steps.append({"foreground": {"fill_holes": True}})
    steps.append({"crop_nonzero": {"margin": 0}})
    means, stds = [0.0] * len(schemes), [1.0] * len(schemes)
    for channel, (scheme, mask) in enumerate(zip(schemes, masked)):
        steps.extend(_normalisation(trained, channel, scheme, mask, means, stds, where))
    if means != [0.0] * len(schemes) or stds != [1.0] * len(schemes):
        steps.append({"normalize": {"mean": means, "std": stds}})
    steps.append({"resample": {"spacing": list(plan.spacing_zyx), "method": "nnunet"}})
    steps.append({"pad": {"shape": list(plan.patch_zyx)}})
    return steps


def _normalisation(trained: Trained, channel: int, scheme: str, mask: bool, means: list[float], stds: list[float],
                   where: str) -> list[dict[str, Any]]:
    """One channel's normalisation; a CT channel's mean and standard deviation go to `means`/`stds`
    (one `normalize` step for every channel follows its clip)."""
    if scheme == "CTNormalization":
        properties = trained.plans.get("foreground_intensity_properties_per_channel", {}).get(str(channel))
        keys = ("percentile_00_5", "percentile_99_5", "mean", "std")
        if not isinstance(properties, dict) or not all(isinstance(properties.get(k), (int, float)) for k in keys):
            raise InputError(f"{trained.folder / 'plans.json'}: foreground_intensity_properties_per_channel.{channel} "
                             f"must give {', '.join(keys)} for its CTNormalization.")
        means[channel] = float(properties["mean"])
        stds[channel] = max(float(properties["std"]), STD_EPS)
        return [{"clip": {"min": float(properties["percentile_00_5"]), "max": float(properties["percentile_99_5"]),
                          "channels": [channel]}}]
    if scheme == "ZScoreNormalization":
        return [{"zscore": {"region": "nonzero" if mask else "whole", "channels": [channel]}}]
    if scheme == "RescaleTo01Normalization":
        return [{"rescale": {"channels": [channel]}}]
    if scheme == "RGBTo01Normalization":
        return [{"rescale": {"in_min": 0, "in_max": 255, "channels": [channel]}}]
    if scheme == "NoNormalization":
        return []
    raise InputError(f"{where}.normalization_schemes[{channel}] is {scheme}; the importer knows CTNormalization, "
                     "ZScoreNormalization, RescaleTo01Normalization, RGBTo01Normalization and NoNormalization.")


# ----------------------------------------------------------------------------- the graph


class Ensemble(torch.nn.Module):
    """The folds' networks on an input in the runtime's (z, y, x) order: turned into the plans' order,
    each network's logits averaged, turned back. `flat` networks are 2D: they see the window's one
    slice of the plans' first axis."""

    def __init__(self, networks: Sequence[torch.nn.Module], transpose: Sequence[int], flat: bool = False) -> None:
        super().__init__()
        self.networks = torch.nn.ModuleList(networks)
        self.forward_order = [0, 1, *(2 + a for a in transpose)]
        self.back_order = [0, 1, *(2 + int(a) for a in np.argsort(transpose))]
        self.flat = flat

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image = image.permute(*self.forward_order)
        if self.flat:
            image = image.squeeze(2)
        logits = self.networks[0](image)
        for network in self.networks[1:]:
            logits = logits + network(image)
        if len(self.networks) > 1:
            logits = logits / len(self.networks)
        if self.flat:
            logits = logits.unsqueeze(2)
        return logits.permute(*self.back_order)


def networks(trained: Trained, plan: Plan) -> list[torch.nn.Module]:
    """Each fold's network as the plans describe it (deep supervision off), its weights loaded."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    architecture = plan.architecture

    def build() -> torch.nn.Module:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return get_network_from_plans(architecture["name"], architecture["kwargs"], architecture["imports"],
                                              len(plan.channels), plan.heads, allow_init=False, deep_supervision=False)
        except (ImportError, TypeError, ValueError, KeyError, RuntimeError, AttributeError, AssertionError) as exc:
            raise InputError(f"{trained.folder / 'plans.json'}: the network of configuration {trained.configuration} "
                             f"cannot be built ({type(exc).__name__}: {brief(exc)}).") from None

    with torch.device("meta"):                  # shapes only: nothing is allocated before they fit the weights
        shapes = {key: tuple(value.shape) for key, value in build().state_dict().items()}
    built = []
    for fold in trained.folds:
        given = {key: tuple(value.shape) for key, value in fold.weights.items()}
        if given != shapes:
            key = next(iter(sorted(set(given) ^ set(shapes)) or [k for k in shapes if given[k] != shapes[k]]))
            raise InputError(f"{fold.path}: its weights do not fit the network plans.json describes ({key}: "
                             f"{given.get(key, 'missing')} in the checkpoint, {shapes.get(key, 'none')} in the "
                             "network); " + (f"trainer {fold.trainer} may build a network of its own, which the "
                                             "importer does not." if fold.trainer != "nnUNetTrainer" else
                                             "the checkpoint was trained with other plans or another configuration "
                                             "(a 2d one in a 3d folder, say): put it beside the plans.json it was "
                                             "trained with."))
        network = build()
        network.load_state_dict(fold.weights, strict=True)
        built.append(network.eval())
    return built


def _trainer_class(name: str) -> type:
    """The trainer class nnU-Net would use: from nnU-Net's trainer modules, else from the folders
    `nnUNet_extTrainer` names; each module imported on its own, so that one needing a package that
    fails to import hides no other."""
    import nnunetv2.training.nnUNetTrainer as trainers

    found = _class_in(name, (info.name for info in pkgutil.walk_packages(
        trainers.__path__, f"{trainers.__name__}.", onerror=lambda _: None)))
    for root in filter(None, os.environ.get("nnUNet_extTrainer", "").split(os.pathsep)):
        if found is None and Path(root).is_dir():
            with _on_path(Path(root)):
                found = _class_in(name, (".".join(file.relative_to(root).with_suffix("").parts)
                                         for file in sorted(Path(root).rglob("*.py"))))
    if found is None:
        raise LookupError("no trainer of that name among nnU-Net's or in the folders nnUNet_extTrainer names")
    return found


def _class_in(name: str, modules: Iterable[str]) -> type | None:
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except Exception:  # noqa: BLE001, S112 - another trainer's dependency; this one may lie elsewhere
            continue
        found = getattr(module, name, None)
        if isinstance(found, type):
            return found
    return None


@contextlib.contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def check_trainer(fold: Fold, assume_plans_network: bool) -> None:
    """Refuse a fold's trainer that builds a network of its own (its weights may fit the plans'
    network and compute otherwise: another activation, say), or one whose code cannot be looked at,
    unless the user says it builds the plans' network."""
    if fold.trainer == "nnUNetTrainer":
        return
    trainer = f"{fold.path}: trainer_name {fold.trainer[:100]!r}"
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

            found = _trainer_class(fold.trainer)
    except Exception as exc:  # noqa: BLE001 - a trainer's module may fail to import in any way
        if assume_plans_network:
            log.warning("%s cannot be looked at here (%s); it is taken to build the plans' network, as "
                        "--assume-plans-network says", trainer, type(exc).__name__)
            return
        raise InputError(f"{trainer} cannot be found or imported here ({type(exc).__name__}: "
                         f"{brief(exc, 120)}), so whether it builds the network the plans describe "
                         "cannot be checked: install its code (nnUNet_extTrainer), or pass --assume-plans-network if "
                         "it does.") from None
    if not (isinstance(found, type) and issubclass(found, nnUNetTrainer)):
        raise InputError(f"{trainer} is no nnUNetTrainer; give a folder nnU-Net trained.")
    if found.build_network_architecture is not nnUNetTrainer.build_network_architecture:
        raise InputError(f"{trainer} builds a network of its own (it overrides build_network_architecture), "
                         "which may differ from the plans' though its weights fit: export that network to ONNX and "
                         "package it with --from-onnx and a spec (docs/spec.md).")


def build_from_nnunet(folder: Path, repository: Path, name: str | None = None, folds: str = "all",
                      checkpoint: str = "final", assume_plans_network: bool = False, mirroring: bool = True,
                      check: VersionCheck | None = None) -> Path:
    """Package the trained model folder as the next version of its model; returns the version
    folder. `check` may refuse the version first (`export.versions.staged_version`)."""
    from export.onnx_export import check_parity, export_fold, parity_inputs
    from export.package import build_from_onnx
    from export.spec import parse_spec

    try:
        import nnunetv2  # noqa: F401 - its plans reading and network building are used below
    except ImportError:
        raise InputError("--from-nnunet builds the networks with nnU-Net v2's own code, which is not installed: "
                         f"{install_hint('nnunet')} (or pip install nnunetv2).") from None
    trained = read_trained(folder, folds, checkpoint)
    for fold in {fold.trainer: fold for fold in trained.folds}.values():
        check_trainer(fold, assume_plans_network)
    for kept in sorted(Path(folder).glob("crossval_results_folds_*/postprocessing.pkl")):
        log.warning("%s (nnU-Net's postprocessing, which nnUNetv2_apply_postprocessing applies) is not carried over: "
                    "the version gives the predictor's labels before it, with no component kept or removed", kept)
    plan = read_plan(trained)
    spec = parse_spec(spec_data(trained, plan, name, mirroring), str(Path(folder) / "plans.json"))
    log.info("exporting %d fold(s) of %s", len(trained.folds), trained.folder)
    ensemble = Ensemble(networks(trained, plan), plan.transpose, plan.flat)
    example = torch.zeros((1, len(plan.channels), *plan.patch_zyx))
    with tempfile.TemporaryDirectory(prefix="medflow-nnunet-") as scratch:
        onnx_path = Path(scratch) / f"{trained.folder.name}.onnx"
        try:
            export_fold(ensemble, example, onnx_path, dynamic_spatial=False)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError) as error:         # a network that does not run on its own patch
            raise InputError(f"{trained.folder / 'plans.json'}: the network of configuration "
                             f"{trained.configuration} does not run on its patch {list(plan.patch_zyx)} "
                             f"({type(error).__name__}: {' '.join(str(error).split())[:160]}); give the plans "
                             "nnU-Net wrote.") from None
        check_parity(ensemble, onnx_path, parity_inputs(tuple(example.shape)),
                     shown=f"the ONNX export of {trained.folder}")
        return build_from_onnx(onnx_path, spec, repository, check)

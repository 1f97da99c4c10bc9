"""The training config: a YAML file validated into frozen dataclasses, every problem listed with its location.

`load_config` reads the file, fills every default and refuses unknown keys, wrong types and
impossible values, all at once (`training.optimizer.lr: must be > 0, got -1`). Paths in the file
are relative to its folder and come out absolute. `resolved_dict` gives the resolved config back
as plain YAML-able data (saved with every run), and `config_hash` its sha256. docs/trainer.md
documents each key. Every per-axis value (patch size, spacing, flip axes) is in `axis_order`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from runtime.contract import (
    AXIS_ORDERS, MODALITIES, TASKS, ClassSpec, SlideSpec, WindowSection, channels_problem, class_entry,
    parse_axis_order, parse_classes, parse_dimensions, parse_name, parse_slide, parse_steps, parse_window,
    patch_size_problem,
)
from runtime.errors import InputError
from runtime.limits import MAX_CLASS_VALUE, class_value_problem
from runtime.preprocess.steps import STEPS, Step, with_defaults
from runtime.slide.predict import SLIDE_STEPS
from runtime.validation import Problems, check_keys, choice, is_int, is_number, join_key
from trainer.augment import COLOUR_AUGMENTATIONS, augmentation_problems, resolved_augmentation
from trainer.losses import LOSSES_BY_TASK, WEIGHTED_LOSSES
from trainer.models.spec import ARCHITECTURE_NAMES, GLOBAL_ARCHITECTURES, NORMS, SEGMENTATION_ARCHITECTURES
from trainer.optim import OPTIMIZERS, SCHEDULERS
from trainer.sampling import SAMPLERS
from trainer.yamlio import read_yaml_file

CONFIG_DOC = "docs/trainer.md"

METRICS_BY_TASK: Mapping[str, tuple[str, ...]] = {
    "segmentation": ("dice_mean", "loss"),
    "classification": ("balanced_accuracy", "accuracy", "auc", "loss"),
    "regression": ("mse", "mae", "loss"),
}
LOWER_IS_BETTER = ("loss", "mse", "mae")
DEVICES = ("auto", "cpu", "cuda")
# The preprocessing a histology model may list: the intensity steps the runtime runs on slide
# windows; the resolution is slide.mpp.
HISTOLOGY_STEPS = SLIDE_STEPS
RGB_CHANNELS = 3

Check = Callable[[Any], "str | None"]
_REQUIRED = object()


class ConfigError(InputError):
    """A training config or its subject CSV cannot be used; `problems` lists each problem with its location."""

    def __init__(self, message: str, problems: tuple[str, ...] = (), source: str = "") -> None:
        super().__init__(message)
        self.problems = problems or (message,)
        self.source = source       # what holds the problems ("config /x/config.yaml"); "" for a single problem


def raise_problems(problems: Problems, what: str) -> None:
    """Raise one ConfigError listing every problem collected, if there are any; one problem found
    at many places (every row of a table) is listed once, with the places counted."""
    if problems.items:
        items = grouped(problems.items)
        raise ConfigError(f"{what} has {len(problems.items)} problem(s): {'; '.join(items)}. "
                          f"See {CONFIG_DOC}.", tuple(items), what)


# Places of one problem named, at most, where it is listed once for all of them.
NAMED_PLACES = 3


def grouped(items: Sequence[str]) -> list[str]:
    """`where: what` items, those sharing their `what` at more than NAMED_PLACES places joined into
    one that names the first places and counts the others, in the order first found."""
    places: dict[str, list[str]] = {}
    for item in items:
        where, _, what = item.partition(": ")
        places.setdefault(what, []).append(where)
    merged = []
    for what, wheres in places.items():
        if len(wheres) <= NAMED_PLACES:
            merged += [f"{where}: {what}" for where in wheres]
        else:
            more = len(wheres) - NAMED_PLACES
            merged.append(f"{', '.join(wheres[:NAMED_PLACES])} and {more} more ({len(wheres)} in all): {what}")
    return merged


def relabelled(values: Any, config: Config) -> Any:
    """A label map's values as classes: data.relabel's values become their classes, data.ignore_value
    stays itself and every other value becomes the background (0); the map as it is without
    data.relabel."""
    from runtime.metrics import relabel

    if config.data.relabel is None:
        return values
    return relabel(values, dict(config.data.relabel), config.data.ignore_value)


def label_values_problem(values: Any, path: Path | str, classes: Sequence[Any],
                         ignore: int | None = None) -> str | None:
    """What is wrong with the values of the label map at `path` (an array): those that are no class
    of `classes` and not `ignore` (the first ten named); None when every value is one of them."""
    import numpy as np

    known = sorted(int(c.value) for c in classes)
    unknown = [int(v) for v in np.unique(values) if int(v) not in known and int(v) != ignore]
    if not unknown:
        return None
    more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
    return (f"label {path} holds value(s) {unknown[:10]}{more} that are no class of data.classes "
            f"({', '.join(map(str, known))}); add them there, map them with data.relabel, mark them "
            "unannotated with data.ignore_value, or fix the label map")


# ----------------------------------------------------------------------------- value checks

def integer(low: int, high: int | None = None) -> Check:
    def check(value: Any) -> str | None:
        if not is_int(value):
            return f"must be an integer, got {value!r}"
        if value < low or (high is not None and value > high):
            return f"must be >= {low}, got {value!r}" if high is None else f"must be in {low}..{high}, got {value!r}"
        return None
    return check


def _text_number_hint(value: Any) -> str:
    """Why YAML read a number as text: it reads 1e-4 (no decimal point) as a string."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return (" (text: YAML reads a number with an exponent as text unless its mantissa has a decimal point and "
            f"its exponent a sign; write {_decimal(value)})")


def _decimal(text: str) -> str:
    """`text` as YAML 1.1 reads a float: 1e-4 -> 1.0e-4, 1.0e6 -> 1.0e+6."""
    mantissa, _, exponent = text.lower().partition("e")
    if not exponent:
        return text
    return f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent if exponent[0] in '+-' else '+' + exponent}"


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Check:
    """A finite number within the bounds given; `*_open` excludes that bound."""
    def check(value: Any) -> str | None:
        if not is_number(value):
            bounds = "" if low is None and high is None else f" {_interval(low, high, low_open, high_open)}"
            return f"must be a number{bounds}, got {value!r}{_text_number_hint(value)}"
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            return f"must be {_interval(low, high, low_open, high_open)}, got {value!r}"
        return None
    return check


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def one_of(*options: Any) -> Check:
    def check(value: Any) -> str | None:
        if any(value is option or (type(value) is type(option) and value == option) for option in options):
            return None
        return f"must be one of {', '.join(_yaml_text(o) for o in options)}, got {value!r}"
    return check


def _yaml_text(value: Any) -> str:
    return "true" if value is True else "false" if value is False else "null" if value is None else str(value)


def nullable(check: Check) -> Check:
    def nullable_check(value: Any) -> str | None:
        what = None if value is None else check(value)
        return None if what is None else f"{what.removesuffix(f', got {value!r}')} or null, got {value!r}"
    return nullable_check


def text(value: Any) -> str | None:
    return None if isinstance(value, str) and value else f"must be a non-empty string, got {value!r}"


def anything(value: Any) -> str | None:
    return None


# ----------------------------------------------------------------------------- sections

@dataclass(frozen=True)
class Field:
    """One key of a config section: its check and its default (`_REQUIRED` when it must be given)."""

    check: Check
    default: Any = _REQUIRED


def parse_section(data: Any, where: str, fields: Mapping[str, Field], problems: Problems) -> dict[str, Any]:
    """The section's valid values, defaults filled; a key whose value is missing or wrong is left out.

    Problems are recorded as they are found; a section is complete when every field is present
    (`complete`). Checks between fields run on the values present, so that one wrong value does
    not hide the problems of the others.
    """
    data = {} if data is None else data
    required = tuple(key for key, spec in fields.items() if spec.default is _REQUIRED)
    optional = tuple(key for key, spec in fields.items() if spec.default is not _REQUIRED)
    check_keys(data, where, required, optional, problems=problems)
    if not isinstance(data, dict):
        return {}
    values = {}
    for key, spec in fields.items():
        if key not in data and spec.default is _REQUIRED:
            continue
        value = data.get(key, spec.default)
        what = spec.check(value)
        if what is not None:
            problems.add(join_key(where, key), what)
        else:
            values[key] = value
    return values


def complete(values: Mapping[str, Any], fields: Mapping[str, Field]) -> bool:
    return len(values) == len(fields)


def _tuples(value: Any) -> Any:
    """Lists become tuples (recursively) so that the frozen dataclasses hold immutable values."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class DataConfig:
    csv: Path                      # absolute
    subject_column: str
    channels: tuple[str, ...]      # CSV columns of the image paths, in model channel order
    label: str                     # CSV column of the label map path / class value / target number
    group_column: str | None = None   # CSV column whose rows share one role in every fold (a patient, a slide)
    relabel: Mapping[int, int] | None = None   # segmentation: label map value -> class value; others -> 0
    ignore_value: int | None = None            # segmentation: the label map value of voxels no one annotated


def _relabel(value: Any, task: str | None, classes: tuple[ClassSpec, ...], problems: Problems) -> dict[int, int] | None:
    """data.relabel: which label map values become which class (every other value the background)."""
    if value is None:
        return None
    where = "data.relabel"
    if task != "segmentation":
        if task is not None:                # else task itself is reported
            problems.add(where, f"maps the values of segmentation label maps; this model's task is {task}")
        return None
    if not (isinstance(value, dict) and value and all(class_value_problem(k) is None for k in value)):
        problems.add(where, f"must map label map values (integers from 0 to {MAX_CLASS_VALUE}) to class values, "
                            f"e.g. {{5: 1}}, got {value!r}")
        return None
    known = [c.value for c in classes]
    wrong = {k: v for k, v in value.items() if not (is_int(v) and v in known)}
    if wrong:
        problems.add(where, f"maps to values that are no class of data.classes ({', '.join(map(str, known))}): {wrong}")
        return None
    if value.get(0, 0) != 0:
        problems.add(where, f"maps 0, the background of every label map, to class {value[0]}; leave 0 out")
    unreached = [c.name for c in classes if c.value != 0 and c.value not in value.values()]
    if unreached:
        problems.add(where, f"reaches no value of class(es) {', '.join(unreached)}, which would never be trained; "
                            "map their label values or drop them from data.classes")
    return {int(k): int(v) for k, v in value.items()}


def _ignore_value(value: Any, task: str | None, classes: tuple[ClassSpec, ...], relabel: Mapping[int, int] | None,
                  problems: Problems) -> int | None:
    """data.ignore_value: the label map value of voxels left unannotated, which no loss or metric counts."""
    where = "data.ignore_value"
    if value is None:
        return None
    if task != "segmentation":
        problems.add(where, f"marks unannotated voxels of segmentation label maps; this model's task is {task}")
        return None
    problem = class_value_problem(value)
    if problem:
        problems.add(where, problem)
        return None
    if value in {c.value for c in classes}:
        problems.add(where, f"{value} is a class of data.classes; give a value no class has (255, say)")
        return None
    if relabel is not None and value in relabel:
        problems.add(where, f"{value} is mapped by data.relabel as well; an unannotated voxel is no class's: "
                            "leave it out of data.relabel")
        return None
    return int(value)


def _data(value: Any, base: Path, task: str | None, problems: Problems) -> tuple[DataConfig | None, tuple[ClassSpec, ...]]:
    fields = {"csv": Field(text), "subject_column": Field(text, "subject_id"), "channels": Field(channels_problem),
              "label": Field(text), "classes": Field(anything), "group_column": Field(nullable(text), None),
              "relabel": Field(anything, None), "ignore_value": Field(anything, None)}
    values = parse_section(value, "data", fields, problems)
    classes: tuple[ClassSpec, ...] = ()
    if isinstance(value, dict) and "classes" in value:
        classes = parse_classes(value["classes"], task, "data.classes", problems)
    relabel = _relabel(values.get("relabel"), task, classes, problems)
    ignore = _ignore_value(values.get("ignore_value"), task, classes, relabel, problems)
    if task == "regression" and len(classes) > 1:
        problems.add("data.classes", f"a regression model predicts one target ({{0: target_name}}), got {len(classes)}")
    if not complete(values, fields):
        return None, classes
    group = values["group_column"]
    columns = [values["subject_column"], *values["channels"], values["label"], *([group] if group else [])]
    if len(set(columns)) != len(columns):
        named = "subject_column, channels, label and group_column" if group else "subject_column, channels and label"
        problems.add("data", f"{named} must name different CSV columns, got {columns}")
        return None, classes
    csv = Path(values["csv"])
    return DataConfig(csv=(base / csv if not csv.is_absolute() else csv).resolve(),
                      subject_column=values["subject_column"], channels=tuple(values["channels"]),
                      label=values["label"], group_column=group, relabel=relabel, ignore_value=ignore), classes


def _steps(value: Any, dims: int | None, channels: int, problems: Problems) -> tuple[Step, ...]:
    """The preprocessing steps (runtime.contract's rules), each with its omitted parameters at their defaults."""
    steps = parse_steps([] if value is None else value, dims, channels, "preprocessing", problems,
                        channels_from="data.channels")
    for index, step in enumerate(value if isinstance(value, list) else []):
        params = next(iter(step.values()), None) if isinstance(step, dict) and len(step) == 1 else None
        if isinstance(params, dict) and params.get("region") == "mask":
            problems.add(f"preprocessing[{index}] ({next(iter(step))}).region", "mask reads a mask given with each "
                         "scan, which the subject table has no column for; use nonzero (a foreground step may define "
                         "it) or whole")
    return tuple(Step(name=s.name, params=_tuples(with_defaults(STEPS[s.name], s.params))) for s in steps)


@dataclass(frozen=True)
class PatchConfig:
    size: tuple[int, ...]          # in axis_order
    sampler: str                   # uniform | label
    label_probabilities: Mapping[int, float] | None   # label sampler: class value -> weight; None: equal
    per_volume: int
    queue_length: int
    workers: int


def _patch_size(dims: int | None) -> Check:
    return lambda value: patch_size_problem(value, dims)


def _patch(value: Any, dims: int | None, task: str | None, classes: tuple[ClassSpec, ...],
           problems: Problems) -> PatchConfig | None:
    fields = {
        "size": Field(_patch_size(dims)), "sampler": Field(one_of(*SAMPLERS), "label" if task == "segmentation" else "uniform"),
        "label_probabilities": Field(anything, None), "per_volume": Field(integer(1), 4),
        "queue_length": Field(integer(1), 32), "workers": Field(integer(0), 0),
    }
    values = parse_section(value, "patch", fields, problems)
    sampler = values.get("sampler")
    if sampler == "label" and task not in (None, "segmentation"):
        problems.add("patch.sampler", f"the label sampler draws patch centres from label maps: segmentation only; "
                                      f"use uniform for {task}")
    if values.keys() >= {"queue_length", "per_volume"} and values["queue_length"] < values["per_volume"]:
        problems.add("patch.queue_length", f"must hold at least one volume's patches (per_volume "
                                           f"{values['per_volume']}), got {values['queue_length']}")
    if sampler is None or "label_probabilities" not in values:
        return None
    weights = _label_probabilities(values["label_probabilities"], sampler, classes, problems)
    if not complete(values, fields):
        return None
    return PatchConfig(size=tuple(values["size"]), sampler=values["sampler"], label_probabilities=weights,
                       per_volume=values["per_volume"], queue_length=values["queue_length"], workers=values["workers"])


def _label_probabilities(value: Any, sampler: str, classes: tuple[ClassSpec, ...],
                         problems: Problems) -> dict[int, float] | None:
    """Explicit weights per class value; None (the default) weighs the classes equally."""
    where = "patch.label_probabilities"
    if value is None:
        return None
    if sampler != "label":
        problems.add(where, "is used by the label sampler only; remove it or set sampler: label")
        return None
    known = {c.value for c in classes}
    if not (isinstance(value, dict) and value and all(k in known and is_number(w) and w >= 0 for k, w in value.items())
            and sum(value.values()) > 0):
        problems.add(where, f"must map class values ({sorted(known)}) to weights >= 0, not all 0, got {value!r}")
        return None
    return {int(k): float(w) for k, w in value.items()}


def _augmentation(value: Any, dims: int | None, modality: str | None, problems: Problems) -> dict[str, dict[str, Any]]:
    """The augmentations with every parameter at its value or default: trainer.augment's allow-list and checks;
    the colour augmentations for histology (RGB) models only."""
    if not value:
        if value not in (None, {}):
            problems.add("augmentation", f"must map augmentation names to their settings, got {value!r}")
        return {}
    found = augmentation_problems(value, "augmentation", dims or 3)
    if isinstance(value, dict) and modality not in (None, "histology"):
        what = f"changes the colours of RGB images: histology only, this model's modality is {modality}"
        found += [(f"augmentation.{name}", what) for name in value if name in COLOUR_AUGMENTATIONS]
    for where, what in found:
        problems.add(where, what)
    if found:
        return {}
    return {name: _tuples(resolved_augmentation(name, params, dims or 3)) for name, params in value.items()}


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    base_filters: int
    depth: int                     # down-sampling steps of the unet family
    norm: str
    dropout: float


def _model(value: Any, task: str | None, patch_size: tuple[int, ...] | None, problems: Problems) -> ModelConfig | None:
    fields = {
        "architecture": Field(one_of(*ARCHITECTURE_NAMES), "unet" if task in (None, "segmentation") else "vgg16"),
        "base_filters": Field(integer(1), 16), "depth": Field(integer(1, 7), 4), "norm": Field(one_of(*NORMS), "instance"),
        "dropout": Field(number(0, 1, high_open=True), 0.0),
    }
    values = parse_section(value, "model", fields, problems)
    architecture = values.get("architecture")
    if architecture is None:
        return None
    segmenting = architecture in SEGMENTATION_ARCHITECTURES
    if task is not None and segmenting != (task == "segmentation"):
        fits = ", ".join(SEGMENTATION_ARCHITECTURES if task == "segmentation" else GLOBAL_ARCHITECTURES)
        problems.add("model.architecture", f"{architecture} does not fit a {task} task; use {fits}")
    if not complete(values, fields):
        return None
    model = ModelConfig(**{**values, "dropout": float(values["dropout"])})
    if task is not None and segmenting == (task == "segmentation"):
        _network_fits(model, task, patch_size, problems)
    return model


@dataclass(frozen=True)
class OptimizerConfig:
    name: str
    lr: float
    weight_decay: float
    momentum: float | None         # sgd only


@dataclass(frozen=True)
class SchedulerConfig:
    name: str
    warmup_epochs: int             # linear warm-up before any schedule (also with none)
    step_size: int                 # step: epochs between decays
    gamma: float                   # step and plateau: decay factor
    patience: int                  # plateau: epochs without improvement before a decay


@dataclass(frozen=True)
class EarlyStoppingConfig:
    patience: int | None           # None: never stop early
    metric: str                    # validation metric that picks the best checkpoint too
    mode: str                      # max | min


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int
    batch_size: int
    loss: str
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig
    mixed_precision: bool | str    # "auto" (on CUDA), True or False
    grad_clip: float | None
    early_stopping: EarlyStoppingConfig
    device: str
    val_every: int
    # None: every class alike; "balanced": from each fold's training subjects; else class value -> weight
    class_weights: str | Mapping[int, float] | None = None


_DEFAULT_LOSS = {"segmentation": "dice_ce", "classification": "ce", "regression": "mse"}


def _training(value: Any, task: str | None, classes: tuple[ClassSpec, ...],
              problems: Problems) -> TrainingConfig | None:
    fields = {
        "epochs": Field(integer(1), 50), "batch_size": Field(integer(1), 2),
        "loss": Field(one_of(*sorted({n for v in LOSSES_BY_TASK.values() for n in v})), _DEFAULT_LOSS.get(task, "dice_ce")),
        "optimizer": Field(anything, None), "scheduler": Field(anything, None),
        "mixed_precision": Field(one_of("auto", True, False), "auto"),
        "grad_clip": Field(nullable(number(0, low_open=True)), None), "early_stopping": Field(anything, None),
        "device": Field(one_of(*DEVICES), "auto"), "val_every": Field(integer(1), 1),
        "class_weights": Field(anything, None),
    }
    values = parse_section(value, "training", fields, problems)
    if "class_weights" in values:
        values["class_weights"] = _class_weights(values["class_weights"], task, values.get("loss"), classes, problems)
    data = value if isinstance(value, dict) else {}
    optimizer = _optimizer(data.get("optimizer"), problems)
    scheduler = _scheduler(data.get("scheduler"), problems)
    stopping = _early_stopping(data.get("early_stopping"), task, problems)
    if task is not None and "loss" in values and values["loss"] not in LOSSES_BY_TASK[task]:
        problems.add("training.loss", f"{values['loss']} does not fit a {task} task; use one of "
                                      f"{', '.join(LOSSES_BY_TASK[task])}")
    if scheduler is not None and "epochs" in values and scheduler.warmup_epochs >= values["epochs"]:
        problems.add("training.scheduler.warmup_epochs", f"must be below training.epochs ({values['epochs']}), "
                                                         f"got {scheduler.warmup_epochs}")
    if not complete(values, fields) or optimizer is None or scheduler is None or stopping is None:
        return None
    grad_clip = None if values["grad_clip"] is None else float(values["grad_clip"])
    return TrainingConfig(**{**values, "optimizer": optimizer, "scheduler": scheduler, "early_stopping": stopping,
                             "grad_clip": grad_clip})


def _class_weights(value: Any, task: str | None, loss: str | None, classes: tuple[ClassSpec, ...],
                   problems: Problems) -> str | dict[int, float] | None:
    """How the loss weighs each class: None (alike), "balanced", or a weight > 0 per class value
    (a class not named weighs 1); for the losses that take class weights only."""
    where = "training.class_weights"
    if value is None:
        return None
    if task == "regression":
        problems.add(where, "weighs classes: segmentation and classification only; remove it for regression")
        return None
    if loss is not None and loss not in WEIGHTED_LOSSES:
        problems.add(where, f"loss {loss} does not take class weights; use one of {', '.join(WEIGHTED_LOSSES)}, "
                            "or remove class_weights")
        return None
    if value == "balanced":
        return value
    known = {c.value for c in classes}
    if not (isinstance(value, dict) and value and all(
            k in known and is_number(w) and 0 < w <= 1e6 for k, w in value.items())):
        problems.add(where, f"must be balanced or map class values ({sorted(known)}) to weights in (0, 1e6], "
                            f"got {value!r}")
        return None
    return {int(k): float(w) for k, w in value.items()}


def _optimizer(value: Any, problems: Problems) -> OptimizerConfig | None:
    fields = {"name": Field(one_of(*OPTIMIZERS), "adam"), "lr": Field(number(0, low_open=True), 0.001),
              "weight_decay": Field(number(0), 0.0), "momentum": Field(nullable(number(0, 1, high_open=True)), None)}
    values = parse_section(value, "training.optimizer", fields, problems)
    name, momentum = values.get("name"), values.get("momentum")
    if name in ("sgd", "rmsprop") and momentum is None:
        momentum = 0.9 if name == "sgd" else 0.0
    elif name is not None and name not in ("sgd", "rmsprop") and momentum is not None:
        problems.add("training.optimizer.momentum", f"is used by sgd and rmsprop only; remove it for {name}")
    if not complete(values, fields):
        return None
    return OptimizerConfig(name=values["name"], lr=float(values["lr"]), weight_decay=float(values["weight_decay"]),
                           momentum=None if momentum is None else float(momentum))


def _scheduler(value: Any, problems: Problems) -> SchedulerConfig | None:
    fields = {"name": Field(one_of(*SCHEDULERS), "cosine"), "warmup_epochs": Field(integer(0), 0),
              "step_size": Field(integer(1), 10), "gamma": Field(number(0, 1, low_open=True), 0.5),
              "patience": Field(integer(1), 5)}
    values = parse_section(value, "training.scheduler", fields, problems)
    return None if not complete(values, fields) else SchedulerConfig(**{**values, "gamma": float(values["gamma"])})


def _early_stopping(value: Any, task: str | None, problems: Problems) -> EarlyStoppingConfig | None:
    metrics = METRICS_BY_TASK.get(task or "", tuple(sorted({m for v in METRICS_BY_TASK.values() for m in v})))
    fields = {"patience": Field(nullable(integer(1)), 20), "metric": Field(one_of("auto", *metrics), "auto"),
              "mode": Field(one_of("auto", "max", "min"), "auto")}
    values = parse_section(value, "training.early_stopping", fields, problems)
    if not complete(values, fields):
        return None
    metric = metrics[0] if values["metric"] == "auto" else values["metric"]
    mode = ("min" if metric in LOWER_IS_BETTER else "max") if values["mode"] == "auto" else values["mode"]
    return EarlyStoppingConfig(patience=values["patience"], metric=metric, mode=mode)


@dataclass(frozen=True)
class CVConfig:
    testing_folds: int             # 0: no testing set
    validation_folds: int          # inner k; 1 with validation_fraction
    validation_fraction: float | None   # a single inner split of this fraction instead of an inner k-fold
    stratify: bool


def _cross_validation(value: Any, task: str | None, problems: Problems) -> CVConfig | None:
    fields = {"testing_folds": Field(integer(0), 5), "validation_folds": Field(nullable(integer(1)), None),
              "validation_fraction": Field(nullable(number(0, 1, low_open=True, high_open=True)), None),
              "stratify": Field(one_of("auto", True, False), "auto")}
    values = parse_section(value, "cross_validation", fields, problems)
    where = "cross_validation"
    if values.get("testing_folds") == 1:
        problems.add(f"{where}.testing_folds", "must be 0 (no testing set) or >= 2, got 1")
    folds, fraction = values.get("validation_folds"), values.get("validation_fraction")
    if fraction is None and folds is not None and folds < 2:
        problems.add(f"{where}.validation_folds", f"must be >= 2 (or use validation_fraction), got {folds}")
    if fraction is not None and folds not in (None, 1):
        problems.add(f"{where}.validation_folds", f"give validation_folds or validation_fraction, not both (got "
                                                  f"{folds} and {fraction})")
    stratify = task == "classification" if values.get("stratify") == "auto" else values.get("stratify")
    if stratify and task not in (None, "classification"):
        problems.add(f"{where}.stratify", f"stratifies by class value: classification only, not {task}")
    if not complete(values, fields):
        return None
    return CVConfig(testing_folds=values["testing_folds"], validation_folds=folds or (1 if fraction else 5),
                    validation_fraction=None if fraction is None else float(fraction), stratify=bool(stratify))


def _inference(value: Any, patch: PatchConfig | None, dims: int | None, task: str | None, channels: int,
               problems: Problems, modality: str | None = None) -> WindowSection | None:
    """The window settings the manifest gets: runtime.contract's window rules, the patch size of training.
    A histology model runs over slides tile by tile: sliding windows, side by side (overlap 0) for a
    tile classifier or regressor, as its patches were cut."""
    value = {} if value is None else value
    slides = modality == "histology"
    if isinstance(value, dict):
        tiles = {"overlap": 0.0} if slides and task not in (None, "segmentation") else {}
        value = {"mode": "sliding" if task in (None, "segmentation") or slides else "whole", **tiles, **value}
    if isinstance(value, dict) and value["mode"] == "whole" and (task == "segmentation" or slides):
        what = ("a segmentation model runs" if task == "segmentation"
                else "a histology model runs over slides tile by tile, in")
        problems.add("inference.mode", f"{what} a sliding window; use sliding, got {value['mode']!r}")
    size = patch.size if patch is not None else None
    return parse_window(value, size, dims, "inference", problems, channels=channels)


# ----------------------------------------------------------------------------- the whole config

@dataclass(frozen=True)
class Config:
    name: str
    task: str
    modality: str
    dimensions: int
    axis_order: str
    output_dir: Path               # absolute
    seed: int
    data: DataConfig
    preprocessing: tuple[Step, ...]
    classes: tuple[ClassSpec, ...]
    patch: PatchConfig
    augmentation: Mapping[str, Mapping[str, Any]]
    model: ModelConfig
    training: TrainingConfig
    cross_validation: CVConfig
    inference: WindowSection
    source: Path                   # the YAML file
    slide: SlideSpec | None = None   # histology: the resolution the model works at and the tissue mask


_TOP_REQUIRED = ("name", "task", "modality", "dimensions", "data", "patch")
_TOP_OPTIONAL = ("axis_order", "output_dir", "seed", "preprocessing", "augmentation", "model", "training",
                 "cross_validation", "inference", "slide")


def load_config(path: Path | str) -> Config:
    """Read and validate a config file; ConfigError lists every problem with its location."""
    path = Path(path).resolve()
    data = read_yaml_file(path, "config", ConfigError, f"pass the training YAML ({CONFIG_DOC})")
    return parse_config(data, path)


# Top-level keys of a GaNDLF config: two or more of them make a config GaNDLF's, and say where its
# keys are mapped.
GANDLF_KEYS = ("class_list", "patch_size", "nested_training", "num_epochs", "q_samples_per_volume", "q_max_length",
               "data_preprocessing", "learning_rate", "loss_function", "weighted_loss", "inference_mechanism",
               "parallel_compute_command", "metrics", "dimension", "verbose")


def parse_config(data: Any, source: Path) -> Config:
    """Validate a config's decoded YAML; paths are taken relative to `source`'s folder."""
    problems = Problems("config")
    if isinstance(data, dict) and len(set(data) & set(GANDLF_KEYS)) >= 2:
        found = sorted(set(data) & set(GANDLF_KEYS))
        problems.add("config", f"is a GaNDLF config ({', '.join(found[:4])}{', …' if len(found) > 4 else ''}); "
                               "translate it with the table of docs/trainer.md, 'Coming from GaNDLF'")
    if not check_keys(data, "", _TOP_REQUIRED, _TOP_OPTIONAL, problems=problems):
        raise_problems(problems, f"config {source}")
    fields = _parse_fields(data, source.parent, problems)
    raise_problems(problems, f"config {source}")
    return Config(source=source, **fields)


def _parse_fields(data: dict[str, Any], base: Path, problems: Problems) -> dict[str, Any]:
    task = choice(data["task"], TASKS, "task", problems)
    dims = parse_dimensions(data["dimensions"], "dimensions", problems)
    name = parse_name(data["name"], "name", problems)
    modality = choice(data["modality"], MODALITIES, "modality", problems)
    data_config, classes = _data(data["data"], base, task, problems)
    channels = len(data_config.channels) if data_config else 0
    patch = _patch(data["patch"], dims, task, classes, problems)
    model = _model(data.get("model"), task, _raw_patch_size(data["patch"], dims), problems)
    steps = _steps(data.get("preprocessing"), dims, channels, problems)
    if modality == "histology":
        _histology_fits(data_config, steps, problems)
    return {
        "name": name, "task": task, "modality": modality,
        "slide": parse_slide(data.get("slide"), modality, dims, "slide", problems),
        "dimensions": dims, "axis_order": _axis_order(data.get("axis_order"), dims, problems),
        "output_dir": _output_dir(data.get("output_dir"), name, base, problems),
        "seed": _seed(data.get("seed", 0), problems), "data": data_config,
        "preprocessing": steps, "classes": classes, "patch": patch,
        "augmentation": _augmentation(data.get("augmentation"), dims, modality, problems), "model": model,
        "training": _training(data.get("training"), task, classes, problems),
        "cross_validation": _cross_validation(data.get("cross_validation"), task, problems),
        "inference": _inference(data.get("inference"), patch, dims, task, channels, problems, modality),
    }


def _histology_fits(data: DataConfig | None, steps: tuple[Step, ...], problems: Problems) -> None:
    """A histology model reads slides as RGB, 3 channels, and takes intensity steps only (its resolution
    is slide.mpp, the same on every window)."""
    if data is not None and len(data.channels) != RGB_CHANNELS:
        problems.add("data.channels", f"a histology model reads RGB: name {RGB_CHANNELS} channels (e.g. [red, green, "
                                      f"blue], each column naming the patch's RGB file), got {list(data.channels)}")
    for index, step in enumerate(steps):
        if step.name not in HISTOLOGY_STEPS:
            problems.add(f"preprocessing[{index}] ({step.name})", f"a histology model takes intensity steps only "
                                                                 f"({', '.join(HISTOLOGY_STEPS)}); its resolution is "
                                                                 "slide.mpp")


def _raw_patch_size(value: Any, dims: int | None) -> tuple[int, ...] | None:
    """The patch size when it is valid, whatever else the patch section holds."""
    size = value.get("size") if isinstance(value, dict) else None
    return tuple(size) if dims is not None and _patch_size(dims)(size) is None else None


def _axis_order(value: Any, dims: int | None, problems: Problems) -> str | None:
    if value is None and dims is not None:
        value = AXIS_ORDERS[dims][0]
    return parse_axis_order(value, dims, "axis_order", problems)


def _output_dir(value: Any, name: str | None, base: Path, problems: Problems) -> Path | None:
    if value is None:
        value = f"runs/{name}"
    if not (isinstance(value, str) and value):
        problems.add("output_dir", f"must be a folder path, got {value!r}")
        return None
    return (base / value).resolve()


def _seed(value: Any, problems: Problems) -> int | None:
    what = integer(0)(value)
    if what is not None:
        problems.add("seed", what)
        return None
    return int(value)


def _network_fits(model: ModelConfig, task: str, patch_size: tuple[int, ...] | None, problems: Problems) -> None:
    """What the network itself refuses, before any training: its own rules on the model section (a
    swinunetr's feature size, say) under model.*, and the patch it is given (a multiple of what it
    halves the patch by, a coarsest level instance norm can normalise) under patch.size."""
    from trainer.models.shapes import check_spatial_size
    from trainer.models.spec import ModelSpec, ModelSpecError, check_spec_values

    spec = {"architecture": model.architecture, "dimensions": len(patch_size) if patch_size else 3,
            "in_channels": 1, "out_channels": 2, "task": task, "base_filters": model.base_filters,
            "depth": model.depth, "norm": model.norm, "dropout": model.dropout}
    found = Problems("config")
    check_spec_values(spec, "model", found)
    problems.items.extend(found.items)
    if found.items or patch_size is None:
        return
    try:
        check_spatial_size(ModelSpec(**spec), patch_size)
    except ModelSpecError as exc:
        problems.add("patch.size", str(exc))


# ----------------------------------------------------------------------------- resolved form

def resolved_dict(config: Config) -> dict[str, Any]:
    """The resolved config (every default filled, paths absolute) as plain YAML-able data; loads back unchanged.

    `slide`, `data.group_column`, `data.relabel`, `data.ignore_value` and `training.class_weights`
    appear only where they are set, so a config without them resolves (and hashes) as it did before
    they existed."""
    optional = {} if config.data.group_column is None else {"group_column": config.data.group_column}
    if config.data.relabel is not None:
        optional["relabel"] = dict(config.data.relabel)
    if config.data.ignore_value is not None:
        optional["ignore_value"] = config.data.ignore_value
    slide = {} if config.slide is None else {"slide": vars(config.slide)}
    return plain({
        "name": config.name, "task": config.task, "modality": config.modality, "dimensions": config.dimensions,
        "axis_order": config.axis_order, "output_dir": str(config.output_dir), "seed": config.seed, **slide,
        "data": {"csv": str(config.data.csv), "subject_column": config.data.subject_column,
                 "channels": config.data.channels, "label": config.data.label, **optional,
                 "classes": {c.value: class_entry(c) for c in config.classes}},
        "preprocessing": [{s.name: dict(s.params)} for s in config.preprocessing],
        "patch": vars(config.patch), "augmentation": dict(config.augmentation), "model": vars(config.model),
        "training": {**{k: v for k, v in vars(config.training).items() if k != "class_weights" or v is not None},
                     "optimizer": vars(config.training.optimizer),
                     "scheduler": vars(config.training.scheduler),
                     "early_stopping": vars(config.training.early_stopping)},
        "cross_validation": vars(config.cross_validation),
        "inference": {k: v for k, v in vars(config.inference).items() if k != "patch_size"},
    })


def plain(value: Any) -> Any:
    """`value` with every mapping a dict and every tuple a list, as YAML writes them."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def config_hash(config: Config, with_folder: bool = False) -> str:
    """sha256 of the canonical JSON of the resolved config, its classes by value and name alone: their
    coded concepts and units name them in DICOM and change no training, so a run keeps its hash
    when they are added. Classes listed out of their values' order, which makes each another output
    channel, are hashed as a list in that order (the canonical JSON sorts a mapping's keys). The run
    folder (`output_dir`) is left out, so that a run moved to another folder is the same run;
    `with_folder`: the hash with it, as runs recorded it before (`config_hashes`)."""
    resolved = resolved_dict(config)
    if not with_folder:
        del resolved["output_dir"]
    values = [c.value for c in config.classes]
    named = [[c.value, c.name] for c in config.classes]
    resolved["data"]["classes"] = dict(named) if values == sorted(values) else named
    canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def config_hashes(config: Config, recorded_folder: Path | None = None) -> frozenset[str]:
    """The hashes a run of this config may have recorded: `config_hash`, and the one with its
    output_dir that earlier versions recorded (a run begun by one keeps resuming and exporting),
    with the output_dir the run's own config.yaml records where given (such a run moved since)."""
    hashes = {config_hash(config), config_hash(config, with_folder=True)}
    if recorded_folder is not None:
        hashes.add(config_hash(replace(config, output_dir=Path(recorded_folder)), with_folder=True))
    return frozenset(hashes)


def write_resolved(config: Config, path: Path) -> Path:
    """Write the resolved config as YAML, replacing the file whole (`trainer.atomic`)."""
    from trainer.atomic import replace_text

    path = Path(path)
    replace_text(path, yaml.safe_dump(resolved_dict(config), sort_keys=False, allow_unicode=True))
    return path

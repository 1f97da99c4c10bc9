"""The model contract: the sections a manifest, a model spec and a training config share, one parser each.

The sections are the model's name, task, modality, dimensions, axis order, channels, classes,
preprocessing steps, window and output. A manifest (JSON, every key written out) and the YAML
documents (a spec, a training config, omitted keys at their defaults) write two sections in their
own shape, classes as `[{value, name}]` or `{value: name}` (a class may also carry `category` and
`type`, coded concepts `{scheme, value, meaning}` for DICOM SEG and SR: `{value, name, category,
type}`, or `{value: {name, category, type}}`; a regression target also its `unit`, a UCUM concept)
and steps as `[{name, params}]` or `[{step_name: {params}}]`, and each shape has its reader here;
the rules a section's values obey are the same whichever document holds them.

Every parser takes the decoded value and the location it sits at in its document (`where`, e.g.
"classes" in a manifest or a spec, "data.classes" in a training config), records every problem it
finds under that location in a `Problems` collector, and returns the parsed value or an empty/None
result when the value is unusable. Per-axis values are in the document's axis order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from runtime import limits
from runtime.preprocess import params as step_params
from runtime.preprocess.steps import STEPS, Step, check_step
from runtime.validation import Problems, check_keys, choice, is_int, is_number, join_key
from runtime.window.spec import BLENDINGS, WindowSpec

TASKS = ("segmentation", "classification", "regression")
MODALITIES = ("radiology", "histology")
AXIS_ORDERS = {3: ("zyx", "xyz"), 2: ("yx", "xy")}
WINDOW_MODES = ("sliding", "whole")
ACTIVATIONS = ("softmax", "sigmoid", "none")
LABEL_RULES = ("argmax", "threshold")
ENSEMBLE_RULES = ("mean", "vote")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+\Z")

WINDOW_DEFAULTS: Mapping[str, Any] = {
    "mode": "sliding", "overlap": 0.5, "blending": "gaussian", "batch_size": 1,
    "mirror_axes": [], "skip_background": True,
}
WINDOW_KEYS = ("mode", "patch_size", "overlap", "blending", "batch_size", "mirror_axes", "skip_background")
OUTPUT_KEYS = ("activation", "label_rule", "threshold", "ensemble")
# an output key a manifest may leave out (written only where set)
OUTPUT_OPTIONAL = ("probabilities",)
SLIDE_KEYS = ("mpp", "tissue_mpp", "min_object_um2", "min_hole_um2")
SLIDE_DEFAULTS: Mapping[str, Any] = {"tissue_mpp": 8.0, "min_object_um2": 10000.0, "min_hole_um2": 10000.0}
# microns per pixel a slide setting may take: finer than any scanner's level 0, coarser than any overview
MPP_RANGE = (0.01, 1000.0)
# activation and label_rule left out of a spec are decided by the graph's output channels
OUTPUT_DEFAULTS: Mapping[str, Any] = {"activation": None, "label_rule": None, "threshold": 0.5, "ensemble": "mean",
                                      "probabilities": None}


@dataclass(frozen=True)
class Concept:
    """A coded concept (DICOM's code triplet): its coding scheme, code value and meaning."""

    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class ClassSpec:
    """One class: its value in label maps, its name and, optionally, the coded concepts a DICOM
    SEG gives its segment (the property category and type, e.g. SCT "Anatomical Structure" and
    SCT "Liver"); a regression target, the unit of its value (UCUM, e.g. "a", "year")."""

    value: int
    name: str
    category: Concept | None = None
    type: Concept | None = None
    unit: Concept | None = None


@dataclass(frozen=True)
class WindowSection:
    """The `window` section: how the model sees an image ("sliding" windows or the "whole" image at
    patch_size) and, for sliding windows, the engine's settings."""

    mode: str
    patch_size: tuple[int, ...]
    overlap: float
    blending: str
    batch_size: int
    mirror_axes: tuple[int, ...]
    skip_background: bool

    @property
    def spec(self) -> WindowSpec:
        """These settings as the window engine takes them."""
        return WindowSpec(patch=self.patch_size, overlap=self.overlap, blending=self.blending,
                          batch_size=self.batch_size, mirror_axes=self.mirror_axes,
                          skip_empty=self.skip_background)


@dataclass(frozen=True)
class SlideSpec:
    """The `slide` section of a histology model: the resolution it works at (`mpp`, microns per
    pixel of its input), and how the tissue mask is made: at `tissue_mpp` microns per pixel,
    tissue specks smaller than `min_object_um2` square microns dropped and holes smaller than
    `min_hole_um2` filled."""

    mpp: float
    tissue_mpp: float
    min_object_um2: float
    min_hole_um2: float


@dataclass(frozen=True)
class OutputSpec:
    activation: str
    label_rule: str
    threshold: float
    ensemble: str
    # with activation none, the graph's values are logits: the probabilities written are this
    # activation of them once brought back to the scan's grid (nnU-Net's order); None: the values
    probabilities: str | None = None


# ----------------------------------------------------------------------------- name, axes, channels

def parse_name(value: Any, where: str, problems: Problems) -> str | None:
    """A model name: it names the model folder, so letters, digits, _ and - only."""
    if not (isinstance(value, str) and NAME_PATTERN.match(value)):
        problems.add(where, f"must be letters, digits, _ and - only (it names the model folder), got {value!r}")
        return None
    return value


def parse_dimensions(value: Any, where: str, problems: Problems) -> int | None:
    """The number of spatial axes: 2 or 3."""
    if not (is_int(value) and value in (2, 3)):
        problems.add(where, f"must be 2 or 3, got {value!r}")
        return None
    return int(value)


def parse_axis_order(value: Any, dims: int | None, where: str, problems: Problems) -> str | None:
    """The order of the spatial axes in the model's arrays; None when `dims` is unknown."""
    return None if dims is None else choice(value, AXIS_ORDERS[dims], where, problems)


def channels_problem(value: Any) -> str | None:
    """What keeps `value` from being the input channels: distinct names, at most limits.MAX_CHANNELS."""
    if not (isinstance(value, list) and value and all(isinstance(c, str) and c for c in value)
            and len(set(value)) == len(value)):
        return f"must be a non-empty list of distinct names, one per input file, got {value!r}"
    return limits.count_problem(len(value), limits.MAX_CHANNELS, "channels")


def parse_channels(value: Any, where: str, problems: Problems) -> tuple[str, ...]:
    """The input channel names, in the model's channel order."""
    if (wrong := channels_problem(value)) is not None:
        problems.add(where, wrong)
        return ()
    return tuple(value)


def patch_size_problem(value: Any, dims: int | None) -> str | None:
    """What keeps `value` from being a patch size: `dims` positive integers (any count when `dims` is
    unknown) within limits.patch_problem."""
    if isinstance(value, list) and value and all(is_int(s) and s > 0 for s in value) \
            and len(value) == (dims or len(value)):
        return limits.patch_problem(value)
    count = f"{dims} " if dims else ""
    return f"must be {count}positive integers, got {value!r} (one per axis, in axis_order)"


def parse_patch_size(value: Any, dims: int | None, where: str, problems: Problems) -> tuple[int, ...] | None:
    """The model's input patch, in voxels (pixels) per spatial axis."""
    if (wrong := patch_size_problem(value, dims)) is not None:
        problems.add(where, wrong)
        return None
    return tuple(value)


# ----------------------------------------------------------------------------- classes

def parse_classes(value: Any, task: str | None, where: str, problems: Problems) -> tuple[ClassSpec, ...]:
    """Classes written as a mapping of class value to class name (a spec, a training config)."""
    if not _class_count_fits(value, dict, "must map each value to a name (0: background, 1: …)", where, problems):
        return ()
    if all(isinstance(key, str) and limits.class_value_problem(label) is None for key, label in value.items()):
        example = ", ".join(f"{label}: {key}" for key, label in list(value.items())[:3])
        problems.add(where, f"maps each class value to its name ({example}); this maps names to values, as nnU-Net's "
                            "dataset.json labels do: swap each pair")
        return ()
    found = (_mapped_class(key, label, join_key(where, key), problems) for key, label in value.items())
    classes = _class_set(found, len(value), task, where, problems)
    if task == "classification":
        _refuse_crossed_names(classes, where, problems)
    return classes


def _refuse_crossed_names(classes: tuple[ClassSpec, ...], where: str, problems: Problems) -> None:
    """A classifier's class named as another class's value ({0: '1', 1: '0'}): a table's label cell,
    a class value or name, would be read as either (checked as configs and specs are written, not
    as a model already exported is loaded)."""
    values = {float(c.value): c.value for c in classes}
    for spec in classes:
        try:
            number = float(spec.name)
        except ValueError:
            continue
        if number in values and number != spec.value:
            problems.add(where, f"class {spec.value} is named {spec.name!r}, which is class {values[number]}'s "
                                f"value: a table's label {spec.name} would be read as either; name the classes with "
                                "words")
            return


def parse_class_list(value: Any, task: str | None, where: str, problems: Problems) -> tuple[ClassSpec, ...]:
    """Classes written as a list of {value, name} (a manifest)."""
    if not _class_count_fits(value, list, "must be a non-empty list of {value, name}", where, problems):
        return ()
    found = (_class_item(item, f"{where}[{index}]", problems) for index, item in enumerate(value))
    return _class_set(found, len(value), task, where, problems)


def _class_count_fits(value: Any, kind: type, shape: str, where: str, problems: Problems) -> bool:
    """Whether `value` is a non-empty `kind` of at most limits.MAX_CLASSES entries; `shape` says what it must be."""
    if not (isinstance(value, kind) and value):
        problems.add(where, f"{shape}, got {value!r}")
        return False
    if (too_many := limits.count_problem(len(value), limits.MAX_CLASSES, "classes")) is not None:
        problems.add(where, too_many)
        return False
    return True


def _class_set(found: Iterable[ClassSpec | None], given: int, task: str | None, where: str,
               problems: Problems) -> tuple[ClassSpec, ...]:
    classes = tuple(c for c in found if c is not None)
    check_class_set(classes, given, task, where, problems)
    return classes


CONCEPT_KEYS = ("scheme", "value", "meaning")
# The coded concepts a class may carry: a segment's category and type, a regression target's unit.
CLASS_CONCEPTS = ("category", "type", "unit")
# DICOM's lengths: Coding Scheme Designator (SH), Code Value (up to a Long Code Value), Code Meaning (LO).
CONCEPT_LENGTHS = {"scheme": 16, "value": 64, "meaning": 64}
CLASS_NAME_LENGTH = 64          # a SEG's Segment Label (LO)


def _mapped_class(key: Any, label: Any, where: str, problems: Problems) -> ClassSpec | None:
    if (wrong := limits.class_value_problem(key)) is not None:
        problems.add(where, f"the value {wrong}")
        return None
    if isinstance(label, dict):
        return _class_item({"value": key, **label}, where, problems)
    if not (isinstance(label, str) and label):
        hint = " (YAML reads an unquoted no, yes, on, off, true or false as a boolean: quote the name)" \
            if isinstance(label, bool) else ""
        problems.add(where, f"the name must be a non-empty string (or {{name, category, type}}), got {label!r}{hint}")
        return None
    return ClassSpec(value=int(key), name=label)


def _class_item(item: Any, where: str, problems: Problems) -> ClassSpec | None:
    if not check_keys(item, where, ("value", "name"), CLASS_CONCEPTS, problems=problems):
        return None
    count = len(problems.items)
    if (wrong := limits.class_value_problem(item["value"])) is not None:
        problems.add(join_key(where, "value"), wrong)
    if not (isinstance(item["name"], str) and item["name"] and len(item["name"]) <= CLASS_NAME_LENGTH):
        problems.add(join_key(where, "name"), f"must be a non-empty string of at most {CLASS_NAME_LENGTH} characters, "
                                              f"got {item['name']!r}")
    if "category" in item and "type" not in item:
        problems.add(where, "give category and type together (the coded concepts of a DICOM SEG segment), or neither")
    concepts = {key: _concept(item[key], join_key(where, key), problems)
                for key in CLASS_CONCEPTS if key in item}
    if concepts.get("unit") is not None and concepts["unit"].scheme != "UCUM":
        problems.add(join_key(where, "unit.scheme"), f"must be UCUM (DICOM's units), got {concepts['unit'].scheme!r}")
    if len(problems.items) > count:
        return None
    return ClassSpec(value=int(item["value"]), name=item["name"], **concepts)


def _concept(value: Any, where: str, problems: Problems) -> Concept | None:
    """A coded concept {scheme, value, meaning}, each a non-empty string within DICOM's length."""
    if not isinstance(value, dict):
        example = ("{scheme: UCUM, value: mm2, meaning: square millimetre}" if where.endswith(".unit") else
                   "{scheme: SCT, value: '10200004', meaning: Liver}")
        problems.add(where, f"must be a coded concept {{scheme, value, meaning}} (e.g. {example}), got {value!r}")
        return None
    if not check_keys(value, where, CONCEPT_KEYS, problems=problems):
        return None
    count = len(problems.items)
    for key, longest in CONCEPT_LENGTHS.items():
        text = value[key]
        if not (isinstance(text, str) and text.strip() and len(text) <= longest and "\\" not in text):
            problems.add(join_key(where, key), f"must be a non-empty string of at most {longest} characters without "
                                               f"a backslash, got {text!r}")
    return None if len(problems.items) > count else Concept(value["scheme"], value["value"], value["meaning"])


RESERVED_CLASS_NAME = "mean"


def class_concepts(spec: ClassSpec) -> list[tuple[str, Concept]]:
    """The coded concepts a class carries, by field (`CLASS_CONCEPTS`), those it has."""
    return [(key, value) for key in CLASS_CONCEPTS if (value := getattr(spec, key)) is not None]


def class_entry(spec: ClassSpec) -> str | dict[str, Any]:
    """A class as a YAML document writes it under its value: its name, or {name, category, type,
    unit} with the coded concepts it carries."""
    concepts = {key: vars(value) for key, value in class_concepts(spec)}
    return {"name": spec.name, **concepts} if concepts else spec.name


def check_class_set(classes: tuple[ClassSpec, ...], given: int, task: str | None, where: str,
                    problems: Problems) -> None:
    """The rules for the classes together: distinct values and names, at least 2 classes (of the `given`)
    for segmentation and classification, and for segmentation the background first, with value 0."""
    values, names = [c.value for c in classes], [c.name for c in classes]
    if len(set(values)) != len(values):
        problems.add(where, f"values must be distinct, got {values}")
    if len(set(names)) != len(names):
        problems.add(where, f"names must be distinct, got {names}")
    if task in ("segmentation", "classification") and RESERVED_CLASS_NAME in names:
        problems.add(where, f"{RESERVED_CLASS_NAME!r} names the mean over the classes in every metrics table "
                            "(dice_mean); give the class another name")
    if task in ("segmentation", "classification") and given < 2:
        problems.add(where, f"a {task} model needs at least 2 classes, got {given}")
    typed_only = [c.name for c in classes if c.type is not None and c.category is None]
    if task == "segmentation" and typed_only:
        problems.add(where, f"{', '.join(typed_only[:3])}: give category and type together (the coded concepts of a "
                            "DICOM SEG segment), or neither")
    if task in TASKS and task != "regression" and any(c.unit is not None for c in classes):
        problems.add(where, f"unit is for the targets of a regression model, not the classes of a {task} model")
    if task == "segmentation" and classes and classes[0].value != 0:
        problems.add(where, f"the first class is the background and must have value 0, got {classes[0].value}")


# ----------------------------------------------------------------------------- preprocessing steps

def parse_steps(value: Any, dims: int | None, channels: int, where: str, problems: Problems, *,
                channels_from: str) -> tuple[Step, ...]:
    """Steps written as a list of {step_name: {params}} or step_name (a spec, a training config).

    `channels` is the number of input channels (0 when unknown) and `channels_from` says where
    that number comes from, for the message that refuses a channel index beyond it.
    """
    if not isinstance(value, list):
        problems.add(where, f"must be a list of steps ({{step_name: {{params}}}}), got {value!r}")
        return ()
    found = (_written_step(item, f"{where}[{index}]", problems) for index, item in enumerate(value))
    return _fitting(found, dims, channels, channels_from, problems)


def parse_step_list(value: Any, dims: int | None, channels: int, where: str, problems: Problems, *,
                    channels_from: str) -> tuple[Step, ...]:
    """Steps written as a list of {name, params} (a manifest); `channels` as for `parse_steps`."""
    if not isinstance(value, list):
        problems.add(where, f"must be a list of steps, got {value!r}")
        return ()
    found = (_listed_step(item, f"{where}[{index}]", problems) for index, item in enumerate(value))
    return _fitting(found, dims, channels, channels_from, problems)


def _written_step(item: Any, where: str, problems: Problems) -> tuple[Step, str] | None:
    if isinstance(item, str):
        item = {item: {}}
    if not (isinstance(item, dict) and len(item) == 1):
        problems.add(where, f"must be one step written {{step_name: {{params}}}}, got {item!r}")
        return None
    name, params = next(iter(item.items()))
    params = {} if params is None else params
    if not isinstance(params, dict):
        problems.add(f"{where} ({name})", f"parameters must be a mapping, got {params!r}")
        return None
    return _checked_step(name, params, where, problems)


def _listed_step(item: Any, where: str, problems: Problems) -> tuple[Step, str] | None:
    if not check_keys(item, where, ("name", "params"), problems=problems):
        return None
    return _checked_step(item["name"], item["params"], where, problems)


def _checked_step(name: Any, params: Any, where: str, problems: Problems) -> tuple[Step, str] | None:
    """The step and its location, or None when runtime.preprocess refuses its name or parameters."""
    found = check_step(name, params)
    for problem in found:
        problems.add(f"{where} ({name})", problem)
    return None if found else (Step(name=name, params=dict(params)), f"{where} ({name})")


def _fitting(found: Iterable[tuple[Step, str] | None], dims: int | None, channels: int, channels_from: str,
             problems: Problems) -> tuple[Step, ...]:
    steps = []
    for step, where in (item for item in found if item is not None):
        _step_fits(step, dims, channels, channels_from, where, problems)
        if step.name == "reorient" and steps:
            problems.add(where, "reorient must be the first step: it turns the scan as read, before any other step")
        if step.name == "reorient" and dims is not None and dims != 3:
            problems.add(where, f"reorient turns 3D scans; a {dims}D model cannot take it")
        steps.append(step)
    return tuple(steps)


def _step_fits(step: Step, dims: int | None, channels: int, channels_from: str, where: str,
               problems: Problems) -> None:
    """Per-axis parameters need one value per spatial axis; channel indices must name input channels."""
    per_axis = (step_params.spacing_mm, step_params.grid_shape)
    for key, value in step.params.items():
        check = STEPS[step.name].params[key].check
        if check in per_axis and dims is not None and len(value) != dims:
            problems.add(f"{where}.{key}", f"must give one value per spatial axis ({dims}), got {value!r}")
        if key in ("mean", "std") and step.name == "normalize" and channels and len(value) != channels:
            problems.add(f"{where}.{key}", f"must give one value per channel ({channels}, {channels_from}), got {value!r}")
        if (key == "landmarks" and step.params.get("channels") is None and channels
                and len(value) != channels):
            problems.add(f"{where}.{key}", f"must give one list per channel ({channels}, {channels_from}), "
                                           f"got {len(value)}")
        if key == "channels" and value is not None and channels and max(value) >= channels:
            problems.add(f"{where}.{key}", f"channel indices must be below {channels} ({channels_from}), got {value!r}")


# ----------------------------------------------------------------------------- window

def parse_window(value: Any, patch: tuple[int, ...] | None, dims: int | None, where: str,
                 problems: Problems, channels: int = 0) -> WindowSection | None:
    """Window settings with omitted keys at `WINDOW_DEFAULTS` and the patch given apart (a spec, a
    training config); None when `patch` or `dims` is unknown.

    `channels` (0 when unknown) bounds batch_size together with `patch` (runtime.limits.batch_problem).
    """
    if value is None:
        value = {}
    if not check_keys(value, where, (), tuple(WINDOW_DEFAULTS), problems=problems):
        return None
    data = {**WINDOW_DEFAULTS, **value}
    count = len(problems.items)
    choice(data["mode"], WINDOW_MODES, join_key(where, "mode"), problems)
    choice(data["blending"], BLENDINGS, join_key(where, "blending"), problems)
    _window_numbers(data, dims, where, problems, channels, patch)
    if len(problems.items) > count or patch is None or dims is None:
        return None
    return WindowSection(
        mode=data["mode"], patch_size=patch, overlap=float(data["overlap"]), blending=data["blending"],
        batch_size=data["batch_size"], mirror_axes=tuple(data["mirror_axes"]),
        skip_background=data["skip_background"],
    )


def parse_window_section(value: Any, dims: int | None, channels: int, where: str,
                         problems: Problems) -> WindowSection | None:
    """Window settings with every key written out, patch_size among them (a manifest)."""
    if not check_keys(value, where, WINDOW_KEYS, problems=problems):
        return None
    patch = parse_patch_size(value["patch_size"], dims, join_key(where, "patch_size"), problems)
    settings = {key: item for key, item in value.items() if key != "patch_size"}
    return parse_window(settings, patch, dims, where, problems, channels)


def _window_numbers(data: dict[str, Any], dims: int | None, where: str, problems: Problems, channels: int,
                    patch: tuple[int, ...] | None) -> None:
    overlap, mirror, skip = data["overlap"], data["mirror_axes"], data["skip_background"]
    if not (is_number(overlap) and 0 <= overlap < 1):
        problems.add(join_key(where, "overlap"), f"must be a number in [0, 1), got {overlap!r}")
    if (batch := limits.batch_problem(data["batch_size"], channels, patch)) is not None:
        problems.add(join_key(where, "batch_size"), batch)
    axes = range(dims) if dims else range(3)
    if not (isinstance(mirror, list) and all(is_int(a) and a in axes for a in mirror)
            and len(set(mirror)) == len(mirror)):
        problems.add(join_key(where, "mirror_axes"), f"must be distinct spatial axes in 0..{len(axes) - 1}, "
                                                     f"got {mirror!r}")
    if not isinstance(skip, bool):
        problems.add(join_key(where, "skip_background"), f"must be true or false, got {skip!r}")


# ----------------------------------------------------------------------------- output

def parse_output(value: Any, task: str | None, where: str, problems: Problems) -> OutputSpec | None:
    """The output section with every key written out (a manifest)."""
    if not check_keys(value, where, OUTPUT_KEYS, OUTPUT_OPTIONAL, problems=problems):
        return None
    value = {"probabilities": None, **value}
    if not check_output(value, task, where, problems):
        return None
    return OutputSpec(activation=value["activation"], label_rule=value["label_rule"],
                      threshold=float(value["threshold"]), ensemble=value["ensemble"],
                      probabilities=value["probabilities"])


def check_output(data: Mapping[str, Any], task: str | None, where: str, problems: Problems, *,
                 open_keys: tuple[str, ...] = ()) -> bool:
    """Record every problem of the output values in `data` (every key of OUTPUT_KEYS) and of how they
    fit together and fit `task`; a key of `open_keys` may be None (not decided yet). True when none."""
    count = len(problems.items)
    for key, options in (("activation", ACTIVATIONS), ("label_rule", LABEL_RULES), ("ensemble", ENSEMBLE_RULES)):
        if not (key in open_keys and data[key] is None):
            choice(data[key], options, join_key(where, key), problems)
    threshold = data["threshold"]
    if data["activation"] == "none":             # a threshold on the graph's own values (logits, say)
        if not (is_number(threshold) and threshold >= 0):   # voxels outside a crop or pad hold 0: no class
            problems.add(join_key(where, "threshold"), f"must be a number >= 0 (0 on logits is a sigmoid's 0.5), "
                                                       f"got {threshold!r}")
    elif not (is_number(threshold) and 0 < threshold < 1):
        problems.add(join_key(where, "threshold"), f"must be a number in (0, 1), got {threshold!r}")
    _output_rules(data["activation"], data["label_rule"], task, where, problems)
    _probabilities_rules(data, task, where, problems)
    return len(problems.items) == count


def check_logits_window(output: Any, window: WindowSection | None, problems: Problems) -> None:
    """Logits brought back before their activation (output.probabilities) need every window run:
    a window skipped as background holds no logits to bring back."""
    if getattr(output, "probabilities", None) is not None and window is not None and window.mode == "sliding" \
            and window.skip_background:
        problems.add("window.skip_background", "must be false where output.probabilities is set: the logits are "
                                               "brought back to the scan's grid before their activation, and a "
                                               "window skipped as background has none")


# the activation that makes probabilities of logits read by each label rule
PROBABILITIES = {"argmax": "softmax", "threshold": "sigmoid"}


def _probabilities_rules(data: Mapping[str, Any], task: str | None, where: str, problems: Problems) -> None:
    """`probabilities` names how a segmentation graph's logits (activation none) become the
    probabilities written: softmax for logits read by argmax, sigmoid for those read by threshold."""
    value = data.get("probabilities")
    if value is None:
        return
    key = join_key(where, "probabilities")
    wanted = PROBABILITIES.get(data["label_rule"])
    if value not in PROBABILITIES.values():
        problems.add(key, f"must be softmax or sigmoid (or left out), got {value!r}")
    elif task not in (None, "segmentation") or data["activation"] not in (None, "none"):
        problems.add(key, "is for a segmentation graph of logits read as they are (activation none); leave it out, "
                          "the activation makes the probabilities")
    elif wanted is not None and value != wanted:
        problems.add(key, f"logits read by {data['label_rule']} are probabilities by {wanted}, not {value}")


def _output_rules(activation: Any, label_rule: Any, task: str | None, where: str, problems: Problems) -> None:
    if label_rule == "threshold" and activation == "softmax":
        problems.add(join_key(where, "label_rule"), "threshold needs activation sigmoid or none, not softmax")
    if task == "segmentation" and activation == "sigmoid" and label_rule == "argmax":
        problems.add(join_key(where, "label_rule"), "a sigmoid segmentation model is read by threshold, not argmax")
    if task == "regression" and activation not in (None, "none"):
        problems.add(join_key(where, "activation"),
                     f"a regression model's output is used as is: use none, got {activation!r}")


# ----------------------------------------------------------------------------- slide


def parse_slide(value: Any, modality: str | None, dims: int | None, where: str, problems: Problems, *,
                complete: bool = False) -> SlideSpec | None:
    """The `slide` section: absent (None) for a radiology model, required for a 2D histology
    model. `complete`: every key written out (a manifest), else omitted keys take SLIDE_DEFAULTS."""
    if modality != "histology":
        if value is not None:
            problems.add(where, f"is for histology models; this model's modality is {modality}")
        return None
    if dims is not None and dims != 2:
        problems.add("dimensions", f"a histology model is 2D (it reads slides), got {dims}")
    if value is None:
        problems.add(where, "missing: a histology model needs slide.mpp, the microns per pixel it works at")
        return None
    optional = () if complete else tuple(SLIDE_DEFAULTS)
    required = SLIDE_KEYS if complete else ("mpp",)
    if not check_keys(value, where, required, optional, problems=problems):
        return None
    data = {**SLIDE_DEFAULTS, **value}
    before = len(problems.items)
    low, high = MPP_RANGE
    for key in ("mpp", "tissue_mpp"):
        if not (is_number(data[key]) and low <= data[key] <= high):
            problems.add(join_key(where, key), f"must be microns per pixel in [{low}, {high}], got {data[key]!r}")
    for key in ("min_object_um2", "min_hole_um2"):
        if not (is_number(data[key]) and data[key] >= 0):
            problems.add(join_key(where, key), f"must be square microns >= 0, got {data[key]!r}")
    if len(problems.items) > before:
        return None
    if data["tissue_mpp"] < data["mpp"]:
        problems.add(join_key(where, "tissue_mpp"), f"the tissue mask's resolution ({data['tissue_mpp']}) must be "
                                                   f"no finer than the model's ({data['mpp']})")
        return None
    return SlideSpec(**{key: float(data[key]) for key in SLIDE_KEYS})


def activated_twice(op: str | None, activation: str, probabilities: str | None, where: str) -> str | None:
    """A graph whose output comes from its own Softmax or Sigmoid (`op`) gives probabilities: any
    activation of the output section's, or of its probabilities (`output.probabilities`), would be
    a second one (a softmax squeezes them toward 1/K; a second sigmoid puts every value over 0.5,
    so every voxel became foreground). What is wrong, or None."""
    if op not in ("Softmax", "Sigmoid"):
        return None
    if activation == "none":
        if probabilities is None:
            return None
        return (f"{where} comes from a {op} node, so it holds probabilities already, and output.probabilities "
                f"{probabilities} would take the {probabilities} of them; leave output.probabilities out (the "
                "graph's values are then written as they are), or export the logits")
    remedy = "{activation: none}" if op == "Softmax" else "{activation: none, label_rule: threshold}"
    return (f"{where} comes from a {op} node, so it holds probabilities already, and output.activation {activation} "
            f"would apply a second activation to them; set output: {remedy}, or export the logits")


# How far outside [0, 1] the values of a graph that gives probabilities (activation none) may lie:
# rounding of a softmax or sigmoid inside it, not logits.
PROBABILITY_SLACK = 1e-3


def beyond_probabilities(values: Any) -> tuple[float, float] | None:
    """The lowest and highest of `values` (an array) where they leave [0, 1] by more than the
    rounding of an activation (PROBABILITY_SLACK): logits or scores, no probabilities. None where
    they are probabilities, or there are none."""
    if not values.size:
        return None
    low, high = float(values.min()), float(values.max())
    return None if low >= -PROBABILITY_SLACK and high <= 1 + PROBABILITY_SLACK else (low, high)

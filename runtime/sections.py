"""Parsers of the sections a model spec and a training config share: name, dimensions, classes,
preprocessing steps and the inference window.

Each parser takes a decoded YAML value and the location it sits at in its document (`where`,
e.g. "classes" in a spec, "data.classes" in a training config), records every problem it finds
under that location in a `Problems` collector, and returns the parsed value or an empty/None
result when the value is unusable. Per-axis values are in the document's axis order.
"""
from __future__ import annotations

import re
from typing import Any

from runtime import limits
from runtime.manifest import BLENDINGS, WINDOW_MODES, ClassSpec, Step, WindowSpec
from runtime.validation import Problems, check_keys, choice, is_int, is_number, join_key

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
WINDOW_DEFAULTS: dict[str, Any] = {
    "mode": "sliding", "overlap": 0.5, "blending": "gaussian", "batch_size": 1,
    "mirror_axes": [], "skip_background": True,
}


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


def parse_classes(value: Any, task: str | None, where: str, problems: Problems) -> tuple[ClassSpec, ...]:
    """A mapping of class value to class name, checked against what `task` needs."""
    if not (isinstance(value, dict) and value):
        problems.add(where, f"must map each value to a name (0: background, 1: …), got {value!r}")
        return ()
    if (too_many := limits.count_problem(len(value), limits.MAX_CLASSES, "classes")) is not None:
        problems.add(where, too_many)
        return ()
    classes = []
    for key, label in value.items():
        if (wrong := limits.class_value_problem(key)) is not None:
            problems.add(join_key(where, key), f"the value {wrong}")
        elif not (isinstance(label, str) and label):
            problems.add(join_key(where, key), f"the name must be a non-empty string, got {label!r}")
        else:
            classes.append(ClassSpec(value=int(key), name=label))
    _check_class_set(tuple(classes), task, where, problems)
    return tuple(classes)


def _check_class_set(classes: tuple[ClassSpec, ...], task: str | None, where: str, problems: Problems) -> None:
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        problems.add(where, f"names must be distinct, got {names}")
    if task in ("segmentation", "classification") and len(classes) < 2:
        problems.add(where, f"a {task} model needs at least 2 classes, got {len(classes)}")
    if task == "segmentation" and classes and classes[0].value != 0:
        problems.add(where, f"the first class is the background and must have value 0, got {classes[0].value}")


def parse_steps(value: Any, dims: int | None, channels: int, where: str, problems: Problems, *,
                channels_from: str) -> tuple[Step, ...]:
    """A list of preprocessing steps, each checked against the step allow-list and the input.

    `channels` is the number of input channels (0 when unknown) and `channels_from` says where
    that number comes from, for the message that refuses a channel index beyond it.
    """
    if not isinstance(value, list):
        problems.add(where, f"must be a list of steps ({{step_name: {{params}}}}), got {value!r}")
        return ()
    steps = []
    for index, item in enumerate(value):
        step = _step(item, f"{where}[{index}]", problems)
        if step is not None:
            _step_fits(step, dims, channels, channels_from, f"{where}[{index}] ({step.name})", problems)
            steps.append(step)
    return tuple(steps)


def _step_fits(step: Step, dims: int | None, channels: int, channels_from: str, where: str,
               problems: Problems) -> None:
    """Per-axis parameters need one value per spatial axis; channel indices must name input channels."""
    from runtime.preprocess import STEPS
    from runtime.preprocess import params as step_params

    per_axis = (step_params.spacing_mm, step_params.grid_shape)
    for key, value in step.params.items():
        check = STEPS[step.name].params[key].check
        if check in per_axis and dims is not None and len(value) != dims:
            problems.add(f"{where}.{key}", f"must give one value per spatial axis ({dims}), got {value!r}")
        if key == "channels" and value is not None and channels and max(value) >= channels:
            problems.add(f"{where}.{key}", f"channel indices must be below {channels} ({channels_from}), got {value!r}")


def _step(item: Any, where: str, problems: Problems) -> Step | None:
    from runtime.preprocess import check_step

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
    step_problems = check_step(name, params)
    for problem in step_problems:
        problems.add(f"{where} ({name})", problem)
    return None if step_problems else Step(name=name, params=dict(params))


def parse_window(value: Any, patch: tuple[int, ...] | None, dims: int | None, where: str,
                 problems: Problems, channels: int = 0) -> WindowSpec | None:
    """The inference window settings, omitted keys at `WINDOW_DEFAULTS`; None when `patch` or `dims` is unknown.

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
    return WindowSpec(
        mode=data["mode"], patch_size=patch, overlap=float(data["overlap"]), blending=data["blending"],
        batch_size=data["batch_size"], mirror_axes=tuple(data["mirror_axes"]),
        skip_background=data["skip_background"],
    )


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

"""The model spec: a YAML file that describes a model, validated into the fields of its manifest.

A spec holds everything the manifest needs except what only the packaged files can tell: the
version number, the ONNX opset and names, the checksums and the output defaults that depend on the
graph's output channels (see `resolve_output`). Every per-axis value is in the spec's `axis_order`.
docs/spec.md documents each key.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from runtime.errors import InputError
from runtime.manifest import (
    ACTIVATIONS, AXIS_ORDERS, BLENDINGS, ENSEMBLE_RULES, LABEL_RULES, MODALITIES, SCHEMA_VERSION, TASKS,
    WINDOW_MODES, ClassSpec, Manifest, OnnxSpec, OutputSpec, Step, WindowSpec,
)
from runtime.validation import Problems, check_keys, choice, is_int, is_number, join_key

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
SPEC_DOC = "docs/spec.md"
RESERVED_PROVENANCE = ("created", "tool", "source_onnx", "source_sha256")

_REQUIRED = ("name", "task", "modality", "dimensions", "axis_order", "channels", "classes", "preprocessing", "patch")
_OPTIONAL = ("window", "output", "onnx", "provenance")
_WINDOW_DEFAULTS: dict[str, Any] = {
    "mode": "sliding", "overlap": 0.5, "blending": "gaussian", "batch_size": 1,
    "mirror_axes": [], "skip_background": True,
}
_OUTPUT_KEYS = ("activation", "label_rule", "threshold", "ensemble")


class SpecError(InputError):
    """A model spec file cannot be read or does not describe a valid model."""


@dataclass(frozen=True)
class OutputRequest:
    """The spec's `output` section; None where the default depends on the graph's output channels."""

    activation: str | None
    label_rule: str | None
    threshold: float
    ensemble: str


@dataclass(frozen=True)
class ModelSpec:
    source: str
    name: str
    task: str
    modality: str
    dimensions: int
    axis_order: str
    channels: tuple[str, ...]
    classes: tuple[ClassSpec, ...]
    preprocessing: tuple[Step, ...]
    window: WindowSpec
    output: OutputRequest
    onnx_input: str | None
    onnx_output: str | None
    provenance: Mapping[str, Any]


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path | str) -> Any:
    """Read a YAML file with a safe loader; SpecError says what is wrong and where."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {path} does not exist or is not a file; pass the YAML file that describes the model ({SPEC_DOC}).")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"spec file {path} cannot be read ({exc}); pass a UTF-8 YAML file.") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise SpecError(f"spec file {path} is not valid YAML: {_yaml_problem(exc)}; fix it and retry.") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return " ".join(str(problem).split())
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def load_spec(path: Path | str, name: str | None = None) -> ModelSpec:
    """Read and validate a spec file; `name`, when given, replaces the spec's `name`."""
    return parse_spec(read_yaml(path), str(path), name)


def parse_spec(data: Any, source: str = "spec", name: str | None = None) -> ModelSpec:
    """Validate a spec's decoded YAML; SpecError lists every problem with its location."""
    problems = Problems("spec")
    required = tuple(k for k in _REQUIRED if not (k == "name" and name is not None))
    optional = ("name",) * (name is not None) + _OPTIONAL
    if not check_keys(data, "", required, optional, problems=problems):
        _raise_if_any(problems, source)
    fields = _parse_fields(data, name, problems)
    _raise_if_any(problems, source)
    return ModelSpec(source=source, **fields)


def _parse_fields(data: dict[str, Any], name: str | None, problems: Problems) -> dict[str, Any]:
    task = choice(data["task"], TASKS, "task", problems)
    dims = _dimensions(data["dimensions"], problems)
    patch = _patch(data["patch"], dims, problems)
    channels = _channels(data["channels"], problems)
    onnx_input, onnx_output = _onnx_names(data.get("onnx", {}), problems)
    return {
        "name": _name(name if name is not None else data["name"], "--name" if name is not None else "name", problems),
        "task": task,
        "modality": choice(data["modality"], MODALITIES, "modality", problems),
        "dimensions": dims,
        "axis_order": choice(data["axis_order"], AXIS_ORDERS[dims], "axis_order", problems) if dims else None,
        "channels": channels,
        "classes": _classes(data["classes"], task, problems),
        "preprocessing": _steps(data["preprocessing"], dims, len(channels), problems),
        "window": _window(data.get("window", {}), patch, dims, problems),
        "output": _output(data.get("output", {}), task, problems),
        "onnx_input": onnx_input,
        "onnx_output": onnx_output,
        "provenance": _provenance(data.get("provenance", {}), problems),
    }


def _raise_if_any(problems: Problems, source: str) -> None:
    problems.raise_if_any(SpecError, f"spec {source} is invalid: ", f". See {SPEC_DOC}.")


def _name(value: Any, where: str, problems: Problems) -> str | None:
    if not (isinstance(value, str) and NAME_PATTERN.match(value)):
        problems.add(where, f"must be letters, digits, _ and - only (it names the model folder), got {value!r}")
        return None
    return value


def _dimensions(value: Any, problems: Problems) -> int | None:
    if not (is_int(value) and value in (2, 3)):
        problems.add("dimensions", f"must be 2 or 3, got {value!r}")
        return None
    return int(value)


def _channels(value: Any, problems: Problems) -> tuple[str, ...]:
    if not (isinstance(value, list) and value and all(isinstance(c, str) and c for c in value)
            and len(set(value)) == len(value)):
        problems.add("channels", f"must be a non-empty list of distinct names, one per input file, got {value!r}")
        return ()
    return tuple(value)


def _classes(value: Any, task: str | None, problems: Problems) -> tuple[ClassSpec, ...]:
    if not (isinstance(value, dict) and value):
        problems.add("classes", f"must map each value to a name (0: background, 1: …), got {value!r}")
        return ()
    classes = []
    for key, label in value.items():
        if not (is_int(key) and key >= 0):
            problems.add(f"classes.{key}", "the value must be an integer >= 0")
        elif not (isinstance(label, str) and label):
            problems.add(f"classes.{key}", f"the name must be a non-empty string, got {label!r}")
        else:
            classes.append(ClassSpec(value=int(key), name=label))
    _check_class_set(tuple(classes), task, problems)
    return tuple(classes)


def _check_class_set(classes: tuple[ClassSpec, ...], task: str | None, problems: Problems) -> None:
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        problems.add("classes", f"names must be distinct, got {names}")
    if task in ("segmentation", "classification") and len(classes) < 2:
        problems.add("classes", f"a {task} model needs at least 2 classes, got {len(classes)}")
    if task == "segmentation" and classes and classes[0].value != 0:
        problems.add("classes", f"the first class is the background and must have value 0, got {classes[0].value}")


def _steps(value: Any, dims: int | None, channels: int, problems: Problems) -> tuple[Step, ...]:
    if not isinstance(value, list):
        problems.add("preprocessing", f"must be a list of steps ({{step_name: {{params}}}}), got {value!r}")
        return ()
    steps = []
    for index, item in enumerate(value):
        step = _step(item, f"preprocessing[{index}]", problems)
        if step is not None:
            _step_fits(step, dims, channels, f"preprocessing[{index}] ({step.name})", problems)
            steps.append(step)
    return tuple(steps)


def _step_fits(step: Step, dims: int | None, channels: int, where: str, problems: Problems) -> None:
    """Per-axis parameters need one value per spatial axis; channel indices must name input channels."""
    from runtime.preprocess import STEPS
    from runtime.preprocess import params as step_params

    per_axis = (step_params.positive_numbers, step_params.positive_ints)
    for key, value in step.params.items():
        check = STEPS[step.name].params[key].check
        if check in per_axis and dims is not None and len(value) != dims:
            problems.add(f"{where}.{key}", f"must give one value per spatial axis ({dims}), got {value!r}")
        if key == "channels" and value is not None and channels and max(value) >= channels:
            problems.add(f"{where}.{key}", f"channel indices must be below {channels} (the spec's channels), "
                                           f"got {value!r}")


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


def _patch(value: Any, dims: int | None, problems: Problems) -> tuple[int, ...] | None:
    if not check_keys(value, "patch", ("size",), problems=problems):
        return None
    size = value["size"]
    if dims is None:
        return None
    if not (isinstance(size, list) and len(size) == dims and all(is_int(s) and s > 0 for s in size)):
        problems.add("patch.size", f"must be {dims} positive integers (one per axis, in axis_order), got {size!r}")
        return None
    return tuple(size)


def _window(value: Any, patch: tuple[int, ...] | None, dims: int | None, problems: Problems) -> WindowSpec | None:
    if value is None:
        value = {}
    if not check_keys(value, "window", (), tuple(_WINDOW_DEFAULTS), problems=problems):
        return None
    data = {**_WINDOW_DEFAULTS, **value}
    count = len(problems.items)
    choice(data["mode"], WINDOW_MODES, "window.mode", problems)
    choice(data["blending"], BLENDINGS, "window.blending", problems)
    _window_numbers(data, dims, problems)
    if len(problems.items) > count or patch is None or dims is None:
        return None
    return WindowSpec(
        mode=data["mode"], patch_size=patch, overlap=float(data["overlap"]), blending=data["blending"],
        batch_size=data["batch_size"], mirror_axes=tuple(data["mirror_axes"]),
        skip_background=data["skip_background"],
    )


def _window_numbers(data: dict[str, Any], dims: int | None, problems: Problems) -> None:
    overlap, batch, mirror, skip = data["overlap"], data["batch_size"], data["mirror_axes"], data["skip_background"]
    if not (is_number(overlap) and 0 <= overlap < 1):
        problems.add("window.overlap", f"must be a number in [0, 1), got {overlap!r}")
    if not (is_int(batch) and batch >= 1):
        problems.add("window.batch_size", f"must be an integer >= 1, got {batch!r}")
    axes = range(dims) if dims else range(3)
    if not (isinstance(mirror, list) and all(is_int(a) and a in axes for a in mirror)
            and len(set(mirror)) == len(mirror)):
        problems.add("window.mirror_axes", f"must be distinct spatial axes in 0..{len(axes) - 1}, got {mirror!r}")
    if not isinstance(skip, bool):
        problems.add("window.skip_background", f"must be true or false, got {skip!r}")


def _output(value: Any, task: str | None, problems: Problems) -> OutputRequest | None:
    if value is None:
        value = {}
    if not check_keys(value, "output", (), _OUTPUT_KEYS, problems=problems):
        return None
    activation = value.get("activation")
    label_rule = value.get("label_rule")
    threshold = value.get("threshold", 0.5)
    ensemble = value.get("ensemble", "mean")
    if activation is not None:
        choice(activation, ACTIVATIONS, "output.activation", problems)
    if label_rule is not None:
        choice(label_rule, LABEL_RULES, "output.label_rule", problems)
    choice(ensemble, ENSEMBLE_RULES, "output.ensemble", problems)
    if not (is_number(threshold) and 0 < threshold < 1):
        problems.add("output.threshold", f"must be a number in (0, 1), got {threshold!r}")
        threshold = 0.5
    if task == "regression" and activation not in (None, "none"):
        problems.add("output.activation", f"a regression model's output is used as is: use none, got {activation!r}")
    return OutputRequest(activation=activation, label_rule=label_rule, threshold=float(threshold), ensemble=ensemble)


def _onnx_names(value: Any, problems: Problems) -> tuple[str | None, str | None]:
    if value is None:
        value = {}
    if not check_keys(value, "onnx", (), ("input", "output"), problems=problems):
        return None, None
    names = []
    for key in ("input", "output"):
        name = value.get(key)
        if name is not None and not (isinstance(name, str) and name):
            problems.add(f"onnx.{key}", f"must be the name of a graph {key}, got {name!r}")
            name = None
        names.append(name)
    return names[0], names[1]


def _provenance(value: Any, problems: Problems) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add("provenance", f"must be a mapping (description, source, license, …), got {value!r}")
        return {}
    for key in RESERVED_PROVENANCE:
        if key in value:
            problems.add(f"provenance.{key}", "is recorded by export itself; remove it from the spec")
    return {str(key): _plain(item, f"provenance.{key}", problems) for key, item in value.items()}


def _plain(value: Any, where: str, problems: Problems) -> Any:
    """Return a YAML value as JSON types: dates become ISO strings; anything else is refused."""
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, list):
        return [_plain(item, f"{where}[{i}]", problems) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _plain(v, join_key(where, k), problems) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    problems.add(where, f"must be text, a number, a list or a mapping, got {type(value).__name__}")
    return None


def resolve_output(spec: ModelSpec, output_channels: int | None) -> OutputSpec:
    """Fill the output defaults from the task and the graph's output channels (None when dynamic).

    Segmentation and classification default to softmax + argmax, or to sigmoid + threshold when the
    graph has one output channel; regression uses its outputs as they are.
    """
    request = spec.output
    single = output_channels == 1
    if spec.task == "regression":
        activation, label_rule = "none", request.label_rule or "argmax"
    else:
        activation = request.activation or ("sigmoid" if single else "softmax")
        label_rule = request.label_rule or ("threshold" if single else "argmax")
    _check_output(activation, label_rule, spec.task, output_channels, spec.source)
    return OutputSpec(activation=activation, label_rule=label_rule, threshold=request.threshold,
                      ensemble=request.ensemble)


def _check_output(activation: str, label_rule: str, task: str, output_channels: int | None, source: str) -> None:
    problems = Problems("spec")
    if label_rule == "threshold" and activation == "softmax":
        problems.add("output.label_rule", "threshold needs activation sigmoid or none, not softmax")
    if task != "regression" and output_channels == 1:
        if activation == "softmax":
            problems.add("output.activation", "softmax over the graph's single output channel is always 1; use sigmoid")
        if label_rule == "argmax":
            problems.add("output.label_rule", "argmax over the graph's single output channel is always 0; "
                                              "use threshold")
    _raise_if_any(problems, source)


def to_manifest(spec: ModelSpec, version: int, onnx: OnnxSpec, output: OutputSpec, files: Mapping[str, str],
                provenance: Mapping[str, Any]) -> Manifest:
    """The manifest of one packaged version of the spec's model."""
    return Manifest(
        schema_version=SCHEMA_VERSION, name=spec.name, version=version, task=spec.task, modality=spec.modality,
        dimensions=spec.dimensions, axis_order=spec.axis_order, channels=spec.channels, classes=spec.classes,
        preprocessing=spec.preprocessing, window=spec.window, output=output, onnx=onnx, files=dict(files),
        provenance={**spec.provenance, **provenance},
    )

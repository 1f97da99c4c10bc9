"""The model spec: a YAML file that describes a model, validated into the fields of its manifest.

A spec holds everything the manifest needs except what only the packaged files can tell: the
version number, the ONNX opset and names, the checksums and the output defaults that depend on the
graph's output channels (see `resolve_output`). Every per-axis value is in the spec's `axis_order`.
docs/spec.md documents each key.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from runtime import limits
from runtime.errors import InputError
from runtime.manifest import (
    ACTIVATIONS, AXIS_ORDERS, ENSEMBLE_RULES, LABEL_RULES, MODALITIES, SCHEMA_VERSION, TASKS, ClassSpec, Manifest,
    OnnxSpec, OutputSpec, Step, WindowSpec,
)
from runtime.sections import parse_classes, parse_dimensions, parse_name, parse_steps, parse_window
from runtime.validation import Problems, check_keys, choice, is_int, is_number, join_key
from trainer.yamlio import read_yaml_file

SPEC_DOC = "docs/spec.md"
RESERVED_PROVENANCE = ("created", "tool", "source_onnx", "source_sha256")

_REQUIRED = ("name", "task", "modality", "dimensions", "axis_order", "channels", "classes", "preprocessing", "patch")
_OPTIONAL = ("window", "output", "onnx", "provenance")
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


def read_yaml(path: Path | str) -> Any:
    """Read a YAML file with a safe loader; SpecError says what is wrong and where."""
    return read_yaml_file(Path(path), "spec", SpecError,
                          f"pass the YAML file that describes the model ({SPEC_DOC})")


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
    dims = parse_dimensions(data["dimensions"], "dimensions", problems)
    patch = _patch(data["patch"], dims, problems)
    channels = _channels(data["channels"], problems)
    onnx_input, onnx_output = _onnx_names(data.get("onnx", {}), problems)
    return {
        "name": parse_name(name if name is not None else data["name"], "--name" if name is not None else "name", problems),
        "task": task,
        "modality": choice(data["modality"], MODALITIES, "modality", problems),
        "dimensions": dims,
        "axis_order": choice(data["axis_order"], AXIS_ORDERS[dims], "axis_order", problems) if dims else None,
        "channels": channels,
        "classes": parse_classes(data["classes"], task, "classes", problems),
        "preprocessing": parse_steps(data["preprocessing"], dims, len(channels), "preprocessing", problems,
                                     channels_from="the spec's channels"),
        "window": parse_window(data.get("window", {}), patch, dims, "window", problems, channels=len(channels)),
        "output": _output(data.get("output", {}), task, problems),
        "onnx_input": onnx_input,
        "onnx_output": onnx_output,
        "provenance": _provenance(data.get("provenance", {}), problems),
    }


def _raise_if_any(problems: Problems, source: str) -> None:
    problems.raise_if_any(SpecError, f"spec {source} is invalid: ", f". See {SPEC_DOC}.")


def _channels(value: Any, problems: Problems) -> tuple[str, ...]:
    if not (isinstance(value, list) and value and all(isinstance(c, str) and c for c in value)
            and len(set(value)) == len(value)):
        problems.add("channels", f"must be a non-empty list of distinct names, one per input file, got {value!r}")
        return ()
    if (too_many := limits.count_problem(len(value), limits.MAX_CHANNELS, "channels")) is not None:
        problems.add("channels", too_many)
        return ()
    return tuple(value)


def _patch(value: Any, dims: int | None, problems: Problems) -> tuple[int, ...] | None:
    if not check_keys(value, "patch", ("size",), problems=problems):
        return None
    size = value["size"]
    if dims is None:
        return None
    if not (isinstance(size, list) and len(size) == dims and all(is_int(s) and s > 0 for s in size)):
        problems.add("patch.size", f"must be {dims} positive integers (one per axis, in axis_order), got {size!r}")
        return None
    if (too_large := limits.patch_problem(size)) is not None:
        problems.add("patch.size", too_large)
        return None
    return tuple(size)


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

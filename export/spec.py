"""The model spec: a YAML file that describes a model, validated into the fields of its manifest.

A spec holds everything the manifest needs except what only the packaged files can tell: the
version number, the ONNX opset and names, the checksums and the output defaults that depend on the
graph's output channels (see `resolve_output`). Every per-axis value is in the spec's `axis_order`.
docs/spec.md documents each key.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from runtime.contract import (
    MODALITIES, OUTPUT_DEFAULTS, OUTPUT_KEYS, OUTPUT_OPTIONAL, PROBABILITIES, TASKS, ClassSpec, OutputSpec, SlideSpec,
    WindowSection, check_logits_window, check_output, parse_axis_order, parse_channels, parse_classes,
    parse_dimensions, parse_name, parse_patch_size, parse_steps, parse_slide, parse_window,
)
from runtime.errors import InputError
from runtime.manifest import SCHEMA_VERSION, TABLE_COLUMNS, Manifest, OnnxSpec, table_columns_problem
from runtime.preprocess.steps import Step
from runtime.validation import Problems, check_keys, choice, join_key
from trainer.yamlio import read_yaml_file

SPEC_DOC = "docs/spec.md"
RESERVED_PROVENANCE = ("created", "tool", "source_onnx", "source_sha256")

_REQUIRED = ("name", "task", "modality", "dimensions", "axis_order", "channels", "classes", "preprocessing", "patch")
_OPTIONAL = ("window", "output", "onnx", "provenance", "slide")


class SpecError(InputError):
    """A model spec file cannot be read or does not describe a valid model."""


@dataclass(frozen=True)
class OutputRequest:
    """The spec's `output` section; None where the default depends on the graph's output channels."""

    activation: str | None
    label_rule: str | None
    threshold: float
    ensemble: str
    probabilities: str | None = None


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
    window: WindowSection
    output: OutputRequest
    onnx_input: str | None
    onnx_output: str | None
    provenance: Mapping[str, Any]
    slide: SlideSpec | None = None


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
    channels = parse_channels(data["channels"], "channels", problems)
    onnx_input, onnx_output = _onnx_names(data.get("onnx", {}), problems)
    modality = choice(data["modality"], MODALITIES, "modality", problems)
    fields = {
        "name": parse_name(name if name is not None else data["name"], "--name" if name is not None else "name", problems),
        "task": task,
        "modality": modality,
        "dimensions": dims,
        "slide": parse_slide(data.get("slide"), modality, dims, "slide", problems),
        "axis_order": parse_axis_order(data["axis_order"], dims, "axis_order", problems),
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
    check_logits_window(fields["output"], fields["window"], problems)
    return fields


def _raise_if_any(problems: Problems, source: str) -> None:
    problems.raise_if_any(SpecError, f"spec {source} is invalid: ", f". See {SPEC_DOC}.")


def _patch(value: Any, dims: int | None, problems: Problems) -> tuple[int, ...] | None:
    if not check_keys(value, "patch", ("size",), problems=problems):
        return None
    return parse_patch_size(value["size"], dims, "patch.size", problems)


def _output(value: Any, task: str | None, problems: Problems) -> OutputRequest | None:
    """The output section, activation and label_rule left to `resolve_output` where omitted."""
    if value is None:
        value = {}
    if not check_keys(value, "output", (), (*OUTPUT_KEYS, *OUTPUT_OPTIONAL), problems=problems):
        return None
    data = {**OUTPUT_DEFAULTS, **value}
    if data["probabilities"] == "sigmoid" and "threshold" not in value:
        data["threshold"] = 0.0                 # on logits: the sigmoid's 0.5
    if not check_output(data, task, "output", problems, open_keys=("activation", "label_rule")):
        return None
    return OutputRequest(activation=data["activation"], label_rule=data["label_rule"],
                         threshold=float(data["threshold"]), ensemble=data["ensemble"],
                         probabilities=data["probabilities"])


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
    if TABLE_COLUMNS in value and (problem := table_columns_problem(value[TABLE_COLUMNS])) is not None:
        problems.add(f"provenance.{TABLE_COLUMNS}", f"{problem} (for example {{subject: case, label: mask}})")
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
    activation, label_rule = default_reading(spec, output_channels)
    output = OutputSpec(activation=activation, label_rule=label_rule, threshold=request.threshold,
                        ensemble=request.ensemble, probabilities=request.probabilities)
    _check_output(output, spec.task, output_channels, spec.source)
    return output


def default_reading(spec: ModelSpec, output_channels: int | None) -> tuple[str, str]:
    """The activation and label rule of the spec's output, its defaults filled: softmax and
    argmax, or sigmoid and threshold for a graph of one output channel; a sigmoid given alone is
    read by threshold where the task must (segmentation) or the graph has one channel; logits whose
    probabilities are named (`probabilities`) are read as they are, by the rule that fits it."""
    request = spec.output
    single = output_channels == 1
    if spec.task == "regression":
        return "none", request.label_rule or "argmax"
    if request.probabilities is not None:
        rule = next(rule for rule, activation in PROBABILITIES.items() if activation == request.probabilities)
        return request.activation or "none", request.label_rule or rule
    activation = request.activation or ("sigmoid" if single else "softmax")
    by_threshold = activation == "sigmoid" and (single or spec.task == "segmentation")
    return activation, request.label_rule or ("threshold" if by_threshold else "argmax")


def _check_output(output: OutputSpec, task: str, output_channels: int | None, source: str) -> None:
    problems = Problems("spec")
    check_output(asdict(output), task, "output", problems)
    if task != "regression" and output_channels == 1:
        if output.activation == "softmax":
            problems.add("output.activation", "softmax over the graph's single output channel is always 1; use sigmoid")
        if output.label_rule == "argmax":
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
        provenance={**spec.provenance, **provenance}, slide=spec.slide,
    )

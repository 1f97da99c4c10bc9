"""Packaging an ONNX graph and a spec into a new version folder of a model repository.

`build_from_onnx` checks the graph against the spec (names, ranks, channels, patch size), then
writes `<repository>/<name>/<version>/` holding `model.onnx` and `manifest.json`. The version is the
next free integer (`export.versions`); an existing version is never touched. The folder is built
under a hidden temporary name beside its final place and renamed at the end, so a failed build
leaves nothing.
"""
from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from export import __version__
from export.spec import ModelSpec, default_reading, resolve_output, to_manifest
from export.versions import VersionCheck, staged_version
from runtime.contract import activated_twice
from runtime.errors import InputError, ModelError, OutputError
from runtime.manifest import OnnxSpec, OutputSpec, sha256_of, write_manifest
from runtime.preprocess.steps import Step
from runtime.postprocess import accepted_channels, output_channels
from runtime.commands.verify import SAMPLES_DIR, runs_batches, smooth_field, store_samples

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
Shape = tuple[int | str, ...]


@dataclass(frozen=True)
class GraphInfo:
    """What the spec is checked against: the image input, the chosen output and their shapes.

    A shape entry is an int for a fixed size, the axis name for a named dynamic axis, else "?".
    """

    path: Path
    input: str
    output: str
    opset: int
    input_type: int
    input_shape: Shape | None
    output_shape: Shape | None
    final_op: str | None = None       # the operator that makes the output (past Identity and Cast)

    @property
    def output_channels(self) -> int | None:
        shape = self.output_shape
        return shape[1] if shape is not None and len(shape) > 1 and isinstance(shape[1], int) else None


def read_graph(path: Path) -> onnx.ModelProto:
    """Load an ONNX file that passes onnx.checker and that onnxruntime can open; ModelError if not."""
    if not path.is_file():
        raise ModelError(f"ONNX file {path} does not exist or is not a file; pass the .onnx file of the model to package.")
    try:
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path), load_external_data=False)
    except (onnx.checker.ValidationError, DecodeError, OSError) as exc:
        raise ModelError(f"{path} is not a valid ONNX model: {_first_line(exc)}. Export the model again.") from None
    _refuse_external_data(model, path)
    _check_onnxruntime(path)
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refuse_external_data(model: onnx.ModelProto, path: Path) -> None:
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ModelError(
            f"{path} keeps its weights in separate external-data files; save it as one file first "
            "(onnx.save(onnx.load(path), 'model.onnx'), for models under 2 GB)."
        )


def _check_onnxruntime(path: Path) -> None:
    import onnxruntime

    try:
        onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind exception classes
        raise ModelError(f"onnxruntime cannot load {path}: {_first_line(exc)}. Export it with an opset "
                         f"and operators this onnxruntime {onnxruntime.__version__} supports.") from None


def describe_graph(model: onnx.ModelProto, spec: ModelSpec, path: Path) -> GraphInfo:
    """Find the spec's input and output in the graph (or the defaults) and read their shapes."""
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in weights]
    image = _pick_input(inputs, spec.onnx_input, path)
    output = _pick_output(list(graph.output), spec.onnx_output, path)
    return GraphInfo(
        path=path, input=image.name, output=output.name, opset=_opset(model, path),
        input_type=image.type.tensor_type.elem_type, input_shape=_shape(image), output_shape=_shape(output),
        final_op=_final_op(graph, output.name),
    )


def _final_op(graph: onnx.GraphProto, name: str) -> str | None:
    """The operator that makes the tensor `name`, looking past Identity and Cast; None for a graph input."""
    makers = {out: node for node in graph.node for out in node.output}
    for _ in range(len(graph.node) + 1):
        node = makers.get(name)
        if node is None:
            return None
        if node.op_type not in ("Identity", "Cast") or not node.input:
            return node.op_type
        name = node.input[0]
    return None


def _pick_input(inputs: list[onnx.ValueInfoProto], wanted: str | None, path: Path) -> onnx.ValueInfoProto:
    names = ", ".join(repr(v.name) for v in inputs) or "none"
    if wanted is not None and wanted not in [v.name for v in inputs]:
        raise ModelError(f"{path} has no input named {wanted!r}; its inputs are {names}. Fix onnx.input in the spec.")
    if len(inputs) != 1:
        raise ModelError(f"{path} has inputs {names}, but the runtime feeds exactly one image input; "
                         "export the model with a single input [batch, channels, *spatial].")
    return inputs[0]


def _pick_output(outputs: list[onnx.ValueInfoProto], wanted: str | None, path: Path) -> onnx.ValueInfoProto:
    names = ", ".join(repr(v.name) for v in outputs) or "none"
    if wanted is None:
        if not outputs:
            raise ModelError(f"{path} has no outputs; export the model again.")
        return outputs[0]
    for value in outputs:
        if value.name == wanted:
            return value
    raise ModelError(f"{path} has no output named {wanted!r}; its outputs are {names}. Fix onnx.output in the spec.")


def _opset(model: onnx.ModelProto, path: Path) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ModelError(f"{path} imports no default-domain (ai.onnx) opset; export it with a standard opset.")


def _shape(value: onnx.ValueInfoProto) -> Shape | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                 for d in tensor.shape.dim)


def _show(shape: Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_graph(spec: ModelSpec, info: GraphInfo) -> None:
    """Refuse a graph whose input or output does not fit the spec; one ModelError lists every problem."""
    problems = _input_problems(spec, info) + _output_problems(spec, info)
    if problems:
        raise ModelError(f"ONNX model {info.path} does not fit spec {spec.source}: {'; '.join(problems)}.")


def _input_problems(spec: ModelSpec, info: GraphInfo) -> list[str]:
    where = f"input {info.input!r}"
    problems = []
    if info.input_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(info.input_type)
        problems.append(f"{where} is {kind}, but the runtime feeds float32; export it with a float32 input")
    shape = info.input_shape
    if shape is None:
        return problems
    rank = spec.dimensions + 2
    if len(shape) != rank:
        layout = ", ".join(["batch", "channels", *spec.axis_order])
        return problems + [f"{where} has rank {len(shape)} {_show(shape)}, but a {spec.dimensions}D model "
                           f"takes rank {rank} [{layout}]"]
    return problems + _batch_problems(spec, shape, where) + _input_size_problems(spec, shape, where)


def _batch_problems(spec: ModelSpec, shape: Shape, where: str) -> list[str]:
    batch = shape[0]
    if not isinstance(batch, int) or (batch == 1 and spec.window.batch_size == 1):
        return []
    if batch != 1:
        return [f"{where} has a fixed batch size {batch}; export it with a dynamic batch axis (or batch 1)"]
    return [f"{where} has a fixed batch size 1, so window.batch_size must be 1, got {spec.window.batch_size}"]


def _input_size_problems(spec: ModelSpec, shape: Shape, where: str) -> list[str]:
    problems = []
    if isinstance(shape[1], int) and shape[1] != len(spec.channels):
        problems.append(f"{where} has a channel axis of {shape[1]}, but the spec lists {len(spec.channels)} "
                        f"channels ({', '.join(spec.channels)})")
    spatial = shape[2:]
    patch = spec.window.patch_size
    if any(isinstance(s, int) and s != p for s, p in zip(spatial, patch)):
        problems.append(f"{where} has a fixed spatial size {_show(spatial)} ({spec.axis_order}), so patch.size "
                        f"must match it, got {list(patch)}")
    return problems


def _output_problems(spec: ModelSpec, info: GraphInfo) -> list[str]:
    shape = info.output_shape
    if shape is None:
        return []
    where = f"output {info.output!r}"
    rank = spec.dimensions + 2 if spec.task == "segmentation" else 2
    if len(shape) != rank:
        layout = "[batch, classes, *spatial]" if spec.task == "segmentation" else "[batch, outputs]"
        return [f"{where} has rank {len(shape)} {_show(shape)}, but a {spec.task} model gives rank {rank} {layout}"]
    spatial = _spatial_problem(spec, shape, where, info.input_shape)
    if spatial:
        return [spatial]
    channels = info.output_channels
    if channels is None:
        return []
    if spec.task == "regression":
        return _target_problems(spec, channels, where)
    count = len(spec.classes)
    activation, label_rule = default_reading(spec, channels)
    twice = activated_twice(info.final_op, activation, spec.output.probabilities, where)
    if twice:
        return [twice]
    expected = output_channels(spec.task, activation, label_rule, count)
    if channels not in accepted_channels(spec.task, activation, label_rule, count) \
            and not (channels == 1 and activation == "softmax"):     # said by resolve_output
        each = "one per class after the first (a sigmoid read by threshold)" if expected < count else "one per class"
        return [f"{where} has a channel axis of {channels}, but the spec lists {count} classes: a {spec.task} model "
                f"read by {activation} and {label_rule} returns {expected}, {each}"]
    return []


def _spatial_problem(spec: ModelSpec, shape: Shape, where: str, input_shape: Shape | None) -> str | None:
    """A segmentation output of fixed spatial size must be the patch's size: a deep-supervision
    head at half resolution, or axes in another order, would be refused only by every prediction.
    Left to the input's check where the input's fixed size is not the patch either."""
    if spec.task != "segmentation" or spec.window is None:
        return None
    patch = tuple(spec.window.patch_size)
    if input_shape is not None and any(isinstance(s, int) and s != p for s, p in zip(input_shape[2:], patch)):
        return None
    spatial = shape[2:]
    if all(isinstance(s, int) for s in spatial) and tuple(spatial) != patch:
        return (f"{where} has spatial size {_show(spatial)}, not the patch's {list(patch)}: a segmentation model "
                "gives its classes on the window it is given; where the graph has several outputs (deep "
                "supervision), name the full-size one in onnx.output")
    return None


def _target_problems(spec: ModelSpec, channels: int, where: str) -> list[str]:
    """A regression model gives one value per target, as the runtime holds its outputs to."""
    if channels != len(spec.classes):
        return [f"{where} gives {channels} values, but classes lists {len(spec.classes)} target(s): a regression "
                "model gives one value per target"]
    return []


def build_from_onnx(onnx_path: Path | str, spec: ModelSpec, repository: Path | str,
                    check: VersionCheck | None = None) -> Path:
    """Package an ONNX file as the next version of `spec.name` in `repository`; returns the version
    folder. `check` may refuse the version first (`export.versions.staged_version`)."""
    onnx_path = Path(onnx_path)
    info = describe_graph(read_graph(onnx_path), spec, onnx_path)
    check_graph(spec, info)
    output = resolve_output(spec, info.output_channels)
    if (unfit := whole_image_warning(spec)) is not None:
        log.warning(unfit)
    return _write_version(spec, info, output, Path(repository) / spec.name, check)


def whole_image_warning(spec: ModelSpec) -> str | None:
    """The warning for a model on whole images (window.mode whole) whose preprocessing does not end
    at its patch's shape whatever the image (a resize to it, or to less and a pad to it, with no
    resample or crop after): it runs only on images that preprocess to exactly that shape."""
    if spec.window is None or spec.window.mode != "whole":
        return None
    patch = [int(n) for n in spec.window.patch_size]
    if _fixed_shape(spec.preprocessing) == patch:
        return None
    return (f"{spec.name} takes the whole image (window.mode whole) at {patch}, and its preprocessing does not end "
            f"at that shape whatever the image: it runs only on images that preprocess to exactly {patch}; end the "
            f"spec's preprocessing with `- resize: {{shape: {patch}}}` to run it on any image.")


def _fixed_shape(steps: Sequence[Step]) -> list[int] | None:
    """The shape the steps end at whatever the image: set by a resize, grown by a pad after it, and
    unknown again after a step that depends on the image (resample, crop_nonzero, reorient)."""
    shape = None
    for step in steps:
        if step.name == "resize":
            shape = [int(n) for n in step.params["shape"]]
        elif step.name == "pad" and shape is not None:
            shape = [max(n, int(m)) for n, m in zip(shape, step.params["shape"])]
        elif step.name in ("resample", "crop_nonzero", "reorient"):
            shape = None
    return shape


def _write_version(spec: ModelSpec, info: GraphInfo, output: OutputSpec, model_dir: Path,
                   check: VersionCheck | None = None) -> Path:
    from export.triton import copy_adapter, record_version

    def checks(folder: Path, version: int) -> None:
        _check_same_kind(spec, folder, version)
        if check is not None:
            check(folder, version)

    with staged_version(model_dir, checks) as (version, staging):
        files, provenance = _copy_model(info.path, staging)
        adapter = copy_adapter(staging)
        files[adapter.name] = sha256_of(adapter)
        _store_sample(spec, info, staging, files)
        _check_sample_shape(spec, output, staging, info.path)
        fp16 = _fp16_check(spec, info, output, staging)
        provenance["fp16_check"] = fp16
        manifest = to_manifest(spec, version, _onnx_spec(info, fp16["allowed"]), output, files, provenance)
        write_manifest(manifest, staging)
    record_version(model_dir, manifest)
    return model_dir / str(version)


def _check_same_kind(spec: ModelSpec, model_dir: Path, version: int) -> None:
    """Refuse a version of another kind than the model's newest one (task, modality, dimensions or
    channels): a client of the model's newest version would get other outputs, or send the wrong
    images, without a word."""
    from runtime.errors import ManifestError
    from runtime.manifest import read_manifest_data, version_folders

    for folder in reversed(version_folders(model_dir)):
        if int(folder.name) >= version:
            continue
        try:
            data = read_manifest_data(folder)
        except (ManifestError, OSError):
            continue
        if not isinstance(data, dict):
            continue
        new = {"task": spec.task, "modality": spec.modality, "dimensions": spec.dimensions,
               "channels": list(spec.channels)}
        changed = [f"{key} {data.get(key)!r} -> {value!r}" for key, value in new.items() if data.get(key) != value]
        if changed:
            raise InputError(f"{model_dir} version {folder.name} is a model of another kind than this build "
                             f"({'; '.join(changed)}): the clients of model {spec.name}'s newest version would get "
                             "other outputs or send other images without a word; give this model another name "
                             "(--name).")
        return


def _store_sample(spec: ModelSpec, info: GraphInfo, staging: Path, files: dict[str, str]) -> None:
    """One smooth-field window and the model's output for it, so `export verify` can rerun it anywhere."""
    from runtime.backends.common import RunFailed

    patch = tuple(spec.window.patch_size) if spec.window is not None else ()
    try:
        store_samples(staging, ONNX_FILE, info.input, info.output, [smooth_field(len(spec.channels), patch)],
                      f"ONNX model {info.path}", batched=spec.window is not None and runs_batches(
                          spec.modality, spec.window.mode, spec.window.batch_size))
    except RunFailed as error:
        raise ModelError(f"ONNX model {info.path} does not fit spec {spec.source}: it fails on a window of patch.size "
                         f"{_show(patch)} with {len(spec.channels)} channel(s) ({error.reason}); a network that halves "
                         "its input n times needs each side of patch.size to be a multiple of 2^n") from None
    for path in sorted((staging / SAMPLES_DIR).iterdir()):
        files[f"{SAMPLES_DIR}/{path.name}"] = sha256_of(path)


def _check_sample_shape(spec: ModelSpec, output: OutputSpec, staging: Path, source: Path) -> None:
    """The sample window's output has the shape every prediction holds the model's outputs to: a
    graph whose output axes are dynamic, or declared other than they are, is refused here, not by
    every prediction."""
    folder = staging / SAMPLES_DIR
    given = tuple(np.load(folder / "input_0.npy").shape)
    got = tuple(np.load(folder / "output_0.npy").shape)
    spatial = given[2:] if spec.task == "segmentation" else ()
    shapes = [(given[0], k, *spatial) for k in accepted_channels(spec.task, output.activation, output.label_rule,
                                                                 len(spec.classes))]
    if got not in shapes:
        kind = "target(s)" if spec.task == "regression" else "classes"
        raise ModelError(f"ONNX model {source} does not fit spec {spec.source}: for a window of shape {given} it gives "
                         f"an output of shape {got}, but a {spec.task} model of {len(spec.classes)} {kind} read by "
                         f"{output.activation} and {output.label_rule} gives {' or '.join(map(str, shapes))}; fix the "
                         "spec's classes or output, or name the graph's full-size output in onnx.output")


def _onnx_spec(info: GraphInfo, fp16: bool) -> OnnxSpec:
    return OnnxSpec(file=ONNX_FILE, input=info.input, output=info.output, opset=info.opset, fp16=fp16)


def _fp16_check(spec: ModelSpec, info: GraphInfo, output: OutputSpec, staging: Path) -> dict[str, Any]:
    """export.half's check on four smooth-field windows of the patch size."""
    from export.half import LabelRule, fp16_check

    patch = tuple(spec.window.patch_size) if spec.window is not None else ()
    windows = [smooth_field(len(spec.channels), patch, seed) for seed in range(4)]
    rule = LabelRule(spec.task, output.activation, output.label_rule, output.threshold, len(spec.classes))
    return fp16_check(staging / ONNX_FILE, info.input, info.output, windows, rule)


def _copy_model(source: Path, staging: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Copy the ONNX file into the staging folder; returns the files' checksums and the provenance."""
    source_sha256 = sha256_of(source)
    copy = staging / ONNX_FILE
    shutil.copyfile(source, copy)
    copied_sha256 = sha256_of(copy)
    if copied_sha256 != source_sha256:
        raise OutputError(f"{source} changed while it was being copied; build again once it is complete.")
    provenance = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "tool": f"medflow export {__version__}",
        "source_onnx": source.name,
        "source_sha256": source_sha256,
    }
    return {ONNX_FILE: copied_sha256}, provenance


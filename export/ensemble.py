"""Many folds, one ONNX graph: every fold runs on the same input, and their probabilities are averaged.

The ensemble graph has one input "input" (batch, channels, *patch) with a dynamic batch axis,
feeding every fold's subgraph (each fold's names prefixed "<name>/" so that they cannot clash).
Each fold's raw output is turned into probabilities inside the graph (Softmax over the class axis
1, or Sigmoid, or left as it is) and the folds are averaged (Mean) into "output", shaped like one
fold's output. The "vote" rule (classification) adds a second output "votes" (batch, K): the
fraction of folds whose most probable class is k. Arrays are model arrays in the model's own
axis order.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.errors import ModelError

TASKS = ("segmentation", "classification", "regression")
ACTIVATIONS = ("softmax", "sigmoid", "none")
RULES = ("mean", "vote")
INPUT = "input"
OUTPUT = "output"
VOTES = "votes"
BATCH = "batch"
SPATIAL_NAMES = ("z", "y", "x")
CLASS_AXIS = 1
MIN_SOFTMAX_OPSET = 13  # Softmax normalises along one axis from opset 13 on (before: a flattened 2D view)
PROTOBUF_LIMIT = 2**31 - 1  # bytes: one ONNX file without external data cannot be larger
PRODUCER = "medflow.export.ensemble"

Dims = tuple[int | None, ...]


@dataclass(frozen=True)
class _Fold:
    """One fold's graph with every name prefixed, reading INPUT, and the name of its output."""

    name: str
    graph: onnx.GraphProto
    functions: tuple[onnx.FunctionProto, ...]
    output: str


def ensemble_graph(folds: Sequence[onnx.ModelProto], task: str, *, activation: str = "softmax",
                   rule: str = "mean", names: Sequence[str] | None = None) -> onnx.ModelProto:
    """One ONNX graph averaging the probabilities of `folds` (see the module docstring).

    `task` is one of TASKS, `activation` one of ACTIVATIONS (regression: "none", the mean of the
    raw values), `rule` one of RULES ("vote": classification only). `names` name the folds
    (default fold0, fold1, ...) and prefix their graph names. Every fold must have one input and
    one output of the same shapes and the same opsets. Raises ValueError for anything that does
    not fit, and ModelError when the result fails onnx.checker or exceeds 2 GB.
    """
    _check_choices(task, activation, rule)
    fold_names = _fold_names(len(folds), names)
    opsets = shared_opsets(folds, fold_names)
    input_dims, output_dims = _shared_signature(folds, fold_names)
    _check_output(task, activation, rule, output_dims, opsets)
    prefixed = [_prefixed(fold, name) for fold, name in zip(folds, fold_names)]
    nodes, initializers, outputs = _combine(prefixed, activation, rule, output_dims)
    graph = helper.make_graph(
        nodes, f"ensemble_of_{len(folds)}", [_value(INPUT, input_dims)], outputs,
        initializer=initializers,
        value_info=[info for fold in prefixed for info in fold.graph.value_info])
    for made, fold_value in ((graph.input[0], folds[0].graph.input[0]), (graph.output[0], folds[0].graph.output[0])):
        _name_axes_as(made, fold_value)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, version)
                                                    for domain, version in sorted(opsets.items())],
                              producer_name=PRODUCER, functions=[f for fold in prefixed for f in fold.functions])
    model.ir_version = max(fold.ir_version for fold in folds)
    _describe(model, task, activation, rule, fold_names)
    check_graph(model)
    return model


def _check_choices(task: str, activation: str, rule: str) -> None:
    for label, value, options in (("task", task, TASKS), ("activation", activation, ACTIVATIONS),
                                  ("rule", rule, RULES)):
        if value not in options:
            raise ValueError(f"ensemble {label} must be one of {', '.join(options)}, got {value!r}")
    if rule == "vote" and task != "classification":
        raise ValueError(f"the vote rule is for classification; a {task} ensemble uses rule 'mean'")
    if task == "regression" and activation != "none":
        raise ValueError(f"a regression ensemble averages raw values; use activation 'none', not {activation!r}")


def _fold_names(count: int, names: Sequence[str] | None) -> list[str]:
    if count == 0:
        raise ValueError("an ensemble needs at least one fold")
    if names is None:
        return [f"fold{index}" for index in range(count)]
    names = [str(name) for name in names]
    if len(names) != count:
        raise ValueError(f"{len(names)} fold names given for {count} folds; give one name per fold")
    if "" in names or len(set(names)) != count:
        raise ValueError(f"fold names must be distinct and non-empty, got {names}")
    return names


def shared_opsets(folds: Sequence[onnx.ModelProto], names: Sequence[str]) -> dict[str, int]:
    """The folds' operator sets {domain: version} ("" is the default domain); ValueError unless all agree."""
    first = _opsets(folds[0])
    for fold, name in zip(folds[1:], names[1:]):
        if _opsets(fold) != first:
            raise ValueError(f"fold {name!r} imports opsets {_opsets(fold)} but fold {names[0]!r} imports "
                             f"{first}; export every fold with the same opset")
    return first


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {("" if entry.domain == "ai.onnx" else entry.domain): entry.version for entry in model.opset_import}


def _graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs (older IR versions also list the initializers as inputs)."""
    weights = {tensor.name for tensor in graph.initializer}
    return [entry for entry in graph.input if entry.name not in weights]


def _dims(entry: onnx.ValueInfoProto) -> Dims:
    """A tensor's shape with a fixed size as an int and a free (named or unknown) size as None."""
    if entry.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ValueError(f"{entry.name!r} is not a float32 tensor; the ensemble needs float32 folds")
    if not entry.type.tensor_type.HasField("shape"):
        raise ValueError(f"{entry.name!r} has no declared rank; export the fold with a known rank")
    return tuple(dim.dim_value if dim.HasField("dim_value") else None
                 for dim in entry.type.tensor_type.shape.dim)


def _signature(fold: onnx.ModelProto, name: str) -> tuple[Dims, Dims]:
    inputs, outputs = _graph_inputs(fold.graph), list(fold.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"fold {name!r} has {len(inputs)} inputs and {len(outputs)} outputs; "
                         "an ensemble fold needs exactly one of each")
    return _dims(inputs[0]), _dims(outputs[0])


def _shape_text(dims: Dims) -> str:
    return "(" + ", ".join("?" if size is None else str(size) for size in dims) + ")"


def _shared_signature(folds: Sequence[onnx.ModelProto], names: Sequence[str]) -> tuple[Dims, Dims]:
    """(input dims, output dims) with a free batch axis; ValueError unless every fold agrees."""
    first = _signature(folds[0], names[0])
    for fold, name in zip(folds[1:], names[1:]):
        other = _signature(fold, name)
        if [dims[1:] for dims in other] != [dims[1:] for dims in first]:
            raise ValueError(
                f"fold {name!r} maps {_shape_text(other[0])} to {_shape_text(other[1])} but fold {names[0]!r} "
                f"maps {_shape_text(first[0])} to {_shape_text(first[1])}; export every fold alike")
    input_dims, output_dims = first
    if len(input_dims) < 2 or len(output_dims) < 2:
        raise ValueError(f"fold input {_shape_text(input_dims)} and output {_shape_text(output_dims)} must "
                         "both be (batch, channels, ...)")
    return (None, *input_dims[1:]), (None, *output_dims[1:])


def _check_output(task: str, activation: str, rule: str, output_dims: Dims, opsets: dict[str, int]) -> None:
    classes = output_dims[CLASS_AXIS]
    if task == "classification" and len(output_dims) != 2:
        raise ValueError(f"a classification fold outputs (batch, classes), got {_shape_text(output_dims)}")
    if task == "segmentation" and len(output_dims) < 3:
        raise ValueError(f"a segmentation fold outputs (batch, classes, *patch), got {_shape_text(output_dims)}")
    if activation == "softmax" and classes == 1:
        raise ValueError("softmax over a single output channel is always 1; use activation 'sigmoid'")
    if activation == "softmax" and opsets.get("", 0) < MIN_SOFTMAX_OPSET:
        raise ValueError(f"softmax over the class axis needs opset {MIN_SOFTMAX_OPSET} or later, the folds "
                         f"use {opsets.get('', 0)}; export them with a later opset")
    if rule == "vote" and classes is None:
        raise ValueError("the vote rule needs a fixed number of classes on the fold output's axis 1")


def _prefixed(fold: onnx.ModelProto, name: str) -> _Fold:
    """The fold with every name prefixed "<name>/", reading the shared input INPUT."""
    original_input = _graph_inputs(fold.graph)[0].name
    prefix = f"{name}/"
    model = onnx.compose.add_prefix(fold, prefix)
    # Depending on the onnx version, the input's name may or may not be prefixed in the nodes.
    for old in {prefix + original_input, original_input}:
        _rename_reads(model.graph, old, INPUT)
    return _Fold(name, model.graph, tuple(model.functions), model.graph.output[0].name)


def _rename_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Make every node (subgraphs included) that reads tensor `old` read `new`."""
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                _rename_reads(subgraph, old, new)


def _combine(folds: Sequence[_Fold], activation: str, rule: str,
             output_dims: Dims) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], list[onnx.ValueInfoProto]]:
    """Every fold's nodes, its probabilities, their Mean into OUTPUT and (vote rule) the VOTES."""
    nodes = [node for fold in folds for node in fold.graph.node]
    initializers = [tensor for fold in folds for tensor in fold.graph.initializer]
    probabilities = [_activate(fold, activation, nodes) for fold in folds]
    nodes.append(helper.make_node("Mean", probabilities, [OUTPUT], name="ensemble/mean"))
    outputs = [_value(OUTPUT, output_dims)]
    if rule == "vote":
        classes = int(output_dims[CLASS_AXIS])
        nodes.extend(_vote_nodes(probabilities, classes, initializers))
        outputs.append(_value(VOTES, (None, classes)))
    return nodes, initializers, outputs


def _activate(fold: _Fold, activation: str, nodes: list[onnx.NodeProto]) -> str:
    """Append the node turning the fold's raw output into probabilities; return the tensor's name."""
    if activation == "none":
        return fold.output
    probability = f"{fold.name}/probability"
    op = {"softmax": "Softmax", "sigmoid": "Sigmoid"}[activation]
    attributes = {"axis": CLASS_AXIS} if activation == "softmax" else {}
    nodes.append(helper.make_node(op, [fold.output], [probability], name=f"{fold.name}/{activation}", **attributes))
    return probability


def _vote_nodes(probabilities: Sequence[str], classes: int,
                initializers: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """Each fold's most probable class as a one-hot (batch, classes) row; their mean is VOTES."""
    depth, values = "ensemble/vote_depth", "ensemble/vote_values"
    initializers.append(numpy_helper.from_array(np.array([classes], dtype=np.int64), depth))
    initializers.append(numpy_helper.from_array(np.array([0.0, 1.0], dtype=np.float32), values))
    nodes, one_hots = [], []
    for index, probability in enumerate(probabilities):
        winner, one_hot = f"ensemble/vote{index}/argmax", f"ensemble/vote{index}/one_hot"
        nodes.append(helper.make_node("ArgMax", [probability], [winner], name=winner, axis=CLASS_AXIS, keepdims=0))
        nodes.append(helper.make_node("OneHot", [winner, depth, values], [one_hot], name=one_hot, axis=-1))
        one_hots.append(one_hot)
    nodes.append(helper.make_node("Mean", one_hots, [VOTES], name="ensemble/votes"))
    return nodes


def _value(name: str, dims: Dims) -> onnx.ValueInfoProto:
    """A float32 tensor declaration; free axes are named (batch, channels, then z, y, x, which
    `_name_axes_as` renames as the folds name them)."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                         [_axis_name(axis, len(dims)) if size is None else size
                                          for axis, size in enumerate(dims)])


def _name_axes_as(made: onnx.ValueInfoProto, fold: onnx.ValueInfoProto) -> None:
    """The free axes of `made` named as the fold names them (x, y, z for a model of that axis order)."""
    fold_dims = fold.type.tensor_type.shape.dim
    for axis, dim in enumerate(made.type.tensor_type.shape.dim):
        if dim.dim_param and axis < len(fold_dims) and fold_dims[axis].dim_param:
            dim.dim_param = fold_dims[axis].dim_param


def _axis_name(axis: int, rank: int) -> str:
    if axis == 0:
        return BATCH
    spatial = rank - 2
    if axis >= 2 and spatial <= len(SPATIAL_NAMES):
        return SPATIAL_NAMES[len(SPATIAL_NAMES) - spatial + axis - 2]
    return "channels" if axis == 1 else f"axis{axis}"


def _describe(model: onnx.ModelProto, task: str, activation: str, rule: str, names: Sequence[str]) -> None:
    votes = ", and the fraction of folds voting for each class" if rule == "vote" else ""
    model.doc_string = (f"{task} ensemble of {len(names)} folds ({', '.join(names)}): mean of each fold's "
                        f"{activation} output{votes}")
    onnx.helper.set_model_props(model, {"folds": ",".join(names), "task": task, "activation": activation,
                                        "rule": rule})


def check_graph(model: onnx.ModelProto) -> None:
    """onnx.checker with full shape inference; ModelError when it fails or the graph exceeds 2 GB."""
    size = model.ByteSize()
    if size > PROTOBUF_LIMIT:
        raise ModelError(f"the ensemble graph is {size / 2**30:.2f} GiB, above the 2 GiB limit of one ONNX "
                         "file; use fewer folds or smaller models")
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ModelError(f"the ensemble graph fails onnx.checker: {' '.join(str(error).split())[:500]}") from error

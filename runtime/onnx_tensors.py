"""Which tensors of an ONNX file keep their values in another file (external data), and which
operator makes its output.

A version's checksums cover the files its manifest lists; a graph whose weights lie in an unlisted
file beside it would run with whatever that file holds. The runtime has no `onnx` package, so the
file's protobuf encoding is walked here, field by field, down the messages that can hold a tensor
(the graph's initializers and sparse initializers, node attributes, subgraphs, functions and their
default attributes, training graphs), skipping every other field by its length without decoding it.
"""
from __future__ import annotations

from dataclasses import dataclass, field


# (message, field number) -> the message that field holds; the fields that can lead to a tensor.
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _SPARSE, _TENSOR, _FUNCTION, _TRAINING = range(8)
_CHILDREN = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
}
_TENSOR_NAME, _EXTERNAL_DATA, _DATA_LOCATION = 8, 13, 14
_GRAPH_FIELD, _NODE_FIELD = 7, 1                      # ModelProto.graph, GraphProto.node
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP = 1, 2, 4         # NodeProto.input, .output, .op_type
_MAIN = {(_MODEL, _GRAPH_FIELD), (_GRAPH, _NODE_FIELD)}  # the steps from the model to its main graph's nodes
MAX_DEPTH = 64
# Values written one field each (repeated numbers not packed, as no exporter writes them) make a
# walk of Python steps per value: more than this many in the whole file is refused.
MAX_FIELDS = 1_000_000


class Malformed(ValueError):
    """The bytes are not a protobuf encoding of the fields walked."""


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data) or shift > 63:
            raise Malformed("a varint runs past the end")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(data: memoryview, count: list[int]):
    """(field number, wire type, value or sub-view) of every field of one message; `count` holds the
    fields walked so far in the file."""
    at = 0
    while at < len(data):
        count[0] += 1
        if count[0] > MAX_FIELDS:
            raise Malformed(f"more than {MAX_FIELDS:,} fields (repeated values not packed)")
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
            yield number, wire, value
        elif wire == 2:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise Malformed(f"field {number} promises {size} bytes past the end")
            yield number, wire, data[at:at + size]
            at += size
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
            if at > len(data):
                raise Malformed(f"field {number} runs past the end")
        else:
            raise Malformed(f"wire type {wire} of field {number}")


@dataclass
class _Found:
    """What one walk of an ONNX file collects: tensors kept outside, and which node of the main
    graph makes each tensor (its operator and inputs)."""
    outside: list[str] = field(default_factory=list)
    makers: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    count: list[int] = field(default_factory=lambda: [0])


def _walk(data: memoryview, kind: int, depth: int, found: _Found, main: bool = False) -> None:
    """Walk one message of `kind`; `main` where it is the main graph or one of its nodes."""
    if depth > MAX_DEPTH:
        raise Malformed(f"messages nested more than {MAX_DEPTH} deep")
    if kind == _TENSOR:
        _walk_tensor(data, found)
        return
    children = _CHILDREN[kind]
    node: tuple[str, list[str], list[str]] = ("", [], [])
    for number, wire, value in _fields(data, found.count):
        if wire != 2:
            continue
        if kind == _NODE and main and number in (_NODE_INPUT, _NODE_OUTPUT, _NODE_OP):
            node = _node_field(node, number, value)
        elif number in children:
            _walk(value, children[number], depth + 1, found, main and (kind, number) in _MAIN)
    if kind == _NODE and main:
        found.makers.update((name, (node[0], node[1])) for name in node[2])


def _walk_tensor(data: memoryview, found: _Found) -> None:
    name, external = "", False
    for number, wire, value in _fields(data, found.count):
        if number == _TENSOR_NAME and wire == 2:
            name = bytes(value[:200]).decode("utf-8", "replace")
        elif (number == _EXTERNAL_DATA and wire == 2) or (number == _DATA_LOCATION and wire == 0 and value):
            external = True
    if external:
        found.outside.append(name or "(unnamed)")


def _node_field(node: tuple[str, list[str], list[str]], number: int,
                value: memoryview) -> tuple[str, list[str], list[str]]:
    """A NodeProto's (operator, inputs, outputs) with one more of its fields read."""
    op, inputs, outputs = node
    text = bytes(value[:1000]).decode("utf-8", "replace")
    if number == _NODE_OP:
        return text, inputs, outputs
    (inputs if number == _NODE_INPUT else outputs).append(text)
    return op, inputs, outputs


@dataclass(frozen=True)
class GraphScan:
    outside: list[str]          # tensors whose values lie in another file
    final_op: str | None        # the operator that makes the output, past Identity and Cast


def scan(data: bytes, output: str) -> GraphScan:
    """One walk of an ONNX file's bytes: the names of its tensors whose values lie in another file,
    and the operator of its main graph that makes the tensor `output`, looking past Identity and
    Cast (None where no node makes it: a graph input). Malformed where the bytes are not an ONNX
    protobuf encoding."""
    found = _Found()
    _walk(memoryview(data), _MODEL, 0, found, main=True)
    return GraphScan(found.outside, _maker(found.makers, output))


def external_tensors(data: bytes) -> list[str]:
    """The names of the tensors of an ONNX file's bytes whose values lie in another file."""
    return scan(data, "").outside


def _maker(makers: dict[str, tuple[str, list[str]]], output: str) -> str | None:
    name = output
    for _ in range(len(makers) + 1):
        if name not in makers:
            return None
        op, inputs = makers[name]
        if op not in ("Identity", "Cast") or not inputs:
            return op
        name = inputs[0]
    return None

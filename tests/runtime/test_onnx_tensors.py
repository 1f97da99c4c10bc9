"""The walk that finds ONNX tensors kept in another file: every place a tensor may sit, a
function's default attribute and a training graph among them, and bounds on a crafted encoding."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.external_data_helper import _get_all_tensors, uses_external_data

from export import graphs
from runtime.onnx_tensors import MAX_FIELDS, Malformed, external_tensors, scan


def _outside(name: str) -> onnx.TensorProto:
    tensor = helper.make_tensor(name, TensorProto.FLOAT, [1], [0.0])
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", "4")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _model_with_function_default() -> onnx.ModelProto:
    """A local function whose Constant takes its value from the function's default attribute, kept outside."""
    constant = helper.make_node("Constant", [], ["k"])
    reference = constant.attribute.add()
    reference.name, reference.ref_attr_name, reference.type = "value", "value", onnx.AttributeProto.TENSOR
    nodes = [constant, helper.make_node("Add", ["x", "k"], ["y"])]
    function = helper.make_function("local", "addk", ["x"], ["y"], nodes, [helper.make_opsetid("", 17)], attributes=[])
    function.attribute_proto.append(helper.make_attribute("value", _outside("default")))
    graph = helper.make_graph([helper.make_node("addk", ["X"], ["Y"], domain="local")], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                             functions=[function])


def _model_with_training_graph() -> onnx.ModelProto:
    model = graphs.bright_structures(3)
    training = model.training_info.add()
    training.initialization.CopyFrom(helper.make_graph([], "init", [], [], initializer=[_outside("moment")]))
    return model


@pytest.mark.parametrize("make, expected", [
    (lambda: graphs.bright_structures(3), []),
    (_model_with_function_default, ["default"]),
    (_model_with_training_graph, ["moment"]),
])
def test_every_tensor_kept_outside_is_found_where_the_runtimes_read_it(make, expected):
    """onnxruntime loads a function's default attribute from its file; onnx's own helper
    (`_get_all_tensors`) looks at neither of the two places."""
    model = make()
    assert external_tensors(model.SerializeToString()) == expected
    assert not [t for t in _get_all_tensors(model) if uses_external_data(t)]


def test_the_operator_that_makes_the_output_is_the_main_graphs_past_identity_and_cast():
    """A local function's own nodes, walked for tensors in the same pass, name no output of the
    main graph, even where a name is the same."""
    sigmoid = helper.make_node("Sigmoid", ["x"], ["Y"])
    function = helper.make_function("local", "squash", ["x"], ["Y"], [sigmoid], [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("squash", ["X"], ["s"], domain="local"), helper.make_node("Cast", ["s"], ["c"], to=1),
             helper.make_node("Identity", ["c"], ["Y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=[function])
    found = scan(model.SerializeToString(), "Y")
    assert (found.final_op, found.outside) == ("squash", [])
    assert scan(model.SerializeToString(), "X").final_op is None


def test_a_crafted_encoding_is_refused_not_walked_for_minutes():
    unpacked = b"".join(b"\x25" + np.float32(1).tobytes() for _ in range(MAX_FIELDS // 2))  # float_data, one each
    tensor = b"\x2a" + _varint(len(unpacked)) + unpacked                                    # graph.initializer
    graph = tensor * 3                                                   # each tensor under the bound, not all three
    model = b"\x3a" + _varint(len(graph)) + graph                                            # model.graph
    with pytest.raises(Malformed, match="repeated values not packed"):
        external_tensors(model)
    with pytest.raises(Malformed, match="wire type 3"):
        external_tensors(b"\x3b")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)

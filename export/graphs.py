"""Tiny fixed ONNX graphs for tests and the embedded demo model, built with onnx.helper.

Every graph uses opset 17, float32, one input named "input" shaped [batch, channels, *spatial] and
one output named "output"; the batch axis is dynamic and named "batch", and the spatial axes are
dynamic too, so any patch size fits. The weights are fixed formulas, so each output can be computed
in numpy (see `classifier_weights`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
BATCH = "batch"
BRIGHT_GAIN = 8.0
BRIGHT_THRESHOLD = 3.0


def _spatial(dims: int) -> list[str]:
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    return ["z", "y", "x"][3 - dims:]


def _value(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: list[onnx.TensorProto], name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="medflow.export.graphs")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _image_input(channels: int, dims: int) -> onnx.ValueInfoProto:
    return _value("input", [BATCH, channels, *_spatial(dims)])


def identity(channels: int, dims: int) -> onnx.ModelProto:
    """output = input, shape [batch, channels, *spatial]."""
    node = helper.make_node("Identity", ["input"], ["output"])
    out = _value("output", [BATCH, channels, *_spatial(dims)])
    return _model([node], [_image_input(channels, dims)], [out], [], "identity")


def scaled(channels: int, dims: int, scale: float) -> onnx.ModelProto:
    """output = scale * input, shape [batch, channels, *spatial]."""
    factor = numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale")
    node = helper.make_node("Mul", ["input", "scale"], ["output"])
    out = _value("output", [BATCH, channels, *_spatial(dims)])
    return _model([node], [_image_input(channels, dims)], [out], [factor], "scaled")


def bright_structures(dims: int = 3) -> onnx.ModelProto:
    """The demo segmentation model: 2 logits per voxel of a one-channel z-scored image.

    smoothed = the 3x3(x3) mean of the input (zero padding at the borders);
    logit 0 = 0 (background), logit 1 = BRIGHT_GAIN * (smoothed - BRIGHT_THRESHOLD): voxels whose
    neighbourhood is more than BRIGHT_THRESHOLD standard deviations above the mean are class 1.
    One Conv computes both logits: channel 0 has zero weights, channel 1 the scaled mean filter.
    """
    kernel = (3,) * dims
    weight = np.zeros((2, 1, *kernel), dtype=np.float32)
    weight[1] = BRIGHT_GAIN / np.prod(kernel)
    bias = np.array([0.0, -BRIGHT_GAIN * BRIGHT_THRESHOLD], dtype=np.float32)
    node = helper.make_node("Conv", ["input", "weight", "bias"], ["output"], kernel_shape=list(kernel),
                            pads=[1] * (2 * dims))
    initializers = [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")]
    out = _value("output", [BATCH, 2, *_spatial(dims)])
    return _model([node], [_image_input(1, dims)], [out], initializers, "bright_structures")


# The slide demo's per-pixel model on RGB scaled to [0, 1]: logits = STAIN_WEIGHT @ rgb + STAIN_BIAS
# for background (bright glass), nuclei (dark, little red) and stroma (red over green).
STAIN_CLASSES = ("background", "nuclei", "stroma")
STAIN_WEIGHT = np.array([[25 / 3, 25 / 3, 25 / 3], [-10.0, 0.0, 0.0], [10.0, -10.0, 0.0]], dtype=np.float32)
STAIN_BIAS = np.array([-21.25, 7.0, -2.0], dtype=np.float32)


def stain_classes() -> onnx.ModelProto:
    """A 2D per-pixel segmentation of RGB (scaled to [0, 1]) into STAIN_CLASSES: one 1x1 Conv
    with STAIN_WEIGHT and STAIN_BIAS, so each pixel's logits depend on that pixel alone."""
    weight = STAIN_WEIGHT.reshape(3, 3, 1, 1)
    node = helper.make_node("Conv", ["input", "weight", "bias"], ["output"], kernel_shape=[1, 1])
    initializers = [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(STAIN_BIAS, "bias")]
    out = _value("output", [BATCH, 3, *_spatial(2)])
    return _model([node], [_image_input(3, 2)], [out], initializers, "stain_classes")


def classifier_weights(channels: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed linear layer of `channel_classifier`: logits = weight @ channel_means + bias.

    weight[k, c] = s_k * (c + 1) with s evenly spaced in [-1, 1]; bias[k] = 0.1 * k. With one
    channel and two classes, class 1 wins when the mean intensity is above 0.05.
    """
    slopes = np.linspace(-1.0, 1.0, classes, dtype=np.float32)
    weight = slopes[:, None] * np.arange(1, channels + 1, dtype=np.float32)[None, :]
    bias = 0.1 * np.arange(classes, dtype=np.float32)
    return weight.astype(np.float32), bias.astype(np.float32)


def _pooled_flat(source: str, nodes: list[onnx.NodeProto]) -> str:
    nodes.append(helper.make_node("GlobalAveragePool", [source], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["means"], axis=1))
    return "means"


def channel_classifier(channels: int, dims: int, classes: int) -> onnx.ModelProto:
    """Global average pool per channel, then the fixed linear layer: output [batch, classes] logits."""
    weight, bias = classifier_weights(channels, classes)
    nodes: list[onnx.NodeProto] = []
    means = _pooled_flat("input", nodes)
    nodes.append(helper.make_node("Gemm", [means, "weight", "bias"], ["output"], transB=1))
    initializers = [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")]
    out = _value("output", [BATCH, classes])
    return _model(nodes, [_image_input(channels, dims)], [out], initializers, "channel_classifier")


def mean_regressor(channels: int, dims: int) -> onnx.ModelProto:
    """The mean of channel 0 over all spatial axes: output [batch, 1]."""
    index = numpy_helper.from_array(np.array([0], dtype=np.int64), "channel0")
    nodes = [helper.make_node("Gather", ["input", "channel0"], ["first"], axis=1)]
    means = _pooled_flat("first", nodes)
    nodes.append(helper.make_node("Identity", [means], ["output"]))
    out = _value("output", [BATCH, 1])
    return _model(nodes, [_image_input(channels, dims)], [out], [index], "mean_regressor")


def save(model: onnx.ModelProto, path: Path | str) -> Path:
    """Write a graph to one .onnx file and return its path."""
    path = Path(path)
    onnx.save(model, str(path))
    return path

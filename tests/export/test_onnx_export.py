"""Exporting one fold to ONNX, and the torch vs onnxruntime parity check, on tiny real networks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from export.onnx_export import (DEFAULT_TOLERANCE, OPSET, Parity, check_parity, dynamic_axes, export_fold,
                                parity_inputs)
from runtime.errors import ModelError
from trainer.models import ModelSpec, ModelSpecError, build_model

# (architecture, dimensions, task, patch edge, a second patch edge the same file must run)
CASES = [
    ("unet", 3, "segmentation", 16, 24),
    ("unet", 2, "segmentation", 16, 32),
    ("resunet", 2, "segmentation", 16, 24),
    ("resunet", 3, "segmentation", 8, 16),
    ("uinc", 2, "segmentation", 16, 20),
    ("uinc", 3, "segmentation", 8, 12),
    ("fcn", 2, "segmentation", 16, 32),
    ("fcn", 3, "segmentation", 16, 8),
    ("vgg16", 2, "classification", 32, 40),
    ("vgg16", 3, "regression", 32, 20),
]


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def tiny_model(architecture: str, dimensions: int, task: str, seed: int = 0, **changes: object) -> torch.nn.Module:
    out_channels = 1 if task == "regression" else 3
    values = dict(architecture=architecture, dimensions=dimensions, in_channels=2, out_channels=out_channels,
                  task=task, base_filters=4, depth=2)
    values.update(changes)
    torch.manual_seed(seed)
    return build_model(ModelSpec(**values))


def example(dimensions: int, edge: int, batch: int = 1, channels: int = 2) -> torch.Tensor:
    return torch.randn(batch, channels, *[edge] * dimensions)


def declared(entry: onnx.ValueInfoProto) -> list[int | str]:
    return [dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in entry.type.tensor_type.shape.dim]


@pytest.mark.parametrize(("architecture", "dimensions", "task", "edge", "other_edge"), CASES)
def test_export_matches_torch_at_two_patch_sizes(architecture: str, dimensions: int, task: str, edge: int,
                                                  other_edge: int, tmp_path: Path) -> None:
    model = tiny_model(architecture, dimensions, task)
    path = tmp_path / "fold.onnx"
    graph = export_fold(model, example(dimensions, edge), path)
    assert path.is_file() and graph.opset_import[0].version == OPSET
    assert [i.name for i in graph.graph.input] == ["input"] and [o.name for o in graph.graph.output] == ["output"]
    spatial = ["z", "y", "x"][3 - dimensions:]
    assert declared(graph.graph.input[0]) == ["batch", 2, *spatial]
    expected_output = ["batch", 3, *spatial] if task == "segmentation" else ["batch", 1 if task == "regression" else 3]
    assert declared(graph.graph.output[0]) == expected_output
    # batch 2 although the example had batch 1; white noise and a smooth field, at two patch sizes
    inputs = parity_inputs((2, 2, *[edge] * dimensions), seed=1) + parity_inputs((1, 2, *[other_edge] * dimensions))
    parity = check_parity(model, path, inputs, DEFAULT_TOLERANCE, threads=1)
    assert isinstance(parity, Parity) and parity.inputs == 4
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for batch in inputs:  # the exported graph itself, run outside check_parity, matches torch
            expected = model(torch.from_numpy(batch)).numpy()
            np.testing.assert_allclose(session.run(["output"], {"input": batch})[0], expected, atol=DEFAULT_TOLERANCE)
    assert parity.max_abs_output > 1e-2  # the outputs compared are not all zero


def test_parity_fails_against_another_models_onnx(tmp_path: Path) -> None:
    exported = tiny_model("unet", 2, "segmentation", seed=0)
    other = tiny_model("unet", 2, "segmentation", seed=1)
    path = tmp_path / "fold0.onnx"
    export_fold(exported, example(2, 16), path)
    inputs = parity_inputs((1, 2, 16, 16))
    assert check_parity(exported, path, inputs, 1e-4).max_abs_diff < 1e-4
    with pytest.raises(ModelError, match=r"fold0\.onnx differs from the torch model by up to .* tolerance 0\.0001"):
        check_parity(other, path, inputs, 1e-4)
    # a loose enough tolerance accepts the same pair, and reports the difference it measured
    loose = check_parity(other, path, inputs, 1e6)
    assert loose.max_abs_diff > 1e-2 and loose.tolerance == 1e6


class _Scaled(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch) * self.factor


def test_parity_of_outputs_beyond_one_is_relative_to_the_largest_output(tmp_path: Path) -> None:
    """A regression model whose outputs reach hundreds differs from its export by single precision's
    last digits, above 1e-4 in output units: accepted; a graph off by 0.1 % still is not."""
    model = tiny_model("vgg16", 2, "regression", seed=0)
    path = tmp_path / "fold0.onnx"
    export_fold(_Scaled(model, 1000.0), example(2, 32), path)
    inputs = parity_inputs((2, 2, 32, 32))
    rounding = check_parity(_Scaled(model, 1000.0 * (1 + 1e-6)), path, inputs, 1e-4)
    assert rounding.max_abs_output > 1.0 and 1e-4 < rounding.max_abs_diff and rounding.max_scaled_diff <= 1e-4
    with pytest.raises(ModelError, match=r"relative to outputs beyond 1 .* above the tolerance 0\.0001"):
        check_parity(_Scaled(model, 1000.0 * (1 + 1e-3)), path, inputs, 1e-4)


class _Shifted(torch.nn.Module):
    """Channel 0 scaled up to hundreds, channel 1 (values below 1) shifted by `shift`."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        mean = batch.mean(dim=(2, 3))
        return torch.stack([mean[:, 0] * 1000.0 + 400.0, torch.tanh(mean[:, 1]) + self.shift], dim=1)


def test_each_output_value_is_held_to_its_own_size_not_another_channels(tmp_path: Path) -> None:
    """A channel of small values off by 0.03 is refused beside a channel reaching hundreds."""
    path = tmp_path / "fold0.onnx"
    export_fold(_Shifted(0.0), example(2, 16), path)
    inputs = parity_inputs((2, 2, 16, 16))
    assert check_parity(_Shifted(0.0), path, inputs, 1e-4).max_abs_output > 100
    with pytest.raises(ModelError, match="above the tolerance"):
        check_parity(_Shifted(0.03), path, inputs, 1e-4)


def test_parity_fails_on_a_different_output_shape(tmp_path: Path) -> None:
    path = tmp_path / "three.onnx"
    export_fold(tiny_model("fcn", 2, "segmentation"), example(2, 16), path)
    four_classes = tiny_model("fcn", 2, "segmentation", out_channels=4)
    with pytest.raises(ModelError, match=r"three\.onnx gives output shape \(1, 3, 16, 16\) .* torch gives \(1, 4"):
        check_parity(four_classes, path, parity_inputs((1, 2, 16, 16)), 1.0)


def test_parity_rejects_no_inputs_and_a_missing_file(tmp_path: Path) -> None:
    model = tiny_model("unet", 2, "segmentation")
    with pytest.raises(ValueError, match="at least one input"):
        check_parity(model, tmp_path / "x.onnx", [], 1e-4)
    with pytest.raises(ModelError, match=r"onnxruntime cannot load .*missing\.onnx"):
        check_parity(model, tmp_path / "missing.onnx", parity_inputs((1, 2, 16, 16)), 1e-4)


def test_a_patch_the_network_cannot_take_leaves_no_file(tmp_path: Path) -> None:
    model = tiny_model("unet", 3, "segmentation")  # depth 2: every axis a multiple of 4
    with pytest.raises(ModelSpecError, match="multiple of 4"):
        export_fold(model, example(3, 10), tmp_path / "fold.onnx")
    assert list(tmp_path.iterdir()) == []


def test_fixed_spatial_axes_when_asked(tmp_path: Path) -> None:
    graph = export_fold(tiny_model("unet", 2, "segmentation"), torch.randn(1, 2, 16, 32), tmp_path / "f.onnx",
                        dynamic_spatial=False)
    assert declared(graph.graph.input[0]) == ["batch", 2, 16, 32]
    assert declared(graph.graph.output[0]) == ["batch", 3, 16, 32]
    assert dynamic_axes(5, 2, True) == {"input": {0: "batch", 2: "z", 3: "y", 4: "x"}, "output": {0: "batch"}}


def test_parity_inputs_are_noise_and_a_smooth_standardised_field() -> None:
    noise, smooth = parity_inputs((2, 3, 16, 16, 16), seed=5)
    assert noise.dtype == smooth.dtype == np.float32 and noise.shape == smooth.shape == (2, 3, 16, 16, 16)
    np.testing.assert_allclose(smooth.mean(axis=(2, 3, 4)), 0.0, atol=1e-5)
    np.testing.assert_allclose(smooth.std(axis=(2, 3, 4)), 1.0, atol=0.05)
    step_noise = np.abs(np.diff(noise, axis=-1)).mean()
    step_smooth = np.abs(np.diff(smooth, axis=-1)).mean()
    assert step_smooth < 0.3 * step_noise
    again = parity_inputs((2, 3, 16, 16, 16), seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(again, (noise, smooth)))
    with pytest.raises(ValueError, match="2 or 3 patch axes"):
        parity_inputs((2, 16))

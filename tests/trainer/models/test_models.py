"""The architectures: shapes, gradients, ONNX parity with onnxruntime, specs and patch-size rules."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from trainer.models import (ARCHITECTURES, ModelSpec, ModelSpecError, build_model, check_patch_size,
                            required_divisor)
from trainer.models.unet import level_filters

OWN_SEGMENTATION = ("unet", "resunet", "uinc", "fcn")
MONAI = ("segresnet", "dynunet")
SEGMENTATION = OWN_SEGMENTATION + MONAI
BACKBONES = ("resnet18", "densenet121", "efficientnet_b0")
GLOBAL = ("vgg16",) + BACKBONES
SMALL = SEGMENTATION + GLOBAL              # the networks that take 16-voxel patches (36 for the backbones)
ALL = SMALL + ("swinunetr",)
CASES = [(architecture, dimensions) for architecture in SMALL for dimensions in (2, 3)]


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def tiny_spec(architecture: str, dimensions: int, **changes: object) -> ModelSpec:
    task = "classification" if architecture in GLOBAL else "segmentation"
    values = dict(architecture=architecture, dimensions=dimensions, in_channels=2, out_channels=3, task=task,
                  base_filters=12 if architecture == "swinunetr" else 4, depth=2)
    values.update(changes)
    return ModelSpec(**values)


def tiny_input(spec: ModelSpec, batch: int = 2) -> torch.Tensor:
    """A patch of 16 per axis for segmentation networks; 20 (not a power of two) for vgg16, 36 for
    the backbones that shrink their input 32 times."""
    size = {"vgg16": 20, "swinunetr": 64, **{name: 36 for name in BACKBONES}}.get(spec.architecture, 16)
    return torch.randn(batch, spec.in_channels, *[size] * spec.dimensions)


def first_conv(model: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))


def expected_shape(spec: ModelSpec, x: torch.Tensor) -> tuple[int, ...]:
    if spec.task == "segmentation":
        return (x.shape[0], spec.out_channels, *x.shape[2:])
    return (x.shape[0], spec.out_channels)


@pytest.mark.parametrize(("architecture", "dimensions"), CASES)
def test_forward_and_backward(architecture: str, dimensions: int) -> None:
    torch.manual_seed(0)
    spec = tiny_spec(architecture, dimensions)
    model = build_model(spec)
    x = tiny_input(spec)
    output = model(x)
    assert output.shape == expected_shape(spec, x)
    assert first_conv(model).in_channels == spec.in_channels
    loss = (output - torch.randn_like(output)).square().mean()
    loss.backward()
    grad = first_conv(model).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    torch.onnx.export(model, x, str(path), opset_version=17, dynamo=False, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})


def run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x.numpy()})[0]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("architecture", "dimensions"), CASES)
def test_onnx_export_matches_onnxruntime(architecture: str, dimensions: int, tmp_path: Path) -> None:
    torch.manual_seed(1)
    spec = tiny_spec(architecture, dimensions)
    model = build_model(spec)
    with torch.no_grad():
        model(tiny_input(spec, batch=4))      # batch-norm statistics of real inputs, as training leaves them
    model.eval()
    export_onnx(model, tiny_input(spec, batch=2), tmp_path / "model.onnx")
    x = tiny_input(spec, batch=3)  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        expected = model(x).numpy()
    actual = run_onnx(tmp_path / "model.onnx", x)
    assert actual.shape == expected.shape == expected_shape(spec, x)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)
    assert np.abs(expected).max() > 1e-3


@pytest.mark.filterwarnings("ignore")
def test_batch_norm_statistics_reach_onnx(tmp_path: Path) -> None:
    torch.manual_seed(2)
    spec = tiny_spec("resunet", 2, norm="batch")
    model = build_model(spec)
    with torch.no_grad():
        model(tiny_input(spec) * 3 + 1)  # training mode: running statistics move away from 0 and 1
    model.eval()
    norm = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert norm.running_mean.abs().max() > 1e-3
    export_onnx(model, tiny_input(spec), tmp_path / "model.onnx")
    x = tiny_input(spec, batch=1)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run_onnx(tmp_path / "model.onnx", x), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("norm", "norm_type"), [("batch", nn.BatchNorm3d), ("instance", nn.InstanceNorm3d),
                                                 ("none", None)])
@pytest.mark.parametrize("architecture", OWN_SEGMENTATION + ("vgg16",))
def test_norm_variants(architecture: str, norm: str, norm_type: type | None) -> None:
    spec = tiny_spec(architecture, 3, norm=norm)
    model = build_model(spec)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm3d, nn.InstanceNorm3d))]
    if norm_type is None:
        assert norms == [] and first_conv(model).bias is not None
    else:
        assert norms and all(type(m) is norm_type for m in norms)
        assert all(m.affine for m in norms)
        assert first_conv(model).bias is None  # a normalisation follows
    x = tiny_input(spec)
    assert model(x).shape == expected_shape(spec, x)


@pytest.mark.parametrize(("norm", "norm_type"), [("batch", nn.BatchNorm3d), ("instance", nn.InstanceNorm3d)])
@pytest.mark.parametrize("architecture", MONAI)
def test_monai_networks_take_the_specs_norm_and_refuse_none(architecture: str, norm: str, norm_type: type) -> None:
    model = build_model(tiny_spec(architecture, 3, norm=norm))
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm3d, nn.InstanceNorm3d, nn.GroupNorm))]
    assert norms and all(type(m) is norm_type for m in norms)
    with pytest.raises(ModelSpecError, match=f"norm: {architecture} needs a normalisation"):
        tiny_spec(architecture, 3, norm="none")


def test_dynunet_is_nnunets_layout_and_segresnet_takes_depth_and_width() -> None:
    dynunet = build_model(tiny_spec("dynunet", 3, base_filters=32, depth=5)).network
    assert dynunet.filters == [32, 64, 128, 256, 320, 320] and dynunet.strides == [1, 2, 2, 2, 2, 2]
    assert dynunet.deep_supervision is False
    segresnet = build_model(tiny_spec("segresnet", 3, base_filters=8, depth=3)).network
    assert segresnet.init_filters == 8 and segresnet.blocks_down == (1, 2, 2, 4)


def test_registry_is_exactly_the_five_architectures() -> None:
    assert sorted(ARCHITECTURES) == sorted(ALL)
    with pytest.raises(TypeError, match="ModelSpec"):
        build_model({"architecture": "unet"})  # type: ignore[arg-type]


def test_spec_round_trips_through_a_plain_dict(tmp_path: Path) -> None:
    spec = ModelSpec("uinc", 3, 4, 2, "segmentation", base_filters=8, depth=3, norm="batch", dropout=0.25)
    data = spec.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert ModelSpec.from_dict(data) == spec
    torch.save({"spec": data}, tmp_path / "checkpoint.pt")
    loaded = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ModelSpec.from_dict(loaded["spec"]) == spec


def test_defaults_fill_optional_fields_and_integer_dropout_becomes_float() -> None:
    spec = ModelSpec.from_dict({"architecture": "unet", "dimensions": 2, "in_channels": 1, "out_channels": 2,
                                "task": "segmentation", "dropout": 0})
    assert (spec.base_filters, spec.depth, spec.norm, spec.dropout) == (16, 4, "instance", 0.0)
    assert isinstance(spec.dropout, float)


GOOD = tiny_spec("unet", 3).to_dict()
BAD_SPECS = [
    ({"colour": "red"}, "colour: unknown key"),
    ({"architecture": "resnet"}, "architecture: must be one of unet, resunet, uinc, fcn, segresnet, dynunet, swinunetr, "
                                 "vgg16, resnet18, densenet121, efficientnet_b0, got 'resnet'"),
    ({"dimensions": 4}, "dimensions: must be one of 2, 3, got 4"),
    ({"dimensions": True}, "dimensions: must be one of 2, 3, got True"),
    ({"in_channels": 0}, "in_channels: must be an integer >= 1, got 0"),
    ({"out_channels": 2.0}, "out_channels: must be an integer >= 1, got 2.0"),
    ({"task": "detection"}, "task: must be one of segmentation, classification, regression"),
    ({"base_filters": "16"}, "base_filters: must be an integer between 4 and 512, got '16'"),
    ({"base_filters": 2}, "base_filters: must be an integer between 4 and 512, got 2"),
    ({"depth": 0}, "depth: must be an integer between 1 and 6, got 0"),
    ({"depth": 7}, "depth: must be an integer between 1 and 6, got 7"),
    ({"norm": "group"}, "norm: must be one of batch, instance, none, got 'group'"),
    ({"dropout": 1.0}, "dropout: must be a number >= 0 and < 1, got 1.0"),
    ({"dropout": float("nan")}, "dropout: must be a number >= 0 and < 1, got nan"),
    ({"architecture": "vgg16"}, "architecture: vgg16 predicts one vector per image"),
    ({"task": "classification"},
     "architecture: unet predicts a segmentation map, not a classification output; use one of vgg16, resnet18"),
    ({"task": "regression", "architecture": "fcn"}, "architecture: fcn predicts a segmentation map"),
]


@pytest.mark.parametrize(("change", "message"), BAD_SPECS)
def test_bad_specs_are_refused_with_their_location(change: dict, message: str) -> None:
    data = {**GOOD, **change}
    with pytest.raises(ModelSpecError, match=re.escape(f"model.{message}")) as caught:
        ModelSpec.from_dict(data, where="model")
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)
    if "colour" not in change:
        with pytest.raises(ValueError, match=re.escape(message)):
            ModelSpec(**data)


def test_missing_keys_and_non_mappings_are_refused() -> None:
    data = dict(GOOD)
    del data["task"], data["in_channels"]
    with pytest.raises(ModelSpecError, match="in_channels: is required") as caught:
        ModelSpec.from_dict(data)
    assert "task: is required" in str(caught.value)
    with pytest.raises(ModelSpecError, match="model: must be a mapping"):
        ModelSpec.from_dict(["unet"], where="model")


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ModelSpecError) as caught:
        ModelSpec.from_dict({**GOOD, "depth": -1, "norm": "layer", "dropout": 2})
    assert all(key in str(caught.value) for key in ("depth:", "norm:", "dropout:"))


def test_filters_double_per_level_up_to_the_cap() -> None:
    assert level_filters(tiny_spec("unet", 3, base_filters=4, depth=6)) == [4, 8, 16, 32, 64, 64, 64]
    assert level_filters(tiny_spec("unet", 3, base_filters=32, depth=5)) == [32, 64, 128, 256, 320, 320]


def test_required_divisor() -> None:
    assert required_divisor(tiny_spec("unet", 3, depth=3)) == 8
    assert required_divisor(tiny_spec("fcn", 2, depth=4)) == 16
    assert required_divisor(tiny_spec("vgg16", 3)) == 1


@pytest.mark.parametrize("architecture", SEGMENTATION)
def test_a_patch_not_divisible_by_the_divisor_is_refused(architecture: str) -> None:
    spec = tiny_spec(architecture, 2, depth=3)
    check_patch_size(spec, (16, 24))
    with pytest.raises(ModelSpecError, match=r"\(16, 12\) must be a positive multiple of 8"):
        check_patch_size(spec, (16, 12))
    with pytest.raises(ValueError, match=r"\(16, 12\) must be a positive multiple of 8"):
        build_model(spec)(torch.zeros(1, 2, 16, 12))
    with pytest.raises(ModelSpecError, match="a 2D model needs 2"):
        check_patch_size(spec, (16, 16, 16))


def test_instance_norm_needs_more_than_one_voxel_at_the_coarsest_level() -> None:
    spec = tiny_spec("unet", 3, depth=2)
    with pytest.raises(ModelSpecError, match="single voxel at the coarsest level"):
        check_patch_size(spec, (4, 4, 4))
    check_patch_size(tiny_spec("unet", 3, depth=2, norm="batch"), (4, 4, 4))
    vgg = tiny_spec("vgg16", 2)
    with pytest.raises(ModelSpecError, match="one voxel before the last pooling"):
        build_model(vgg)(torch.zeros(1, 2, 16, 16))
    check_patch_size(vgg, (17, 17))


def test_vgg16_takes_any_size_above_its_downsampling() -> None:
    spec = tiny_spec("vgg16", 3, norm="batch", task="regression", out_channels=1)
    for size in ((17, 19, 33), (17, 17, 17)):
        assert build_model(spec).eval()(torch.zeros(2, 2, *size)).shape == (2, 1)
    with pytest.raises(ModelSpecError, match="at least 17"):
        build_model(spec)(torch.zeros(1, 2, 7, 9, 33))


def test_vgg16_layout() -> None:
    model = build_model(tiny_spec("vgg16", 2, base_filters=4))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert [c.out_channels for c in convs] == [4] * 2 + [8] * 2 + [16] * 3 + [32] * 3 + [32] * 3
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 2


@pytest.mark.parametrize("architecture", ALL)
def test_initialisation_is_deterministic_under_a_seed(architecture: str) -> None:
    spec = tiny_spec(architecture, 2)
    states = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        states.append(build_model(spec).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_dropout_acts_in_training_only() -> None:
    torch.manual_seed(3)
    for spec in (tiny_spec("vgg16", 2, dropout=0.5), tiny_spec("unet", 2, dropout=0.5)):
        model = build_model(spec)
        x = tiny_input(spec)
        assert not torch.equal(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))


def test_any_channel_counts() -> None:
    for architecture in ALL:
        spec = tiny_spec(architecture, 2, in_channels=5, out_channels=1)
        x = tiny_input(spec)
        assert build_model(spec)(x).shape == expected_shape(spec, x)
    uneven = build_model(tiny_spec("uinc", 2, base_filters=6))  # 6 channels over four inception branches
    assert uneven(torch.randn(1, 2, 8, 8)).shape == (1, 3, 8, 8)


class _Bessel(nn.Module):
    """A network with an operator ONNX has no counterpart for."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.conv = nn.Conv3d(spec.in_channels, spec.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(self.conv(x))


@pytest.mark.filterwarnings("ignore")
def test_a_network_that_does_not_export_is_refused_by_trainer_check(monkeypatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tests.trainerkit import TINY_RUN, blob_subjects, write_config
    from trainer import models
    from trainer.cli import main
    from trainer.models import check_exportable

    for architecture in ALL:
        check_exportable(tiny_spec(architecture, 2 if architecture == "swinunetr" else 3))
    monkeypatch.setattr(models, "ARCHITECTURES", {**models.ARCHITECTURES, "unet": _Bessel})
    with pytest.raises(ModelSpecError, match=r"unet \(3D\) does not export to ONNX \(.*bessel"):
        check_exportable(tiny_spec("unet", 3))
    blob_subjects(tmp_path)
    result = CliRunner().invoke(main, ["check", str(write_config(tmp_path, TINY_RUN))])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "does not export to ONNX" in lines[0], result.output


@pytest.mark.filterwarnings("ignore")
def test_swinunetr_trains_exports_with_parity_and_takes_3d_and_refuses_what_it_cannot_take(tmp_path: Path) -> None:
    """MONAI's SwinUNETR, at the smallest size it takes (64: 32 for its fixed depth, twice that for
    instance normalisation): a gradient in 2D, ONNX parity on another batch size, a 3D pass."""
    torch.manual_seed(3)
    spec = tiny_spec("swinunetr", 2, base_filters=12)
    model = build_model(spec)
    x = torch.randn(2, 2, 64, 64)
    model(x).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    model.eval()
    export_onnx(model, x, tmp_path / "swin.onnx")
    other = torch.randn(3, 2, 64, 64)
    with torch.no_grad():
        expected = model(other).numpy()
    np.testing.assert_allclose(run_onnx(tmp_path / "swin.onnx", other), expected, rtol=0, atol=1e-4)
    assert np.abs(expected).max() > 1e-2
    with torch.no_grad():
        assert build_model(tiny_spec("swinunetr", 3, base_filters=12)).eval()(torch.randn(1, 2, 64, 64, 64)).shape == (
            1, 3, 64, 64, 64)
    with pytest.raises(ModelSpecError, match=r"must be a positive multiple of 32 \(its fixed depth\)"):
        check_patch_size(spec, (64, 48))
    with pytest.raises(ModelSpecError, match="single voxel at the coarsest level"):
        check_patch_size(spec, (32, 32))
    with pytest.raises(ModelSpecError, match="base_filters: swinunetr's feature size must be a multiple of 12"):
        tiny_spec("swinunetr", 2, base_filters=16)

"""What the tests against nnU-Net's and MONAI's own sliding windows share: the real CT, normalised,
the demo's bright-structures network as a torch module, and the logits `runtime predict` writes
for that network under a given window section."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from export import graphs
from tests.exportkit import base_spec, build, save_graph, write_spec

CT = "radiology/totalseg_example_ct_sm.nii.gz"
MEAN, STD = 40.0, 200.0
PATCH = (16, 48, 48)


def normalised_ct(data_dir: Path) -> np.ndarray:
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / CT))).astype(np.float32)
    return (array - MEAN) / STD


def bright_network() -> torch.nn.Module:
    """The demo's bright-structures graph (a 3 x 3 x 3 convolution, zero-padded) as a torch module."""
    tensors = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
               for t in graphs.bright_structures(3).graph.initializer}
    network = torch.nn.Conv3d(1, 2, 3, padding=1)
    network.weight.data, network.bias.data = tensors["weight"], tensors["bias"]
    return network


def runtime_logits(data_dir: Path, folder: Path, window: dict[str, Any]) -> np.ndarray:
    """The bright-structures graph packaged with the CT's normalisation, PATCH and `window`, its
    logits on the CT as `runtime predict --probabilities` writes them (activation none)."""
    from runtime.commands.cli import main

    spec = base_spec(preprocessing=[{"normalize": {"mean": [MEAN], "std": [STD]}}], patch={"size": list(PATCH)},
                     window={"skip_background": False, **window}, output={"activation": "none", "label_rule": "argmax"})
    folder.mkdir()
    result = build(save_graph(folder, graphs.bright_structures(3)), write_spec(folder, spec), folder / "repo")
    assert result.exit_code == 0, result.output
    logits = folder / "logits.nii.gz"
    result = CliRunner().invoke(main, ["predict", str(data_dir / CT), "--model", str(folder / "repo" / "bright"),
                                       "--output", str(folder / "labels.nii.gz"), "--probabilities", str(logits),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return sitk.GetArrayFromImage(sitk.ReadImage(str(logits)))


def relative_difference(written: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference, relative to each value beyond 1."""
    return float((np.abs(written - expected) / np.maximum(1.0, np.abs(expected))).max())

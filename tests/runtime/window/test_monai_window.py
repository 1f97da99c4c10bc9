"""`blending: monai` against MONAI's own sliding_window_inference: the weight map, the window starts,
and the blended logits `runtime predict` writes for a real CT against MONAI running the same
network over the same windows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from click.testing import CliRunner
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval
from onnx import numpy_helper

from export import graphs
from runtime.window.grid import window_starts
from runtime.window.weights import blending_weights
from tests.exportkit import base_spec, build, save_graph, write_spec


@pytest.mark.parametrize("patch", [(16, 48, 48), (7, 9, 11), (1, 5, 4), (64, 64), (96, 96, 96)])
def test_the_weight_map_is_monais(patch: tuple[int, ...]) -> None:
    expected = compute_importance_map(patch, mode="gaussian", sigma_scale=0.125).numpy()
    np.testing.assert_allclose(blending_weights(patch, "monai"), expected, rtol=1e-6, atol=0)


def test_the_window_starts_are_monais() -> None:
    for overlap in (0.25, 0.5, 0.75, 0.6):
        for patch in range(1, 70, 3):
            for size in range(patch, 4 * patch + 5):
                interval = _get_scan_interval((size,), (patch,), 1, (overlap,))
                expected = [window[0].start for window in dense_patch_slices((size,), (patch,), interval)]
                assert window_starts(size, patch, overlap, "monai") == expected, (size, patch, overlap)


@pytest.mark.slow
def test_runtime_predict_blends_windows_as_monai_does(data_dir: Path, tmp_path: Path) -> None:
    from runtime.commands.cli import main

    path = data_dir / "radiology/totalseg_example_ct_sm.nii.gz"
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    mean, std, patch = 40.0, 200.0, (16, 48, 48)
    graph = graphs.bright_structures(3)
    tensors = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.graph.initializer}
    network = torch.nn.Conv3d(1, 2, 3, padding=1)
    network.weight.data, network.bias.data = tensors["weight"], tensors["bias"]
    with torch.no_grad():
        expected = sliding_window_inference(torch.from_numpy((array - mean) / std)[None, None], patch, 1, network,
                                            overlap=0.5, mode="gaussian")[0].numpy()

    differences = {}
    for blending in ("monai", "gaussian"):
        spec = base_spec(preprocessing=[{"normalize": {"mean": [mean], "std": [std]}}], patch={"size": list(patch)},
                         window={"skip_background": False, "blending": blending},
                         output={"activation": "none", "label_rule": "argmax"})
        folder = tmp_path / blending
        folder.mkdir()
        result = build(save_graph(folder, graph), write_spec(folder, spec), folder / "repo")
        assert result.exit_code == 0, result.output
        logits = folder / "logits.nii.gz"
        result = CliRunner().invoke(main, ["predict", str(path), "--model", str(folder / "repo" / "bright"),
                                           "--output", str(folder / "labels.nii.gz"), "--probabilities", str(logits),
                                           "--device", "cpu"])
        assert result.exit_code == 0, result.output
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(logits)))
        differences[blending] = float((np.abs(written - expected) / np.maximum(1.0, np.abs(expected))).max())
    assert differences["monai"] < 1e-5
    assert differences["gaussian"] > 1e-3

"""`blending: nnunet` and the window starts against nnU-Net v2's own sliding window: the weight map,
the starts along an axis, and the blended logits `runtime predict` writes for a real CT against
nnU-Net's predictor running the same network over the same windows."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

from runtime.window.grid import window_starts
from runtime.window.weights import blending_weights
from tests.peerkit import PATCH, bright_network, normalised_ct, relative_difference, runtime_logits

CPU = torch.device("cpu")


@pytest.mark.parametrize("patch", [(16, 48, 48), (7, 9, 11), (1, 5, 4), (64, 64), (128, 128, 128)])
def test_the_weight_map_is_nnunets(patch: tuple[int, ...]) -> None:
    expected = compute_gaussian(patch, sigma_scale=1 / 8, value_scaling_factor=10, device=CPU).float().numpy()
    assert np.array_equal(blending_weights(patch, "nnunet"), expected)


def test_the_window_starts_are_nnunets() -> None:
    for overlap in (0.5, 0.75):
        for patch in range(4, 70, 3):
            for size in range(patch, 4 * patch + 5):
                expected = compute_steps_for_sliding_window((size,), (patch,), 1 - overlap)[0]
                assert window_starts(size, patch, overlap) == expected, (size, patch, overlap)


def nnunet_logits(network: torch.nn.Module, image: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    """nnU-Net's predictor's windows, mirroring and weight map, summed in float64 (nnU-Net sums in
    float16, which rounds logits of 40 by up to 0.5)."""
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=True, perform_everything_on_device=False,
                                device=CPU, allow_tqdm=False)
    predictor.network = network
    predictor.configuration_manager = SimpleNamespace(patch_size=list(patch))
    predictor.allowed_mirroring_axes = (0, 1, 2)
    data = torch.from_numpy(image)[None]
    weights = compute_gaussian(patch, sigma_scale=1 / 8, value_scaling_factor=10, device=CPU).double()
    sums = torch.zeros((2, *image.shape), dtype=torch.float64)
    counts = torch.zeros(image.shape, dtype=torch.float64)
    with torch.no_grad():
        for window in predictor._internal_get_sliding_window_slicers(image.shape):
            logits = predictor._internal_maybe_mirror_and_predict(data[window][None])[0].double()
            sums[window] += logits * weights
            counts[window[1:]] += weights
    return (sums / counts).numpy()


@pytest.mark.slow
def test_runtime_predict_blends_windows_as_nnunet_does(data_dir: Path, tmp_path: Path) -> None:
    expected = nnunet_logits(bright_network(), normalised_ct(data_dir), PATCH)
    differences = {blending: relative_difference(runtime_logits(data_dir, tmp_path / blending, {
        "blending": blending, "mirror_axes": [0, 1, 2]}), expected) for blending in ("nnunet", "gaussian")}
    assert differences["nnunet"] < 1e-5
    assert differences["gaussian"] > 1e-3

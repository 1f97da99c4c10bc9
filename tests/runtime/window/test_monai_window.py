"""`blending: monai` against MONAI's own sliding_window_inference: the weight map, the window starts,
and the blended logits `runtime predict` writes for a real CT against MONAI running the same
network over the same windows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval

from runtime.window.grid import window_starts
from runtime.window.weights import blending_weights
from tests.peerkit import PATCH, bright_network, normalised_ct, relative_difference, runtime_logits


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
    with torch.no_grad():
        expected = sliding_window_inference(torch.from_numpy(normalised_ct(data_dir))[None, None], PATCH, 1,
                                            bright_network(), overlap=0.5, mode="gaussian")[0].numpy()
    differences = {blending: relative_difference(runtime_logits(data_dir, tmp_path / blending, {"blending": blending}),
                                                 expected) for blending in ("monai", "gaussian")}
    assert differences["monai"] < 1e-5
    assert differences["gaussian"] > 1e-3

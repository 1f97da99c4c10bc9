"""Validation on patches mined from slides: overlap scores over all the patches' pixels together,
so a patch without a class, which one stray pixel would score 0, weighs as little as its pixels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.manifest import ClassSpec, WindowSection
from trainer.evaluate import evaluate
from trainer.losses import build_loss
from trainer.sampling import Sample


class Sign(torch.nn.Module):
    """Class 1 where the input is positive: logits (-x, x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x, x], dim=1) * 10


def test_patch_scores_are_pooled_over_pixels_and_whole_subjects_are_averaged():
    stray, found = np.full((1, 16, 16), -1.0, np.float32), np.full((1, 16, 16), -1.0, np.float32)
    stray[0, 3, 3] = 1.0                                         # one wrong pixel where the truth has none
    found[0, 4:14, 4:14] = 1.0
    truth_found = np.zeros((16, 16), np.int64)
    truth_found[4:14, 4:14] = 1
    samples = [Sample("a", stray, np.zeros((16, 16), np.int64), spacing=(1.0, 1.0)),
               Sample("b", found, truth_found, spacing=(1.0, 1.0))]
    window = WindowSection("sliding", (16, 16), 0.0, "constant", 1, (), False)
    classes = [ClassSpec(0, "background"), ClassSpec(1, "stroma")]
    loss = build_loss("ce", "segmentation")
    model, cpu = Sign().eval(), torch.device("cpu")
    each = evaluate(model, cpu, samples, "segmentation", window, classes, loss)
    together = evaluate(model, cpu, samples, "segmentation", window, classes, loss, pooled=True)
    averaged, pooled = each.scores, together.scores
    assert [case["dice_stroma"] for case in each.cases] == [0.0, 1.0]         # the stray pixels' subject scores 0
    assert [case["subject_id"] for case in each.cases] == ["a", "b"] and together.cases == ()
    assert averaged["dice_stroma"] == pytest.approx(0.5)
    assert pooled["dice_stroma"] == pytest.approx(200 / 201) and pooled["dice_mean"] == pooled["dice_stroma"]
    assert "hd95_stroma" in averaged and "hd95_stroma" not in pooled
    assert pooled["loss"] == pytest.approx(averaged["loss"])

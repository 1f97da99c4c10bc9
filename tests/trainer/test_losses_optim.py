"""Losses and learning-rate schedules compute what their names promise."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.losses import LOSSES, LOSSES_BY_TASK, build_loss, focal_loss, soft_dice_loss
from trainer.optim import Schedule, build_optimizer


def _logits_for(target: torch.Tensor, classes: int, strength: float = 20.0) -> torch.Tensor:
    return F.one_hot(target, classes).movedim(-1, 1).float() * strength


def test_dice_loss_is_zero_for_a_perfect_prediction_and_near_one_for_the_opposite():
    target = torch.randint(0, 3, (2, 8, 8, 8))
    assert float(soft_dice_loss(_logits_for(target, 3), target)) < 1e-3
    wrong = (target + 1) % 3
    assert float(soft_dice_loss(_logits_for(wrong, 3), target)) > 0.99


def test_cross_entropy_family_matches_torch():
    logits, target = torch.randn(4, 3, 5, 5), torch.randint(0, 3, (4, 5, 5))
    ce = F.cross_entropy(logits, target)
    assert torch.allclose(LOSSES["ce"](logits, target), ce)
    assert torch.allclose(LOSSES["dice_ce"](logits, target), ce + soft_dice_loss(logits, target))
    assert float(focal_loss(logits, target)) < float(ce)
    assert torch.allclose(focal_loss(logits, target, gamma=0.0), ce, atol=1e-6)


def test_class_weights_weigh_each_term_by_its_true_class():
    logits, target = torch.randn(4, 3, 5, 5), torch.randint(0, 3, (4, 5, 5))
    weights = torch.tensor([0.2, 1.0, 7.5])
    ce = F.cross_entropy(logits, target, weight=weights)
    assert torch.allclose(build_loss("ce", "segmentation", weights)(logits, target), ce)
    assert torch.allclose(build_loss("dice_ce", "segmentation", weights)(logits, target),
                          ce + soft_dice_loss(logits, target))
    per_voxel = F.cross_entropy(logits, target, reduction="none")
    pt = torch.exp(-per_voxel)
    by_hand = (weights[target] * (1 - pt) ** 2 * per_voxel).sum() / weights[target].sum()
    assert torch.allclose(build_loss("focal", "segmentation", weights)(logits, target), by_hand, atol=1e-6)
    assert torch.allclose(build_loss("dice_focal", "segmentation", weights)(logits, target),
                          by_hand + soft_dice_loss(logits, target), atol=1e-6)
    even = torch.ones(3)
    assert torch.allclose(build_loss("focal", "segmentation", even)(logits, target), focal_loss(logits, target))
    scores, labels = torch.randn(6, 2), torch.tensor([0, 0, 0, 0, 0, 1])
    assert torch.allclose(build_loss("ce", "classification", torch.tensor([0.6, 3.0]))(scores, labels),
                          F.cross_entropy(scores, labels, weight=torch.tensor([0.6, 3.0])))
    with pytest.raises(ValueError, match="loss 'dice' does not take class weights"):
        build_loss("dice", "segmentation", weights)


def test_regression_losses_take_a_flat_target():
    prediction, target = torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 5.0])
    assert float(LOSSES["mse"](prediction, target)) == pytest.approx(2.5)
    assert float(LOSSES["l1"](prediction, target)) == pytest.approx(1.5)


def test_build_loss_refuses_a_loss_that_does_not_fit_the_task():
    for task, names in LOSSES_BY_TASK.items():
        for name in names:
            assert build_loss(name, task) is LOSSES[name]
    with pytest.raises(ValueError, match="does not fit a regression model"):
        build_loss("dice", "regression")


def _schedule(name: str, **kwargs) -> tuple[torch.optim.Optimizer, Schedule]:
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], "sgd", lr=1.0)
    return optimizer, Schedule(optimizer, name, epochs=10, **kwargs)


def _lrs(optimizer, schedule, epochs, losses=None):
    values = []
    for epoch in range(epochs):
        values.append(optimizer.param_groups[0]["lr"])
        schedule.step(None if losses is None else losses[epoch])
    return values


def test_warmup_then_cosine_to_zero():
    optimizer, schedule = _schedule("cosine", warmup_epochs=2)
    lrs = _lrs(optimizer, schedule, 11)
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert lrs[3] == pytest.approx(0.5 * (1 + math.cos(math.pi / 8)))
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)


def test_step_and_plateau_decay():
    optimizer, schedule = _schedule("step", step_size=3, gamma=0.1)
    assert _lrs(optimizer, schedule, 7) == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01])
    optimizer, schedule = _schedule("plateau", patience=1, gamma=0.5)
    assert _lrs(optimizer, schedule, 6, losses=[1.0, 0.9, 0.9, 0.9, 0.8, 0.8]) == pytest.approx(
        [1, 1, 1, 1, 0.5, 0.5])


def test_schedule_state_round_trips():
    optimizer, schedule = _schedule("plateau", patience=0, gamma=0.5)
    _lrs(optimizer, schedule, 3, losses=[1.0, 1.0, 1.0])
    other_optimizer, other = _schedule("plateau", patience=0, gamma=0.5)
    other.load_state_dict(schedule.state_dict())
    assert other_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 0.25


def test_optimizers_by_name():
    params = [torch.nn.Parameter(torch.zeros(1))]
    assert isinstance(build_optimizer(params, "adamw", 1e-3), torch.optim.AdamW)
    assert build_optimizer(params, "sgd", 0.1, momentum=0.9).param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="none of sgd, adam, adamw"):
        build_optimizer(params, "lion", 1e-3)


# --- the losses a config may name beyond Dice and cross-entropy, against values worked by hand ---

def _four_voxels() -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes over four voxels whose softmax gives class 1 the probabilities 0.8, 0.3, 0.6,
    0.1, against the labels 1, 1, 0, 0. By hand, class 1: TP 1.1, FP 0.7, FN 0.9, TN 1.3; class 0:
    TP 1.3, FP 0.9, FN 0.7, TN 1.1."""
    p = torch.tensor([0.8, 0.3, 0.6, 0.1], dtype=torch.float64)
    logits = torch.stack([torch.zeros(4, dtype=torch.float64), torch.log(p / (1 - p))])[None].float()
    return logits, torch.tensor([[1, 1, 0, 0]])


@pytest.mark.parametrize("name,expected", [
    ("tversky", 1 - 1.1 / (1.1 + 0.3 * 0.7 + 0.7 * 0.9)),                          # 0.432990
    ("focal_tversky", (1 - 1.1 / (1.1 + 0.3 * 0.7 + 0.7 * 0.9)) ** 0.75),          # 0.533770
    ("generalised_dice", 1 - 2 * (0.25 * 1.3 + 0.25 * 1.1) / (0.25 * 4.2 + 0.25 * 3.8)),   # 0.4
    ("mcc", 1 - (1.1 * 1.3 - 0.7 * 0.9) / math.sqrt(1.8 * 2.0 * 2.0 * 2.2)),       # 0.798992
])
def test_each_segmentation_loss_gives_the_value_worked_by_hand(name, expected):
    logits, target = _four_voxels()
    assert float(LOSSES[name](logits, target)) == pytest.approx(expected, abs=1e-5)


def test_dice_focal_is_the_sum_of_its_parts_and_every_new_loss_is_zero_when_perfect_and_learns():
    logits, target = torch.randn(2, 3, 6, 6), torch.randint(0, 3, (2, 6, 6))
    assert torch.allclose(LOSSES["dice_focal"](logits, target), soft_dice_loss(logits, target)
                          + focal_loss(logits, target))
    for name in ("tversky", "focal_tversky", "generalised_dice", "dice_focal", "mcc"):
        assert float(LOSSES[name](_logits_for(target, 3), target)) < 1e-3, name
        weights = torch.zeros(2, 3, 6, 6, requires_grad=True)
        LOSSES[name](weights, target).backward()
        assert torch.isfinite(weights.grad).all() and weights.grad.abs().sum() > 0, name


def test_generalised_dice_stays_finite_when_a_class_is_absent_from_the_batch():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1                                         # class 2 appears nowhere
    assert math.isfinite(float(LOSSES["generalised_dice"](torch.randn(1, 3, 4, 4), target)))


def test_huber_and_smooth_l1_by_hand():
    prediction, target = torch.tensor([[0.5], [4.0]]), torch.tensor([0.0, 1.0])
    # errors 0.5 (squared half: 0.125) and 3 (linear: 3 - 0.5 = 2.5)
    assert float(LOSSES["huber"](prediction, target)) == pytest.approx(1.3125)
    assert float(LOSSES["smooth_l1"](prediction, target)) == pytest.approx(1.3125)


def test_poly_exponential_and_one_cycle_schedules_by_hand():
    optimizer, schedule = _schedule("poly")
    lrs = _lrs(optimizer, schedule, 10)
    assert lrs[0] == 1.0 and lrs[5] == pytest.approx(0.5 ** 0.9) and lrs[9] == pytest.approx(0.1 ** 0.9)
    optimizer, schedule = _schedule("exponential", gamma=0.5)
    assert _lrs(optimizer, schedule, 4) == pytest.approx([1, 0.5, 0.25, 0.125])
    optimizer, schedule = _schedule("onecycle")
    lrs = _lrs(optimizer, schedule, 10)                       # rise over 3 epochs, fall over the last 6
    assert lrs[0] == pytest.approx(1 / 25) and lrs[1] == pytest.approx(1 / 25 + (1 - 1 / 25) * 0.25)
    assert lrs[3] == pytest.approx(1.0) and max(lrs) == lrs[3]
    assert lrs[9] == pytest.approx(1 / 25e4)


@pytest.mark.parametrize("name", ["rmsprop", "radam", "sgd"])
def test_each_optimizer_descends_a_quadratic(name):
    weight = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    optimizer = build_optimizer([weight], name, lr=0.05)
    for _ in range(50):
        optimizer.zero_grad()
        (weight ** 2).sum().backward()
        optimizer.step()
    assert float((weight.detach() ** 2).sum()) < 13.0 * 0.5
    if name == "sgd":
        assert optimizer.param_groups[0]["nesterov"] is True

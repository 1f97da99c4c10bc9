"""Losses by name: an allow-list of what a config may ask for, per task."""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]



def _one_hot(target: torch.Tensor, classes: int) -> torch.Tensor:
    """(B, *S) class indices -> (B, K, *S) float."""
    return F.one_hot(target.long(), classes).movedim(-1, 1).to(torch.float32)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes (over all classes when there is only one)."""
    probabilities = torch.softmax(logits.float(), dim=1)
    truth = _one_hot(target, logits.shape[1])
    axes = (0, *range(2, logits.ndim))
    overlap = (probabilities * truth).sum(axes)
    total = probabilities.sum(axes) + truth.sum(axes)
    dice = (2 * overlap + smooth) / (total + smooth)
    return 1 - (dice[1:] if logits.shape[1] > 1 else dice).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    log_p = F.log_softmax(logits.float(), dim=1)
    log_pt = log_p.gather(1, target.long().unsqueeze(1)).squeeze(1)
    return (-((1 - log_pt.exp()) ** gamma) * log_pt).mean()


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target.long())


def _dice_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return soft_dice_loss(logits, target) + _cross_entropy(logits, target)


def _bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each class against a one-hot target (multi-label style heads)."""
    return F.binary_cross_entropy_with_logits(logits.float(), _one_hot(target, logits.shape[1]))


def _mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(prediction.float(), target.float().reshape(prediction.shape))


def _l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(prediction.float(), target.float().reshape(prediction.shape))


LOSSES: dict[str, Loss] = {
    "dice": soft_dice_loss, "ce": _cross_entropy, "dice_ce": _dice_ce, "focal": focal_loss,
    "bce": _bce, "mse": _mse, "l1": _l1,
}
LOSSES_BY_TASK: Mapping[str, tuple[str, ...]] = {
    "segmentation": ("dice", "ce", "dice_ce", "focal"),
    "classification": ("ce", "focal", "bce"),
    "regression": ("mse", "l1"),
}


def build_loss(name: str, task: str) -> Loss:
    if name not in LOSSES_BY_TASK[task]:
        raise ValueError(f"loss {name!r} does not fit a {task} model; use one of {', '.join(LOSSES_BY_TASK[task])}")
    return LOSSES[name]

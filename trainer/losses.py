"""Losses by name: an allow-list of what a config may ask for, per task."""
from __future__ import annotations

import functools
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


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of -(1 - p_t)^gamma log p_t; with a `weight` per class, the mean weighted by each
    voxel's (or subject's) true class, as cross-entropy's weight is."""
    log_p = F.log_softmax(logits.float(), dim=1)
    log_pt = log_p.gather(1, target.long().unsqueeze(1)).squeeze(1)
    losses = -((1 - log_pt.exp()) ** gamma) * log_pt
    if weight is None:
        return losses.mean()
    weights = weight.to(losses.device)[target.long()]
    return (weights * losses).sum() / weights.sum()


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target.long(),
                           weight=None if weight is None else weight.to(logits.device))


def _dice_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    return soft_dice_loss(logits, target) + _cross_entropy(logits, target, weight)


def _bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each class against a one-hot target (multi-label style heads)."""
    return F.binary_cross_entropy_with_logits(logits.float(), _one_hot(target, logits.shape[1]))


def _mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(prediction.float(), target.float().reshape(prediction.shape))


def _l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(prediction.float(), target.float().reshape(prediction.shape))


def _soft_counts(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Soft true positives, false positives, false negatives and true negatives per class (K,),
    summed over the batch and every voxel, from the softmax of `logits` against one-hot `target`."""
    probabilities = torch.softmax(logits.float(), dim=1)
    truth = _one_hot(target, logits.shape[1])
    axes = (0, *range(2, logits.ndim))
    tp = (probabilities * truth).sum(axes)
    fp = (probabilities * (1 - truth)).sum(axes)
    fn = ((1 - probabilities) * truth).sum(axes)
    tn = ((1 - probabilities) * (1 - truth)).sum(axes)
    return tp, fp, fn, tn


def _foreground(values: torch.Tensor) -> torch.Tensor:
    """The foreground classes' values (all of them when there is only one class)."""
    return values[1:] if values.shape[0] > 1 else values


def tversky_index(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.3, beta: float = 0.7,
                  smooth: float = 1e-5) -> torch.Tensor:
    """TP / (TP + alpha FP + beta FN) per class (Salehi et al. 2017); beta > alpha weighs misses
    more than false alarms, for small structures."""
    tp, fp, fn, _ = _soft_counts(logits, target)
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def tversky_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - the mean Tversky index of the foreground classes (alpha 0.3, beta 0.7)."""
    return 1 - _foreground(tversky_index(logits, target)).mean()


def focal_tversky_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 0.75) -> torch.Tensor:
    """The mean of (1 - Tversky index) ** gamma over the foreground classes (Abraham & Khan 2019,
    their 1 / gamma = 4/3): classes already well segmented weigh less."""
    return ((1 - _foreground(tversky_index(logits, target))).clamp_min(0) ** gamma).mean()


def generalised_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - 2 sum_k w_k TP_k / sum_k w_k (2 TP_k + FP_k + FN_k), w_k = 1 / (voxels of class k)^2 over
    every class (Sudre et al. 2017): each class counts alike whatever its size. A class absent
    from the batch takes the largest weight of the present ones instead of an infinite one."""
    tp, fp, fn, _ = _soft_counts(logits, target)
    volume = tp + fn
    weights = 1 / volume.clamp_min(1e-12) ** 2
    present = volume > 0
    if present.any():
        weights = torch.where(present, weights, weights[present].max())
    return 1 - (2 * (weights * tp).sum() + smooth) / ((weights * (2 * tp + fp + fn)).sum() + smooth)


def mcc_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - the mean soft Matthews correlation coefficient of the foreground classes, each against
    the rest (Abhishek & Hamarneh 2021): it counts true negatives too, so an empty prediction of
    an empty class is not rewarded for free as Dice's smoothing does."""
    tp, fp, fn, tn = _soft_counts(logits, target)
    mcc = (tp * tn - fp * fn) / torch.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn) + smooth)
    return 1 - _foreground(mcc).mean()


def _dice_focal(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    return soft_dice_loss(logits, target) + focal_loss(logits, target, weight=weight)


def _huber(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error within 1 of the target, absolute error beyond (delta 1)."""
    return F.huber_loss(prediction.float(), target.float().reshape(prediction.shape), delta=1.0)


def _smooth_l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Half the squared error within 1 of the target, absolute error less a half beyond (beta 1)."""
    return F.smooth_l1_loss(prediction.float(), target.float().reshape(prediction.shape), beta=1.0)


LOSSES: dict[str, Loss] = {
    "dice": soft_dice_loss, "ce": _cross_entropy, "dice_ce": _dice_ce, "focal": focal_loss,
    "tversky": tversky_loss, "focal_tversky": focal_tversky_loss, "generalised_dice": generalised_dice_loss,
    "dice_focal": _dice_focal, "mcc": mcc_loss,
    "bce": _bce, "mse": _mse, "l1": _l1, "huber": _huber, "smooth_l1": _smooth_l1,
}
LOSSES_BY_TASK: Mapping[str, tuple[str, ...]] = {
    "segmentation": ("dice", "ce", "dice_ce", "focal", "tversky", "focal_tversky", "generalised_dice", "dice_focal",
                     "mcc"),
    "classification": ("ce", "focal", "bce"),
    "regression": ("mse", "l1", "huber", "smooth_l1"),
}


# The losses that take a weight per class (`training.class_weights`): the cross-entropy and focal
# terms weigh each voxel's (or subject's) term by its true class; Dice terms are unchanged.
WEIGHTED_LOSSES = ("ce", "dice_ce", "focal", "dice_focal")


def build_loss(name: str, task: str, class_weights: torch.Tensor | None = None, ignored: int | None = None) -> Loss:
    """The loss `name` for `task`, with `class_weights` (one per class index) where given; with
    `ignored` (a segmentation's class index of unannotated voxels), over the annotated voxels only."""
    if name not in LOSSES_BY_TASK[task]:
        raise ValueError(f"loss {name!r} does not fit a {task} model; use one of {', '.join(LOSSES_BY_TASK[task])}")
    loss = LOSSES[name]
    if class_weights is not None:
        if name not in WEIGHTED_LOSSES:
            raise ValueError(f"loss {name!r} does not take class weights; use one of {', '.join(WEIGHTED_LOSSES)}")
        loss = functools.partial(loss, weight=class_weights.float())
    return loss if ignored is None else functools.partial(annotated_only, loss, ignored=ignored)


def annotated_only(loss: Loss, logits: torch.Tensor, target: torch.Tensor, ignored: int) -> torch.Tensor:
    """`loss` of the voxels whose target is not `ignored`, gathered into one batch of one image:
    every segmentation loss here sums (or averages) over the batch and the voxels together, so
    this is the loss with the ignored voxels taken out. 0 (with a gradient) where none is annotated."""
    kept = target != ignored
    count = int(kept.sum())                                  # one wait for the device, not two
    if count == kept.numel():
        return loss(logits, target)
    if count == 0:
        return logits.sum() * 0.0
    voxels = logits.movedim(1, -1)[kept]                     # (N, K)
    return loss(voxels.T.unsqueeze(0), target[kept].unsqueeze(0))

"""Optimizers and learning-rate schedules by name, stepped once per epoch."""
from __future__ import annotations

import math
from typing import Iterable

import torch

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "radam")
SCHEDULERS = ("none", "cosine", "step", "plateau", "poly", "onecycle", "exponential")
POLY_EXPONENT = 0.9                      # nnU-Net's (1 - epoch / epochs) ** 0.9
ONECYCLE_RISE = 0.3                      # the share of the epochs the one-cycle rise takes
ONECYCLE_START, ONECYCLE_END = 1 / 25, 1 / 25e4   # its first and last multipliers (torch's defaults)


def build_optimizer(parameters: Iterable[torch.nn.Parameter], name: str, lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr, weight_decay=weight_decay, momentum=momentum)
    if name == "radam":
        return torch.optim.RAdam(parameters, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer {name!r} is none of {', '.join(OPTIMIZERS)}")


class Schedule:
    """Linear warm-up over the first epochs, then cosine, step, plateau, poly (nnU-Net), one-cycle
    or exponential decay (or constant), as a multiplier of each group's learning rate per epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, name: str, epochs: int, warmup_epochs: int = 0,
                 step_size: int = 10, gamma: float = 0.5, patience: int = 5) -> None:
        if name not in SCHEDULERS:
            raise ValueError(f"scheduler {name!r} is none of {', '.join(SCHEDULERS)}")
        self.optimizer, self.name, self.epochs = optimizer, name, epochs
        self.warmup, self.step_size, self.gamma, self.patience = warmup_epochs, step_size, gamma, patience
        self.base_lr = [group["lr"] for group in optimizer.param_groups]
        self.epoch = 0
        self.plateau_scale, self.best, self.bad_epochs = 1.0, math.inf, 0
        self._apply()

    def factor(self, epoch: int) -> float:
        """Learning-rate multiplier for an epoch (0-based), plateau decay aside."""
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        after = epoch - self.warmup
        if self.name == "cosine":
            span = max(1, self.epochs - self.warmup)
            return 0.5 * (1 + math.cos(math.pi * min(after, span) / span))
        if self.name == "step":
            return self.gamma ** (after // self.step_size)
        span = max(1, self.epochs - self.warmup)
        if self.name == "poly":
            return max(0.0, 1 - after / span) ** POLY_EXPONENT
        if self.name == "exponential":
            return self.gamma ** after
        if self.name == "onecycle":
            return _one_cycle(after, span)
        return 1.0

    def step(self, monitored_loss: float | None = None) -> None:
        """End of an epoch; `monitored_loss` (lower is better) drives plateau decay."""
        self.epoch += 1
        if self.name == "plateau" and monitored_loss is not None:
            if monitored_loss < self.best - 1e-8:
                self.best, self.bad_epochs = monitored_loss, 0
            else:
                self.bad_epochs += 1
                if self.bad_epochs > self.patience:
                    self.plateau_scale *= self.gamma
                    self.bad_epochs = 0
        self._apply()

    def _apply(self) -> None:
        scale = self.factor(self.epoch) * self.plateau_scale
        for group, base in zip(self.optimizer.param_groups, self.base_lr):
            group["lr"] = base * scale

    def state_dict(self) -> dict[str, float]:
        return {"epoch": self.epoch, "plateau_scale": self.plateau_scale, "best": self.best,
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.epoch = int(state["epoch"])
        self.plateau_scale, self.best = float(state["plateau_scale"]), float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self._apply()


def _one_cycle(epoch: int, span: int) -> float:
    """Up from ONECYCLE_START to 1 over the first ONECYCLE_RISE of `span` epochs, then down to
    ONECYCLE_END by the last, both along a cosine (Smith's one-cycle policy, as torch's OneCycleLR)."""
    rise = max(1, round(ONECYCLE_RISE * span))
    if epoch < rise:
        return ONECYCLE_START + (1 - ONECYCLE_START) * (1 - math.cos(math.pi * epoch / rise)) / 2
    fall = max(1, span - 1 - rise)
    return ONECYCLE_END + (1 - ONECYCLE_END) * (1 + math.cos(math.pi * min(epoch - rise, fall) / fall)) / 2

"""Training one (testing, validation) fold: epochs, validation, checkpoints, early stopping, metrics."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from runtime.errors import InputError, ModelError, OutputError, brief
from runtime.metrics import mean_std
from trainer.atomic import replace_text
from trainer.augment import build_augmentation
from trainer.config import Config, config_hash
from trainer.data import window_steps, with_steps
from trainer.distributed import Distributed
from trainer.evaluate import Evaluation, evaluate
from trainer.losses import build_loss
from trainer.models import ModelSpec, build_model
from trainer.optim import Schedule, build_optimizer
from trainer.progress import Ticking, progress_bar, step_progress
from trainer.sampling import IGNORED, Sample, annotated, is_annotated, patch_loader
from trainer.splits import Fold
from trainer.summary import save_figure

log = logging.getLogger(__name__)

# An epoch's training loss past this many times its fold's first batch loss or lowest epoch loss,
# and past DIVERGED_AT, is a training that diverged (a loss near 1 gone to 1e16: a learning rate
# far too high).
DIVERGED = 1000.0
DIVERGED_AT = 100.0


@dataclass
class LossWatch:
    """A fold's training losses as they come: the first batch's (the untrained model's) and the
    lowest epoch mean, which an epoch's mean is held against (`diverged`)."""

    first: float = math.inf
    lowest_epoch: float = math.inf
    said: bool = False

    def diverged(self, batch_losses: Sequence[float]) -> float | None:
        """The epoch's mean loss where it diverged, the first time; None else."""
        if not batch_losses:
            return None
        self.first = batch_losses[0] if math.isinf(self.first) else self.first
        mean, baseline = float(np.mean(batch_losses)), min(self.first, self.lowest_epoch)
        self.lowest_epoch = min(self.lowest_epoch, mean)
        if self.said or not (mean > DIVERGED_AT and mean > DIVERGED * baseline):
            return None
        self.said = True
        return mean


@dataclass
class FoldState:
    """What a fold has reached; saved in every checkpoint so a run can resume exactly."""

    epoch: int = 0
    best: float = math.nan
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def model_spec(config: Config) -> ModelSpec:
    classes = len(config.classes)
    return ModelSpec(architecture=config.model.architecture, dimensions=config.dimensions,
                     in_channels=len(config.data.channels), out_channels=classes, task=config.task,
                     base_filters=config.model.base_filters, depth=config.model.depth, norm=config.model.norm,
                     dropout=config.model.dropout)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _improved(value: float, best: float, mode: str, loss: float = math.nan, best_loss: float = math.nan) -> bool:
    """Whether an epoch's validation `value` beats the best so far; on a tie (a balanced accuracy of
    a small validation set saturates early), the lower validation loss wins, so the best checkpoint
    is not the first epoch that reached the value, undertrained."""
    if math.isnan(best):
        return not math.isnan(value)
    if value == best:
        return loss < best_loss
    return value > best if mode == "max" else value < best


class RunClock:
    """The epochs a run has left and the seconds its epochs took: the time still to come."""

    def __init__(self, epochs: int) -> None:
        self.left = epochs
        self.seconds: list[float] = []

    def ran(self, seconds: float) -> None:
        self.left = max(0, self.left - 1)
        self.seconds.append(seconds)

    def skip(self, epochs: int) -> None:
        """Epochs that will not run after all (a fold resumed after them, or stopped early)."""
        self.left = max(0, self.left - epochs)

    def eta(self) -> float:
        return float(np.mean(self.seconds)) * self.left if self.seconds else math.nan


def epoch_line(fold: str, row: dict[str, Any], epochs: int, seconds: float, eta: float) -> str:
    """`fold 1.1 epoch 3/50: train_loss 0.412, validation_dice_mean 0.781, … 12.4 s, ETA 9 min 12 s`."""
    shown = [key for key in row if key == "train_loss" or (key.startswith("validation_") and _headline(key))]
    values = ", ".join(f"{key} {_short(row[key])}" for key in shown)
    return f"fold {fold} epoch {row['epoch']}/{epochs}: {values}, {seconds:.1f} s, ETA {_duration(eta)}"


def _headline(key: str) -> bool:
    """The validation metrics an epoch's line shows: the loss, the task's summary metrics and each
    class's Dice (the CSV holds every metric)."""
    metric = key[len("validation_"):]
    return metric in ("loss", "accuracy", "balanced_accuracy", "auc", "mse", "mae") or metric.startswith("dice_")


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def fold_class_weights(config: Config, train: Sequence[Sample]) -> np.ndarray | None:
    """The loss's weight per class index, or None where `training.class_weights` is not set: as the
    config maps them (a class it does not name weighs 1), or "balanced", scikit-learn's balanced
    weights over the fold's training subjects: their count over the classes present times each
    class's count, divided into the total (label voxels of the preprocessed volumes for
    segmentation, subjects for classification); a class absent from them takes the largest."""
    setting = config.training.class_weights
    if setting is None:
        return None
    if not isinstance(setting, str):
        return np.array([setting.get(c.value, 1.0) for c in config.classes], dtype=np.float64)
    counts = np.zeros(len(config.classes), dtype=np.float64)
    for sample in train:
        if config.task == "segmentation" and sample.label is not None:
            counts += np.bincount(annotated(sample.label), minlength=len(counts))[:len(counts)]
        elif sample.target is not None:
            counts[int(sample.target)] += 1
    present = counts > 0
    if not present.any():
        return np.ones(len(counts))
    weights = counts.sum() / (present.sum() * np.where(present, counts, 1.0))
    return np.where(present, weights, weights[present].max())


def refuse_unannotated(fold_id: str, roles: Mapping[str, Sequence[Sample]], metric: str = "loss") -> None:
    """InputError where the subjects of a role (training, validation) of a fold hold no annotated
    voxel at all (data.ignore_value alone): nothing would be trained, or no epoch could be chosen;
    and where, with a Dice `metric`, the validation subjects' annotated voxels hold no foreground
    class: their Dice is undefined in every epoch that finds nothing there."""
    for role, samples in roles.items():
        if samples and not any(is_annotated(s) for s in samples):
            raise InputError(f"fold {fold_id}: its {role} subject(s) ({_listed(samples)}) hold no annotated voxel, "
                             "data.ignore_value alone, so the fold can learn or choose nothing; annotate some of "
                             "them, or leave the unannotated ones out of the subject table.")
    validation = roles.get("validation", ())
    if metric.startswith("dice") and validation and not any(bool(np.any(s.label > 0)) for s in validation
                                                            if s.label is not None):
        raise InputError(f"fold {fold_id}: the annotated voxels of its validation subject(s) ({_listed(validation)}) "
                         f"hold the background alone, so their Dice is undefined and no epoch can be chosen by "
                         f"{metric}; annotate a foreground class in some of them, or set "
                         "training.early_stopping.metric: loss.")


def absent_class_warnings(config: Config, folds: Sequence[Fold], samples: Mapping[str, Sample]) -> list[str]:
    """A warning for each fold of a segmentation whose training subjects hold no voxel of a
    foreground class (it cannot learn the class), or whose validation subjects hold none (the
    class's Dice there is 1 where nothing is found and 0 where anything is, and the best epoch is
    chosen on that)."""
    if config.task != "segmentation":
        return []
    names = [c.name for c in config.classes]
    counts = {sid: np.bincount(annotated(s.label), minlength=len(names))[:len(names)] if s.label is not None
              else np.zeros(len(names), dtype=np.int64) for sid, s in samples.items()}
    warnings = []
    for fold in folds:
        for role, ids, meaning in (("training", fold.train, "it cannot learn them"),
                                   ("validation", fold.val, "their Dice there is 1 where nothing is found and 0 where "
                                                            "anything is, and the best epoch is chosen on that")):
            held = sum((counts[sid] for sid in ids if sid in counts), np.zeros(len(names), dtype=np.int64))
            absent = [name for index, name in enumerate(names) if index > 0 and held[index] == 0]
            if ids and absent:
                warnings.append(f"warning: fold {fold.id}: its {role} subject(s) hold no voxel of class(es) "
                                f"{', '.join(absent)}: {meaning}; give subjects holding them to each fold (fewer "
                                "folds, or groups)")
    return warnings


def _listed(samples: Sequence[Sample]) -> str:
    return ", ".join(s.subject_id for s in samples[:5]) + (" and more" if len(samples) > 5 else "")


class FoldTrainer:
    """One fold's model, optimiser and schedule, and the loop over its epochs. `say` gets a line
    per epoch; `clock` counts the run's epochs for the time still to come."""

    def __init__(self, config: Config, fold: Fold, samples: dict[str, Sample], folder: Path,
                 dist: Distributed, clock: RunClock | None = None, say: Callable[[str], None] = print) -> None:
        self.config, self.fold, self.folder, self.dist = config, fold, folder, dist
        self.clock = clock or RunClock(config.training.epochs)
        self.say = say
        self.losses = LossWatch()
        self.train = [samples[s] for s in fold.train]
        self.val = [samples[s] for s in fold.val]
        self.test = [samples[s] for s in fold.test]
        self.device = dist.device
        seed_everything(config.seed)
        self.spec = model_spec(config)
        self.model = build_model(self.spec).to(self.device)
        self.net = dist.wrap(self.model)
        optimizer = config.training.optimizer
        self.optimizer = build_optimizer(self.model.parameters(), optimizer.name, optimizer.lr,
                                         optimizer.weight_decay, optimizer.momentum or 0.0)
        scheduler = config.training.scheduler
        self.schedule = Schedule(self.optimizer, scheduler.name, config.training.epochs, scheduler.warmup_epochs,
                                 scheduler.step_size, scheduler.gamma, scheduler.patience)
        weights = fold_class_weights(config, self.train)
        if weights is not None:
            how = (f"balanced over the fold's {len(self.train)} training subject(s)"
                   if config.training.class_weights == "balanced" else "training.class_weights")
            named = ", ".join(f"{c.name} {w:.4g}" for c, w in zip(config.classes, weights))
            say(f"fold {fold.id}: class weights {named} ({how})")
        self.loss_fn = build_loss(config.training.loss, config.task,
                                  None if weights is None else torch.from_numpy(weights),
                                  ignored=None if config.data.ignore_value is None else IGNORED)
        self.amp = self._mixed_precision()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.device.type == "cuda")
        stopping = config.training.early_stopping
        self.metric, self.mode = stopping.metric, stopping.mode
        self.state = FoldState()
        self.cases: dict[str, tuple[dict[str, Any], ...]] = {}
        self.pictures: dict[str, tuple[tuple[str, Any], ...]] = {}

    def _mixed_precision(self) -> bool:
        setting = self.config.training.mixed_precision
        if setting == "auto":
            return self.device.type == "cuda"
        return bool(setting)

    # --- checkpoints -------------------------------------------------------------------------

    def _checkpoint(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "model_spec": self.spec.to_dict(),
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(),
                "state": {"epoch": self.state.epoch, "best": self.state.best, "best_epoch": self.state.best_epoch,
                          "bad_epochs": self.state.bad_epochs, "history": json.dumps(self.state.history)},
                "fold": self.fold.id, "config_hash": config_hash(self.config), "monitored": [self.metric, self.mode]}

    def _save(self, name: str) -> None:
        path = self.folder / name
        tmp = path.with_name(f".{name}.partial")
        try:
            torch.save(self._checkpoint(), tmp)
            tmp.replace(path)
        except (OSError, RuntimeError) as exc:
            tmp.unlink(missing_ok=True)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "the disk may be full"
            raise OutputError(f"{path} cannot be written ({reason}); the fold's last finished epoch is kept: free "
                              "space, then run again with --resume.") from None

    def resume(self) -> bool:
        """Continue from last.pt when it exists; True when it did."""
        path = self.folder / "last.pt"
        if not path.is_file():
            return False
        try:
            saved = torch.load(path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.schedule.load_state_dict(saved["schedule"])
            self.scaler.load_state_dict(saved["scaler"])
            state = saved["state"]
            self.state = FoldState(epoch=int(state["epoch"]), best=float(state["best"]),
                                   best_epoch=int(state["best_epoch"]), bad_epochs=int(state["bad_epochs"]),
                                   history=json.loads(state["history"]))
        except (OSError, torch.cuda.OutOfMemoryError) as exc:
            raise InputError(f"{path} cannot be read now ({type(exc).__name__}: {brief(exc, 120)}); the checkpoint "
                             "itself may be fine: free the memory or mend the storage, then run again.") from None
        except Exception as exc:  # noqa: BLE001 - torch and the state's fields fail in many ways on a damaged file
            raise InputError(f"{path} cannot be resumed from ({type(exc).__name__}: {brief(exc, 120)}); the "
                             f"checkpoint is damaged: remove {self.folder} to train fold {self.fold.id} again from its "
                             "start.") from None
        log.info("fold %s resumes after epoch %d", self.fold.id, self.state.epoch)
        self.clock.skip(self.state.epoch)
        return True

    # --- epochs ----------------------------------------------------------------------------------

    def _loader(self, epoch: int) -> torch.utils.data.DataLoader:
        patch = self.config.patch
        fill = 0 if self.config.data.ignore_value is None else IGNORED        # moved in from outside: unannotated
        augmentation = with_steps(build_augmentation(self.config.augmentation, self.config.dimensions,
                                                     label_fill=fill),
                                  window_steps(self.config), self.config.dimensions)
        seed = self.config.seed * 100_003 + epoch * 1_009 + self.dist.rank
        return patch_loader(self.train, patch_size=patch.size, sampler=patch.sampler,
                            label_probabilities=self._label_probabilities(), per_volume=patch.per_volume,
                            queue_length=patch.queue_length, workers=patch.workers,
                            batch_size=self.config.training.batch_size, augmentation=augmentation,
                            dimensions=self.config.dimensions, seed=seed, task=self.config.task)

    def _label_probabilities(self) -> dict[int, float] | None:
        """The config weighs classes by label value; samples hold class indices."""
        weights = self.config.patch.label_probabilities
        if weights is None:
            return None
        index = {c.value: i for i, c in enumerate(self.config.classes)}
        return {index[value]: weight for value, weight in weights.items()}

    def _step(self, batch: dict[str, torch.Tensor], tally: "TrainTally") -> float:
        image = batch["image"].to(self.device, non_blocking=True)
        target = batch["label" if self.config.task == "segmentation" else "target"].to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.amp,
                            dtype=torch.float16 if self.device.type == "cuda" else torch.bfloat16):
            output = self.net(image)
            loss = self.loss_fn(output, target)
        tally.add(output.detach(), target)
        if not torch.isfinite(loss):
            raise ModelError(f"fold {self.fold.id}: the training loss became {float(loss.detach())}; lower "
                             "training.optimizer.lr or set training.grad_clip, then run again with --resume.")
        self.scaler.scale(loss).backward()
        if self.config.training.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.training.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the epoch's patches; the training loss and metrics of its batches."""
        seed_everything(self.config.seed * 7_919 + epoch)
        self.net.train()
        loader = self._loader(epoch)
        losses, sizes = [], []
        tally = TrainTally(self.config.task, [c.name for c in self.config.classes],
                           sparse=self.config.data.ignore_value is not None)
        label = f"fold {self.fold.id} epoch {epoch + 1}/{self.config.training.epochs}"
        with progress_bar(len(loader), label, enabled=self.dist.is_main) as bar:
            for batch in loader:
                losses.append(self._step(batch, tally))
                sizes.append(len(batch["image"]))
                bar.update(1)
        diverged = self.losses.diverged(losses)
        if diverged is not None and self.dist.is_main:      # weights not yet overflowed (which stops the fold)
            self.say(f"warning: fold {self.fold.id} epoch {epoch + 1}: the training loss ({diverged:.3g}) rose past "
                     f"{DIVERGED:g} times its first or lowest ({min(self.losses.first, self.losses.lowest_epoch):.3g})"
                     ": the training diverged, and its model predicts nothing useful; lower training.optimizer.lr (or "
                     "set training.grad_clip) and train again")
        loss = float(np.average(losses, weights=sizes))         # per sample, as the tally's figures are
        return {"train_loss": loss, **{f"train_{k}": v for k, v in tally.result().items()}}

    def _evaluate(self, samples: Sequence[Sample]) -> Evaluation:
        return evaluate(self.model, self.device, samples, self.config.task, self.config.inference,
                        self.config.classes, self.loss_fn, window_steps(self.config),
                        pooled=self.config.slide is not None, ignored=self.config.data.ignore_value is not None)

    def _record(self, epoch: int, train: dict[str, float]) -> dict[str, Any]:
        """The epoch's row: its training figures and the scores of each split it evaluates (whose
        rows per subject `self.cases` keeps until the epoch is judged)."""
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], **train}
        self.cases, self.pictures = {}, {}
        for split, samples in (("validation", self.val), ("testing", self.test)):
            if samples:
                label = f"fold {self.fold.id} epoch {epoch + 1} {split}"
                with step_progress(len(samples), label, "subjects", self.say, enabled=self.dist.is_main) as bar:
                    evaluation = self._evaluate(Ticking(samples, bar))
                row.update({f"{split}_{k}": v for k, v in evaluation.scores.items()})
                self.cases[split], self.pictures[split] = evaluation.cases, evaluation.pictures
        return row

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the fold's result (best epoch and its metrics)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        while self.state.epoch < self.config.training.epochs and not self._stopped():
            epoch = self.state.epoch
            started = time.perf_counter()
            train = self._train_epoch(epoch)
            self._check_weights(epoch)
            validate = (epoch + 1) % self.config.training.val_every == 0 or epoch + 1 == self.config.training.epochs
            if self.dist.is_main:
                row = self._record(epoch, train) if validate else {"epoch": epoch + 1, **train}
                self._after_epoch(row)
                seconds = time.perf_counter() - started
                self.clock.ran(seconds)
                self.say(epoch_line(self.fold.id, row, self.config.training.epochs, seconds, self.clock.eta()))
            self.state.epoch += 1
            self.schedule.step(self._plateau_value())
            if self.dist.is_main:
                self._save("last.pt")
            self.dist.barrier()
        return self._result() if self.dist.is_main else {}

    def _check_weights(self, epoch: int) -> None:
        """Weights that overflowed (a learning rate far too high) make every output NaN; say so here,
        not as a validation output that is not finite."""
        if not all(bool(torch.isfinite(value).all()) for value in self.model.state_dict().values()
                   if value.is_floating_point()):
            raise ModelError(f"fold {self.fold.id}: the model's weights are no longer finite after epoch {epoch + 1}: "
                             "training diverged; lower training.optimizer.lr or set training.grad_clip, then run "
                             "again with --resume.")

    def _after_epoch(self, row: dict[str, Any]) -> None:
        self.state.history.append(row)
        key = f"validation_{self.metric}"
        if key in row and not _undefined(row[key]):
            best_row = next((r for r in self.state.history if r["epoch"] == self.state.best_epoch), {})
            if _improved(row[key], self.state.best, self.mode, _number(row.get("validation_loss")),
                         _number(best_row.get("validation_loss"))):
                self.state.best, self.state.best_epoch, self.state.bad_epochs = row[key], row["epoch"], 0
                self._save("best.pt")
                self._write_cases()
            else:
                self.state.bad_epochs += 1
        write_rows(self.folder / "metrics.csv", self.state.history)
        plot_curves(self.state.history, self.folder / "curves.png", self.metric)

    def _write_cases(self) -> None:
        """The best epoch's row per subject of each split it scored one by one, as
        `<split>_cases.csv` (replaced whole, once best.pt, whose epoch they are, is), and a
        segmentation's picture of each subject in `<split>_pictures/` (trainer.pictures)."""
        from trainer.pictures import write_pictures

        for split, cases in self.cases.items():
            if cases:
                write_rows(self.folder / f"{split}_cases.csv", cases)
        for split, pictures in self.pictures.items():
            if pictures:
                write_pictures(self.folder / f"{split}_pictures", pictures, len(self.config.classes))

    def _plateau_value(self) -> float | None:
        last = self.state.history[-1] if self.state.history else {}
        value = last.get(f"validation_{self.metric}")
        if value is None or _undefined(value):
            return None
        return -value if self.mode == "max" else value

    def _stopped(self) -> bool:
        patience = self.config.training.early_stopping.patience
        return patience is not None and self.state.bad_epochs >= patience

    def _result(self) -> dict[str, Any]:
        best = next((r for r in self.state.history if r["epoch"] == self.state.best_epoch), {})
        result = {"fold": self.fold.id, "best_epoch": self.state.best_epoch, "monitored": self.metric,
                  "epochs_run": self.state.epoch, "stopped_early": self._stopped(),
                  "validation": {k[len("validation_"):]: _defined(v) for k, v in best.items()
                                 if k.startswith("validation_")},
                  "testing": {k[len("testing_"):]: _defined(v) for k, v in best.items() if k.startswith("testing_")}}
        replace_text(self.folder / "result.json", json.dumps(result, indent=2) + "\n")
        self.clock.skip(self.config.training.epochs - self.state.epoch)
        return result


class TrainTally:
    """Metrics of one epoch's training batches, from the outputs the steps computed anyway."""

    def __init__(self, task: str, class_names: Sequence[str], sparse: bool = False) -> None:
        self.task, self.names, self.sparse = task, list(class_names), sparse
        self.overlap = np.zeros(len(self.names))
        self.total = np.zeros(len(self.names))
        self.count = self.correct = 0
        self.squared = self.absolute = 0.0

    def add(self, output: torch.Tensor, target: torch.Tensor) -> None:
        if self.task == "segmentation":
            predicted = torch.where(target == IGNORED, IGNORED, output.argmax(1))
            for k in range(1, len(self.names)):
                self.overlap[k] += float(((predicted == k) & (target == k)).sum())
                self.total[k] += float((predicted == k).sum() + (target == k).sum())
        elif self.task == "classification":
            self.correct += int((output.argmax(1) == target).sum())
        else:
            error = output[:, 0].float() - target.float()
            self.squared += float((error ** 2).sum())
            self.absolute += float(error.abs().sum())
        self.count += int(target.shape[0])

    def result(self) -> dict[str, float]:
        if self.task == "segmentation":
            absent = math.nan if self.sparse else 1.0         # a class no batch annotated or found
            dice = {f"dice_{n}": 2 * o / t if t else absent
                    for n, o, t in zip(self.names[1:], self.overlap[1:], self.total[1:])}
            return {**dice, "dice_mean": mean_std(list(dice.values()))[0]}
        if self.task == "classification":
            return {"accuracy": self.correct / max(1, self.count)}
        return {"mse": self.squared / max(1, self.count), "mae": self.absolute / max(1, self.count)}


def _undefined(value: Any) -> bool:
    """A metric no subject defined (NaN: nothing of a class annotated or found); the epoch then tells
    nothing of the model, better or worse."""
    return isinstance(value, float) and math.isnan(value)


def _defined(value: Any) -> Any:
    """None for a metric undefined on every subject (NaN): JSON has no NaN."""
    return None if _undefined(value) else value


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """A CSV of `rows` (the columns of all of them, in the order first met), replaced whole."""
    header = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    replace_text(path, text.getvalue())


def plot_curves(history: list[dict[str, Any]], path: Path, metric: str) -> None:
    """Loss and the monitored metric per epoch, for every split that has them; replaced whole after
    each epoch, so a viewer never opens a half-written picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, axis in (("loss", left), (metric, right)):
        for split in ("train", "validation", "testing"):
            points = [(r["epoch"], r[f"{split}_{key}"]) for r in history if f"{split}_{key}" in r]
            if points:
                axis.plot(*zip(*points), marker="o", label=split)
        axis.set_xlabel("epoch")
        axis.set_title(key)
        axis.legend()
    figure.tight_layout()
    save_figure(figure, path)

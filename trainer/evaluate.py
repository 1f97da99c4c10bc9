"""Evaluating a torch model on whole preprocessed subjects: segmentation through the runtime's own
sliding window (the same code that runs in the clinic), classification and regression on whole images.

`steps` are preprocessing steps still to run: on each window before the model (a histology model's
intensity steps, as the runtime runs them on each slide window), or on each whole image.

An evaluation gives the scores over the samples and, where they are scored subject by subject, a
row per subject (`Evaluation.cases`), with the columns `runtime predict --csv` writes for the same
model: what a run keeps of its best epoch, to find the subjects a model fails on."""
from __future__ import annotations

import dataclasses
import gc
import math
import logging
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from runtime import metrics
from runtime.manifest import ClassSpec, WindowSection
from runtime.backends.execution import sliding_window
from runtime.preprocess import Record, invert_rows, rows_needed
from runtime.slab_labels import slabs
from runtime.preprocess.steps import Step
from trainer.data import preprocess_window
from trainer.losses import Loss
from trainer.sampling import IGNORED, Sample, is_annotated

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The scores over the samples, and a row per sample (`subject_id` first) where they were
    scored one by one: none where they were pooled (patches)."""

    scores: dict[str, float]
    cases: tuple[dict[str, Any], ...] = ()
    pictures: tuple[tuple[str, Any], ...] = ()      # (subject, trainer.pictures.Slice)


def torch_predictor(models: torch.nn.Module | Sequence[torch.nn.Module], device: torch.device,
                    activation: str = "softmax", steps: Sequence[Step] = ()) -> Callable[[np.ndarray], np.ndarray]:
    """A `predict(batch) -> batch` callable for the runtime's window core: the mean over the models of
    their softmax (or raw, for "none") outputs — what an exported ensemble graph computes per window —
    after `steps` on each window."""
    members = list(models) if isinstance(models, Sequence) else [models]

    def predict(batch: np.ndarray) -> np.ndarray:
        if steps:
            batch = np.stack([preprocess_window(window, steps) for window in batch])
        with torch.inference_mode():
            inputs = torch.from_numpy(batch).to(device)
            outputs = [m(inputs).float() for m in members]
            if activation == "softmax":
                outputs = [torch.softmax(o, dim=1) for o in outputs]
            return torch.stack(outputs).mean(0).cpu().numpy()

    return predict


def segment(models: torch.nn.Module | Sequence[torch.nn.Module], device: torch.device, image: np.ndarray,
            window: WindowSection, steps: Sequence[Step] = (), foreground: np.ndarray | None = None,
            classes: int | None = None) -> np.ndarray:
    """Class probabilities (K, *spatial) of an image (preprocessed but for `steps`, which run on each
    window), blended over windows as the runtime does: with `foreground` (the voxels non-zero as
    read) and `window.skip_background`, the windows holding none are skipped and the voxels no
    window covers are the background's (one-hot over `classes`), as the runtime skips them."""
    predictor = torch_predictor(models, device, steps=steps)
    if foreground is None or not window.spec.skip_empty:
        spec = dataclasses.replace(window.spec, skip_empty=False)
        return sliding_window(image, predictor, spec, beside_model=device.type != "cpu")
    if classes is None:
        raise ValueError("segment: skipping background windows needs the number of classes, for the voxels they leave")
    return sliding_window(image, predictor, window.spec, foreground=foreground, background=_background(classes),
                          beside_model=device.type != "cpu")


def _background(classes: int) -> np.ndarray:
    """The probabilities (K,) of the background alone: what the runtime gives where no window ran."""
    background = np.zeros(classes, dtype=np.float32)
    background[0] = 1.0
    return background


def segmentation_metrics(model: torch.nn.Module, device: torch.device, samples: Sequence[Sample],
                         window: WindowSection, classes: Sequence[ClassSpec], loss_fn: Loss,
                         steps: Sequence[Step] = (), pooled: bool = False, ignored: bool = False) -> Evaluation:
    """Loss, Dice per foreground class and their mean, averaged over whole subjects (with each
    subject's row: its loss and scores); with `pooled`
    (patches mined from slides), the overlap scores of every sample's pixels counted together,
    as nnU-Net's online validation counts its patches: a patch holding none of a class, which
    one stray pixel would score 0, then weighs as little as its pixels do. With `ignored`, the
    labels' IGNORED voxels count in no score (runtime.metrics.sparse_scores), and a sample without
    an annotated voxel in none of the means.

    The loss takes log-probabilities as its logits: softmax gives the blended probabilities back."""
    pictures: list[tuple[str, Any]] = []
    scored = _segmented(model, device, samples, window, loss_fn, steps, len(classes), None if pooled else pictures)
    ignore = IGNORED if ignored else None
    if pooled:
        return Evaluation(_pooled_metrics(scored, classes, ignore))
    rows: list[dict[str, Any]] = []
    for sample, labels, loss in scored:
        row: dict[str, Any] = {"subject_id": sample.subject_id, "loss": loss}
        reference, spacing = ((sample.label, sample.spacing) if sample.reference is None else
                              (sample.reference, sample.reference_spacing))
        row.update(metrics.class_scores(labels, reference, [(i, c.name) for i, c in enumerate(classes) if i > 0],
                                        spacing, ignore=ignore))
        rows.append(row)
    scores = {key: metrics.mean_std([r[key] for r in rows])[0] for key in rows[0] if key != "subject_id"}
    return Evaluation(scores, tuple(rows), tuple(pictures))


def _segmented(model: torch.nn.Module, device: torch.device, samples: Sequence[Sample], window: WindowSection,
               loss_fn: Loss, steps: Sequence[Step], classes: int,
               pictures: list[tuple[str, Any]] | None = None) -> Iterator[tuple[Sample, np.ndarray, float]]:
    """Each sample with its class indices, as the runtime's sliding window gives them (brought back
    onto the grid as read, as the runtime brings them, where the sample has a `reference` there),
    and its loss on the preprocessed grid (on log-probabilities, which softmax turns back into the
    blended probabilities); each sample's picture slice (trainer.pictures) added to `pictures` where given."""
    from trainer.pictures import picture_slice

    for sample in samples:
        probabilities = segment(model, device, sample.image, window, steps, sample.foreground, classes)
        if sample.label is None:
            raise ValueError(f"subject {sample.subject_id} has no label map to evaluate against")
        if pictures is not None:
            pictures.append((sample.subject_id, picture_slice(sample.image, sample.label, probabilities)))
        log_p = torch.from_numpy(np.log(np.maximum(probabilities, 1e-8)))[None]
        loss = float(loss_fn(log_p, torch.from_numpy(sample.label)[None])) if is_annotated(sample) else math.nan
        if sample.reference is None:
            yield sample, np.argmax(probabilities, axis=0), loss
        else:
            yield sample, labels_as_read(sample.record, probabilities, _background(classes)), loss


def labels_as_read(record: Record, probabilities: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The class indices on the grid as read of probabilities (K, *preprocessed grid): brought back
    through the preprocessing `record` and labelled a slab of rows at a time, as the runtime labels
    them (runtime.slab_labels), so that no class map of the grid as read is ever whole."""
    labels = np.empty(record.original_shape, dtype=np.int16)
    for first, stop in slabs(record, probabilities.shape[0]):
        low, high = rows_needed(record, first, stop)
        part = invert_rows(record, probabilities[:, low:high], low, first, stop, background, "linear")
        labels[first:stop] = np.argmax(part, axis=0)
    return labels


def _pooled_metrics(scored: Iterable[tuple[Sample, np.ndarray, float]],
                    classes: Sequence[ClassSpec], ignore: int | None) -> dict[str, float]:
    """The loss averaged over the samples, and the overlap scores of each foreground class from
    its counts summed over all their pixels but those `ignore` marks (no surface distances: a
    patch's edges are no organ's)."""
    foreground = [(i, c.name) for i, c in enumerate(classes) if i > 0]
    counts = np.zeros((len(foreground), 4), dtype=np.int64)
    losses, partial = [], False
    for sample, labels, loss in scored:
        losses.append(loss)
        reference = sample.label if sample.reference is None else sample.reference
        partial = partial or (ignore is not None and bool(np.any(reference == ignore)))
        kept = (labels, reference) if ignore is None else metrics.annotated(labels, reference, ignore)
        counts += [metrics.overlap_counts(*kept, index) for index, _ in foreground]
    row = {"loss": metrics.mean_std(losses)[0]}
    absent = math.nan if partial else 1.0           # a class partial labels do not hold may lie where none looked
    for (_, name), summed in zip(foreground, counts.tolist()):
        scores = metrics.overlap_from_counts(*summed, absent=absent)
        row.update({f"{metric}_{name}": score for metric, score in scores.items()})
    row["dice_mean"] = metrics.mean_std([row[f"dice_{name}"] for _, name in foreground])[0]
    return row


def score_metrics(model: torch.nn.Module, device: torch.device, samples: Sequence[Sample], task: str,
                  classes: Sequence[ClassSpec], loss_fn: Loss, steps: Sequence[Step] = ()) -> Evaluation:
    """Loss and the task's metrics on whole images, after `steps` on each (classification: accuracy,
    balanced accuracy, AUC), and each subject's row (`_score_cases`)."""
    outputs, targets, ids = [], [], []
    with torch.inference_mode():
        for sample in samples:                      # once: `samples` may tick a progress bar as it is read
            image = preprocess_window(sample.image, steps)
            outputs.append(model(torch.from_numpy(image)[None].to(device)).float().cpu()[0])
            targets.append(sample.target)
            ids.append(sample.subject_id)
    stacked = torch.stack(outputs)
    truth = torch.tensor(targets, dtype=torch.int64 if task == "classification" else torch.float32)
    result = {"loss": float(loss_fn(stacked, truth))}
    if task == "classification":
        probabilities = torch.softmax(stacked, dim=1).numpy()
        predicted = probabilities.argmax(axis=1)
        result.update(accuracy=metrics.accuracy(predicted, truth.numpy()),
                      balanced_accuracy=metrics.balanced_accuracy(predicted, truth.numpy()),
                      auc=metrics.auc(probabilities, truth.numpy(), list(range(stacked.shape[1]))))
        return Evaluation(result, _score_cases(ids, targets, probabilities, classes, task))
    values = metrics.regression(stacked[:, 0].numpy(), truth.numpy())
    result.update(mse=values["mse"], mae=values["mae"])
    return Evaluation(result, _score_cases(ids, targets, stacked[:, :1].numpy(), classes, task))


def _score_cases(ids: Sequence[str], targets: Sequence[Any], outputs: np.ndarray, classes: Sequence[ClassSpec],
                 task: str) -> tuple[dict[str, Any], ...]:
    """A row per subject as `runtime predict --csv` writes one: classification its predicted class
    value, each class's probability and its reference class value; regression the prediction,
    named as the target, and its reference value."""
    if task == "classification":
        return tuple({"subject_id": subject, "predicted": classes[int(np.argmax(row))].value,
                      **{f"probability_{c.name}": float(p) for c, p in zip(classes, row)},
                      "label": classes[int(target)].value}
                     for subject, target, row in zip(ids, targets, outputs))
    return tuple({"subject_id": subject, classes[0].name: float(row[0]), "label": float(target)}
                 for subject, target, row in zip(ids, targets, outputs))


def evaluate(model: torch.nn.Module, device: torch.device, samples: Sequence[Sample], task: str,
             window: WindowSection, classes: Sequence[ClassSpec], loss_fn: Loss,
             steps: Sequence[Step] = (), pooled: bool = False, ignored: bool = False) -> Evaluation:
    """The task's metrics over `samples`, with `steps` still to run on each window or image. A GPU
    that runs out of memory on a whole subject hands the evaluation to the CPU (a copy of the
    model there), with a warning, instead of ending the run: training patches fit where a whole
    validation volume may not. `pooled`: segmentation scores over all samples' pixels together;
    `ignored`: the labels' unannotated voxels left out (`segmentation_metrics`)."""
    was_training = model.training
    model.eval()
    try:
        try:
            return _metrics(model, device, samples, task, window, classes, loss_fn, steps, pooled, ignored)
        except torch.cuda.OutOfMemoryError:
            if device.type != "cuda":
                raise
        return _on_the_cpu(model, samples, task, window, classes, loss_fn, steps, pooled, ignored)
    finally:
        model.train(was_training)


def _on_the_cpu(model: torch.nn.Module, samples: Sequence[Sample], task: str, window: WindowSection,
                classes: Sequence[ClassSpec], loss_fn: Loss, steps: Sequence[Step],
                pooled: bool = False, ignored: bool = False) -> Evaluation:
    """The evaluation on the CPU after the GPU ran out of memory: the failed pass's memory let go
    first, the model moved (its parameters stay the optimiser's) and moved back after."""
    log.warning("validation ran out of GPU memory on a whole subject; validating on the CPU instead")
    home = next(model.parameters()).device
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    model.to("cpu")
    try:
        return _metrics(model, torch.device("cpu"), samples, task, window, classes, loss_fn, steps, pooled, ignored)
    finally:
        model.to(home)


def _metrics(model: torch.nn.Module, device: torch.device, samples: Sequence[Sample], task: str,
             window: WindowSection, classes: Sequence[ClassSpec], loss_fn: Loss,
             steps: Sequence[Step], pooled: bool = False, ignored: bool = False) -> Evaluation:
    if task == "segmentation":
        return segmentation_metrics(model, device, samples, window, classes, loss_fn, steps, pooled, ignored)
    return score_metrics(model, device, samples, task, classes, loss_fn, steps)

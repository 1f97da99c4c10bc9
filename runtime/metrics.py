"""Metrics of predictions against reference labels, in numpy: what a `--csv` run with a label column
reports per subject and over all subjects."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Normalised surface Dice counts the surface within this many millimetres of the other surface.
NSD_TOLERANCE_MM = 1.0


def relabel(values: np.ndarray, mapping: dict[int, int], ignore: int | None = None) -> np.ndarray:
    """A label map of many structures as the few classes scored or trained: each value of `mapping`
    becomes its class, `ignore` (the value of unannotated voxels) stays itself, and every other
    value becomes the background (0)."""
    out = np.zeros(np.shape(values), dtype=np.int64)
    for source, target in mapping.items():
        out[values == source] = target
    if ignore is not None:
        out[values == ignore] = ignore
    return out


def in_classes_already(held: set[int], mapping: dict[int, int], classes: set[int], ignore: int | None = None) -> bool:
    """Whether a reference holding the values `held` is taken as in the `classes` already, and a
    model's recorded training `mapping` is not applied to it: every value it holds is a class value
    (or the background, or `ignore`), and none is one the mapping names."""
    return held - {ignore} <= {0, *classes} and not held & set(mapping)


def dice(prediction: np.ndarray, reference: np.ndarray, value: int) -> float:
    """Dice of one label value; 1.0 when the value is absent from both (nothing to find, nothing found)."""
    p = prediction == value
    r = reference == value
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / total


def overlap_scores(prediction: np.ndarray, reference: np.ndarray, value: int) -> dict[str, float]:
    """Dice, IoU, sensitivity, specificity and precision of one label value. Dice and IoU are 1
    when the value is absent from both; a ratio whose denominator is empty (sensitivity with no
    reference voxel, precision with no predicted one, specificity where every voxel is the value)
    is NaN: undefined, not perfect."""
    return overlap_from_counts(*overlap_counts(prediction, reference, value))


def overlap_counts(prediction: np.ndarray, reference: np.ndarray, value: int) -> tuple[int, int, int, int]:
    """True positives, false positives, false negatives and true negatives of one label value."""
    p, r = prediction == value, reference == value
    tp = int(np.count_nonzero(p & r))
    fp, fn = int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp
    return tp, fp, fn, p.size - tp - fp - fn


def overlap_from_counts(tp: int, fp: int, fn: int, tn: int, absent: float = 1.0) -> dict[str, float]:
    """`overlap_scores` from the counts (`overlap_counts`, or their sums over many images); Dice and
    IoU are `absent` where the value is in neither map."""
    return {"dice": absent if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
            "iou": absent if tp + fp + fn == 0 else tp / (tp + fp + fn),
            "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp), "precision": _ratio(tp, tp + fp)}


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


def surface_scores(prediction: np.ndarray, reference: np.ndarray, value: int, spacing: Sequence[float],
                   tolerance_mm: float = NSD_TOLERANCE_MM) -> dict[str, float]:
    """HD95 and normalised surface Dice of one label value, in millimetres on a grid of `spacing`
    (per array axis), as MONAI's `compute_hausdorff_distance(percentile=95)` and
    `compute_surface_dice` compute them. The surfaces are each mask's boundary voxels (those an
    erosion by the face neighbours removes); distances come from scipy's exact Euclidean distance
    transform to the other mask's surface, in mm. HD95 is the larger of the two directed 95th
    percentiles of surface-to-surface distance; NSD the share of both surfaces within `tolerance_mm`
    of the other (Nikolov et al.), counted in surface voxels. Both masks empty:
    HD95 0, NSD 1; one empty: HD95 NaN (no distance exists), NSD 0."""
    p, r = prediction == value, reference == value
    if not p.any() and not r.any():
        return {"hd95": 0.0, "nsd": 1.0}
    if not p.any() or not r.any():
        return {"hd95": math.nan, "nsd": 0.0}
    box = _box(p | r)
    p, r = p[box], r[box]
    p_surface, r_surface = _surface(p), _surface(r)
    p_to_r = _distance_to(r_surface, spacing)[p_surface]
    r_to_p = _distance_to(p_surface, spacing)[r_surface]
    hd95 = max(float(np.percentile(p_to_r, 95)), float(np.percentile(r_to_p, 95)))
    within = int(np.count_nonzero(p_to_r <= tolerance_mm)) + int(np.count_nonzero(r_to_p <= tolerance_mm))
    return {"hd95": hd95, "nsd": within / (p_to_r.size + r_to_p.size)}


def _box(mask: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of `mask`'s voxels widened by one voxel (kept inside the grid): every
    surface voxel of either mask lies inside, and a voxel at the box's edge is outside both masks
    unless the grid ends there, so surfaces and their distances are those of the whole grid."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(0, int(hits[0]) - 1), min(mask.shape[axis], int(hits[-1]) + 2)))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary voxels: those with a face neighbour outside it or past the grid's edge
    (scipy's erosion by its default structure, as MONAI's `get_mask_edges` finds them)."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def _distance_to(surface: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Every voxel's Euclidean distance in mm to the nearest voxel of `surface` (0 on it)."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(~surface, sampling=[float(s) for s in spacing])


def segmentation_scores(prediction: np.ndarray, reference: np.ndarray, value: int,
                        spacing: Sequence[float], tolerance_mm: float = NSD_TOLERANCE_MM) -> dict[str, float]:
    """Every per-class segmentation metric: `overlap_scores` and `surface_scores`."""
    return {**overlap_scores(prediction, reference, value),
            **surface_scores(prediction, reference, value, spacing, tolerance_mm)}


def class_scores(prediction: np.ndarray, reference: np.ndarray, classes: Sequence[tuple[int, str]],
                 spacing: Sequence[float] | None, tolerance_mm: float = NSD_TOLERANCE_MM,
                 ignore: int | None = None) -> dict[str, float]:
    """The metrics row of one subject: `<metric>_<name>` for every (value, name) of `classes`
    (`segmentation_scores`; `overlap_scores` alone where the spacing is unknown), then `dice_mean`.
    With `ignore`, the reference's value of unannotated voxels, where the reference holds it
    (`sparse_scores`): the overlap scores of its annotated voxels alone."""
    if ignore is not None and bool(np.any(np.asarray(reference) == ignore)):
        return sparse_scores(prediction, reference, classes, ignore, surfaces=spacing is not None)
    if spacing is not None:
        prediction, reference, spacing = _without_flat_axes(np.asarray(prediction), np.asarray(reference), spacing)
    row: dict[str, float] = {}
    for value, name in classes:
        scores = (segmentation_scores(prediction, reference, value, spacing, tolerance_mm) if spacing is not None
                  else overlap_scores(prediction, reference, value))
        row.update({f"{metric}_{name}": score for metric, score in scores.items()})
    row["dice_mean"] = float(np.mean([row[f"dice_{name}"] for _, name in classes]))
    return row


def _without_flat_axes(prediction: np.ndarray, reference: np.ndarray,
                       spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, Sequence[float]]:
    """Maps one voxel thick along an axis as the image of their other axes (a slice stored as a
    (1, y, x) volume is a 2D image): otherwise both its faces would be surface, and HD95 and NSD
    would measure a slab, not the structure a 2D model segments."""
    kept = [axis for axis, size in enumerate(prediction.shape) if size > 1]
    if len(kept) in (0, prediction.ndim):
        return prediction, reference, spacing
    shape = tuple(prediction.shape[axis] for axis in kept)
    return prediction.reshape(shape), reference.reshape(shape), [spacing[axis] for axis in kept]


def sparse_scores(prediction: np.ndarray, reference: np.ndarray, classes: Sequence[tuple[int, str]], ignore: int,
                  surfaces: bool = False) -> dict[str, float]:
    """`class_scores` of a reference annotated in part: the overlap scores of the voxels whose
    reference is not `ignore`, Dice and IoU undefined (NaN) for a class in neither map there, as
    a class one left unannotated may lie elsewhere; `dice_mean` over the defined ones (NaN where
    none is, a reference without an annotated voxel among them). With `surfaces`, HD95 and NSD
    are there but NaN: an annotation's edge against unannotated voxels is no structure's surface."""
    prediction, reference = annotated(prediction, reference, ignore)
    row: dict[str, float] = {}
    for value, name in classes:
        scores = overlap_from_counts(*overlap_counts(prediction, reference, value), absent=math.nan)
        if surfaces:
            scores.update(hd95=math.nan, nsd=math.nan)
        row.update({f"{metric}_{name}": score for metric, score in scores.items()})
    row["dice_mean"] = mean_std([row[f"dice_{name}"] for _, name in classes])[0]
    return row


def annotated(prediction: np.ndarray, reference: np.ndarray, ignore: int) -> tuple[np.ndarray, np.ndarray]:
    """The prediction and the reference at the voxels whose reference is not `ignore`, flat."""
    kept = np.asarray(reference) != ignore
    return np.asarray(prediction)[kept], np.asarray(reference)[kept]


def per_class(predicted: Sequence[int], truth: Sequence[int], values: Sequence[int]) -> dict[int, dict[str, float]]:
    """Precision, recall and F1 of each class value (one against the rest); NaN where undefined."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    scores = {}
    for value in values:
        said, true = predicted == value, truth == value
        tp, said_count, true_count = int(np.count_nonzero(said & true)), int(np.count_nonzero(said)), int(
            np.count_nonzero(true))
        scores[value] = {"precision": _ratio(tp, said_count), "recall": _ratio(tp, true_count),
                         "f1": _ratio(2 * tp, said_count + true_count)}
    return scores


def confusion(predicted: Sequence[int], truth: Sequence[int], values: Sequence[int]) -> np.ndarray:
    """Counts (K, K): row i the subjects whose truth is values[i], column j those predicted values[j]."""
    index = {v: i for i, v in enumerate(values)}
    matrix = np.zeros((len(values), len(values)), dtype=np.int64)
    for p, t in zip(predicted, truth):
        matrix[index[int(t)], index[int(p)]] += 1
    return matrix


def accuracy(predicted: Sequence[int], truth: Sequence[int]) -> float:
    return float(np.mean(np.asarray(predicted) == np.asarray(truth)))


def balanced_accuracy(predicted: Sequence[int], truth: Sequence[int]) -> float:
    """Mean recall over the classes present in the truth."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    recalls = [float(np.mean(predicted[truth == c] == c)) for c in np.unique(truth)]
    return float(np.mean(recalls))


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count one half)."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    unique, inverse, counts = np.unique(np.concatenate([pos, neg]), return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def auc(probabilities: np.ndarray, truth: Sequence[int], values: Sequence[int]) -> float:
    """ROC AUC: binary on the positive class, macro one-vs-rest for more classes; NaN if undefined."""
    probabilities, truth = np.asarray(probabilities, dtype=np.float64), np.asarray(truth)
    if len(values) == 2:
        return _binary_auc(probabilities[:, 1], truth == values[1])
    per_class = [_binary_auc(probabilities[:, i], truth == v) for i, v in enumerate(values)]
    defined = [a for a in per_class if not np.isnan(a)]
    return float(np.mean(defined)) if defined else float("nan")


def regression(predicted: Sequence[float], truth: Sequence[float]) -> dict[str, float]:
    p, t = np.asarray(predicted, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    error = p - t
    r = float(np.corrcoef(p, t)[0, 1]) if len(p) > 1 and p.std() > 0 and t.std() > 0 else float("nan")
    return {"mae": float(np.abs(error).mean()), "mse": float((error ** 2).mean()),
            "rmse": float(np.sqrt((error ** 2).mean())), "pearson_r": r}


def significant(value: float, digits: int = 9) -> float:
    """`value` to `digits` significant digits (9 keep a float32 whole): a figure of small units (an
    MSE of 1e-7, a probability of 1e-12) is kept, where rounding to decimal places would make it 0;
    a whole number (a count) as it is."""
    return value if isinstance(value, int) else float(f"{value:.{digits}g}")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator, as papers report folds and
    subjects) over the defined (not NaN) values; NaN where none is, and the deviation NaN for one."""
    array = np.asarray(values, dtype=np.float64)
    array = array[~np.isnan(array)]
    if not array.size:
        return math.nan, math.nan
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else math.nan

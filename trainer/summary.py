"""`trainer summary RUN_DIR`: what a run found, fold by fold, in a table and one picture.

Printed: a row per finished fold (its best epoch, the epochs it ran, whether it stopped early, the
monitored metric's validation and testing values at the best epoch), then the mean and standard
deviation over the folds. Written: `RUN_DIR/curves.png`, the monitored validation metric and the
training loss of every fold per epoch, the best epochs marked, replaced whole.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from runtime import metrics
from runtime.errors import InputError


def read_folds(run_dir: Path) -> list[dict[str, Any]]:
    """Each finished fold's result.json with its per-epoch history (metrics.csv), by fold id."""
    if not (run_dir / "run.json").is_file():
        raise InputError(f"{run_dir} is not a run folder (it holds no run.json); give the output_dir of "
                         "`trainer fit`.")
    folds = []
    for result_path in sorted((run_dir / "folds").glob("*/result.json")):
        try:
            result = json.loads(result_path.read_text(encoding="utf-8"))
            with open(result_path.parent / "metrics.csv", newline="") as handle:
                history = list(csv.DictReader(handle))
        except (OSError, ValueError, csv.Error) as exc:
            raise InputError(f"{result_path.parent} cannot be read ({exc}); was the fold written by trainer fit?") from None
        _check_result(result, result_path)
        epochs = [row.get("epoch", "") for row in history]
        if not all(isinstance(e, str) and e.isdigit() for e in epochs):
            raise InputError(f"{result_path.parent / 'metrics.csv'} has a row without a whole epoch number; "
                             "was the fold written by trainer fit?")
        folds.append({**result, "history": history})
    if not folds:
        raise InputError(f"{run_dir} holds no finished fold yet (no folds/*/result.json); run `trainer fit` first.")
    return folds


def read_run(out: Path) -> dict[str, Any]:
    """A run folder's run.json; InputError where it cannot be read or is no object (a run stopped
    while an earlier version wrote it)."""
    path = out / "run.json"
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path} cannot be read ({exc}); it is damaged: remove it and run `trainer fit` with the "
                         "same config, which finds the folds already trained with --resume.") from None
    if not isinstance(run, dict) or not isinstance(run.get("folds"), list):
        raise InputError(f"{path} is not a run's record (an object with its folds); remove it and run `trainer fit` "
                         "with the same config again.")
    return run


def unfinished_folds(run_dir: Path, folds: list[dict[str, Any]]) -> list[str]:
    """The folds run.json lists that have no result yet (a run stopped, or jobs of an array still
    running)."""
    finished = {fold["fold"] for fold in folds}
    return [str(fold) for fold in read_run(run_dir)["folds"] if str(fold) not in finished]


def _check_result(result: Any, path: Path) -> None:
    """The fields of a result.json the summary reads, with their types; InputError naming the file."""
    fields = {"fold": str, "monitored": str, "best_epoch": int, "epochs_run": int, "stopped_early": bool,
              "validation": dict, "testing": dict}
    wrong = [name for name, kind in fields.items()
             if not isinstance(result, dict) or not isinstance(result.get(name), kind)
             or (kind is int and isinstance(result.get(name), bool))]
    if wrong:
        raise InputError(f"{path} lacks or mistypes {', '.join(wrong)}; was the fold written by trainer fit?")


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def outer_fold_testing(results: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Each testing metric's value per outer fold, where an outer fold has more than one inner fold:
    the mean over its inner folds' models, which all test on the same subjects. Their mean and
    deviation are the nested cross-validation's estimate; the inner folds' own are not independent
    and understate it. Empty for a run without testing folds, or with one inner fold per outer."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for result in results:
        outer = str(result["fold"]).split(".")[0]
        if outer != "0":
            groups.setdefault(outer, []).append(result["testing"])
    if not any(len(tests) > 1 for tests in groups.values()):
        return {}
    keys = dict.fromkeys(key for tests in groups.values() for test in tests for key in test)
    per_outer = {key: [metrics.mean_std([_number(test.get(key)) for test in tests])[0] for tests in groups.values()]
                 for key in keys}
    return {key: [v for v in values if not math.isnan(v)] for key, values in per_outer.items()
            if any(not math.isnan(v) for v in values)}


def outer_fold_ensembles(run_dir: Path, results: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Each testing metric per outer fold of the ensemble of its inner folds' models, as `export
    build` ensembles models (the mean of their class probabilities, or of their values), on its testing
    subjects: from the inner folds' testing_cases.csv, for classification and regression (a
    segmentation's cases hold scores, not voxels). An outer fold is left out where one of the inner
    folds run.json lists for it has not finished, or its cases cannot be read, or it has one inner
    fold; empty where none is left (no testing folds, a segmentation)."""
    classes = _run_classes(run_dir)
    if not classes:
        return {}
    listed = _listed_folds(run_dir)
    groups: dict[str, list[Path]] = {}
    for result in results:
        outer = str(result["fold"]).split(".")[0]
        if outer != "0":
            groups.setdefault(outer, []).append(run_dir / "folds" / str(result["fold"]) / "testing_cases.csv")
    per_outer: dict[str, list[float]] = {}
    for outer, paths in groups.items():
        unfinished = listed is not None and len(paths) < sum(fold.split(".")[0] == outer for fold in listed)
        scores = None if unfinished or len(paths) < 2 else _ensemble_scores(paths, classes)
        for key, value in (scores or {}).items():
            per_outer.setdefault(key, []).append(value)
    return {key: [v for v in values if not math.isnan(v)] for key, values in per_outer.items()
            if any(not math.isnan(v) for v in values)}


def _listed_folds(run_dir: Path) -> list[str] | None:
    """The fold ids run.json lists; None where it cannot be read."""
    try:
        return [str(fold) for fold in read_run(run_dir)["folds"]]
    except InputError:
        return None


def _run_classes(run_dir: Path) -> dict[str, int] | None:
    """The run's classes (name -> value, in the model's output order) from its config.yaml, for a
    classification or regression run; None otherwise or where it cannot be read."""
    import yaml

    from runtime.contract import parse_classes
    from runtime.validation import Problems

    try:
        kept = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        task, given = kept["task"], kept["data"]["classes"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return None
    if task not in ("classification", "regression"):
        return None
    problems = Problems(str(run_dir / "config.yaml"))
    specs = parse_classes(given, task, "data.classes", problems)
    return None if problems.items or not specs else {spec.name: spec.value for spec in specs}


def _ensemble_scores(paths: Sequence[Path], classes: dict[str, int]) -> dict[str, float] | None:
    """The metrics of the mean over the folds' testing_cases.csv (`paths`) of each subject's class
    probabilities (classification: accuracy, balanced accuracy, AUC) or value (regression: MAE,
    MSE, RMSE, Pearson r); None where a table is missing, unreadable or of other subjects."""
    tables = []
    for path in paths:
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                tables.append({row["subject_id"]: row for row in csv.DictReader(handle)})
        except (OSError, UnicodeDecodeError, csv.Error, KeyError):
            return None
    subjects = sorted(tables[0])
    if not subjects or any(sorted(table) != subjects for table in tables[1:]):
        return None
    columns = [f"probability_{name}" for name in classes]
    classification = columns[0] in tables[0][subjects[0]]
    columns = columns if classification else [next(iter(classes))]
    try:
        values = np.array([[[float(table[subject][column]) for column in columns] for subject in subjects]
                           for table in tables]).mean(axis=0)
        truth = [float(tables[0][subject]["label"]) for subject in subjects]
    except (KeyError, TypeError, ValueError):
        return None
    if not classification:
        return metrics.regression(values[:, 0], truth)
    order = list(classes.values())
    predicted = [order[index] for index in np.argmax(values, axis=1)]
    labels = [int(value) for value in truth]
    return {"accuracy": metrics.accuracy(predicted, labels), "balanced_accuracy": metrics.balanced_accuracy(
        predicted, labels), "auc": metrics.auc(values, labels, order)}


def table(folds: list[dict[str, Any]], ensembles: Mapping[str, list[float]] | None = None) -> list[str]:
    """The printed lines: a row per fold, then the mean and standard deviation over folds (and over
    outer folds: of the mean of their inner folds' models, and of their ensembles')."""
    metric = folds[0]["monitored"]
    tested = any(not math.isnan(_number(f["testing"].get(metric))) for f in folds)
    splits = ("validation", "testing") if tested else ("validation",)
    widths = [len(f"{split} {metric}") + 2 for split in splits]
    header = f"{'fold':<8}{'best epoch':>11}{'epochs':>8}{'stopped':>9}"
    lines = [header + "".join(f"{f'{split} {metric}':>{width}}" for split, width in zip(splits, widths))]
    for fold in folds:
        row = f"{fold['fold']:<8}{fold['best_epoch']:>11}{fold['epochs_run']:>8}{'early' if fold['stopped_early'] else '-':>9}"
        values = (_number(fold[split].get(metric)) for split in splits)
        lines.append(row + "".join(f"{value:>{width}.4f}" for value, width in zip(values, widths)))
    for split in splits:
        values = [_number(f[split].get(metric)) for f in folds]
        defined = [v for v in values if not math.isnan(v)]
        if defined:
            lines.append(f"{split} {metric} over {len(defined)} fold(s): {_mean_and_spread(defined)}")
    outer = outer_fold_testing(folds).get(metric)
    if outer:
        lines.append(f"testing {metric} over {len(outer)} outer fold(s), each the mean of its inner folds' models: "
                     f"{_mean_and_spread(outer)}")
    ensembled = (ensembles or {}).get(metric)
    if ensembled:
        lines.append(f"testing {metric} over {len(ensembled)} outer fold(s), each the ensemble of its inner folds' "
                     f"models: {_mean_and_spread(ensembled)}")
    return lines


def _mean_and_spread(values: list[float]) -> str:
    """'mean m, std s' of defined values, or the mean and 'no std of one fold'."""
    mean, std = metrics.mean_std(values)
    return f"mean {mean:.4f}, " + (f"std {std:.4f}" if len(values) > 1 else "no std of one fold")


def plot(folds: list[dict[str, Any]], path: Path) -> None:
    """The monitored validation metric and the training loss of every fold per epoch, best epochs marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metric = folds[0]["monitored"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for fold in folds:
        for axis, key in ((left, f"validation_{metric}"), (right, "train_loss")):
            points = [(int(row["epoch"]), _number(row.get(key))) for row in fold["history"]]
            points = [(e, v) for e, v in points if not math.isnan(v)]
            if points:
                line, = axis.plot(*zip(*points), marker=".", label=f"fold {fold['fold']}")
                if axis is left:
                    best = [v for e, v in points if e == fold["best_epoch"]]
                    if best:
                        axis.plot([fold["best_epoch"]], best, marker="*", markersize=12, color=line.get_color())
    left.set_title(f"validation {metric} (best epochs starred)")
    right.set_title("training loss")
    for axis in (left, right):
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(fontsize="small")
    figure.tight_layout()
    save_figure(figure, path)


def save_figure(figure: Any, path: Path) -> None:
    """Write a matplotlib figure to `path` whole (a hidden partial file, then a rename), so that a
    viewer never opens a half-written picture, and close it."""
    import matplotlib.pyplot as plt

    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    figure.savefig(partial, dpi=80)
    plt.close(figure)
    partial.replace(path)

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


def table(folds: list[dict[str, Any]]) -> list[str]:
    """The printed lines: a row per fold, then the mean and standard deviation over folds."""
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

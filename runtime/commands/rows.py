"""The CSV of a `--csv` run: its rows, paths relative to its folder, and the subject ids that name
output files."""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np

from runtime import metrics
from runtime.errors import InputError
from runtime.io.write import OutputSet
from runtime.manifest import Manifest, trained_subjects
from runtime.postprocess import scored_classes
from runtime.validation import check_table_size, repeated_columns

# A subject id names output files (<id>_probabilities.nii.gz within a file system's 255 bytes).
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")
SAFE_ID_RULE = "letters, digits, '.', '_' or '-', beginning with a letter or digit, at most 200"

# The table of a --csv run's rows that failed: written where some did, removed where none did.
FAILURES = "failures.csv"


def resolve(csv_path: Path, value: str) -> Path:
    """`value` as a path, relative ones taken from the CSV's folder."""
    path = Path(value)
    return path if path.is_absolute() else csv_path.parent / path


def read_rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The CSV's column names and rows; InputError where it cannot be read as a CSV, or names a
    column twice (a reader would silently keep the last of them)."""
    check_table_size(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{csv_path} cannot be read as a CSV ({exc}).") from None
    twice = repeated_columns(header)
    if twice:
        raise InputError(f"{csv_path} names column(s) {', '.join(twice)} more than once; keep one of each.")
    return header, rows


def metric_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation of each metric column of the first row (every numeric column),
    over the rows where it is defined (not NaN, as an HD95 with nothing predicted); `n` counts them."""
    columns = [k for k, v in (rows[0] if rows else {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    summary = []
    for column in columns:
        values = [float(r[column]) for r in rows if column in r]
        mean, std = metrics.mean_std(values)
        summary.append({"metric": column, "mean": metrics.significant(mean), "std": metrics.significant(std),
                        "n": sum(1 for v in values if not math.isnan(v))})
    return summary


def pooled_summary(scores: dict[str, float]) -> list[dict[str, Any]]:
    """summary.csv's rows of metrics computed over every prediction pooled (a classifier's over its
    subjects or tiles): one row per metric and its value."""
    return [{"metric": key, "value": metrics.significant(value)} for key, value in scores.items()]


def failed(subject_id: str, error: Exception, outputs: Sequence[Path] = ()) -> tuple[str, str]:
    """A row that failed, said on stderr as it fails (`<id>: failed: <reason>`), naming those of
    its `outputs` an earlier run left, which are not this run's; its id and reason."""
    left = [path.name for path in outputs if path.exists()]
    earlier = f" ({', '.join(left)}: an earlier run's, left as they were)" if left else ""
    click.echo(f"{subject_id}: failed: {' '.join(str(error).split())}{earlier}", err=True)
    return subject_id, str(error)


# Failed rows the closing error line names; each was said as it failed, and failures.csv lists all.
SHOWN_FAILURES = 3


def finish_rows(failures: list[tuple[str, str]], written: int, total: int, noun: str, output_dir: Path) -> None:
    """The end of a --csv run once its tables are written: `failures.csv` (`write_failures`), the
    count written, and InputError naming every row that failed, where some did."""
    write_failures(failures, output_dir)
    click.echo(f"{written} of {total} {noun}(s) predicted into {output_dir}")
    if failures:
        done = "the others were written" if written else "no prediction was written"
        shown = " | ".join(f"{subject}: {reason}" for subject, reason in failures[:SHOWN_FAILURES])
        more = f" | and {len(failures) - SHOWN_FAILURES} more" if len(failures) > SHOWN_FAILURES else ""
        raise InputError(f"{len(failures)} of {total} {noun}(s) failed, {done} (listed in {output_dir / FAILURES}): "
                         f"{shown}{more}")


# Problems of a table one error line names; the rest are counted.
SHOWN_PROBLEMS = 10


def listed(problems: Sequence[str]) -> str:
    """The problems of a table for one error line: the first SHOWN_PROBLEMS, then how many more."""
    more = len(problems) - SHOWN_PROBLEMS
    shown = [problem[:-1] if problem.endswith(".") else problem for problem in problems[:SHOWN_PROBLEMS]]
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def drop_stale_tables(output_dir: Path, written: Sequence[Path], tables: Sequence[str]) -> None:
    """Remove each of `tables` (file names) that an earlier run left in `output_dir` and this run,
    which wrote `written`, did not write, so that no table there describes other predictions than
    the folder's new ones (metrics.csv of an earlier run with labels beside a run without).
    `tables` are only names the run may write, which were checked against its inputs before any
    work (`refuse_overwrites`): none is an input. One that cannot be removed is warned of."""
    names = {Path(path).name for path in written}
    for name in tables:
        path = output_dir / name
        if name not in names and (path.is_file() or path.is_symlink()):
            try:
                path.unlink()
            except OSError as exc:
                click.echo(f"warning: {path}, an earlier run's table that this run has no rows for, could not be "
                           f"removed ({exc.strerror or exc}); it does not describe this run's predictions", err=True)
                continue
            click.echo(f"removed {path}, an earlier run's table, which this run has no rows for")


def write_failures(failures: list[tuple[str, str]], output_dir: Path) -> None:
    """`failures.csv` in `output_dir`, a row per failed subject: its id and the reason on one line.
    A run in which nothing failed removes the table an earlier run into the folder left."""
    path = output_dir / FAILURES
    if not failures:
        path.unlink(missing_ok=True)
        return
    with OutputSet() as outputs:
        outputs.table([{"subject_id": subject, "error": " ".join(reason.split())} for subject, reason in failures],
                      ["subject_id", "error"], path)


def unannotated_note(manifest: Any, labelled: bool) -> str | None:
    """The line a --csv run with labels (`labelled`) says where the model records the value of
    unannotated voxels (runtime.manifest.label_ignore, checked here, before anything is written)."""
    from runtime.manifest import label_ignore

    ignore = label_ignore(manifest) if manifest.task == "segmentation" else None
    if ignore is None or not labelled:
        return None
    return (f"a label holding {ignore}, the value of unannotated voxels model {manifest.name} was trained with, is "
            "scored on its annotated voxels alone")


def trained_note(scored: Sequence[str], manifest: Manifest, table: Path) -> list[str]:
    """A warning naming the `scored` subjects (those with a label) that trained or validated the
    model, by their ids: their metrics are not those of unseen subjects."""
    trained = trained_subjects(manifest, scored)
    if not trained:
        return []
    shown = ", ".join(trained[:5]) + (f" and {len(trained) - 5} more" if len(trained) > 5 else "")
    return [f"warning: {table}: {len(trained)} of the {len(scored)} subject(s) scored ({shown}) are among those "
            f"model {manifest.name} trained or validated on (matched by id): their metrics, and summary.csv's, "
            "flatter it; for a figure of unseen subjects, score subjects no exported fold trained or validated on "
            "(for a model of one outer fold's folds, that fold's testing subjects)"]


def label_number(text: str, manifest: Manifest) -> float:
    """A label cell of a classifier or a regression model as its value: a finite number (for a
    classifier, one of its class values, or a class's name); ValueError saying what it is not."""
    classes = manifest.classes
    named = {c.name: float(c.value) for c in classes} if manifest.task == "classification" else {}
    if text in named:
        return named[text]
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        wanted = "a finite number" if not named else "a class value or name"
        raise ValueError(f"label {text!r} is not {wanted} (where a subject has none, leave the cell empty: it is "
                         "predicted, not scored)")
    if named and value not in named.values():
        raise ValueError(f"label {text} is none of the model's classes ("
                         f"{', '.join(f'{c.value} {c.name}' for c in classes)})")
    return value


@dataclass(frozen=True)
class Scored:
    """A classifier's labelled predictions: the predicted and reference class values (n,) and the
    scores (n, K) of the classes it scores (postprocess.scored_classes)."""

    predicted: np.ndarray
    truth: np.ndarray
    scores: np.ndarray

    @staticmethod
    def of_rows(labelled: Sequence[dict[str, Any]], manifest: Manifest) -> Scored:
        """From rows holding `predicted`, `probability_<class>` and `label` (predictions.csv's)."""
        scored = scored_classes(manifest, sum(f"probability_{c.name}" in labelled[0] for c in manifest.classes))
        return Scored(np.array([int(r["predicted"]) for r in labelled], dtype=np.int64),
                      np.array([int(r["label"]) for r in labelled], dtype=np.int64),
                      np.array([[r[f"probability_{c.name}"] for c in scored] for r in labelled], dtype=np.float64))

    @staticmethod
    def joined(parts: Sequence[Scored]) -> Scored:
        return Scored(*(np.concatenate([getattr(part, name) for part in parts])
                        for name in ("predicted", "truth", "scores")))


def classification_metrics(labelled: Scored | Sequence[dict[str, Any]], manifest: Manifest) -> dict[str, float]:
    """Accuracy, balanced accuracy, AUC and each class's scores of `labelled` predictions (Scored, or
    rows of predictions.csv's columns)."""
    found = labelled if isinstance(labelled, Scored) else Scored.of_rows(labelled, manifest)
    truth, predicted, probabilities = found.truth.tolist(), found.predicted.tolist(), found.scores
    if probabilities.shape[1] < len(manifest.classes):     # one channel per class after the first: the first's score
        probabilities = np.column_stack([1.0 - probabilities.max(axis=1), probabilities])
    values = [c.value for c in manifest.classes]
    scores = {"accuracy": metrics.accuracy(predicted, truth),
              "balanced_accuracy": metrics.balanced_accuracy(predicted, truth),
              "auc": metrics.auc(probabilities, truth, values)}
    per_class = metrics.per_class(predicted, truth, values)
    for spec in manifest.classes:
        scores.update({f"{name}_{spec.name}": value for name, value in per_class[spec.value].items()})
    return scores


def confusion_rows(labelled: Scored | Sequence[dict[str, Any]], manifest: Manifest) -> list[dict[str, Any]]:
    """The confusion matrix of labelled classifications (Scored, or rows whose `label` is given): a
    row per true class, a column per predicted class, counts."""
    if isinstance(labelled, Scored):
        predicted, truth = labelled.predicted.tolist(), labelled.truth.tolist()
    else:
        given = [r for r in labelled if r.get("label") is not None]
        predicted, truth = [int(r["predicted"]) for r in given], [int(r["label"]) for r in given]
    values = [c.value for c in manifest.classes]
    matrix = metrics.confusion(predicted, truth, values)
    return [{"true": spec.name, **{f"predicted_{other.name}": int(matrix[i, j])
                                   for j, other in enumerate(manifest.classes)}}
            for i, spec in enumerate(manifest.classes)]

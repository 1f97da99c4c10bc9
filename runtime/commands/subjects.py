"""`runtime predict --csv`: many subjects in one command, with metrics when labels are given.

The CSV has a `subject_id` column and one column per model channel (named as in the manifest),
holding paths relative to the CSV's folder; an optional `label` column holds a label map path
(segmentation), a class value (classification) or a number (regression; a model of several
targets takes one column per target, `label_<target>`, instead); an optional `mask` column holds a
mask path. Where the CSV has no `subject_id` or `label` column, the columns the
model's training table used for them are taken (`table_columns`), so that table runs as it is.
Every problem of the CSV is reported before any subject is run.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import numpy as np

from runtime import metrics
from runtime.errors import InputError, MedflowError
from runtime.io import OutputSet, read_label, read_mask, read_scan
from runtime.io.write import prepare_output_dir, refuse_overwrites
from runtime.io.scan import is_seg_file, label_values, open_image
from runtime.manifest import Manifest, label_ignore, label_relabel, table_columns
from runtime.validation import channel_files
from runtime.predict import Model, Prediction, Progress, load_model, predict_scan
from runtime.commands.rows import (
    FAILURES, SAFE_ID, SAFE_ID_RULE, classification_metrics, confusion_rows, drop_stale_tables, failed, finish_rows,
    label_number, listed, metric_summary, pooled_summary, read_rows, resolve, trained_note, unannotated_note,
)
from runtime.commands.single import job_plan, score_row, unused_mask_warning


@dataclass(frozen=True)
class Subject:
    subject_id: str
    channels: tuple[Path, ...]
    label: str | None
    mask: Path | None
    targets: tuple[tuple[str, float], ...] = ()      # (name, reference value) of a model of several targets
    mapped: bool = False        # its label is in the training table's labelling: the model's data.relabel applies


@dataclass(frozen=True)
class Columns:
    """The CSV's columns holding each subject's id, reference label and mask (None: no mask column)."""

    subject: str = "subject_id"
    label: str = "label"
    mask: str | None = "mask"


def columns_of(header: Sequence[str], manifest: Manifest) -> Columns:
    """subject_id and label, or, where the CSV lacks one, the column the model's training table held
    it in (its manifest's provenance.table_columns), where the CSV has that; `mask` is a mask
    column unless it is the label one (a table that named its label maps `mask`)."""
    recorded, default = table_columns(manifest), Columns()

    def pick(usual: str, key: str) -> str:
        other = recorded.get(key)
        return other if usual not in header and other in header else usual

    label = pick(default.label, "label")
    return Columns(subject=pick(default.subject, "subject"), label=label, mask=None if label == "mask" else "mask")


def target_columns(manifest: Manifest) -> dict[str, str]:
    """The reference column of each target of a regression model of several targets, by target
    name (`label_<target>`); none for any other model, whose one `label` column says it all."""
    if manifest.task != "regression" or len(manifest.classes) < 2:
        return {}
    return {spec.name: f"label_{spec.name}" for spec in manifest.classes}


def _row_problems(row: dict[str, str], line: int, manifest: Manifest, csv_path: Path, columns: Columns) -> list[str]:
    channels, task = manifest.channels, manifest.task
    problems = []
    sid = (row.get(columns.subject) or "").strip()
    if not SAFE_ID.match(sid):
        problems.append(f"line {line}: {columns.subject} {sid!r} must be {SAFE_ID_RULE} (it names output files)")
    files = [row.get(c) or "" for c in channels] + [(row.get(columns.mask) or "") if columns.mask else ""]
    if task == "segmentation":
        files.append(row.get(columns.label) or "")
    for value in filter(None, (f.strip() for f in files)):
        path = resolve(csv_path, value)
        if not path.exists():
            looked = f" (looked for as {path})" if str(path) != value else ""
            problems.append(f"line {line}: {value} does not exist{looked}")
    for channel in channels:
        if not (row.get(channel) or "").strip():
            problems.append(f"line {line}: column {channel} is empty")
    cells = [(columns.label, (row.get(columns.label) or "").strip())] if task != "segmentation" else []
    for column, cell in cells + [(c, (row.get(c) or "").strip()) for c in target_columns(manifest).values()]:
        if not cell:
            continue
        try:
            label_number(cell, manifest)
        except ValueError as error:
            problems.append(f"line {line}: {column}: {error}" if column != columns.label else f"line {line}: {error}")
    return problems


def read_subjects(csv_path: Path, manifest: Manifest, notes: list[str] | None = None) -> list[Subject]:
    """Every subject of the CSV, or one InputError listing every problem found. What a run of them
    should say once its other checks have passed (the columns read, no labels, a mask the model
    reads not; warnings begin "warning:") is added to `notes` (`say_notes`)."""
    notes = [] if notes is None else notes
    if not csv_path.is_file():
        raise InputError(f"{csv_path} does not exist; pass the subjects CSV.")
    header, rows = read_rows(csv_path)
    columns, recorded = columns_of(header, manifest), table_columns(manifest)
    missing = [c for c in (columns.subject, *manifest.channels) if c not in header]
    if missing:
        trained = recorded.get("subject")
        also = f" (or {trained}, as its training table named it)" if trained and trained != columns.subject else ""
        optional = f"{columns.label}, {columns.mask}" if columns.mask else columns.label
        slides = (f" {csv_path} lists slides (a column slide), which a histology model runs; model {manifest.name} "
                  f"is a {manifest.modality} model." if "slide" in header else "")
        raise InputError(f"{csv_path} lacks the column(s) {', '.join(missing)}; model {manifest.name} needs "
                         f"{columns.subject}{also} and {', '.join(manifest.channels)} (optional: {optional}).{slides}")
    if not rows:
        raise InputError(f"{csv_path} has a header but no subject rows.")
    _refuse_one_label_of_many(header, columns, manifest, csv_path)
    pairs = (("subject ids", columns.subject, Columns.subject), ("labels", columns.label, Columns.label))
    taken = [f"{what} from column {name}" for what, name, usual in pairs if name != usual]
    if taken:
        notes.append(f"{csv_path}: {' and '.join(taken)}, as model {manifest.name}'s training table named them")
    for what, name, key in (("subject ids", columns.subject, "subject"), ("labels", columns.label, "label")):
        trained = recorded.get(key)
        if trained and trained != name and trained in header:
            notes.append(f"warning: {csv_path}: {what} from column {name}; column {trained}, which held them in "
                         f"model {manifest.name}'s training table, is not read as {what}")
    problems: list[str] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        problems += _row_problems(row, line, manifest, csv_path, columns)
        sid = (row.get(columns.subject) or "").strip()
        if sid in seen:
            problems.append(f"line {line}: {columns.subject} {sid} appears twice")
        seen.add(sid)
    if problems:
        raise InputError(f"{csv_path} has {len(problems)} problem(s): " + listed(problems))
    subjects = [_subject(row, manifest, csv_path, columns) for row in rows]
    notes += _unscored(subjects, columns, manifest, csv_path)
    return subjects


def _refuse_one_label_of_many(header: Sequence[str], columns: Columns, manifest: Manifest, csv_path: Path) -> None:
    """InputError where a regression model of several targets is given one label column, which
    cannot say which target it holds."""
    targets = target_columns(manifest)
    if targets and columns.label in header:
        raise InputError(f"{csv_path}: column {columns.label} holds one number, but model {manifest.name} predicts "
                         f"{len(targets)} targets ({', '.join(targets)}); name each target's reference column "
                         f"{', '.join(targets.values())} (any of them may be left out or empty).")


def say_notes(notes: Sequence[str]) -> None:
    """Print `read_subjects`' notes, the warnings on stderr."""
    for note in notes:
        click.echo(note, err=note.startswith("warning:"))


def _unscored(subjects: list[Subject], columns: Columns, manifest: Manifest, csv_path: Path) -> list[str]:
    """A line where no subject has a label (so no metrics are written), a warning naming the
    subjects without one where others have one (they are not scored), and a warning where masks are
    given to a model that reads no mask."""
    notes = []
    targets = target_columns(manifest)
    if targets and not any(subject.targets for subject in subjects):
        notes.append(f"{csv_path}: no label in columns {', '.join(targets.values())}: predictions only, no metrics")
    elif not targets and not any(subject.label is not None for subject in subjects):
        trained = table_columns(manifest).get("label")
        also = f" or {trained}, as its training table named it" if trained and trained != columns.label else ""
        notes.append(f"{csv_path}: no label in column {columns.label}{also}: predictions only, no metrics")
    else:
        unlabelled = [subject.subject_id for subject in subjects
                      if (len(subject.targets) < len(targets) if targets else subject.label is None)]
        if unlabelled:
            where = f"in some of columns {', '.join(targets.values())}" if targets else f"in column {columns.label}"
            shown = ", ".join(unlabelled[:10]) + (", ..." if len(unlabelled) > 10 else "")
            notes.append(f"warning: {csv_path}: {len(unlabelled)} of {len(subjects)} subject(s) have no label {where} "
                         f"({shown}): they are predicted but not scored, and the metrics are of the others")
    if columns.mask and any(subject.mask for subject in subjects):
        notes += filter(None, [unused_mask_warning(manifest, f"{csv_path}: column {columns.mask}")])
    return notes


def channel_inputs(paths: list[Path]) -> tuple[Path, ...]:
    """The files to read for the channel columns' `paths`, as `trainer` reads its table: a file named
    in consecutive columns once where its components are those columns' channels (an RGB file in
    R, G and B), else every column's file (one grey CT in a soft-tissue and a bone channel, each
    windowed by its own steps). Headers only are read."""
    from runtime.io.scan import open_image

    files = channel_files(paths)
    if len(files) == len(paths):
        return tuple(paths)
    return files if sum(open_image(path).components for path in files) == len(paths) else tuple(paths)


def _subject(row: dict[str, str], manifest: Manifest, csv_path: Path, columns: Columns) -> Subject:
    label = (row.get(columns.label) or "").strip() or None
    if label is not None and manifest.task == "segmentation":
        label = str(resolve(csv_path, label))
    mask = (row.get(columns.mask) or "").strip() if columns.mask else ""
    given = [(name, (row.get(column) or "").strip()) for name, column in target_columns(manifest).items()]
    return Subject(
        subject_id=row[columns.subject].strip(),
        channels=channel_inputs([resolve(csv_path, row[c].strip()) for c in manifest.channels]),
        label=label, mask=resolve(csv_path, mask) if mask else None,
        targets=tuple((name, label_number(cell, manifest)) for name, cell in given if cell),
    )


def _segmentation_metrics(prediction: Prediction, label: np.ndarray, manifest: Manifest,
                          spacing: tuple[float, ...]) -> dict[str, Any]:
    """Per foreground class: Dice, IoU, sensitivity, specificity, precision, HD95 and NSD (mm, on
    the scan's grid), then the mean Dice; of the annotated voxels alone, HD95 and NSD NaN, for a
    label holding the value of unannotated ones the model records (`label_ignore`)."""
    assert prediction.labels_zyx is not None
    classes = [(spec.value, spec.name) for spec in manifest.classes[1:]]
    scores = metrics.class_scores(prediction.labels_zyx, label, classes, spacing, ignore=label_ignore(manifest))
    return {key: round(value, 6) for key, value in scores.items()}


def _warn_if_unannotated(subject: Subject, label: np.ndarray, manifest: Manifest) -> None:
    """A warning where a reference holds the model's value of unannotated voxels alone: its scores
    are undefined (NaN) and in no mean."""
    ignore = label_ignore(manifest)
    if ignore is not None and not bool(np.any(label != ignore)):
        click.echo(f"warning: subject {subject.subject_id}: label {subject.label} holds {ignore}, the value of "
                   "unannotated voxels, alone: it scores nothing (NaN) and is in no mean", err=True)


def _outputs(subjects: list[Subject], manifest: Manifest, output_dir: Path,
             save_probabilities: bool) -> list[tuple[str, Path]]:
    """Every file a --csv run may write, named by what it is for."""
    named = [("--output-dir file", output_dir / name) for name in (*task_tables(manifest), FAILURES)]
    if manifest.task != "segmentation":
        return named
    for subject in subjects:
        named.append((f"subject {subject.subject_id}'s labels", output_dir / f"{subject.subject_id}.nii.gz"))
        if save_probabilities:
            named.append((f"subject {subject.subject_id}'s probabilities",
                          output_dir / f"{subject.subject_id}_probabilities.nii.gz"))
    return named


def _inputs(subjects: list[Subject], csv_path: Path) -> list[Path]:
    files = [csv_path]
    for subject in subjects:
        files += [*subject.channels, *([subject.mask] if subject.mask else [])]
        if subject.label is not None and Path(subject.label).exists():
            files.append(Path(subject.label))
    return files


def _run_subject(model: Model, subject: Subject, outputs: OutputSet, output_dir: Path, save_probabilities: bool,
                 progress: Progress, strict_input: bool = False) -> tuple[Prediction, dict[str, Any]]:
    scan = read_scan(subject.channels, plan=job_plan(model.manifest, save_probabilities, subject.channels))
    mask = read_mask(subject.mask, scan) if subject.mask else None
    prediction = predict_scan(model, scan, mask, progress, probabilities=save_probabilities, overwrite=True,
                              strict_input=strict_input)
    row: dict[str, Any] = {"subject_id": subject.subject_id}
    if prediction.labels_zyx is not None:
        outputs.image(prediction.labels_zyx, scan.reference, output_dir / f"{subject.subject_id}.nii.gz",
                      scan.placement)
        if save_probabilities and prediction.probabilities_zyx is not None:
            path = output_dir / f"{subject.subject_id}_probabilities.nii.gz"
            outputs.image(prediction.probabilities_zyx, scan.reference, path, scan.placement)
        if subject.label is not None:
            label = _reference_classes(subject, read_label(subject.label, scan, classes=model.manifest.classes),
                                       model.manifest)
            _warn_if_unannotated(subject, label, model.manifest)
            row.update(_segmentation_metrics(prediction, label, model.manifest, scan.spacing_zyx))
    return prediction, row


def _reference_classes(subject: Subject, label: np.ndarray, manifest: Manifest) -> np.ndarray:
    """A reference label map as the model's classes, as training scored it: the run's data.relabel
    applied where the model records one (a map that holds class values only and none the mapping
    names is taken as the model's classes already, and said so, unless another label of the table
    holds a value the mapping names: `mapped`; a DICOM SEG is read as classes),
    its data.ignore_value kept, and a warning naming the values that are still no class (they
    count as no class's voxels)."""
    mapping, ignore = label_relabel(manifest), label_ignore(manifest)
    held = {int(v) for v in np.unique(label)}
    known = {spec.value for spec in manifest.classes}
    if mapping is not None and not is_seg_file(Path(str(subject.label))):
        if not subject.mapped and metrics.in_classes_already(held, mapping, known, ignore):
            click.echo(f"subject {subject.subject_id}: label {subject.label} holds only class values of model "
                       f"{manifest.name} and none its training mapped, so it is taken as the model's classes")
        else:
            label = metrics.relabel(label, mapping, ignore)
            held = {int(v) for v in np.unique(label)}
    strays = sorted(v for v in held if v not in known and v != ignore)
    if strays:
        shown = ", ".join(map(str, strays[:10])) + (" and more" if len(strays) > 10 else "")
        click.echo(f"warning: subject {subject.subject_id}: label {subject.label} holds value(s) {shown} that are no "
                   f"class of model {manifest.name} ({', '.join(str(v) for v in sorted(known))}), so they are "
                   "scored as background; if the labels are another labelling, map them with runtime evaluate "
                   "--relabel (or data.relabel when training)", err=True)
    return label


def _label_value(subject: Subject, manifest: Manifest) -> float | None:
    if subject.label is None:
        return None
    try:
        return label_number(subject.label, manifest)
    except ValueError as error:
        raise InputError(f"subject {subject.subject_id}: {error}.") from None


def _score_metrics(rows: list[dict[str, Any]], manifest: Manifest) -> dict[str, float]:
    if target_columns(manifest):
        return _target_metrics(rows, manifest)
    labelled = [r for r in rows if r.get("label") is not None]
    if not labelled:
        return {}
    if manifest.task == "regression":
        name = manifest.classes[0].name
        return {**metrics.regression([r[name] for r in labelled], [r["label"] for r in labelled]), "n": len(labelled)}
    return {**classification_metrics(labelled, manifest), "n": len(labelled)}


def _target_metrics(rows: list[dict[str, Any]], manifest: Manifest) -> dict[str, float]:
    """MAE, MSE, RMSE and Pearson r of each target of a regression model of several targets, over
    the subjects with a reference value for it (`<metric>_<target>`)."""
    scores: dict[str, float] = {}
    for name, column in target_columns(manifest).items():
        given = [r for r in rows if column in r]
        if given:
            values = metrics.regression([r[name] for r in given], [r[column] for r in given])
            scores.update({f"{metric}_{name}": value for metric, value in values.items()})
            scores[f"n_{name}"] = len(given)
    return scores


def _summary(rows: list[dict[str, Any]], manifest: Manifest) -> list[dict[str, Any]]:
    if manifest.task != "segmentation":
        return pooled_summary(_score_metrics(rows, manifest))
    return metric_summary(rows)


def run_csv(csv_path: Path, model_path: Path, output_dir: Path, save_probabilities: bool, device: str,
            threads: int | None, progress: Progress, expect_digest: str | None = None,
            strict_input: bool = False) -> None:
    from runtime.commands.reporting import taken_version

    manifest, version_dir = taken_version(model_path, expect_digest)
    predict_subjects(csv_path, manifest, lambda: load_model(version_dir, device=device, threads=threads), output_dir,
                     save_probabilities, progress, strict_input)


def predict_subjects(csv_path: Path, manifest: Manifest, open_model: Callable[[], Model], output_dir: Path,
                     save_probabilities: bool, progress: Progress, strict_input: bool = False) -> None:
    """Every subject of the CSV through the model `open_model` makes (once every row and output
    has passed its checks), its outputs and the tables written into `output_dir`."""
    if manifest.modality == "histology":
        raise InputError(f"model {manifest.name} is a histology model; its --csv runs take slides "
                         "(runtime.commands.slides).")
    if save_probabilities and manifest.task != "segmentation":
        held = "probabilities" if manifest.task == "classification" else "values"
        raise InputError(f"--save-probabilities writes a segmentation's probability maps; model {manifest.name} is a "
                         f"{manifest.task} model, whose {held} predictions.csv holds: leave the option out.")
    notes: list[str] = []
    subjects = read_subjects(csv_path, manifest, notes)
    note = unannotated_note(manifest, any(s.label is not None for s in subjects))
    notes += trained_note([s.subject_id for s in subjects if s.label is not None], manifest, csv_path)
    refuse_overwrites(_outputs(subjects, manifest, output_dir, save_probabilities), _inputs(subjects, csv_path))
    model = open_model()
    prepare_output_dir(output_dir)
    say_notes(notes + ([note] if note else []))
    subjects = _in_training_labelling(subjects, manifest, csv_path)
    rows, failures = [], []
    for number, subject in enumerate(subjects, start=1):
        started = time.perf_counter()
        try:
            rows.append(_one(model, subject, output_dir, save_probabilities, progress, strict_input))
            click.echo(f"{number}/{len(subjects)} {subject.subject_id}: done in {time.perf_counter() - started:.1f} s")
        except MedflowError as exc:
            mine = [path for what, path in _outputs([subject], manifest, output_dir, save_probabilities)
                    if what.startswith("subject ")]
            failures.append(failed(subject.subject_id, exc, mine))
    progress.close()
    _write_tables(rows, manifest, output_dir)
    finish_rows(failures, len(rows), len(subjects), "subject", output_dir)


def _in_training_labelling(subjects: list[Subject], manifest: Manifest, csv_path: Path) -> list[Subject]:
    """The subjects, each `mapped` where any label map of the table holds a value the model's
    training mapping names (data.relabel): the table is then in the training table's labelling, as
    training read every label of it (a map of such a table holding class values only, say a crop
    without the mapped organ, is mapped too, not taken as classes). Labels are read for their values
    only, until one holds such a value; one that cannot be read is left to its subject's run."""
    mapping = label_relabel(manifest)
    if mapping is None or manifest.task != "segmentation":
        return subjects
    for path in segmentation_labels(subjects):
        try:
            held = set(np.unique(label_values(open_image(path).load(), path)).tolist())
        except MedflowError:
            continue
        if held & set(mapping):
            click.echo(f"{csv_path}: label {path} holds value(s) model {manifest.name}'s training mapped "
                       f"({', '.join(map(str, sorted(held & set(mapping))))}): every label is mapped as training "
                       "mapped them (data.relabel)")
            return [dataclasses.replace(subject, mapped=True) for subject in subjects]
    return subjects


def segmentation_labels(subjects: Sequence[Subject]) -> list[Path]:
    """The label map images of the subjects (DICOM SEGs, read as classes, left out)."""
    return [Path(subject.label) for subject in subjects
            if subject.label is not None and not is_seg_file(Path(subject.label))]


def _one(model: Model, subject: Subject, output_dir: Path, save_probabilities: bool, progress: Progress,
         strict_input: bool = False) -> dict[str, Any]:
    manifest = model.manifest
    label = _label_value(subject, manifest) if manifest.task != "segmentation" else None
    with OutputSet() as outputs:
        prediction, row = _run_subject(model, subject, outputs, output_dir, save_probabilities, progress, strict_input)
    if manifest.task == "segmentation":
        return row
    row = score_row(prediction, manifest, subject.subject_id)
    if label is not None:
        row["label"] = int(label) if manifest.task == "classification" else label
    columns = target_columns(manifest)
    row.update({columns[name]: value for name, value in subject.targets})
    return row


def task_tables(manifest: Manifest) -> tuple[str, ...]:
    """The tables a --csv run of the model's task may write into its --output-dir."""
    if manifest.task == "segmentation":
        return ("metrics.csv", "summary.csv")
    return ("predictions.csv", "summary.csv", *(("confusion.csv",) if manifest.task == "classification" else ()))


def _write_tables(rows: list[dict[str, Any]], manifest: Manifest, output_dir: Path) -> None:
    references = {"label", *target_columns(manifest).values()}
    labelled = [r for r in rows if references & set(r) or any(k.startswith("dice_") for k in r)]
    summary = _summary(labelled, manifest) if labelled else []
    with OutputSet() as outputs:
        if manifest.task != "segmentation" and rows:
            header = list(dict.fromkeys(k for r in rows for k in r))
            outputs.table(rows, header, output_dir / "predictions.csv")
        if labelled and manifest.task == "segmentation":
            header = list(dict.fromkeys(k for r in labelled for k in r))
            outputs.table(labelled, header, output_dir / "metrics.csv")
        if labelled:
            outputs.table(summary, list(summary[0]) if summary else ["metric"], output_dir / "summary.csv")
        if labelled and manifest.task == "classification":
            matrix = confusion_rows(labelled, manifest)
            outputs.table(matrix, list(matrix[0]), output_dir / "confusion.csv")
        written = outputs.targets()
    if rows:
        drop_stale_tables(output_dir, written, task_tables(manifest))
    for item in summary:
        click.echo("  " + ", ".join(f"{k}={v}" for k, v in item.items()))

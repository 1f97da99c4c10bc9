"""`runtime evaluate PREDICTIONS LABELS`: the segmentation metrics of a folder of label maps against a
folder of reference label maps, paired by file name, whatever made the predictions.

Each pair must lie on one grid (size, spacing, origin, direction) and hold integer label values.
The classes come from a model's manifest (`--model`: its names and values), from `--classes`
(`1:liver,2:spleen`), or else are every non-zero value found in the references. `--relabel 5=1`
scores references of many structures (TotalSegmentator's) as the model's few classes: each listed
value becomes its class, every other value the background. The tables are
those of `runtime predict --csv`: `metrics.csv` per subject and `summary.csv` over subjects.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np

from runtime import metrics
from runtime.commands.rows import SAFE_ID, metric_summary
from runtime.contract import ClassSpec
from runtime.errors import InputError
from runtime.io.scan import (
    check_same_grid, check_same_plane, grid_image, is_seg_file, label_values, open_image,
)
from runtime.io.write import IMAGE_SUFFIXES, OutputSet, image_suffix, prepare_output_dir, refuse_overwrites
from runtime.limits import MAX_CLASS_VALUE, MAX_CLASSES
from runtime.manifest import Manifest


@dataclass(frozen=True)
class Pair:
    subject_id: str
    prediction: Path
    reference: Path


def parse_classes(text: str) -> list[tuple[int, str]]:
    """`1:liver,2:spleen` (or `1,2`: the values as names) -> [(1, "liver"), (2, "spleen")]."""
    classes: list[tuple[int, str]] = []
    for item in (part.strip() for part in text.split(",")):
        value, _, name = item.partition(":")
        try:
            number = int(value)
        except ValueError:
            raise InputError(f"--classes: {item!r} is not VALUE or VALUE:NAME with an integer value "
                             "(e.g. 1:liver,2:spleen).") from None
        name = name.strip() or str(number)
        if not 0 < number <= MAX_CLASS_VALUE or not SAFE_ID.match(name) or name == "mean":
            raise InputError(f"--classes: {item!r} needs a value from 1 to {MAX_CLASS_VALUE} (0 is the background) "
                             "and a name of letters, digits, '_', '-' or '.' other than 'mean'.")
        classes.append((number, name))
    if len({v for v, _ in classes}) != len(classes) or len({n for _, n in classes}) != len(classes):
        raise InputError(f"--classes {text!r} repeats a value or a name.")
    return classes


def _images(folder: Path, what: str, segs: bool = False) -> dict[str, Path]:
    """The label maps of `folder` by name (suffix aside); with `segs`, its DICOM SEG files too."""
    if not folder.is_dir():
        raise InputError(f"{what} {folder} is not a folder; give the folder that holds the label maps.")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = image_suffix(path) or (path.suffix if segs and path.suffix.lower() == ".dcm" else None)
        if suffix is None or not path.is_file():
            continue
        name = path.name[: -len(suffix)]
        if name in found:
            raise InputError(f"{what} {folder} holds {found[name].name} and {path.name}: two images of one name; "
                             "keep one of them.")
        found[name] = path
    if not found:
        raise InputError(f"{what} {folder} holds no image file ({', '.join(IMAGE_SUFFIXES)}).")
    return found


def pairs_of(predictions: Path, references: Path, manifest: Manifest | None = None) -> list[Pair]:
    """Every prediction with the reference of the same name (suffix aside); a name found in one
    folder only is an error naming them all. LABELS may be a subjects CSV instead (`pairs_from_table`)."""
    if references.suffix.lower() == ".csv" and not references.is_dir():
        return pairs_from_table(predictions, references, manifest)
    found, wanted = _images(predictions, "PREDICTIONS"), _images(references, "LABELS", segs=True)
    found = {name: path for name, path in found.items() if not _probability_map(name, found, wanted)}
    unmatched = sorted(set(found) ^ set(wanted))
    if unmatched:
        sides = [f"{name} ({'prediction' if name in found else 'label'} only)" for name in unmatched[:10]]
        more = f" and {len(unmatched) - 10} more" if len(unmatched) > 10 else ""
        raise InputError(f"{len(unmatched)} name(s) have no partner in the other folder: {', '.join(sides)}{more}; "
                         "each prediction needs a label map of the same file name.")
    unsafe = [name for name in found if not SAFE_ID.match(name)]
    if unsafe:
        raise InputError(f"file name(s) {', '.join(unsafe[:5])} cannot name a row; use letters, digits, '_', '-', '.'.")
    return [Pair(name, found[name], wanted[name]) for name in sorted(found)]


def _probability_map(name: str, found: dict[str, Path], wanted: dict[str, Path]) -> bool:
    """`<subject>_probabilities` beside `<subject>` in PREDICTIONS, with no label of its own: the
    probability map `predict --csv --save-probabilities` wrote, not a prediction to score."""
    subject = name.removesuffix("_probabilities")
    return subject != name and subject in found and name not in wanted


def pairs_from_table(predictions: Path, table: Path, manifest: Manifest | None = None) -> list[Pair]:
    """Each row of a subjects CSV (the one `runtime predict --csv` read, or the model's training
    table) with the prediction named after its subject id: the reference is the row's label map
    (paths relative to the CSV's folder). The columns are subject_id and label, or those the
    model's training table used (`runtime.commands.subjects.columns_of`). Predictions of no row
    (a probability map) are not scored; a row without its prediction or its label map is an error
    naming them all."""
    from runtime.commands.rows import listed, read_rows, resolve
    from runtime.commands.subjects import Columns, columns_of

    if not table.is_file():
        raise InputError(f"LABELS {table} does not exist; give a folder of label maps or a subjects CSV.")
    header, rows = read_rows(table)
    columns = columns_of(header, manifest) if manifest is not None else Columns()
    missing = [name for name in (columns.subject, columns.label) if name not in header]
    if missing:
        raise InputError(f"LABELS {table} lacks the column(s) {', '.join(missing)}; a subjects CSV names each "
                         f"subject ({columns.subject}) and its label map ({columns.label}).")
    found = _images(predictions, "PREDICTIONS")
    pairs, problems, seen = [], [], {}
    for line, row in enumerate(rows, start=2):
        sid, label = (row.get(columns.subject) or "").strip(), (row.get(columns.label) or "").strip()
        reference = resolve(table, label) if label else None
        if sid in seen:
            problems.append(f"line {line}: {sid!r} is on line {seen[sid]} too; each subject is scored once")
            continue
        seen[sid] = line
        if sid not in found:
            problems.append(f"line {line}: no prediction named {sid!r} in {predictions}")
        elif reference is None or not reference.is_file():
            state = "is not a file" if reference is not None and reference.exists() else "does not exist"
            problems.append(f"line {line}: {sid}'s label map " + (f"{label!r} {state}" if label else "is empty"))
        else:
            pairs.append(Pair(sid, found[sid], reference))
    if problems or not pairs:
        raise InputError(f"LABELS {table}: {listed(problems) or 'no subject rows'}; each row needs its prediction "
                         f"(<{columns.subject}>.nii.gz, as runtime predict --csv names it) and its label map.")
    if any(not SAFE_ID.match(pair.subject_id) for pair in pairs):
        raise InputError(f"LABELS {table}: subject ids must be letters, digits, '_', '-', '.' (they name rows).")
    return pairs


def _labels(path: Path) -> tuple[Any, np.ndarray]:
    """The label map's grid and class values (`runtime.io.scan.label_values`)."""
    voxels = open_image(path).load()
    return voxels.grid, label_values(voxels, path)


def _reference_labels(path: Path, grid: Any, classes: Sequence[tuple[int, str]]) -> tuple[Any, np.ndarray]:
    """The reference's grid and class values: a label map's own, or a DICOM SEG's segments placed on
    the prediction's `grid` (each segment the class its label names, where `classes` have names;
    else its segment number), as `runtime predict --csv` reads a SEG label."""
    if not is_seg_file(path):
        return _labels(path)
    from runtime.budget import memory_budget
    from runtime.io.dicom_seg import read_seg

    reference = grid_image(grid)
    named = any(name != str(value) for value, name in classes)           # else classes are values alone
    background = [] if any(value == 0 for value, _ in classes) else [ClassSpec(0, "background")]
    specs = [*background, *(ClassSpec(value, name) for value, name in classes)] if named else None
    return grid, read_seg(path, reference, memory_budget(), specs).astype(np.int64)


def parse_relabel(text: str) -> dict[int, int]:
    """`--relabel 5=1,2=2,3=2`: reference values -> class values."""
    mapping: dict[int, int] = {}
    for item in text.split(","):
        source, _, target = item.strip().partition("=")
        if not (source.strip().isdigit() and target.strip().isdigit()):
            raise InputError(f"--relabel: {item.strip()!r} is not VALUE=CLASS with two integers >= 0 (e.g. 5=1).")
        if int(source) > MAX_CLASS_VALUE or int(target) > MAX_CLASS_VALUE:
            raise InputError(f"--relabel: {item.strip()!r} names a value above {MAX_CLASS_VALUE}, which no label map "
                             "holds (label maps are uint8 or uint16).")
        if int(source) in mapping:
            raise InputError(f"--relabel {text!r} names value {int(source)} twice.")
        mapping[int(source)] = int(target)
    return mapping


def parse_ignore(text: str | None) -> int | None:
    """`--ignore 255`: the label value of unannotated voxels, an integer (its range is checked with
    the classes, `run_evaluate`)."""
    if text is None:
        return None
    if not re.fullmatch(r"[+-]?[0-9]{1,6}", text.strip()):
        raise InputError(f"--ignore {text!r} is no label value: give an integer from 1 to {MAX_CLASS_VALUE}.")
    return int(text)


def score_pair(pair: Pair, classes: Sequence[tuple[int, str]],
               tolerance_mm: float = metrics.NSD_TOLERANCE_MM,
               relabel: dict[int, int] | None = None,
               where_held: bool = False, ignore: int | None = None) -> tuple[dict[str, Any], set[int], set[int]]:
    """The metrics row of one pair (each class's metrics, runtime.metrics, then the mean Dice), the
    values found on either side, and the reference's own values; `relabel` turns the reference's
    values into classes first (with `where_held`, a reference holding class values only and none
    the mapping names is taken as in the classes already). `ignore`: the reference's value of
    unannotated voxels, which no score counts."""
    grid, predicted = _labels(pair.prediction)
    reference_grid, reference = _reference_labels(pair.reference, grid, classes)
    relabel = None if is_seg_file(pair.reference) else relabel          # a SEG is read as classes already
    found = _values(predicted, pair.prediction)
    own = _values(reference, pair.reference)
    scored = own
    if relabel is not None and not (where_held and metrics.in_classes_already(own, relabel,
                                                                              {value for value, _ in classes},
                                                                              ignore)):
        reference = metrics.relabel(reference, relabel, ignore)
        scored = {v if v == ignore else relabel.get(v, 0) for v in own}
    check_same_grid(reference_grid, grid, pair.reference, pair.prediction,
                    "a prediction is scored on its label map's own grid: predict on the scan the label map was "
                    "drawn on, or resample the prediction (nearest neighbour) onto it")
    check_same_plane(pair.reference, pair.prediction)
    spacing = tuple(float(s) for s in reversed(grid.GetSpacing()))
    scores = metrics.class_scores(predicted, reference, classes, spacing, tolerance_mm, ignore)
    row: dict[str, Any] = {"subject_id": pair.subject_id, **{key: round(value, 6) for key, value in scores.items()}}
    return row, found | scored, own


def _values(array: np.ndarray, path: Path) -> set[int]:
    """The values a label map holds; InputError where they are more than a label map's classes
    could be (an image given for a label map)."""
    values = np.unique(array)
    if len(values) > MAX_CLASSES:
        raise InputError(f"{path} holds {len(values)} distinct values, more than the {MAX_CLASSES} classes a label "
                         "map may have: it is an image, not a label map; give the label maps.")
    return {int(v) for v in values}


def model_classes(manifest: Manifest) -> tuple[list[tuple[int, str]], dict[int, int] | None]:
    """A segmentation model's foreground classes, and the mapping of label values to classes it was
    trained with, where it records one (`runtime.manifest.label_relabel`; `run_evaluate` says so)."""
    from runtime.manifest import label_relabel

    if manifest.task != "segmentation":
        raise InputError(f"model {manifest.name} is a {manifest.task} model; runtime evaluate scores label maps. A "
                         f"{manifest.task} model is scored by runtime predict --csv, its table's label column "
                         "holding each subject's reference.")
    return [(spec.value, spec.name) for spec in manifest.classes[1:]], label_relabel(manifest)


def run_evaluate(predictions: Path, references: Path, output_dir: Path, classes: list[tuple[int, str]] | None,
                 tolerance_mm: float = metrics.NSD_TOLERANCE_MM, relabel: dict[int, int] | None = None,
                 where_held: bool = False, manifest: Manifest | None = None, ignore: int | None = None,
                 ignore_from: str = "--ignore") -> None:
    """Score every pair, then write the tables: nothing is written (not even the folder) unless
    every pair scored. `relabel` (reference value -> class) is applied to every reference (with
    `where_held`, the mapping a model records, to those holding a value it maps). `manifest` (of
    --model) names the columns of a subjects CSV given as `references`. `ignore`: the references'
    value of unannotated voxels, which no score counts (`ignore_from` names where it was given)."""
    _refuse_ignore_value(ignore, ignore_from)
    pairs = pairs_of(predictions, references, manifest)
    tables = [output_dir / "metrics.csv", output_dir / "summary.csv"]
    refuse_overwrites([("--output-dir file", path) for path in tables],
                      [p.prediction for p in pairs] + [p.reference for p in pairs]
                      + ([references] if references.is_file() else []))
    if output_dir.exists():
        prepare_output_dir(output_dir)
    if manifest is not None and where_held and relabel:
        click.echo(f"labels scored as model {manifest.name} was trained: "
                   + ", ".join(f"{k}={v}" for k, v in sorted(relabel.items()))
                   + " where a label map holds these values (override with --relabel)")
    if classes is None:
        classes = _found_classes(pairs, references, ignore) if relabel is None else _relabelled_classes(relabel)
    _refuse_ignore(ignore, ignore_from, classes, relabel)
    _refuse_unscored_targets(relabel, classes)
    if ignore is not None:
        click.echo(f"voxels whose label is {ignore} are unannotated ({ignore_from}): in a label map holding it, "
                   "no score counts them and HD95 and NSD are NaN")
    rows, seen, held, absent = [], set(), set(), dict.fromkeys((value for value, _ in classes), 0)
    for number, pair in enumerate(pairs, start=1):
        row, found, own = score_pair(pair, classes, tolerance_mm, relabel, where_held, ignore)
        for value in absent.keys() - found:
            absent[value] += 1
        if ignore is not None and own == {ignore}:
            click.echo(f"warning: {pair.reference} holds {ignore}, the value of unannotated voxels, alone: it "
                       "scores nothing (NaN) and is in no mean", err=True)
        rows.append(row)
        seen |= found
        held |= own
        click.echo(f"{number}/{len(pairs)} {pair.subject_id}: dice_mean {row['dice_mean']}")
    if ignore is not None and ignore not in held:
        click.echo(f"warning: no label map holds {ignore}, the value of unannotated voxels {ignore_from} gives; "
                   "check the value", err=True)
    _warn_of_strays(classes, seen - {ignore}, held - {ignore}, relabel, where_held)
    if ignore is None:
        _warn_of_conventional_ones(classes, absent, len(pairs))
    prepare_output_dir(output_dir)
    summary = metric_summary(rows)
    with OutputSet() as outputs:
        outputs.table(rows, list(rows[0]), tables[0])
        outputs.table(summary, list(summary[0]), tables[1])
    for item in summary:
        if item["metric"].startswith(("dice_", "hd95_", "nsd_")):
            click.echo("  " + ", ".join(f"{k}={v}" for k, v in item.items()))
    click.echo(f"{len(rows)} pair(s) scored into {output_dir}")


def _refuse_ignore_value(ignore: int | None, given: str) -> None:
    """The value of unannotated voxels (`given` by --ignore, or a model's record) is a label value
    and not the background; refused before any label map is read."""
    if ignore is not None and not 0 < ignore <= MAX_CLASS_VALUE:
        raise InputError(f"{given} {ignore} is no label value of unannotated voxels: give an integer from 1 to "
                         f"{MAX_CLASS_VALUE} (0 is the background).")


def _refuse_ignore(ignore: int | None, given: str, classes: Sequence[tuple[int, str]],
                   relabel: dict[int, int] | None) -> None:
    """The value of unannotated voxels (`given` by --ignore, or a model's record) is no class scored
    and no value --relabel maps."""
    if ignore is None:
        return
    if ignore in {value for value, _ in classes}:
        raise InputError(f"{given} {ignore} is a class scored; give the value no class has.")
    if ignore in (relabel or {}):
        raise InputError(f"{given} {ignore} is mapped by --relabel as well; an unannotated voxel is no class's: "
                         "leave it out of --relabel.")


def _refuse_unscored_targets(relabel: dict[int, int] | None, classes: Sequence[tuple[int, str]]) -> None:
    scored = {value for value, _ in classes}
    lost = sorted({t for t in (relabel or {}).values() if t != 0 and t not in scored})
    if lost:
        raise InputError(f"--relabel maps to value(s) {lost} that are no class scored "
                         f"({', '.join(str(v) for v in sorted(scored))}); map to the model's class values.")


# Classes named one by one in a warning; past them, one line names the first of them.
LISTED_CLASSES = 5


def _warn_of_conventional_ones(classes: Sequence[tuple[int, str]], absent: dict[int, int], pairs: int) -> None:
    """A warning for each class in neither map of some pairs but not all (those `_warn_of_strays`
    names): each such pair scores it Dice 1 by convention, which its mean and dice_mean count."""
    some = [(value, name) for value, name in classes if 0 < absent[value] < pairs]
    if len(some) > LISTED_CLASSES:              # one line for many (a label set of tens of structures)
        shown = ", ".join(f"{name} in {absent[value]}" for value, name in some[:LISTED_CLASSES])
        click.echo(f"warning: {len(some)} classes are in neither map of some of the {pairs} pair(s), which score "
                   f"them Dice 1 by convention (their means and dice_mean count those 1s): {shown}, ... "
                   "(metrics.csv has every class's scores)", err=True)
        return
    for value, name in some:
        click.echo(f"warning: class {name} (value {value}) is in neither map of {absent[value]} of {pairs} "
                   "pair(s), which score it Dice 1 by convention: its mean and dice_mean count those 1s",
                   err=True)


def _warn_of_strays(classes: Sequence[tuple[int, str]], seen: set[int], held: set[int],
                    relabel: dict[int, int] | None, where_held: bool = False) -> None:
    """Warnings: a class no map holds (it scores 1), values no class scored (another labelling), and
    --relabel values no reference holds (for a model's own mapping, `where_held`: a note where no
    reference holds any)."""
    scored = {value for value, _ in classes}
    for value, name in classes:
        if value not in seen:
            click.echo(f"warning: class {name} (value {value}) is in no prediction and no label map; it scores "
                       "Dice 1 by convention and raises the mean: check --classes", err=True)
    strays = sorted(seen - scored - {0})
    if strays:
        advice = ("--relabel maps the label maps' values only, so these are values it leaves unmapped or values "
                  "the predictions hold: check both" if relabel else "where the labels are another labelling "
                  "(TotalSegmentator's, say), map them with --relabel; where one marks unannotated voxels (255 "
                  "in scribbles, say), name it with --ignore")
        click.echo(f"warning: the maps hold value(s) {strays[:10]}{' and more' if len(strays) > 10 else ''} that "
                   f"are no class scored; {advice}", err=True)
    unheld = sorted(set(relabel or {}) - held)
    if where_held:
        if relabel and metrics.in_classes_already(held, relabel, scored):
            click.echo("the label maps hold class values only and none the model's training mapped: they are "
                       "taken as its classes already")
    elif unheld:
        click.echo(f"warning: --relabel value(s) {unheld} are in no label map; check the values", err=True)


def _relabelled_classes(relabel: dict[int, int]) -> list[tuple[int, str]]:
    classes = [(value, str(value)) for value in sorted(set(relabel.values()) - {0})]
    if not classes:
        raise InputError("--relabel maps every value to 0, the background: there is no class to score.")
    return classes


def _found_classes(pairs: Sequence[Pair], references: Path, ignore: int | None = None) -> list[tuple[int, str]]:
    values: set[int] = set()
    for pair in pairs:
        _, reference = _reference_labels(pair.reference, open_image(pair.prediction).grid, [])
        values.update(int(v) for v in np.unique(reference) if v != 0 and v != ignore)
    if not values:
        raise InputError(f"the label maps in {references} hold no class but 0; name the classes with --classes.")
    if len(values) > MAX_CLASSES:
        raise InputError(f"the label maps in {references} hold {len(values)} distinct values, more than the "
                         f"{MAX_CLASSES} classes a label map may have: is LABELS a folder of images rather than "
                         "label maps? Name the classes with --classes.")
    return [(v, str(v)) for v in sorted(values)]

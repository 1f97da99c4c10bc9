"""The subject CSV: one row per subject, its id, one image path per channel and its label.

`read_subjects` checks the whole table before training starts and reports every problem together:
missing columns, empty cells, duplicate subject ids, missing files, images that cannot be read or
are truncated, channels and label maps on different grids (size, spacing, origin, direction
within 1e-4; both files named), class values the config does not list and regression targets
that are not numbers. Image headers are read and checked without loading voxels, and the data
of NIfTI, NRRD and MetaImage files against their headers (size, checksums, finite floats), as
`runtime predict` does. Paths are relative to the CSV's folder.

A file named in consecutive channel columns is read once. A file of several components (an RGB
PNG) gives all of them, one per column: it is named in as many consecutive columns (red, green and
blue naming one file); where every file has one component, a file named in several columns gives
its one channel to each.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import SimpleITK as sitk

from runtime.io.formats import plain_mode_problem
from runtime.io.scan import check_image_file, describe_grid, same_grid
from runtime.errors import InputError
from runtime.validation import Problems, channel_files, check_table_size, repeated_columns
from trainer.config import Config, ConfigError, raise_problems

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subject:
    subject_id: str
    channels: tuple[Path, ...]            # absolute image paths, in model channel order
    label: Path | float | int | None      # label map path (segmentation), class value, or regression target
    group: str | None = None              # data.group_column's value: subjects of one group share their role


@dataclass(frozen=True)
class _Row:
    line: int
    cells: dict[str, str]

    def where(self, subject_id: str) -> str:
        return f"line {self.line} (subject {subject_id or '?'})"


def read_subjects(config: Config) -> list[Subject]:
    """Every subject of the config's CSV; one ConfigError lists every problem found in the table."""
    path = config.data.csv
    problems = Problems(str(path))
    rows = _read_rows(path, _columns(config), problems)
    subjects = [_subject(row, config, path.parent, problems) for row in rows]
    _check_duplicates(rows, config.data.subject_column, problems)
    _check_same_scans([(row, s) for row, s in zip(rows, subjects) if s is not None], problems)
    raise_problems(problems, f"subject table {path}")
    _warn_group_spellings([s for s in subjects if s is not None], config.data.group_column)
    return [s for s in subjects if s is not None]


def _columns(config: Config) -> tuple[str, ...]:
    group = (config.data.group_column,) if config.data.group_column else ()
    return (config.data.subject_column, *config.data.channels, config.data.label, *group)


def _read_rows(path: Path, columns: Sequence[str], problems: Problems) -> list[_Row]:
    """The table's rows, after checking the header holds every column the config names."""
    if not path.is_file():
        raise ConfigError(f"data.csv: {path} does not exist or is not a file; check data.csv in the config.")
    check_table_size(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            twice = repeated_columns(header)
            if twice:
                problems.add("", f"names column(s) {', '.join(twice)} more than once; keep one of each")
                return []
            missing = [c for c in columns if c not in header]
            if missing:
                shown = ", ".join(repr(h) if h != h.strip() else h for h in header) or "nothing"
                spaced = " (a space after a comma is part of the column's name)" if any(h != h.strip() for h in header) \
                    else ""
                problems.add("", f"missing column(s) {', '.join(missing)}; the header has {shown}{spaced}")
                return []
            rows = [_Row(reader.line_num, {c: (row.get(c) or "").strip() for c in columns}) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path} cannot be read as a UTF-8 CSV file ({exc}); check data.csv.") from None
    if not rows:
        problems.add("", "holds no subject rows")
    return rows


def _check_duplicates(rows: list[_Row], column: str, problems: Problems) -> None:
    lines: dict[str, list[int]] = {}
    for row in rows:
        if row.cells[column]:
            lines.setdefault(row.cells[column], []).append(row.line)
    for subject_id, where in lines.items():
        if len(where) > 1:
            problems.add(f"subject {subject_id}", f"appears on lines {', '.join(map(str, where))}; subject ids must be unique")


def _check_same_scans(rows: list[tuple[_Row, Subject]], problems: Problems) -> None:
    """Two subjects whose channels are the very same files are one scan under two ids: the splits
    could put it in training and in testing. Allowed where data.group_column gives both one group."""
    seen: dict[tuple[str, ...], tuple[_Row, Subject]] = {}
    for row, subject in rows:
        key = tuple(os.path.realpath(p) for p in subject.channels)
        first = seen.setdefault(key, (row, subject))
        if first[1].subject_id == subject.subject_id or (subject.group is not None
                                                        and subject.group == first[1].group):
            continue
        problems.add(row.where(subject.subject_id),
                     f"reads the same image file(s) as subject {first[1].subject_id} on line {first[0].line} "
                     f"({subject.channels[0].name}); one scan under two ids can land in training and in testing: keep "
                     "one row, or give both the same data.group_column value")


def _warn_group_spellings(subjects: list[Subject], column: str | None) -> None:
    """Groups whose names differ only in case or spaces (P1, p1) are different groups: say so."""
    spellings: dict[str, set[str]] = {}
    for subject in subjects:
        if subject.group is not None:
            spellings.setdefault(subject.group.strip().casefold(), set()).add(subject.group)
    for names in spellings.values():
        if len(names) > 1:
            log.warning("data.group_column %s: %s are different groups, whose subjects may land on different sides "
                        "of a split; write them alike if they are one patient", column,
                        " and ".join(sorted(map(repr, names))))


def _subject(row: _Row, config: Config, folder: Path, problems: Problems) -> Subject | None:
    subject_id = row.cells[config.data.subject_column]
    where = row.where(subject_id)
    empty = [c for c, v in row.cells.items() if not v]
    if empty:
        problems.add(where, f"empty cell(s) in column(s) {', '.join(empty)}")
        return None
    channels = tuple(_path(row.cells[c], folder) for c in config.data.channels)
    label = _label(row.cells[config.data.label], config, folder, f"{where}, column {config.data.label}", problems)
    images = list(zip(config.data.channels, channels))
    if config.task == "segmentation" and isinstance(label, Path):
        images.append((config.data.label, label))
    headers = _check_images(images, config.dimensions, where, problems)
    if headers is None or label is None or not _components_fit(config, images, headers, where, problems):
        return None
    whole = _whole_image_problem(config, headers[config.data.channels[0]])
    if whole:
        problems.add(where, whole)
        return None
    group = row.cells[config.data.group_column] if config.data.group_column else None
    return Subject(subject_id=subject_id, channels=channels, label=label, group=group)


def _components_fit(config: Config, images: list[tuple[str, Path]], headers: Mapping[str, sitk.ImageFileReader],
                    where: str, problems: Problems) -> bool:
    """The channel files give one channel per entry of data.channels, and a label map (the entry after the
    channels, when there is one) one class value per voxel; False after recording the problem."""
    count = len(config.data.channels)
    components = {path: headers[column].GetNumberOfComponents() for column, path in images}
    files = channel_files([path for _, path in images[:count]])
    given = sum(components[path] for path in files)
    if given != count and given != len(files):
        several = "; ".join(plain_mode_problem(path) or f"{path} has {components[path]} components"
                            for path in files if components[path] > 1)
        problems.add(where, f"the channel files give {given} channel(s) for the {count} of data.channels "
                            f"({', '.join(config.data.channels)}); a file of several components (an RGB image gives "
                            f"3) is named in as many consecutive channel columns ({several})")
        return False
    for column, path in images[count:]:
        if components[path] != 1:
            problems.add(f"{where}, column {column}",
                         plain_mode_problem(path) or f"{path} has {components[path]} components; a label map holds "
                                                     "one class value per voxel (save it as a greyscale image)")
            return False
    return True


def _whole_image_problem(config: Config, header: sitk.ImageFileReader) -> str | None:
    """A model that takes the whole image (inference mode whole) is trained and run on the image as
    preprocessed, which must then be patch.size: what is wrong where the preprocessing gives another
    shape (no resize to it). Not judged where a reorient or crop makes the shape the image's own."""
    from runtime.io.axes import in_model_order
    from runtime.preprocess.pipeline import planned_shape

    if config.inference.mode != "whole" or any(s.name in ("reorient", "crop_nonzero") for s in config.preprocessing):
        return None
    size_xyz, spacing_xyz = header.GetSize()[:config.dimensions], header.GetSpacing()[:config.dimensions]
    size, spacing = (in_model_order(values[::-1], config.axis_order) for values in (size_xyz, spacing_xyz))
    shape, patch = planned_shape(config.preprocessing, size, spacing), tuple(config.patch.size)
    if shape == patch:
        return None
    other = config.axis_order[::-1]
    gandlf = " (as GaNDLF writes patch_size)" if other == "xyz" else ""
    reversed_order = (f"; where patch.size is written in {other} order{gandlf}, which makes it the image's size, set "
                      f"axis_order: {other}; else") if shape == patch[::-1] else ";"
    return (f"its image preprocesses to {list(shape)} ({config.axis_order}), but a {config.task} model takes the "
            f"whole image at patch.size {list(patch)}{reversed_order} add `- resize: {{shape: {list(patch)}}}` to "
            "preprocessing (or make patch.size the images' size)")


def _path(cell: str, folder: Path) -> Path:
    """The cell's path, absolute, as written: a link stays the link, so that messages name what the
    table names (the same file under two links is still found: `_check_same_scans`)."""
    path = Path(cell).expanduser()
    return Path(os.path.abspath(path if path.is_absolute() else folder / path))


def _label(cell: str, config: Config, folder: Path, where: str, problems: Problems) -> Path | float | int | None:
    """A label map path (segmentation), a class value or name (classification), a number (regression)."""
    if config.task == "segmentation":
        return _path(cell, folder)
    if config.task == "regression":
        value = _float(cell)
        if value is None:
            problems.add(where, f"must be a finite number (the regression target), got {cell!r}; a subject without "
                                "one cannot train: leave its row out of the table")
        return value
    return _class_value(cell, config, where, problems)


def _float(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _class_value(cell: str, config: Config, where: str, problems: Problems) -> int | None:
    by_name = {c.name: c.value for c in config.classes}
    values = {c.value for c in config.classes}
    number = _float(cell)
    if cell in by_name:
        return by_name[cell]
    if number is not None and number.is_integer() and int(number) in values:
        return int(number)
    listed = ", ".join(f"{c.value} ({c.name})" for c in config.classes)
    problems.add(where, f"class {cell!r} is not in data.classes ({listed}); give a class value or name from it")
    return None


def _check_images(images: list[tuple[str, Path]], dims: int, where: str,
                  problems: Problems) -> dict[str, sitk.ImageFileReader] | None:
    """Every image exists, opens and is complete, and all share the first one's grid: their headers by
    column; None after any problem."""
    headers = []
    for column, path in images:
        what = _image_problem(path, dims)
        if isinstance(what, str):
            problems.add(f"{where}, column {column}", what)
        else:
            headers.append((column, path, what))
    agree = True
    for column, path, header in headers[1:]:
        first_column, first_path, first = headers[0]
        if not same_grid(first, header):
            agree = False
            problems.add(where, f"{column} {path} ({describe_grid(header, first)}) is not on the grid of "
                                f"{first_column} {first_path} ({describe_grid(first, header)}); resample them onto one "
                                "grid")
    if not agree or len(headers) != len(images):
        return None
    return {column: header for column, _, header in headers}


def _image_problem(path: Path, dims: int) -> sitk.ImageFileReader | str:
    """The image's header (a reader after ReadImageInformation), or what is wrong with the file."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_file():
        return f"{path} is not a file; give one image file (NIfTI, NRRD, MHA, …) per cell"
    try:
        reader = check_image_file(path)
    except InputError as exc:
        return str(exc).rstrip(".")
    return _dimension_problem(reader, path, dims) or reader


def _dimension_problem(reader: sitk.ImageFileReader, path: Path, dims: int) -> str | None:
    """A 3D config needs 3D images; a 2D one takes 2D images or 3D ones holding one slice."""
    size = reader.GetSize()
    if len(size) == dims or (dims == 2 and len(size) == 3 and size[2] == 1):
        return None
    remedy = ("give 2D images, or 3D images one slice thick along z (or set dimensions: 3 for volumes)" if dims == 2
              else "give volumes (an image of one slice saved as a 3D NIfTI or MHA is one), or set dimensions: 2")
    return (f"{path} is a {len(size)}D image of size {'×'.join(map(str, size))}; the config has dimensions: {dims}; "
            f"{remedy}")


# Regression targets beyond this size (in absolute value) are warned of: a network's last layer
# starts near 0, and on MSE of raw targets in the thousands it learns worse than their mean.
TARGET_SCALE = 100.0


def target_scale_warning(config: Config, subjects: Sequence[Subject]) -> str | None:
    """A warning where a regression model's targets reach far beyond units of about 1; None else."""
    values = [float(s.label) for s in subjects if isinstance(s.label, (int, float))]
    if config.task != "regression" or not values or max(abs(v) for v in values) <= TARGET_SCALE:
        return None
    return (f"warning: the regression targets run from {min(values):g} to {max(values):g}; a network learns targets "
            "of about 1 far better (on MSE of targets in the thousands it can do worse than their mean): divide them "
            "in the table (and multiply its predictions back), e.g. by "
            f"{10 ** round(math.log10(max(abs(v) for v in values))):g}")


def one_class_warning(config: Config, subjects: Sequence[Subject], folds: Sequence[Any]) -> str | None:
    """A warning where a classification fold's validation subjects hold one class: its AUC is
    undefined and its balanced accuracy says nothing, yet the best epoch is chosen on them; None else."""
    if config.task != "classification":
        return None
    label = {s.subject_id: s.label for s in subjects}
    single = [f"{fold.id} ({next(iter(found))})" for fold in folds
              if fold.val and len(found := {label.get(subject) for subject in fold.val}) == 1]
    if not single:
        return None
    shown = ", ".join(single[:5]) + (f" and {len(single) - 5} more" if len(single) > 5 else "")
    return (f"warning: the validation subjects of fold(s) {shown} hold one class only (the class in brackets), so "
            "their AUC is undefined and the best epoch is chosen on them blindly: give more subjects (or groups) of "
            "each class, or fewer validation folds")


def missing_class_warnings(config: Config, subjects: Sequence[Subject], folds: Sequence[Any]) -> list[str]:
    """Warnings where a classifier's table holds no subject of a class (it cannot be learnt, and
    balanced accuracy, which averages the classes present, hides it), and where a fold's training
    subjects hold none of a class the table holds (that fold cannot learn it)."""
    if config.task != "classification":
        return []
    names = {spec.value: spec.name for spec in config.classes}
    label = {s.subject_id: s.label for s in subjects}
    held = set(label.values())
    warnings = []
    never = [f"{name} ({value})" for value, name in names.items() if value not in held]
    if never:
        warnings.append(f"warning: no subject of the table holds class(es) {', '.join(never)}: the model cannot learn "
                        "them, and its scores say nothing of them (balanced accuracy averages the classes present); "
                        "add subjects of each class, or leave the class out of data.classes")
    short = []
    for fold in folds:
        lacking = [names[value] for value in names if value in held
                   and fold.train and value not in {label.get(subject) for subject in fold.train}]
        if lacking:
            short.append(f"{fold.id} ({', '.join(lacking)})")
    if short:
        shown = ", ".join(short[:5]) + (f" and {len(short) - 5} more" if len(short) > 5 else "")
        warnings.append(f"warning: the training subjects of fold(s) {shown} hold no subject of the class(es) in "
                        "brackets, so those folds cannot learn them: give more subjects (or groups) of each class, or "
                        "fewer folds")
    return warnings


def subject_id_warning(subjects: Sequence[Subject]) -> str | None:
    """A warning where subject ids are not what `runtime predict --csv` takes (it names output files
    after them), so the table would not run through it as it is; None else."""
    from runtime.commands.rows import SAFE_ID, SAFE_ID_RULE

    odd = [s.subject_id for s in subjects if not SAFE_ID.match(s.subject_id)]
    if not odd:
        return None
    shown = ", ".join(repr(name) for name in odd[:5]) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
    return (f"warning: subject id(s) {shown} are not {SAFE_ID_RULE}; training takes them, but runtime predict "
            "--csv and export quantize --calibration refuse them (they name output files): rename them in the table")

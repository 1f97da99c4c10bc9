"""`trainer patches`: training patches mined from whole-slide images, and the subject table
`trainer fit` reads.

The slide table (SLIDES_CSV) has a `slide` column (a slide path, relative to the table's folder), a
`subject_id` column, and `label` (segmentation: an image of the whole slide holding class values,
any resolution of the slide's aspect ratio, or QuPath's GeoJSON annotations of it,
runtime.slide.annotations) or `class` (classification: a class value or name of data.classes; a
`label` may come too; with annotations and no class, each tile takes the annotated class covering
more than CLASS_SHARE of it; with segmentation annotations and data.ignore_value, their unannotated
pixels take that value; with data.ignore_value, a patch with no annotated pixel is left out). Each
slide is read as the runtime reads it: at the config's `slide.mpp` from the best pyramid level,
resized (bilinear); its tissue is the runtime's Otsu mask (`slide` section). Patches of the config's
patch size lie on a grid from the slide's corner; those whose tissue share (measured on at most
SHARE_POINTS x SHARE_POINTS points of the patch) is at least `min_tissue` qualify, and at most
`max_per_slide` of them are kept, drawn with the config's seed where more qualify.

The output folder holds images/<patch>.png (RGB), labels/<patch>.png (segmentation: class values,
nearest-neighbour from the label image; uint8, uint16 past 255) and patches.csv, whose columns are
the config's own: data.subject_column (the patch id), data.group_column (the slide's subject id,
so a subject's patches share their role in every fold), each of data.channels naming the patch's
RGB file (one file, three channels), data.label (the label patch, or the class value), then
`slide`, `l0_x`, `l0_y` (the patch's level-0 corner), `tissue` (its share), and for classification
with label images `share_<value>` per label value. The folder is written beside its final place
and renamed when every slide is done: a refused or interrupted run leaves nothing.
"""
from __future__ import annotations

import csv
import math
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from runtime.contract import MPP_RANGE
from runtime.errors import InputError, OutputError
from runtime.slide.annotations import (
    CLASS_SHARE, TILE_POINTS, Annotations, covering_classes, ignored_value, is_annotation_file, read_annotations,
)
from runtime.slide.reader import Slide, mpp_cell
from runtime.slide.source import Sampling, read_pixels, sampling_for
from runtime.slide.tissue import TissueMask, aspect_problem, otsu_mask
from runtime.validation import check_table_size
from trainer.config import Config, label_values_problem, relabelled

PATCHES_FILE = "patches.csv"
IMAGES, LABELS = "images", "labels"
# The tissue share of a patch is measured on at most this many points per axis of the patch.
SHARE_POINTS = TILE_POINTS
# Columns patches.csv adds to the config's own.
EXTRA_COLUMNS = ("slide", "l0_x", "l0_y", "tissue")
# Pillow modes that hold one integer per pixel (class values).
VALUE_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")
# Modes a grey label saved in colour comes in (its channels equal; read_label_image checks).
GREY_AS_COLOUR = ("RGB", "RGBA", "LA")

Say = Callable[[str], None]


@dataclass(frozen=True)
class Mining:
    """How patches are chosen: the tissue share a patch needs, how many a slide gives at most, and
    level 0's microns per pixel replacing the slides' own (None: each slide's)."""

    min_tissue: float
    max_per_slide: int
    mpp: float | None


@dataclass(frozen=True)
class SlideRow:
    """One row of the slide table: its line, subject, slide path, label image (or None), class
    value (classification; None otherwise) and resolution (its optional mpp column)."""

    line: int
    subject_id: str
    slide: Path
    label: Path | None
    class_value: int | None
    mpp: float | None = None            # the row's mpp column: level 0's microns per pixel, replacing the file's


@dataclass(frozen=True)
class Prepared:
    """A slide checked and ready to mine: where the model's pixels lie and where its tissue is."""

    row: SlideRow
    sampling: Sampling
    tissue: TissueMask
    l0_shape: tuple[int, int]
    annotations: Annotations | None = None     # the label column's GeoJSON annotations, read
    notes: tuple[str, ...] = ()                # what mining it should say (warnings begin "warning:")


@dataclass(frozen=True)
class Mined:
    """One slide's result: the table rows of its kept patches, how many qualified, and how many
    grid positions it had."""

    rows: list[dict[str, Any]]
    qualified: int
    on_grid: int


# ----------------------------------------------------------------------------- checks


def check_settings(config: Config, mining: Mining, output: Path) -> None:
    """InputError where the config or the options cannot mine patches."""
    if config.modality != "histology" or config.slide is None:
        raise InputError(f"config {config.source}: trainer patches mines slides for histology models; this config's "
                         f"modality is {config.modality}. Set modality: histology and a slide section.")
    if config.task not in ("segmentation", "classification"):
        raise InputError(f"config {config.source}: trainer patches makes segmentation and classification patches, "
                         f"not {config.task}.")
    if config.data.group_column is None:
        raise InputError(f"config {config.source}: data.group_column is not set; set it (e.g. group_column: "
                         "subject_id) so that the patches of one subject are never split between training and "
                         "validation.")
    clash = [column for column in EXTRA_COLUMNS if column in own_columns(config)]
    if clash:
        raise InputError(f"config {config.source}: data names column(s) {', '.join(clash)}, which patches.csv uses "
                         "for the patch's slide and place; rename them in data.")
    if not (math.isfinite(mining.min_tissue) and 0 <= mining.min_tissue <= 1):
        raise InputError(f"--min-tissue must be a share in [0, 1], got {mining.min_tissue}.")
    if mining.max_per_slide < 1:
        raise InputError(f"--max-per-slide must be at least 1, got {mining.max_per_slide}.")
    if output.is_symlink():
        raise OutputError(f"--output {output} is a link; give the folder the patches go into itself.")
    if output.exists() and not output.is_dir():
        raise OutputError(f"--output {output} is a file; --output is the folder the patches go into: choose a new "
                          "folder.")
    if output.exists() and any(output.iterdir()):
        raise OutputError(f"--output {output} already exists and is not an empty folder; choose a new folder, so "
                          "that earlier patches are never mixed with these.")


def read_slide_rows(path: Path, config: Config) -> list[SlideRow]:
    """Every row of the slide table; InputError for the first problem, with its line."""
    need_label = config.task == "segmentation"
    required = ("slide", "subject_id", "label" if need_label else "class")
    check_table_size(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [column for column in required if column not in header
                       and not (column == "class" and "label" in header)]     # tiles classed by annotations
            if missing:
                wanted = "label" if need_label else "class (or annotations in label), and optionally label"
                raise InputError(f"{path}: missing column(s) {', '.join(missing)}; a slide table has slide, subject_id "
                                 f"and {wanted}.")
            rows = [_slide_row(cells, reader.line_num, path, config) for cells in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path} cannot be read as a UTF-8 CSV file ({exc}); check SLIDES_CSV.") from None
    if not rows:
        raise InputError(f"{path} holds no slide rows; list one slide per row.")
    return rows


def _slide_row(cells: dict[str, str | None], line: int, path: Path, config: Config) -> SlideRow:
    def cell(column: str) -> str:
        return (cells.get(column) or "").strip()

    where = f"{path} line {line}"
    label = _resolved(cell("label"), path.parent) if cell("label") else None
    tiles_annotated = config.task == "classification" and label is not None and is_annotation_file(label)
    needed = ["slide", "subject_id", "label" if config.task == "segmentation" else "class"]
    empty = [column for column in needed if not cell(column) and not (column == "class" and tiles_annotated)]
    if empty == ["class"] and cells.get("class") is None:
        raise InputError(f"{where}: the table has no class column, and this row's label is no annotation file; give "
                         "each slide's class in a class column, or its annotations (.geojson) in label.")
    if empty:
        remedy = " (or, for classification, annotations in the label column)" if "class" in empty else ""
        raise InputError(f"{where}: empty cell(s) in column(s) {', '.join(empty)}; fill them{remedy} or remove the "
                         "row.")
    value = _class_value(cell("class"), config, where) if config.task == "classification" and cell("class") else None
    return SlideRow(line, cell("subject_id"), _resolved(cell("slide"), path.parent), label, value,
                    _row_mpp(cell("mpp"), where))


def _row_mpp(text: str, where: str) -> float | None:
    """The mpp column's microns per pixel, or None where the cell is empty."""
    try:
        return mpp_cell(text)
    except ValueError:
        low, high = MPP_RANGE
        raise InputError(f"{where}, column mpp: {text!r} is not level 0's microns per pixel in [{low}, {high}]; "
                         "e.g. 0.25 for a 40x scan, or leave it empty for the slide file's own.") from None


def _resolved(text: str, folder: Path) -> Path:
    """The cell's path made absolute, a link kept as it is named (the name the user gave, in the
    lines and the table), `..` taken away."""
    path = Path(text).expanduser()
    return Path(os.path.abspath(path if path.is_absolute() else folder / path))


def _class_value(text: str, config: Config, where: str) -> int:
    """The class value `text` names (a value or a name of data.classes)."""
    for spec in config.classes:
        if text in (spec.name, str(spec.value)):
            return spec.value
    listed = ", ".join(f"{c.value} ({c.name})" for c in config.classes)
    raise InputError(f"{where}, column class: {text!r} is not in data.classes ({listed}); give a class value or name "
                     "from it.")


def open_slide(row: SlideRow, mining: Mining) -> Slide:
    """`row`'s slide, read at its mpp column's level-0 microns per pixel, else --mpp's, else the
    file's own; a refusal names where the resolution came from, or where to give it."""
    if row.mpp is not None:
        return Slide(row.slide, row.mpp, mpp_from="the mpp column")
    if mining.mpp is not None:
        return Slide(row.slide, mining.mpp)
    return Slide(row.slide, None, mpp_from="the slide table's mpp column (or --mpp for every slide)")


def prepare(row: SlideRow, config: Config, mining: Mining, where: str) -> Prepared:
    """Open the slide, place the model's pixels on it, make its tissue mask and check its label
    image's size; InputError (prefixed with `where`) where any of it fails."""
    assert config.slide is not None
    try:
        with open_slide(row, mining) as slide:
            sampling = sampling_for(slide, config.slide.mpp)
            tissue = otsu_mask(slide, config.slide.tissue_mpp, config.slide.min_object_um2, config.slide.min_hole_um2,
                               remedy="leave it out of the slides CSV")
            shape = (slide.l0_height, slide.l0_width)
        annotations, notes = None, ()
        if row.label is not None and is_annotation_file(row.label):
            annotations = _annotations(row.label, config, shape)
            notes = _annotation_notes(row.label, annotations, tissue, config.task == "classification")
        elif row.label is not None:
            label_size(row.label, shape)
            if config.task == "segmentation":      # its values too, so that every row's problem is said at once
                check_label_values(relabelled(read_label_image(row.label), config), row.label, config)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return Prepared(row, sampling, tissue, shape, annotations, notes)


def _annotation_notes(path: Path, annotations: Annotations, tissue: TissueMask, background: bool) -> tuple[str, ...]:
    """What was left out of the annotations, and a warning where little of their area (with
    `background`, class 0's too) lies on the tissue (coordinates in microns, or at a downsample,
    land elsewhere on the slide)."""
    notes = [f"{path.name}: {told}"] if (told := annotations.told()) else []
    warning = annotations.off_tissue_warning(path.name, tissue.mask, tissue.l0_per_pixel, background)
    return tuple(notes + ([warning] if warning else []))


def _annotations(path: Path, config: Config, l0_shape: tuple[int, int]) -> Annotations:
    if config.data.relabel is not None:
        raise InputError(f"label {path}: annotations name their classes, which data.relabel (a map of label image "
                         "values) does not apply to; leave data.relabel out, or give label images.")
    return read_annotations(path, config.classes, l0_shape, ignore=ignored_value(config.task, config.data.ignore_value))


# ----------------------------------------------------------------------------- label images


def label_size(path: Path, l0_shape: tuple[int, int]) -> tuple[int, int]:
    """The (width, height) of a label image, checked: an image of class values of the slide's aspect ratio."""
    from PIL import Image, UnidentifiedImageError

    from runtime.slide.reader import MAX_PLAIN_PIXELS

    if not path.is_file():
        raise InputError(f"label {path}: no such file; check the label column.")
    try:
        with Image.open(path) as image:
            (width, height), mode = image.size, image.mode
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"label {path}: not an image Pillow reads ({exc}); save it as a PNG of class values.") from None
    if width * height > MAX_PLAIN_PIXELS:
        raise InputError(f"label {path}: {width} x {height} pixels is more than a label image may hold "
                         f"({MAX_PLAIN_PIXELS:,}); save it smaller.")
    if mode not in (*VALUE_MODES, *GREY_AS_COLOUR):
        raise InputError(f"label {path}: its pixels are {mode}, not class values; save it as a greyscale (or "
                         "palette) PNG holding one class value per pixel.")
    problem = aspect_problem(width, height, (l0_shape[1], l0_shape[0]))
    if problem:
        raise InputError(f"label {path}: {problem}.")
    return width, height


def read_label_image(path: Path) -> np.ndarray:
    """The class values (rows, columns) of a label image, as an integer array: a grey or palette
    image's values, or a grey image saved as RGB (runtime.slide.tissue.grey_values, as
    `runtime predict --csv` reads labels); InputError for colours, 16-bit colour or fractions."""
    from runtime.slide.reader import open_plain
    from runtime.slide.tissue import grey_values, not_values

    image = open_plain(path, "label")
    values = grey_values(image)
    kind = not_values(image, values)
    if kind is not None:
        raise InputError(f"label {path}: its pixels are {kind}, not class values; save it as a greyscale (or "
                         "palette) PNG holding one class value per pixel.")
    values = values.astype(np.int64)
    if values.size and values.min() < 0:
        raise InputError(f"label {path}: holds negative values; class values are 0 or more.")
    return values


def check_label_values(values: np.ndarray, path: Path, config: Config) -> None:
    """A segmentation label image holds class values of data.classes (and data.ignore_value) only."""
    problem = label_values_problem(values, path, config.classes, config.data.ignore_value)
    if problem:
        raise InputError(f"{problem}.")


# ----------------------------------------------------------------------------- the grid


def patch_shape(config: Config) -> tuple[int, int]:
    """The patch (rows, columns) in model pixels."""
    size = tuple(config.patch.size)
    return (size[0], size[1]) if config.axis_order == "yx" else (size[1], size[0])


def grid(shape: tuple[int, int], patch: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The top rows and left columns of the patches that fit whole inside `shape` (model pixels)."""
    return np.arange(0, shape[0] - patch[0] + 1, patch[0]), np.arange(0, shape[1] - patch[1] + 1, patch[1])


def tissue_shares(tissue: TissueMask, sampling: Sampling, tops: np.ndarray, lefts: np.ndarray,
                  patch: tuple[int, int]) -> np.ndarray:
    """(len(tops), len(lefts)) the share of each grid patch that is tissue, from the mask pixel under
    each of at most SHARE_POINTS x SHARE_POINTS evenly spread points of the patch."""
    axes = []
    for starts, length, per_mask, size in zip((tops, lefts), patch, tissue.l0_per_pixel, tissue.mask.shape):
        points = min(length, SHARE_POINTS)
        offsets = (np.arange(points) + 0.5) * length / points
        index = np.floor((starts[:, None] + offsets[None, :]) * sampling.l0_per_pixel / per_mask).astype(np.int64)
        axes.append(np.clip(index, 0, size - 1))
    rows, cols = axes
    sampled = tissue.mask[rows.reshape(-1)[:, None], cols.reshape(-1)[None, :]]
    return sampled.reshape(len(tops), rows.shape[1], len(lefts), cols.shape[1]).mean(axis=(1, 3))


def qualifying(shares: np.ndarray, mining: Mining) -> np.ndarray:
    """Which grid patches qualify: at least `min_tissue` tissue, and some tissue at all."""
    return (shares >= mining.min_tissue) & (shares > 0)


def choose(shares: np.ndarray, mining: Mining, seed: Sequence[int]) -> list[tuple[int, int]]:
    """The (row, column) grid indices kept: the qualifying ones, at most `max_per_slide` of them drawn
    with `seed`, in grid order."""
    qualified = np.argwhere(qualifying(shares, mining))
    if len(qualified) > mining.max_per_slide:
        picked = np.random.default_rng(list(seed)).choice(len(qualified), mining.max_per_slide, replace=False)
        qualified = qualified[np.sort(picked)]
    return [(int(r), int(c)) for r, c in qualified]


# ----------------------------------------------------------------------------- reading a patch


def read_patch(slide: Slide, sampling: Sampling, top: int, left: int, height: int, width: int,
               tissue: TissueMask | None = None) -> np.ndarray:
    """(height, width, 3) uint8 RGB of the model's pixels from (top, left), read as the runtime reads a
    window (runtime.slide.source.read_pixels), refused where the slide holds no image inside `tissue`."""
    return read_pixels(slide, sampling, (slice(top, top + height), slice(left, left + width)), tissue)


def label_patch(values: np.ndarray, l0_shape: tuple[int, int], sampling: Sampling, top: int, left: int,
                height: int, width: int) -> np.ndarray:
    """(height, width) class values under the centre of each model pixel of the patch at (top, left):
    nearest-neighbour from a label image of the whole slide."""
    indices = []
    for start, length, l0_size, size in zip((top, left), (height, width), l0_shape, values.shape):
        centres_l0 = (start + np.arange(length) + 0.5) * sampling.l0_per_pixel
        indices.append(np.clip(np.floor(centres_l0 * size / l0_size).astype(np.int64), 0, size - 1))
    return values[np.ix_(indices[0], indices[1])]


def save_png(array: np.ndarray, path: Path) -> None:
    """RGB uint8 as an RGB PNG; class values as a greyscale PNG (uint8, or uint16 past 255)."""
    from PIL import Image

    if array.ndim == 3 or int(array.max(initial=0)) <= 255:
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path)
    else:
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint16)).save(path)


# ----------------------------------------------------------------------------- mining


@dataclass(frozen=True)
class Place:
    """A kept patch's top row and left column (model pixels), its tissue share, and its class where
    the slide's annotations give it (a tile classified by annotations)."""

    top: int
    left: int
    tissue: float
    tile_class: int | None = None


def patch_id(row: SlideRow, l0_x: int, l0_y: int) -> str:
    """A patch's id and file name stem: its subject (letters, digits, _ and - kept), the slide's line and
    its level-0 corner; unique because the line is."""
    subject = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in row.subject_id)
    return f"{subject}_{row.line}_{l0_x}_{l0_y}"


def mine_slide(prepared: Prepared, config: Config, mining: Mining, folder: Path) -> Mined:
    """Write the kept patches of one slide into `folder` and return their table rows."""
    row, sampling = prepared.row, prepared.sampling
    patch = patch_shape(config)
    tops, lefts = grid(sampling.shape, patch)
    shares = tissue_shares(prepared.tissue, sampling, tops, lefts, patch)
    classes = None
    labels_at = _labels_at(prepared, config, patch)
    if prepared.annotations is not None and _classed_by_annotations(prepared, config):
        classes, shares = _annotated_classes(_annotation_points(prepared.annotations, sampling, tops, lefts, patch),
                                             shares)
    elif _sparse(prepared, config) and labels_at is not None:
        annotated = _annotated(prepared, config, labels_at, tops, lefts, patch, qualifying(shares, mining))
        shares = np.where(annotated, shares, -1.0)
    kept = choose(shares, mining, (config.seed, row.line))
    rows = []
    with open_slide(row, mining) as slide:
        for r, c in kept:
            top, left = int(tops[r]), int(lefts[c])
            place = Place(top, left, float(shares[r, c]), None if classes is None else int(classes[r, c]))
            rows.append(_write_patch(slide, prepared, config, place, labels_at, folder, patch))
    return Mined(rows, int(np.count_nonzero(qualifying(shares, mining))), int(shares.size))


def _smaller_than_a_patch(prepared: Prepared, config: Config) -> str:
    """Where the slide at the model's resolution is smaller than a patch along either side, its
    size and the patch's (width x height, as the runtime says a slide's); "" otherwise."""
    shape, patch = prepared.sampling.shape, patch_shape(config)
    if shape[0] >= patch[0] and shape[1] >= patch[1]:
        return ""
    return (f"{prepared.row.slide.name} is {shape[1]} x {shape[0]} pixels at {config.slide.mpp:g} um/pixel, smaller "
            f"than one {patch[1]} x {patch[0]} patch")


def _classed_by_annotations(prepared: Prepared, config: Config) -> bool:
    """Whether the slide's tiles take their classes from its annotations: a classification row
    without a class, whose label is annotations."""
    return config.task == "classification" and prepared.row.class_value is None and prepared.annotations is not None


def _sparse(prepared: Prepared, config: Config) -> bool:
    """Whether the slide's segmentation labels mark unannotated pixels (data.ignore_value): a patch
    holding no annotated pixel is then left out."""
    return config.task == "segmentation" and config.data.ignore_value is not None and prepared.row.label is not None


def _annotated(prepared: Prepared, config: Config, labels_at: LabelsAt, tops: np.ndarray, lefts: np.ndarray,
               patch: tuple[int, int], candidates: np.ndarray) -> np.ndarray:
    """Which of the `candidates` grid patches hold annotated pixels: of annotations, those sharing
    some area with an annotation of a class (however thin the stroke; one query for all of them);
    of a label image, those whose label patch holds a pixel that is not data.ignore_value."""
    found = np.zeros(candidates.shape, dtype=bool)
    rows, columns = np.nonzero(candidates)
    if prepared.annotations is not None:
        scale = prepared.sampling.l0_per_pixel
        boxes = np.stack([lefts[columns], tops[rows], lefts[columns] + patch[1], tops[rows] + patch[0]], axis=1)
        found[rows, columns] = prepared.annotations.overlapping(boxes * scale)
        return found
    for r, c in zip(rows, columns):
        found[r, c] = bool((labels_at(int(tops[r]), int(lefts[c])) != config.data.ignore_value).any())
    return found


def _annotation_points(annotations: Annotations, sampling: Sampling, tops: np.ndarray, lefts: np.ndarray,
                       patch: tuple[int, int]) -> np.ndarray:
    """The annotation class at SHARE_POINTS x SHARE_POINTS points of each grid patch (one pass over
    the slide's annotations), -1 where none holds the point: (rows, columns, points)."""
    points = tuple(min(length, SHARE_POINTS) for length in patch)
    step = tuple(length * sampling.l0_per_pixel / count for length, count in zip(patch, points))
    found = annotations.grid((len(tops) * points[0], len(lefts) * points[1]), step, unannotated=-1)
    blocks = found.reshape(len(tops), points[0], len(lefts), points[1]).transpose(0, 2, 1, 3)
    return blocks.reshape(len(tops), len(lefts), -1)


def _annotated_classes(points: np.ndarray, shares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each grid patch's class: the annotation class holding more than CLASS_SHARE of its points
    (`_annotation_points`), -1 where none does; and the tissue shares with those patches made not to
    qualify (-1)."""
    classes = covering_classes(points)
    return classes, np.where(classes >= 0, shares, -1.0)


LabelsAt = Callable[[int, int], np.ndarray]


def _labels_at(prepared: Prepared, config: Config, patch: tuple[int, int]) -> LabelsAt | None:
    """The class values of the patch at (top, left): from the slide's annotations, or from its
    label image (nearest neighbour); None where the row has neither."""
    row, sampling = prepared.row, prepared.sampling
    annotations = prepared.annotations
    if annotations is not None:
        ignore = config.data.ignore_value      # unannotated, for segmentation: the background or data.ignore_value
        fill = (0 if ignore is None else ignore) if config.task == "segmentation" else -1      # else no class's share
        step = (sampling.l0_per_pixel, sampling.l0_per_pixel)
        return lambda top, left: annotations.grid(patch, step, unannotated=fill, origin=(top, left))
    if row.label is None:
        return None
    values = read_label_image(row.label)
    if config.task == "segmentation":          # written as they are: trainer fit relabels what it reads
        check_label_values(relabelled(values, config), row.label, config)
    return lambda top, left: label_patch(values, prepared.l0_shape, sampling, top, left, *patch)


def _write_patch(slide: Slide, prepared: Prepared, config: Config, place: Place, labels_at: LabelsAt | None,
                 folder: Path, patch: tuple[int, int]) -> dict[str, Any]:
    """Write one patch's image (and label) files; its row of patches.csv."""
    row, sampling = prepared.row, prepared.sampling
    l0_x, l0_y = round(place.left * sampling.l0_per_pixel), round(place.top * sampling.l0_per_pixel)
    name = patch_id(row, l0_x, l0_y)
    image = f"{IMAGES}/{name}.png"
    save_png(read_patch(slide, sampling, place.top, place.left, *patch, tissue=prepared.tissue), folder / image)
    cells: dict[str, Any] = {config.data.subject_column: name, config.data.group_column: row.subject_id,
                             **{channel: image for channel in config.data.channels}}
    labels = None if labels_at is None else labels_at(place.top, place.left)
    if config.task == "segmentation":
        assert labels is not None
        cells[config.data.label] = f"{LABELS}/{name}.png"
        save_png(labels, folder / cells[config.data.label])
    else:
        cells[config.data.label] = row.class_value if place.tile_class is None else place.tile_class
        if labels is not None:
            found, counts = np.unique(labels, return_counts=True)
            cells.update({f"share_{int(v)}": round(float(n) / labels.size, 6) for v, n in zip(found, counts)
                          if v >= 0})
    return {**cells, "slide": str(row.slide), "l0_x": l0_x, "l0_y": l0_y, "tissue": round(place.tissue, 6)}


def own_columns(config: Config) -> list[str]:
    """The columns of patches.csv the config reads: subject, group, channels and label."""
    data = config.data
    return [data.subject_column, *([data.group_column] if data.group_column else []), *data.channels, data.label]


def table_columns(config: Config, shares: Sequence[int]) -> list[str]:
    """The columns of patches.csv: the config's own, then EXTRA_COLUMNS and share_<value> per label value."""
    return [*own_columns(config), *EXTRA_COLUMNS, *(f"share_{v}" for v in shares)]


def write_table(rows: list[dict[str, Any]], config: Config, path: Path) -> None:
    """patches.csv: one row per patch; a share column a patch lacks holds 0."""
    shares = sorted({int(key[len("share_"):]) for row in rows for key in row if key.startswith("share_")})
    columns = table_columns(config, shares)
    blank = {f"share_{v}": "" for v in shares}          # a patch of a slide without labels: no share known
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval=0, lineterminator="\n")
        writer.writeheader()
        writer.writerows(row if any(key.startswith("share_") for key in row) else {**blank, **row} for row in rows)


def mine_patches(slides_csv: Path, config: Config, output: Path, mining: Mining, say: Say) -> int:
    """Check every slide, mine each, and publish the output folder; returns the number of patches."""
    check_settings(config, mining, output)
    rows = read_slide_rows(slides_csv, config)
    prepared, problems = [], []
    for row in rows:            # every row's slide and label opened first, every problem said at once
        try:
            prepared.append(prepare(row, config, mining, f"{slides_csv} line {row.line}"))
        except InputError as exc:
            problems.append(str(exc))
    if problems:
        from runtime.commands.rows import listed

        raise InputError(listed(problems))
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    try:
        table = _mine_all(prepared, config, mining, staging, slides_csv, say)
        write_table(table, config, staging / PATCHES_FILE)
        staging.chmod(_folder_mode(output) | (stat.S_IMODE(staging.stat().st_mode) & stat.S_ISGID))
        if output.exists():
            output.rmdir()
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return len(table)


def _folder_mode(output: Path) -> int:
    """The mode the published folder takes: an empty one's it replaces, else a new folder's under
    the umask (a staging folder from mkdtemp is private to its owner); set once it is filled, so
    that a read-only mode does not stop the filling, keeping a set-group-ID bit it inherited."""
    if output.is_dir():
        return stat.S_IMODE(output.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _mine_all(prepared: list[Prepared], config: Config, mining: Mining, staging: Path, slides_csv: Path,
              say: Say) -> list[dict[str, Any]]:
    (staging / IMAGES).mkdir()
    if config.task == "segmentation":
        (staging / LABELS).mkdir()
    table: list[dict[str, Any]] = []
    for item in prepared:
        try:
            mined = mine_slide(item, config, mining, staging)
        except InputError as exc:
            raise InputError(f"{slides_csv} line {item.row.line}: {exc}") from None
        rule = (f" and an annotated class over {CLASS_SHARE:.0%} of it" if _classed_by_annotations(item, config)
                else " and an annotated pixel" if _sparse(item, config) else "")
        small = _smaller_than_a_patch(item, config) if not mined.on_grid else ""
        say(f"{item.row.slide.name} (subject {item.row.subject_id}): {len(mined.rows)} patch(es) kept of "
            f"{mined.qualified} with at least {mining.min_tissue:.0%} tissue{rule} ({mined.on_grid} on the grid"
            f"{': ' + small if small else ''})")
        for note in item.notes:
            say(note)
        table.extend(mined.rows)
    if not table and all(_smaller_than_a_patch(item, config) for item in prepared):
        raise InputError(f"{slides_csv}: no slide holds one whole patch ({_smaller_than_a_patch(prepared[0], config)}"
                         f"{', as are the others' if len(prepared) > 1 else ''}); give a smaller patch.size, or a "
                         "finer slide.mpp if the model may work at it.")
    if not table:
        classed = any(_classed_by_annotations(item, config) for item in prepared)
        also = (f" and an annotated class covering more than {CLASS_SHARE:.0%} of it; annotate whole regions of "
                "each class, or give the slides' classes in a class column") if classed else ""
        if any(_sparse(item, config) for item in prepared):
            also = (f" and an annotated pixel (one not data.ignore_value, {config.data.ignore_value}); check that "
                    "the labels' annotated pixels lie on the slides' tissue")
        raise InputError(f"{slides_csv}: no patch of any slide has {mining.min_tissue:.0%} tissue{also}; lower "
                         "--min-tissue or check the slides and the slide section of the config.")
    return table

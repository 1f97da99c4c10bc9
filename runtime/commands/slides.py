"""`runtime predict --csv slides.csv` with a histology model: many slides in one command, with
Dice per class (segmentation) or the accuracy of the tiles (a tile classifier) when labels are given.

The CSV has a `subject_id` column and a `slide` column (paths relative to the CSV's folder);
optional columns: `label`, a label image of the whole slide (class values per pixel, at any
resolution of the slide's aspect ratio; segmentation models) or QuPath's GeoJSON annotations of it
(runtime.slide.annotations), `class` (a tile classifier's: the class of every tile of the slide, as
`trainer patches` reads it), and `mpp`, the slide's level-0 microns per pixel where its file does
not say. Every problem of the CSV is reported before any
slide is run; a slide that fails is reported at the end and the others are written.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from runtime import metrics
from runtime.commands.rows import (
    FAILURES, SAFE_ID, SAFE_ID_RULE, Scored, classification_metrics, confusion_rows, drop_stale_tables, failed,
    finish_rows, label_number, listed, metric_summary, pooled_summary, read_rows, resolve, trained_note,
    unannotated_note,
)
from runtime.contract import MPP_RANGE
from runtime.errors import InputError, MedflowError
from runtime.io.write import OutputSet, prepare_output_dir, refuse_overwrites
from runtime.manifest import Manifest, label_ignore
from runtime.postprocess import predicted_class
from runtime.predict import Model, Progress, load_model
from runtime.slide.annotations import ignored_value, is_annotation_file, read_annotations
from runtime.slide.predict import CONTOUR_SIDE, SlideMap, SlideOutputs, SlideTiles, predict_slide


@dataclass(frozen=True)
class SlideRow:
    subject_id: str
    slide: Path
    label: Path | None
    mpp: float | None
    slide_class: int | None = None      # a tile classifier's: the class of every tile of the slide


def read_slides(csv_path: Path, manifest: Manifest, default_mpp: float | None = None) -> list[SlideRow]:
    """The CSV's rows, every problem of every row reported at once; `default_mpp` (--mpp) is the
    resolution of each slide whose row has no mpp value."""
    from runtime.slide.reader import in_mpp_range

    if default_mpp is not None and not in_mpp_range(default_mpp):
        raise InputError(f"--mpp {default_mpp:g} must be microns per pixel in [{MPP_RANGE[0]}, {MPP_RANGE[1]}].")
    fields, rows = read_rows(csv_path)
    if {"slide", "l0_x", "l0_y", "tissue"} <= set(fields):
        raise InputError(f"{csv_path} is a table of patches (trainer patches wrote it, for trainer fit); a --csv run "
                         "of slides takes one row per whole slide: subject_id, slide (and label, mpp).")
    if "subject_id" not in fields or "slide" not in fields:
        raise InputError(f"{csv_path} needs the columns subject_id and slide (a slide path per row); "
                         f"it has {', '.join(fields) or 'none'}.")
    if manifest.task == "regression" and any((row.get(column) or "").strip() for row in rows
                                              for column in ("label", "class")):
        raise InputError(f"{csv_path}: the label and class columns hold the classes a segmentation model or a tile "
                         f"classifier is scored against; model {manifest.name} is a regression model, whose tiles "
                         "they give no value: leave them empty.")
    if manifest.task == "segmentation" and any((row.get("class") or "").strip() for row in rows):
        raise InputError(f"{csv_path}: the class column gives a tile classifier every tile's class; model "
                         f"{manifest.name} is a segmentation model, scored against the label column's label images "
                         "or annotations: leave the class column empty.")
    problems, found, seen = [], [], set()
    for line, row in enumerate(rows, start=2):
        sid = (row.get("subject_id") or "").strip()
        if not SAFE_ID.match(sid):
            problems.append(f"line {line}: subject_id {sid!r} must be {SAFE_ID_RULE} (it names files)")
        elif sid in seen:
            problems.append(f"line {line}: subject_id {sid!r} is on an earlier line too; each slide needs its own")
        seen.add(sid)
        slide_cell = (row.get("slide") or "").strip()
        slide = resolve(csv_path, slide_cell)
        if not slide_cell:
            problems.append(f"line {line}: the slide column is empty; give the slide's path")
        elif not slide.is_file():
            problems.append(f"line {line}: slide {slide} is not a file")
        label = (row.get("label") or "").strip()
        label_path = resolve(csv_path, label) if label else None
        slide_class = _slide_class(row.get("class"), manifest, line, problems)
        classed = bool((row.get("class") or "").strip())
        label_trouble = _label_cell_problem(label_path, manifest, classed)
        if label_trouble:
            problems.append(f"line {line}: {label_trouble}")
        given = bool((row.get("mpp") or "").strip())
        mpp = _mpp(row.get("mpp"), line, problems) if given else default_mpp
        if slide_cell and slide.is_file():
            needs_resolution = not given and default_mpp is None
            label_given = label_path if label_path is not None and not label_trouble and not classed else None
            problems += [f"line {line}: {problem}" for problem in _slide_problems(slide, mpp, needs_resolution,
                                                                                   label_given, manifest)]
        found.append(SlideRow(sid, slide, label_path, mpp, slide_class))
    if not found:
        problems.append("no rows")
    if problems:
        raise InputError(f"{csv_path}: " + listed(problems))
    return found


def _label_cell_problem(label: Path | None, manifest: Manifest, classed: bool) -> str | None:
    """What keeps a row's label from being read before its slide is opened: it is not a file, or it
    is a label image where a tile classifier takes annotations (but for a row whose class, given
    (`classed`), is every tile's: its label is not read here; trainer patches reads it for its
    share_<value> columns alone)."""
    if label is None:
        return None
    if not label.is_file():
        return f"label {label} is not a file"
    if manifest.task == "classification" and not classed and not is_annotation_file(label):
        return (f"label {label} is no GeoJSON annotations; a tile classifier is scored against annotations (each "
                "tile takes the class covering more than half of it) or the slide's class in a class column")
    return None


def _slide_class(cell: str | None, manifest: Manifest, line: int, problems: list[str]) -> int | None:
    """A tile classifier's class cell as a class value (a value or a name of the model's classes);
    None where it is empty or the model is no classifier."""
    text = (cell or "").strip()
    if not text or manifest.task != "classification":
        return None
    try:
        return int(label_number(text, manifest))
    except ValueError as error:
        problems.append(f"line {line}: class {str(error).removeprefix('label ')}")
        return None


def _slide_problems(slide_path: Path, mpp: float | None, needs_resolution: bool, label: Path | None,
                    manifest: Manifest) -> list[str]:
    """What keeps the slide from running: it cannot be opened; where `needs_resolution` (the row's
    mpp column is empty), its file carries no resolution; its `label` image cannot be read, has
    another aspect ratio, or holds no class values of `manifest` (`label_problem`). The slide is
    opened once (a plain image: its header only, nothing decoded)."""
    from runtime.slide.reader import Slide, detect_vendor, image_size
    from runtime.slide.tissue import aspect_problem

    power, has_resolution = math.nan, False
    try:
        if detect_vendor(slide_path) is None:
            size = image_size(slide_path, "slide")
        else:
            with Slide(slide_path, mpp, mpp_from="the mpp column") as slide:
                size = (slide.l0_width, slide.l0_height)
                has_resolution, power = slide.file_mpp is not None, slide.objective
    except InputError as error:
        return [str(error)]
    problems = []
    if needs_resolution and not has_resolution:
        hint = f" (it says its objective power is {power:g}x)" if math.isfinite(power) and power > 0 else ""
        problems.append(f"slide {slide_path} carries no resolution{hint}; give its level-0 microns per pixel in the "
                        "mpp column (or --mpp, for every row without one), e.g. 0.25 for a 40x scan or 0.5 for 20x")
    if label is not None and is_annotation_file(label):
        try:
            _read_annotations(label, manifest, (size[1], size[0]))
        except InputError as error:
            problems.append(str(error))
    elif label is not None:
        try:
            width, height = image_size(label, "label")
        except InputError as error:
            return [*problems, str(error)]
        problem = aspect_problem(width, height, size) or label_problem(label, manifest)
        if problem:
            problems.append(f"label {label}: {problem}")
    return problems


def label_problem(label: Path, manifest: Manifest) -> str | None:
    """What keeps a label image from holding `manifest`'s class values, one per pixel: colour
    pixels (an annotation tool's colours), or values that are no class (a mask saved as 0/127/254
    for classes 0/1/2) nor the model's value of unannotated pixels; None where it holds them."""
    from runtime.slide.reader import open_plain
    from runtime.slide.tissue import grey_values, not_values

    image = open_plain(label, "label")
    values = grey_values(image)
    kind = not_values(image, values)
    if kind is not None:
        kind = f"coloured ({kind})" if kind == image.mode else kind
        return (f"its pixels are {kind}; a label image holds one integer class value per pixel (a grey or "
                "palette image of the class values)")
    classes = {spec.value for spec in manifest.classes}
    stray = sorted(set(np.unique(values).tolist()) - classes - {label_ignore(manifest)})
    if stray:
        more = " and more" if len(stray) > 10 else ""
        return (f"holds value(s) {stray[:10]}{more} that are no class of model {manifest.name} "
                f"({', '.join(str(value) for value in sorted(classes))}); save the class values themselves")
    return None


def _mpp(value: str | None, line: int, problems: list[str]) -> float | None:
    from runtime.slide.reader import mpp_cell

    text = (value or "").strip()
    try:
        return mpp_cell(text)
    except ValueError:
        low, high = MPP_RANGE
        problems.append(f"line {line}: mpp {text!r} must be microns per pixel in [{low}, {high}]")
        return None


def outputs_of(row: SlideRow, manifest: Manifest, output_dir: Path, save_probabilities: bool) -> SlideOutputs:
    """A slide's outputs in `output_dir`, named by its subject: a segmentation's label map,
    overlay and regions (and its probabilities where asked for); a tile model's table and heatmap."""
    named = output_dir / row.subject_id
    if manifest.task == "segmentation":
        return SlideOutputs(labels=Path(f"{named}_labels.tif"), overlay=Path(f"{named}_overlay.png"),
                            geojson=Path(f"{named}_regions.geojson"),
                            probabilities=Path(f"{named}_probabilities.tif") if save_probabilities else None)
    return SlideOutputs(labels=Path(f"{named}_tiles.csv"), overlay=Path(f"{named}_heatmap.png"))


def run_slides_csv(csv_path: Path, model_path: Path, output_dir: Path, save_probabilities: bool, device: str,
                   threads: int | None, progress: Progress, expect_digest: str | None = None,
                   default_mpp: float | None = None) -> None:
    from runtime.commands.reporting import taken_version

    manifest, version_dir = taken_version(model_path, expect_digest)
    predict_slides(csv_path, manifest, lambda: load_model(version_dir, device=device, threads=threads), output_dir,
                   save_probabilities, progress, default_mpp)


def predict_slides(csv_path: Path, manifest: Manifest, open_model: Callable[[], Model], output_dir: Path,
                   save_probabilities: bool, progress: Progress, default_mpp: float | None = None) -> None:
    """Every slide of the CSV through the model `open_model` makes (once every row and output
    has passed its checks), its outputs and the tables written into `output_dir`; `default_mpp`
    (--mpp) is the resolution of each slide whose row has no mpp value."""
    if save_probabilities and manifest.task != "segmentation":
        raise InputError(f"--save-probabilities writes a segmentation's probability maps; model {manifest.name} is a "
                         f"{manifest.task} model, whose <subject_id>_tiles.csv holds each tile's "
                         f"{'probabilities' if manifest.task == 'classification' else 'values'}: leave the option out.")
    rows = read_slides(csv_path, manifest, default_mpp)
    note = unannotated_note(manifest, any(row.label is not None for row in rows))
    scored = [row.subject_id for row in rows if row.label is not None or row.slide_class is not None]
    trained = trained_note(scored, manifest, csv_path)
    outputs = {row.subject_id: outputs_of(row, manifest, output_dir, save_probabilities) for row in rows}
    named = [(f"{row.subject_id} output", path) for row in rows for path in outputs[row.subject_id].named()]
    named += [("the slides table", output_dir / "slides.csv"), ("the summary table", output_dir / "summary.csv"),
              ("the confusion table", output_dir / "confusion.csv"),
              ("the failures table", output_dir / FAILURES)]
    refuse_overwrites(named, [csv_path, *(r.slide for r in rows), *(r.label for r in rows if r.label)])
    model = open_model()
    prepare_output_dir(output_dir)
    if note:
        click.echo(note)
    for line in trained:
        click.echo(line, err=True)
    results, failures, tiles = [], [], []
    for number, row in enumerate(rows, start=1):
        started = time.perf_counter()
        try:
            record, scored = _one(model, row, outputs[row.subject_id], output_dir, progress)
            results.append(record)
            if scored is not None:
                tiles.append(scored)
            click.echo(f"{number}/{len(rows)} {row.subject_id}: done in {time.perf_counter() - started:.1f} s")
        except MedflowError as exc:
            failures.append(failed(row.subject_id, exc, outputs[row.subject_id].named()))
    _write_tables(results, tiles, manifest, output_dir)
    finish_rows(failures, len(results), len(rows), "slide", output_dir)


def _one(model: Model, row: SlideRow, outputs: SlideOutputs, output_dir: Path,
         progress: Progress) -> tuple[dict[str, Any], Scored | None]:
    """The slide's row of slides.csv, and a tile classifier's predictions of the tiles it scored."""
    from runtime.commands.slide import write_outputs, write_tiles

    def say(line: str) -> None:
        click.echo(f"{row.subject_id}: {line}")

    result, scratch = predict_slide(model, row.slide, mpp=row.mpp, work_dir=output_dir, progress=progress, say=say,
                                    probabilities=outputs.probabilities is not None,
                                    tissue_remedy="run it on its own with --tissue-mask, or leave it out of the CSV",
                                    mpp_from="the mpp column")
    try:
        record: dict[str, Any] = {"subject_id": row.subject_id, "slide": str(row.slide.resolve()),
                                   "output": outputs.labels.name if outputs.labels else ""}
        scored = None
        with OutputSet() as staged:
            if isinstance(result, SlideTiles):
                labels = tile_labels(result, row)
                write_tiles(result, row.slide, outputs, row.mpp, staged, say, labels)
                record["tiles"] = len(result.values)
                if labels is not None:
                    scored = _scored_tiles(result, labels)
                    record.update(_tile_accuracy(scored, row))
            else:
                write_outputs(result, row.slide, outputs, row.mpp, staged, say)
                if row.label is not None:
                    record.update(dice_per_class(result, row.label))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return record, scored


def tile_labels(tiles: SlideTiles, row: SlideRow) -> np.ndarray | None:
    """A tile classifier's reference class of each tile (-1 for none): the row's class for every
    tile, else the annotated class covering more than half of the tile (Annotations.tile_classes;
    a value of no class, an Ignore* region's, counts as none); None where the row gives neither."""
    manifest = tiles.manifest
    if manifest.task != "classification" or (row.slide_class is None and row.label is None):
        return None
    if row.slide_class is not None:
        return np.full(len(tiles.boxes), row.slide_class, dtype=np.int64)
    annotations = _annotations(row.label, manifest, tiles.l0_shape, tiles.tissue, "its tiles are scored")
    found = annotations.tile_classes(tiles.boxes)
    return np.where(np.isin(found, [spec.value for spec in manifest.classes]), found, -1)


def _scored_tiles(tiles: SlideTiles, labels: np.ndarray) -> Scored:
    """The predictions of the tiles that have a reference class (`labels` >= 0)."""
    kept = labels >= 0
    values = tiles.values[kept]
    return Scored(np.array([predicted_class(v, tiles.manifest) for v in values], dtype=np.int64),
                  labels[kept].astype(np.int64), values.astype(np.float64))


def _tile_accuracy(scored: Scored, row: SlideRow) -> dict[str, Any]:
    """The slide's tiles scored and their accuracy (empty, and a warning, where none was)."""
    if not len(scored.truth):
        given = f"label {row.label}" if row.slide_class is None else "its class"
        click.echo(f"warning: slide {row.subject_id}: no tile takes a class from {given} (none lies more than half "
                   "in one annotated class, or no tile ran); none is scored", err=True)
        return {"tiles_scored": 0, "accuracy": ""}
    accuracy = metrics.accuracy(scored.predicted.tolist(), scored.truth.tolist())
    return {"tiles_scored": len(scored.truth), "accuracy": metrics.significant(accuracy)}


def _read_annotations(label: Path, manifest: Manifest, l0_shape: tuple[int, int]) -> Any:
    """The slide's annotations for `manifest`'s classes, QuPath's Ignore* regions read as trainer
    patches reads them for the model's task (ignored_value)."""
    return read_annotations(label, manifest.classes, l0_shape, f"model {manifest.name}'s classes",
                            ignored_value(manifest.task, label_ignore(manifest)))


def _annotations(label: Path, manifest: Manifest, l0_shape: tuple[int, int], tissue: Any, use: str) -> Any:
    """The slide's annotations read for `manifest`'s classes, with a warning where they lie off its
    tissue mask (a TissueMask, or None)."""
    annotations = _read_annotations(label, manifest, l0_shape)
    if tissue is not None and (warning := annotations.off_tissue_warning(str(label), tissue.mask,
                                                                       tissue.l0_per_pixel)):
        click.echo(f"{warning}; {use} where they land", err=True)
    return annotations


def dice_per_class(slide_map: SlideMap, label: Path) -> dict[str, float]:
    """Dice of each class but the background, on the map brought to at most CONTOUR_SIDE pixels
    a side against the label image resized (nearest) to the same grid, or against the slide's
    annotations at that grid's pixel centres; where the model records the value of unannotated
    pixels (`label_ignore`), the annotations' other pixels take it, and those count in no Dice (a
    class in none of the annotated pixels is undefined, NaN: runtime.metrics.sparse_scores)."""
    from PIL import Image

    from runtime.slide.tissue import class_image

    step, found = slide_map.coarse(CONTOUR_SIDE)
    values = np.asarray([spec.value for spec in slide_map.manifest.classes])
    ignore = label_ignore(slide_map.manifest)
    if is_annotation_file(label):
        annotations = _annotations(label, slide_map.manifest, slide_map.l0_shape, slide_map.tissue,
                                   "its Dice scores them")
        scale = slide_map.l0_per_pixel * step
        truth = annotations.grid(found.shape, (scale, scale), unannotated=0 if ignore is None else ignore)
    else:
        truth = class_image(label, "label")
        if truth.dtype.kind == "f" or truth.ndim != 2:
            raise InputError(f"label {label}: a label image holds one integer class value per pixel.")
        truth = np.asarray(Image.fromarray(truth).resize((found.shape[1], found.shape[0]), Image.Resampling.NEAREST))
    predicted = values[found]
    classes = [(spec.value, spec.name) for spec in slide_map.manifest.classes[1:]]
    if ignore is None or not bool(np.any(truth == ignore)):
        return {f"dice_{name}": round(metrics.dice(predicted, truth, value), 6) for value, name in classes}
    if not bool(np.any(truth != ignore)):
        why = ("annotations thinner than its pixels, or none on the slide" if is_annotation_file(label) else
               f"the label image holds {ignore}, the value of unannotated pixels, alone")
        click.echo(f"warning: label {label}: no annotated pixel lies on the {found.shape[1]} x {found.shape[0]} "
                   f"grid it is scored on ({why}); its Dice is left undefined", err=True)
    scores = metrics.sparse_scores(predicted, truth, classes, ignore)
    return {f"dice_{name}": round(scores[f"dice_{name}"], 6) for _, name in classes}


def _write_tables(rows: list[dict[str, Any]], parts: list[Scored], manifest: Manifest,
                  output_dir: Path) -> None:
    """slides.csv; with labels, summary.csv: the mean and deviation over slides of each class's
    Dice, or a tile classifier's metrics over every tile scored (of all slides) and confusion.csv."""
    tiles = Scored.joined(parts) if parts else None
    if tiles is not None and not len(tiles.truth):
        tiles = None
    if tiles is not None:
        summary = pooled_summary({**classification_metrics(tiles, manifest), "n": len(tiles.truth)})
    else:
        labelled = [r for r in rows if any(k.startswith("dice_") for k in r)]
        summary = metric_summary(labelled) if labelled else []
    with OutputSet() as outputs:
        if rows:
            outputs.table(rows, list(dict.fromkeys(k for r in rows for k in r)), output_dir / "slides.csv")
        if summary:
            outputs.table(summary, list(summary[0]), output_dir / "summary.csv")
        if tiles is not None:
            matrix = confusion_rows(tiles, manifest)
            outputs.table(matrix, list(matrix[0]), output_dir / "confusion.csv")
        written = outputs.targets()
    if rows:
        drop_stale_tables(output_dir, written, ("slides.csv", "summary.csv", "confusion.csv"))
    for item in summary:
        click.echo("  " + ", ".join(f"{k}={v}" for k, v in item.items()))


def refuse_mpp_for_scans(mpp: float | None, manifest: Manifest) -> None:
    """--mpp with a --csv run of a model that takes scans, not slides: refused."""
    if mpp is not None:
        raise InputError(f"--mpp is the resolution of slides; model {manifest.name} is a {manifest.modality} model, "
                         "whose scans carry their own spacing.")

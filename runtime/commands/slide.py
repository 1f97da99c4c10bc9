"""`runtime predict slide.svs`: one whole-slide image from file to outputs, written atomically.

The label map and the probabilities are tiled pyramidal TIFFs at the model's resolution (OpenSlide
and QuPath open them); the overlay is a PNG of the slide's thumbnail with the classes drawn over
it; the GeoJSON holds one polygon per region, in level-0 pixels, with its class name.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Sequence

import click
import numpy as np

from runtime.errors import InputError
from runtime.io import check_writable
from runtime.io.write import OutputSet, refuse_overwrites
from runtime.commands.reporting import taken_version
from runtime.postprocess import label_index, scored_values
from runtime.predict import Model, Progress, load_model
from runtime.slide.predict import (
    CONTOUR_SIDE, OVERLAY_SIDE, SlideMap, SlideOutputs, SlideTiles, check_slide_model, predict_slide,
)

TIFF_SUFFIXES = (".tif", ".tiff")


def refuse_slide_options(options: dict[str, object], inputs: Sequence[Path] = ()) -> None:
    """InputError naming the slide-only options given (their value not None) for `inputs` that are
    not one slide."""
    given = [name for name, value in options.items() if value is not None]
    if given:
        several = (f"; {len(inputs)} inputs are read as one scan's channels, and a run takes one slide (many "
                   "slides: --csv slides.csv)" if len(inputs) > 1 else "; give one slide as the input")
        raise InputError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for whole-slide images "
                         f"(.svs, .tif, .ndpi, .mrxs, ... or a .png/.jpg){several}.")


def check_outputs(outputs: SlideOutputs, inputs: Sequence[Path], task: str = "segmentation") -> None:
    """Every output named, of a suffix it can be written as for the model's task, and none of
    them an input."""
    named = [(option, path) for option, path in (
        ("--output", outputs.labels), ("--probabilities", outputs.probabilities),
        ("--overlay", outputs.overlay), ("--geojson", outputs.geojson)) if path is not None]
    if task != "segmentation":
        for option, path in named:
            if option in ("--probabilities", "--geojson"):
                raise InputError(f"{option} is for segmentation models; a {task} model writes its value per tile "
                                 "with --output tiles.csv, and a heatmap with --overlay heatmap.png.")
        if not named:
            raise InputError("give --output tiles.csv for the value of each tile (and/or --overlay heatmap.png).")
        refuse_overwrites(named, inputs)
        if outputs.labels is not None:
            check_writable(outputs.labels, (".csv",), "--output")
        if outputs.overlay is not None:
            check_writable(outputs.overlay, (".png",), "--overlay")
        return
    if not named:
        raise InputError("give --output for the label map (and/or --probabilities, --overlay, --geojson).")
    refuse_overwrites(named, inputs)
    for option, path in (("--output", outputs.labels), ("--probabilities", outputs.probabilities)):
        if path is not None:
            check_writable(path, TIFF_SUFFIXES, option)
    if outputs.overlay is not None:
        check_writable(outputs.overlay, (".png",), "--overlay")
    if outputs.geojson is not None:
        check_writable(outputs.geojson, (".geojson", ".json"), "--geojson")


def run_slide(path: Path, model_path: Path, outputs: SlideOutputs, mpp: float | None, tissue_mask: Path | None,
              device: str, threads: int | None, progress: Progress,
              expect_digest: str | None = None) -> SlideMap | SlideTiles:
    manifest, version_dir = taken_version(model_path, expect_digest)
    check_slide_model(manifest, path)
    check_outputs(outputs, [path, *([tissue_mask] if tissue_mask else [])], manifest.task)
    model = load_model(version_dir, device=device, threads=threads)
    return predict_and_write(model, path, outputs, mpp, tissue_mask, progress)


def predict_and_write(model: Model, path: Path, outputs: SlideOutputs, mpp: float | None, tissue_mask: Path | None,
                      progress: Progress) -> SlideMap | SlideTiles:
    """Run `model` (a local backend or a served one) over the slide and write the named outputs,
    which `check_outputs` has passed; the slide's scratch map is removed whatever happens."""
    work_dir = outputs.named()[0].parent
    result, scratch = predict_slide(model, path, mpp=mpp, tissue_mask=tissue_mask, work_dir=work_dir,
                                    progress=progress, say=_say, probabilities=outputs.probabilities is not None)
    try:
        with OutputSet() as staged:
            if isinstance(result, SlideTiles):
                write_tiles(result, path, outputs, mpp, staged)
            else:
                write_outputs(result, path, outputs, mpp, staged)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    for written in outputs.named():
        _say(f"wrote {written}")
    return result


def write_outputs(slide_map: SlideMap, path: Path, outputs: SlideOutputs, mpp: float | None,
                  staged: OutputSet, say: Callable[[str], None] | None = None) -> None:
    """Stage each output named in `outputs`; `say` (default: print) tells what each holds."""
    from runtime.slide import outputs as out

    say = say or _say
    classes = slide_map.manifest.classes
    colors = out.default_colors(len(classes))
    if outputs.labels is not None:
        dtype = np.uint8 if max(c.value for c in classes) < 256 else np.uint16
        described = _description("label map", slide_map, path, {str(c.value): c.name for c in classes})
        shown = out.palette({c.value: color for c, color in zip(classes, colors)}) if dtype == np.uint8 else None
        staged.file(outputs.labels, lambda tmp: out.write_pyramid(
            tmp, lambda region, step: slide_map.labels(region, step).astype(dtype), slide_map.shape, dtype,
            slide_map.mpp, description=described, colormap=shown))
        say(f"label map: {slide_map.shape[1]} x {slide_map.shape[0]} pixels at {slide_map.mpp:g} um/pixel")
    if outputs.probabilities is not None:
        samples = slide_map.array.shape[0]
        described = _description("probabilities, one uint8 sample per class (0-255 for 0-1)", slide_map, path,
                                 [c.name for c in classes][-samples:])
        staged.file(outputs.probabilities, lambda tmp: out.write_pyramid(
            tmp, lambda region, step: _as_uint8(slide_map.probabilities(region, step)), slide_map.shape, np.uint8,
            slide_map.mpp, samples=samples, description=described))
    if outputs.overlay is not None:
        staged.file(outputs.overlay, lambda tmp: _overlay(slide_map, path, mpp, colors, tmp))
    if outputs.geojson is not None:
        step, index = slide_map.coarse(CONTOUR_SIDE)
        scale = slide_map.l0_per_pixel * step
        say(f"regions: tracing the outlines of a {index.shape[1]} x {index.shape[0]} label map ...")
        traced = out.trace_regions(index, (scale, scale), [c.name for c in classes], colors)
        regions = {**traced.collection, "medflow": _made_by(slide_map, path)}
        _clip_to(regions, slide_map.l0_shape)
        staged.file(outputs.geojson, lambda tmp: tmp.write_text(json.dumps(regions), encoding="utf-8"))
        say(f"regions: {len(regions['features'])} polygon(s)" + (
            f"; {traced.small} region(s) of fewer than {traced.min_pixels} pixels of the {index.shape[1]} x "
            f"{index.shape[0]} map ({traced.small_pixels} pixels in all) left out" if traced.small else ""))


def write_tiles(tiles: SlideTiles, path: Path, outputs: SlideOutputs, mpp: float | None, staged: OutputSet,
                say: Callable[[str], None] | None = None, labels: np.ndarray | None = None) -> None:
    """Stage the CSV of tile values (with `labels`, each tile's reference class: SlideTiles.rows)
    and the heatmap: each tile painted on the thumbnail in the colour of its predicted class
    (classification) or of its first listed target's decile (regression)."""
    if outputs.labels is not None:
        rows, header = tiles.rows(labels)
        staged.table(rows, header, outputs.labels)
        (say or _say)(f"tiles: {len(rows)} rows")
    if outputs.overlay is not None:
        staged.file(outputs.overlay, lambda tmp: _heatmap(tiles, path, mpp, tmp))


FIRST_CLASS_GREY = (150, 150, 150)


def _heatmap(tiles: SlideTiles, path: Path, mpp: float | None, tmp: Path) -> None:
    from runtime.slide import outputs as out
    from runtime.slide.reader import Slide
    from runtime.slide.tissue import overview

    step = max(1.0, max(tiles.l0_shape) / OVERLAY_SIDE)
    with Slide(path, mpp) as slide:
        thumbnail, (scale_y, scale_x) = overview(slide, step)
    if tiles.manifest.task == "classification":
        index = label_index(np.ascontiguousarray(tiles.values.T), tiles.manifest).astype(np.int64) + 1
        # each class in its colour of a segmentation overlay; the first class, left uncovered there, grey
        colors = [(0, 0, 0), FIRST_CLASS_GREY, *out.default_colors(len(tiles.manifest.classes))[1:]]
        legend = [(c.name, colors[i + 1]) for i, c in enumerate(tiles.manifest.classes)]
    else:
        first = np.array([scored_values(values, tiles.manifest)[0][1] for values in tiles.values])
        low, high = float(first.min()), float(first.max())
        index = 1 + np.minimum(9, ((first - low) / max(high - low, 1e-12) * 10).astype(np.int64))
        colors = [(0, 0, 0)] + [(int(25 * k), 60, int(255 - 25 * k)) for k in range(10)]
        target = tiles.manifest.classes[0].name
        legend = [(f"{target} {low:.4g} (lowest tenth)", colors[1]),
                  (f"{target} {high:.4g} (highest tenth)", colors[10])]
    painted = np.zeros(thumbnail.shape[:2], dtype=np.uint16)
    for (x, y, width, height), value in zip(tiles.boxes.tolist(), index.tolist()):
        painted[int(y / scale_y):max(int(y / scale_y) + 1, int((y + height) / scale_y)),
                int(x / scale_x):max(int(x / scale_x) + 1, int((x + width) / scale_x))] = value
    tissue = None if tiles.tissue is None else tiles.tissue.mask
    out.overlay_png(tmp, thumbnail, painted, colors, tissue=tissue, legend=[*legend, *_tissue_entry(tissue)])


def _overlay(slide_map: SlideMap, path: Path, mpp: float | None, colors: list[tuple[int, int, int]],
             tmp: Path) -> None:
    from runtime.slide import outputs as out
    from runtime.slide.reader import Slide
    from runtime.slide.tissue import overview

    step, index = slide_map.coarse(OVERLAY_SIDE)
    with Slide(path, mpp) as slide:
        thumbnail, _ = overview(slide, slide_map.l0_per_pixel * step)
    tissue = None if slide_map.tissue is None else slide_map.tissue.mask
    legend = [(c.name, colors[i]) for i, c in enumerate(slide_map.manifest.classes) if i > 0]
    out.overlay_png(tmp, thumbnail, index, colors, tissue=tissue, legend=[*legend, *_tissue_entry(tissue)])


def _tissue_entry(tissue: np.ndarray | None) -> list[tuple[str, tuple[int, int, int]]]:
    from runtime.slide.outputs import TISSUE_OUTLINE

    return [] if tissue is None else [("tissue mask (outline)", TISSUE_OUTLINE)]


def _clip_to(regions: dict, l0_shape: tuple[int, int]) -> None:
    """Every polygon point moved inside the slide's level-0 extent (the map's last pixels may
    reach past it by less than one of them)."""
    height, width = l0_shape
    for feature in regions["features"]:
        geometry = feature["geometry"]
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        for ring in (ring for polygon in polygons for ring in polygon):
            for point in ring:
                point[0] = min(max(point[0], 0.0), float(width))
                point[1] = min(max(point[1], 0.0), float(height))


def _description(what: str, slide_map: SlideMap, path: Path, classes: object) -> str:
    """A TIFF ImageDescription naming the map's classes and what made it: JSON, ASCII (other
    characters escaped), so that no class name can cut it short or make it ambiguous."""
    return json.dumps({"medflow": what, **_made_by(slide_map, path), "classes": classes}, ensure_ascii=True)


def _made_by(slide_map: SlideMap, path: Path) -> dict[str, object]:
    """The model version, the slide (its file name) and the map's microns per pixel an output came from."""
    manifest = slide_map.manifest
    return {"model": manifest.name, "version": manifest.version, "slide": path.name, "mpp": slide_map.mpp}


def _as_uint8(probabilities: np.ndarray) -> np.ndarray:
    """(K, h, w) probabilities as (h, w, K) uint8, 0-255 for 0-1 (values outside [0, 1], which a
    model without an activation may give, are clipped)."""
    return np.rint(np.clip(np.moveaxis(probabilities, 0, -1), 0.0, 1.0) * 255).astype(np.uint8)


def _say(line: str) -> None:
    click.echo(line)

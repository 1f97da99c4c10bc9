"""One slide from file to outputs: open → tissue mask → plan the windows that touch tissue →
`backend.run` from a `SlideSource` into a `ChunkedMerger` → finish → write the maps tile by tile.

Memory does not grow with the slide: windows are read a few batches ahead, the stitched map
lives in chunk files beside the outputs (removed when done), and every output is written from
one tile or one coarse overview at a time.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from runtime.contract import SlideSpec
from runtime.errors import InputError, ModelError, OutputError
from runtime.io.write import scratch_folder
from runtime.manifest import Manifest
from runtime.metrics import significant
from runtime.postprocess import (
    activate, background_raw, brought_back, channel_argmax, class_values, label_map, predicted_class, scored_classes,
    scored_values,
)
from runtime.predict import Checked, Model, Progress, named_error
from runtime.slide.reader import Slide
from runtime.slide.source import Sampling, SlideSource, check_reads, resized_up, sampling_for
from runtime.slide.tissue import TISSUE_REMEDY, TissueMask, mask_from_image, otsu_mask
from runtime.window import (
    ChunkedArray, ChunkedMerger, CoarseMask, Merger, Plan, WindowSpec, WindowTable, plan, window_starts,
)
from runtime.window.chunked import DEFAULT_MAX_BYTES, Product

# Longest side of the label map the overlay and the GeoJSON contours are drawn from.
OVERLAY_SIDE = 2048
CONTOUR_SIDE = 4096
# Windows a slide's grid may hold (a 250,000-pixel scan at 0.25 um/pixel read by a 0.5 um/pixel model
# in windows of 256 holds about 400,000 at overlap 0.25 and 950,000 at 0.5).
MAX_WINDOWS = 2_000_000
# Intensity steps a slide model may list; geometry comes from slide.mpp.
SLIDE_STEPS = ("threshold", "clip", "rescale", "zscore", "normalize")

Say = Callable[[str], None]


@dataclass(frozen=True)
class SlideOutputs:
    """What to write; None leaves an output out."""

    labels: Path | None = None
    probabilities: Path | None = None
    overlay: Path | None = None
    geojson: Path | None = None

    def named(self) -> list[Path]:
        """The outputs given, in this order: labels, probabilities, overlay, GeoJSON."""
        return [path for path in (self.labels, self.probabilities, self.overlay, self.geojson) if path is not None]


@dataclass(frozen=True)
class SlideMap:
    """A finished prediction over a slide: the blended raw outputs (K, rows, columns; None where
    they were not kept) and the class values (1, rows, columns) as chunk files, at `mpp` microns
    per pixel, each pixel
    `l0_per_pixel` level-0 pixels a side; `shape` is the slide's extent in those pixels (the map
    may reach a little past it), `l0_shape` its extent in level-0 pixels (rows, columns); `tissue`
    the mask the windows were chosen by."""

    array: ChunkedArray | None
    label_array: ChunkedArray
    manifest: Manifest
    shape: tuple[int, int]
    l0_per_pixel: float
    mpp: float
    l0_shape: tuple[int, int]
    tissue: TissueMask | None = None

    def probabilities(self, region: tuple[slice, slice], step: int = 1) -> np.ndarray:
        """(K, h, w) float32 probabilities of `region`, every `step`-th pixel."""
        if self.array is None:
            raise ValueError("the slide's map was made without its probabilities")
        return brought_back(activate(self.array.read(region, step), self.manifest.output.activation), self.manifest)

    def labels(self, region: tuple[slice, slice], step: int = 1) -> np.ndarray:
        """(h, w) class values of `region`, every `step`-th pixel."""
        return self.label_array.read(region, step)[0]

    def class_index(self, region: tuple[slice, slice], step: int = 1) -> np.ndarray:
        """(h, w) class indices (positions in the manifest's classes) of `region`."""
        values = [spec.value for spec in self.manifest.classes]
        lookup = np.zeros(max(values) + 1, dtype=np.uint16)
        lookup[values] = np.arange(len(values))
        return lookup[self.labels(region, step)]

    def coarse(self, side: int) -> tuple[int, np.ndarray]:
        """The step that brings the map's longest side to at most `side`, and the class indices
        of the map's step x step blocks (block i, j at rows [i * step, (i + 1) * step)), each
        taken at the block's centre (the last blocks, cut by the edge, at their last pixel)."""
        step = max(1, math.ceil(max(self.shape) / side))
        offset = step // 2
        blocks = tuple(-(-size // step) for size in self.shape)
        region = tuple(slice(min(offset, size - 1), size) for size in self.shape)
        sampled = self.class_index(region, step)
        pad = [(0, count - got) for count, got in zip(blocks, sampled.shape)]
        return step, np.pad(sampled, pad, mode="edge") if any(p[1] for p in pad) else sampled


@dataclass(frozen=True)
class SlideTiles:
    """The values of a classification or regression model on each window it ran over a slide:
    `boxes` (N, 4) int64 level-0 x, y, width and height of each window (cut at the slide's edge),
    `values` (N, K) float32 (class probabilities, or regression values); `tissue` the mask the
    windows were chosen by."""

    manifest: Manifest
    boxes: np.ndarray
    values: np.ndarray
    l0_shape: tuple[int, int]
    tissue: TissueMask | None = None

    def rows(self, labels: np.ndarray | None = None) -> tuple[list[dict[str, object]], list[str]]:
        """One CSV row per tile and the header: its level-0 box, then the predicted class and
        each class's probability, or each regression target's value; with `labels` (a class value
        per tile, -1 for none), a last column `label` (empty where -1)."""
        classification = self.manifest.task == "classification"
        prefix = "probability_" if classification else ""
        classes = scored_classes(self.manifest, self.values.shape[1]) if classification else self.manifest.classes
        names = [f"{prefix}{spec.name}" for spec in classes]
        header = ["l0_x", "l0_y", "l0_width", "l0_height", *(["predicted"] if classification else []), *names]
        rows = []
        for box, values in zip(self.boxes.tolist(), self.values):
            row: dict[str, object] = dict(zip(header[:4], box))
            if classification:
                row["predicted"] = predicted_class(values, self.manifest)
            row.update({f"{prefix}{spec.name}": significant(v) for spec, v in scored_values(values, self.manifest)})
            rows.append(row)
        if labels is not None:
            header.append("label")
            for row, label in zip(rows, labels.tolist()):
                row["label"] = label if label >= 0 else ""
        return rows, header


def check_slide_model(manifest: Manifest, path: Path) -> None:
    """InputError where `manifest` is not a model that runs on slides."""
    if manifest.modality != "histology" or manifest.slide is None:
        raise InputError(f"{path} is a whole-slide image, but model {manifest.name} is a {manifest.modality} model; "
                         "run a histology model on slides.")
    if manifest.window.mode != "sliding":
        raise InputError(f"model {manifest.name} takes whole images (window.mode whole); a slide is run tile by tile "
                         "in sliding windows: train the model with inference: {mode: sliding}, or package its graph "
                         "with window: {mode: sliding} in its spec.")
    if len(manifest.channels) != 3:
        raise InputError(f"model {manifest.name} takes {len(manifest.channels)} channel(s); slides are read as RGB, "
                         "3 channels.")
    other = [step.name for step in manifest.preprocessing if step.name not in SLIDE_STEPS]
    if other:
        raise InputError(f"model {manifest.name} lists preprocessing step(s) {', '.join(other)}, which do not apply to "
                         f"slide tiles (their resolution is slide.mpp); a slide model takes {', '.join(SLIDE_STEPS)}.")


def predict_slide(model: Model, path: Path, *, mpp: float | None = None, tissue_mask: Path | None = None,
                  work_dir: Path | None = None, progress: Progress | None = None, say: Say = lambda _: None,
                  max_bytes: int = DEFAULT_MAX_BYTES, threads: int = 2, probabilities: bool = True,
                  tissue_remedy: str = TISSUE_REMEDY,
                  mpp_from: str = "--mpp") -> tuple[SlideMap | SlideTiles, Path | None]:
    """Run `model` over the tissue of the slide at `path`. A segmentation model gives its map and
    the scratch folder the map lives in (under `work_dir`), which the caller removes when done
    with the map; a classification or regression model gives its values per tile, and None.
    `probabilities` False keeps the class values alone (the map then has no `array`); a slide
    with no tissue is refused with `tissue_remedy` as the remedy; `mpp_from` names where a user
    gives the resolution (a --csv run: the mpp column)."""
    manifest = model.manifest
    check_slide_model(manifest, path)
    slide = Slide(path, mpp, mpp_from=mpp_from)
    scratch = None
    try:
        sampling, tissue, planned = plan_slide(manifest, slide, tissue_mask, tissue_remedy)
        level_mpp = slide.mpp * slide.levels[sampling.level].downsample
        up = resized_up(slide, sampling)
        say(f"slide {path}: {slide.l0_width} x {slide.l0_height} pixels at {slide.mpp:g} um/pixel "
            f"({len(slide.levels)} level(s)); the model's {_slide_spec(manifest).mpp:g} um/pixel are read "
            f"from level {sampling.level} ({level_mpp:.4g} um/pixel){f', resized up by {up:.1%}' if up else ''}")
        say(f"tissue: {100 * tissue.share:.1f} % of the slide; windows: {planned.windows} run, {planned.skipped} "
            f"skipped as background ({100 * planned.skipped / max(1, planned.total):.1f} %)")
        l0_shape = (slide.l0_height, slide.l0_width)
        if manifest.task != "segmentation":
            table = WindowTable()
            _run(model, slide, sampling, planned, tissue, table, progress, threads)
            targets, values = table.finish()
            return SlideTiles(manifest, _boxes(targets, sampling.l0_per_pixel, l0_shape), values, l0_shape,
                              tissue), None
        scratch = scratch_folder(work_dir)
        merger = ChunkedMerger(planned, scratch / "map", max_bytes=max_bytes, background=background_raw(manifest),
                               products=[label_product(manifest)], keep_blend=probabilities)
        _check_disk(merger, len(manifest.classes), scratch)
        try:
            _run(model, slide, sampling, planned, tissue, merger, progress, threads)
            array = merger.finish()
            labels = merger.product("labels")
        except OSError as error:
            raise OutputError(f"cannot write the slide's map in {scratch.parent.resolve()}: "
                              f"{error.strerror or error}") from None
    except BaseException as error:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if isinstance(error, ModelError):
            raise named_error(error, manifest, str(path)) from None
        raise
    finally:
        slide.close()
    scale = manifest.window.spec.output_scale
    shape = (math.ceil(sampling.shape[0] / scale), math.ceil(sampling.shape[1] / scale))
    l0_per_pixel = sampling.l0_per_pixel * scale
    return SlideMap(array, labels, manifest, shape, l0_per_pixel, l0_per_pixel * slide.mpp, l0_shape,
                    tissue), scratch


def label_product(manifest: Manifest) -> Product:
    """The class values of each chunk of the blended map, made as the chunk is finished, as uint8
    (uint16 past 255): from the undivided sums where an argmax of the probabilities picks what an
    argmax of the raw blend does (softmax or no activation), else from the activated blend.
    Chunks no window reached hold the background's value."""
    dtype = np.uint8 if max(spec.value for spec in manifest.classes) < 256 else np.uint16
    activation = manifest.output.activation
    background = activate(background_raw(manifest).reshape(-1, 1, 1), activation)
    fill = label_map(background, manifest).reshape(1).astype(dtype)
    if manifest.output.label_rule == "argmax" and activation in ("softmax", "none"):
        return Product("labels", lambda sums: class_values(channel_argmax(sums), manifest)[np.newaxis], dtype, fill,
                       from_sums=True)
    return Product("labels", lambda blend: label_map(activate(np.array(blend), activation), manifest)[np.newaxis],
                   dtype, fill)


def plan_slide(manifest: Manifest, slide: Slide, tissue_mask: Path | None = None,
               tissue_remedy: str = TISSUE_REMEDY) -> tuple[Sampling, TissueMask, Plan]:
    """Where the model's pixels lie on `slide`, its tissue (Otsu, or `tissue_mask`), and the plan
    of the windows that touch it; every check that refuses a slide before any window is read."""
    sampling = sampling_for(slide, _slide_spec(manifest).mpp)
    spec, shape = _grid(manifest, sampling)
    check_reads(slide, sampling, spec.patch)
    tissue = _tissue(manifest, slide, tissue_mask, tissue_remedy)
    return sampling, tissue, _plan(spec, shape, sampling, tissue)


def _check_disk(merger: ChunkedMerger, classes: int, folder: Path) -> None:
    """InputError where `folder` has less free space than the map may take: float32 per class of
    every chunk a window reaches (the blend, where it is kept, or else the sums of chunks written
    out while still open) and their class values, and the sums of the chunks held in memory,
    should they be written out."""
    chunk_pixels = math.prod(merger.chunk)
    needed = len(merger.reached) * chunk_pixels * (classes * 4 + 2) + merger.max_bytes
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise InputError(f"the slide's map needs about {needed / 2**30:.1f} GiB in {folder.parent.resolve()} while "
                         f"it is stitched, and {free / 2**30:.1f} GiB are free; write the outputs to a larger disk.")


def _slide_spec(manifest: Manifest) -> SlideSpec:
    if manifest.slide is None:
        raise InputError(f"model {manifest.name} has no slide section; it does not run on slides.")
    return manifest.slide


def _tissue(manifest: Manifest, slide: Slide, tissue_mask: Path | None, remedy: str = TISSUE_REMEDY) -> TissueMask:
    if tissue_mask is not None:
        return mask_from_image(tissue_mask, slide)
    spec = _slide_spec(manifest)
    return otsu_mask(slide, spec.tissue_mpp, spec.min_object_um2, spec.min_hole_um2, remedy)


def _boxes(targets: list, l0_per_pixel: float, l0_shape: tuple[int, int]) -> np.ndarray:
    """(N, 4) level-0 x, y, width, height of each window, cut at the slide's edge."""
    boxes = np.empty((len(targets), 4), dtype=np.int64)
    for index, (rows, cols) in enumerate(targets):
        x0, y0 = round(cols.start * l0_per_pixel), round(rows.start * l0_per_pixel)
        x1 = min(round(cols.stop * l0_per_pixel), l0_shape[1])
        y1 = min(round(rows.stop * l0_per_pixel), l0_shape[0])
        boxes[index] = (x0, y0, x1 - x0, y1 - y0)
    return boxes


def _grid(manifest: Manifest, sampling: Sampling) -> tuple[WindowSpec, tuple[int, ...]]:
    """The window settings and the image shape (the slide at the model's resolution, at least one
    patch large) of the slide's grid; InputError where the grid holds more than MAX_WINDOWS. A tile
    model's windows side by side (overlap 0) lie on the grid `trainer patches` cuts, from the
    slide's corner: the shape is a whole number of tiles, the last ones reaching past the slide
    (read as glass)."""
    spec = dataclasses.replace(manifest.window.spec, skip_empty=True)
    tiles = manifest.task != "segmentation" and spec.overlap == 0
    shape = tuple(-(-s // p) * p if tiles else max(s, p) for s, p in zip(sampling.shape, spec.patch))
    grid = math.prod(len(window_starts(s, p, spec.overlap, spec.placement)) for s, p in zip(shape, spec.patch))
    if grid > MAX_WINDOWS:
        raise InputError(f"the slide at the model's {_slide_spec(manifest).mpp:g} um/pixel is {shape[1]} x {shape[0]} "
                         f"pixels, {grid:,} windows of {spec.patch}, more than {MAX_WINDOWS:,}; check "
                         "the microns per pixel given for it (--mpp, or a CSV's mpp column) and the model's slide.mpp "
                         "and patch size.")
    return spec, shape


def _plan(spec: WindowSpec, shape: tuple[int, ...], sampling: Sampling, tissue: TissueMask) -> Plan:
    """The windows of the grid that touch the tissue."""
    scale = tuple(l0 / sampling.l0_per_pixel for l0 in tissue.l0_per_pixel)
    planned = plan(shape, spec, CoarseMask(tissue.mask, scale))
    if not planned.windows:
        raise InputError("the tissue mask touches no window of the slide; check --tissue-mask.")
    return planned


def _run(model: Model, slide: Slide, sampling: Sampling, planned: Plan, tissue: TissueMask, merger: Merger,
         progress: Progress | None, threads: int) -> None:
    manifest = model.manifest
    source = SlideSource(slide, sampling, planned, manifest.preprocessing, threads=threads,
                         read_ahead=not model.backend.on_cpu, tissue=tissue)
    if progress is not None:
        progress.expect(planned.total)
    try:
        checked = Checked(merger, manifest, 3, planned.spec.patch)
        model.backend.run(source, planned, checked, progress.advance if progress else None)
    finally:
        source.close()
    if progress is not None:
        progress.close()

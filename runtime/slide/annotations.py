"""Slide annotations as training labels: the GeoJSON QuPath exports (File > Export objects as
GeoJSON), each area annotation's classification naming a class (of data.classes, or of a model).

A `label` cell of the slides CSV that names a `.geojson` (or `.json`) file gives the labels of that
slide's patches: each model pixel takes the class of the last annotation (in file order) that holds
its centre (on its edge counts), 0 (the background) where none does. Coordinates are level-0 pixels,
as QuPath writes them. Polygons and MultiPolygons are read, and the polygons of a
GeometryCollection; a polygon that is not valid (a hole outside its shell, a ring crossing itself)
is refused, naming the annotation. Objects that are not annotations (QuPath's detections, cells,
tiles, by `objectType` or an older export's `id`) and geometries without an area (points, lines,
none) are left out and counted (`Annotations.left_out`). A derived class (`classification.names`
["Tumor", "Positive"]) is named as QuPath names it, "Tumor: Positive". The file is read as data,
bounded: its size, its features, polygons and vertices.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from runtime.contract import ClassSpec
from runtime.errors import InputError
from runtime.jsonfile import Unreadable, read_json

MAX_BYTES = 32 * 2**20             # a GeoJSON file of annotations (its objects take ten times that)
MAX_FEATURES = 100_000
MAX_POLYGONS = 100_000             # over all the file's areas (a MultiPolygon's parts each count)
MAX_VERTICES = 2_000_000           # over all the file's rings
ANNOTATION_SUFFIXES = (".geojson", ".json")
AREAS = ("Polygon", "MultiPolygon", "GeometryCollection")
NO_AREA = ("Point", "MultiPoint", "LineString", "MultiLineString")
# QuPath's object classes as older exports name them in a feature's `id`; only annotations are labels
QUPATH_OBJECTS = {"PathAnnotationObject": "annotation", "PathDetectionObject": "detection", "PathCellObject": "cell",
                  "PathTileObject": "tile", "TMACoreObject": "tma_core"}
# QuPath's built-in class of regions to leave out of training (artefacts, folds, pen marks).
IGNORE_CLASS = "Ignore*"
# A tile takes the annotated class covering more than this share of it, measured on at most
# TILE_POINTS x TILE_POINTS evenly spread points of it; a tile where no class does has none.
CLASS_SHARE = 0.5
TILE_POINTS = 16
# Tiles whose points are tested against the annotations at once (their points are shapely objects).
TILES_AT_ONCE = 2048
# Under this share of the annotated area (classes above the background) on the slide's tissue, the
# annotations are taken to be in another frame than level-0 pixels, and said so.
MIN_ON_TISSUE = 0.5


@dataclass(frozen=True)
class Annotations:
    """A slide's area annotations as (class value, shapely geometry in level-0 pixels), in file
    order, with an index of their bounding boxes; `left_out` counts what was not used, by why."""

    shapes: tuple[tuple[int, Any], ...]
    tree: Any                       # shapely STRtree over the geometries
    left_out: Mapping[str, int]
    ignore: int | None = None       # the value QuPath's Ignore* regions are painted with, over every other

    def grid(self, shape: tuple[int, int], l0_per_pixel: tuple[float, float], unannotated: int = 0,
             origin: tuple[int, int] = (0, 0)) -> np.ndarray:
        """(rows, columns) class values of a grid over the slide whose pixel spans `l0_per_pixel`
        level-0 pixels (along y and x) and whose first pixel is the slide's pixel `origin` (row,
        column) of that size: the class of the last annotation holding each pixel's centre (an
        Ignore* region's value over any other), `unannotated` (int32 where negative, else uint16)
        where none does. Only the annotations whose bounding box meets the grid are tested, each on
        the pixels of its bounding box."""
        import shapely

        signed = unannotated < 0 or (self.ignore is not None and self.ignore < 0)
        values = np.full(shape, unannotated, dtype=np.int32 if signed else np.uint16)
        step_y, step_x = l0_per_pixel
        extent = shapely.box(origin[1] * step_x, origin[0] * step_y, (origin[1] + shape[1]) * step_x,
                             (origin[0] + shape[0]) * step_y)
        found = sorted(int(i) for i in self.tree.query(extent))                 # in file order: the last wins
        for index in sorted(found, key=lambda i: self.shapes[i][0] == self.ignore):      # Ignore* over all
            value, geometry = self.shapes[index]
            low_x, low_y, high_x, high_y = geometry.bounds
            rows = np.arange(max(0, math.floor(low_y / step_y) - origin[0]),
                             min(shape[0], math.ceil(high_y / step_y) + 1 - origin[0]))
            columns = np.arange(max(0, math.floor(low_x / step_x) - origin[1]),
                                min(shape[1], math.ceil(high_x / step_x) + 1 - origin[1]))
            if rows.size and columns.size:
                grid_x, grid_y = np.meshgrid((origin[1] + columns + 0.5) * step_x, (origin[0] + rows + 0.5) * step_y)
                box = values[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]
                box[shapely.intersects_xy(geometry, grid_x, grid_y)] = value
        return values

    def on_tissue(self, mask: np.ndarray, l0_per_pixel: tuple[float, float], background: bool = False) -> float:
        """The share of the annotated area (of classes above 0; of every class with `background`,
        where class 0 is a class of tissue too) that lies on `mask` (a tissue mask, one pixel
        `l0_per_pixel` level-0 pixels along y and x), measured at the mask's pixel centres."""
        found = self.grid(mask.shape, l0_per_pixel, unannotated=-1)
        annotated = found >= (0 if background else 1)
        if self.ignore is not None:
            annotated &= found != self.ignore
        count = int(np.count_nonzero(annotated))
        return 1.0 if count == 0 else float(np.count_nonzero(annotated & mask)) / count

    def off_tissue_warning(self, name: str, mask: np.ndarray, l0_per_pixel: tuple[float, float],
                           background: bool = False) -> str | None:
        """The warning where less than MIN_ON_TISSUE of the annotated area lies on the tissue mask
        (`on_tissue`): annotations in microns or at a downsample land elsewhere on the slide."""
        share = self.on_tissue(mask, l0_per_pixel, background)
        if share >= MIN_ON_TISSUE:
            return None
        return (f"warning: {name}: only {share:.0%} of the annotated area lies on the slide's tissue; annotations in "
                "microns or at a downsample land elsewhere: export them in level-0 pixels, as QuPath does "
                "(annotated glass or fat is the other reason)")

    def overlapping(self, boxes: np.ndarray) -> np.ndarray:
        """Which of the level-0 `boxes` ((n, 4): x0, y0, x1, y1) share some area with an annotation
        of a class that no Ignore* region covers: one query of the index for all of them, and a
        box's shapes united only where an Ignore* region meets it."""
        import shapely

        shapes = shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3])
        met: dict[int, list[Any]] = {}
        ignored: dict[int, list[Any]] = {}
        for box, index in self.tree.query(shapes, predicate="intersects").T.tolist():
            value, geometry = self.shapes[index]
            (ignored if value == self.ignore else met).setdefault(box, []).append(geometry)
        found = np.zeros(len(boxes), dtype=bool)
        for box, geometries in met.items():
            area = shapely.intersection(shapes[box], shapely.union_all(geometries))
            if box in ignored:
                area = shapely.difference(area, shapely.union_all(ignored[box]))
            found[box] = shapely.area(area) > 0
        return found

    def tile_classes(self, boxes: np.ndarray) -> np.ndarray:
        """(n,) the class of each level-0 box ((n, 4): x, y, width, height) by `covering_classes`
        over TILE_POINTS x TILE_POINTS points at the centres of an even grid over it; at each point,
        the class of the last annotation holding it (an Ignore* region's value over any other),
        as `grid` reads them."""
        import shapely

        offsets = (np.arange(TILE_POINTS) + 0.5) / TILE_POINTS
        found = np.empty(len(boxes), dtype=np.int64)
        count = len(self.shapes)
        order = np.array([index + (count if value == self.ignore else 0)
                          for index, (value, _) in enumerate(self.shapes)], dtype=np.int64)
        values = np.array([value for value, _ in self.shapes], dtype=np.int64)
        geometries = [geometry for _, geometry in self.shapes]
        for start in range(0, len(boxes), TILES_AT_ONCE):
            part = np.asarray(boxes[start:start + TILES_AT_ONCE], dtype=np.float64)
            xs = part[:, 0, None, None] + part[:, 2, None, None] * offsets[None, None, :]
            ys = part[:, 1, None, None] + part[:, 3, None, None] * offsets[None, :, None]
            xs, ys = np.broadcast_arrays(xs, ys)
            # the points indexed, each annotation (prepared once) asked for those it holds
            shapes, points = shapely.STRtree(shapely.points(xs.ravel(), ys.ravel())).query(
                geometries, predicate="intersects")
            rank = np.full(xs.size, -1, dtype=np.int64)
            np.maximum.at(rank, points, order[shapes])
            held = np.full(xs.size, -1, dtype=np.int64)
            held[rank >= 0] = values[rank[rank >= 0] % count]
            found[start:start + len(part)] = covering_classes(held.reshape(len(part), -1))
        return found

    def told(self) -> str | None:
        """What was left out, in words; None where nothing was."""
        if not self.left_out:
            return None
        shown = sorted(self.left_out.items())
        more = f" and {len(shown) - 5} other kind(s)" if len(shown) > 5 else ""
        return ", ".join(f"{count} {why}" for why, count in shown[:5]) + more + " left out"


def ignored_value(task: str, ignore_value: int | None) -> int | None:
    """The value QuPath's Ignore* regions are read as (read_annotations' `ignore`): a
    segmentation's value of unannotated pixels (None refuses them), a classifier's -1 (no tile's
    class: its points count for none)."""
    return ignore_value if task == "segmentation" else -1


def covering_classes(points: np.ndarray) -> np.ndarray:
    """The class values of `points` (..., n), -1 where none is held: along the last axis, the one
    value held by more than CLASS_SHARE of the points, else -1."""
    classes = np.full(points.shape[:-1], -1, dtype=np.int64)
    for value in np.unique(points[points >= 0]):
        classes[(points == value).mean(axis=-1) > CLASS_SHARE] = int(value)
    return classes


def is_annotation_file(path: Path) -> bool:
    return path.suffix.lower() in ANNOTATION_SUFFIXES


def read_annotations(path: Path, specs: Sequence[ClassSpec], l0_shape: tuple[int, int],
                     classes_from: str = "data.classes", ignore: int | None = None) -> Annotations:
    """The area annotations of `path`, their classification names looked up among the names of
    `specs` (named `classes_from` in messages), and with `ignore` (the value of unannotated pixels)
    QuPath's Ignore* regions as that value, carved out of every annotation they meet (a class of
    `specs` named Ignore* is that class instead); InputError naming the file and what is wrong with it."""
    import shapely

    named = {spec.name: spec.value for spec in specs}
    classes = {**named, IGNORE_CLASS: ignore} if ignore is not None and IGNORE_CLASS not in named else named
    shapes, left_out, unnamed, unknown, vertices, polygons = [], Counter(), 0, set(), 0, 0
    for number, feature in enumerate(_features(_json(path), path), start=1):
        used = _used(feature, number, path)
        if isinstance(used, str):
            left_out[used] += 1
            continue
        name = _class_name(feature)
        if name is None:
            unnamed += 1
            continue
        if name not in classes:
            unknown.add(name)
            continue
        polygons += _polygon_count(used)
        if polygons > MAX_POLYGONS:
            raise InputError(f"label {path}: more than {MAX_POLYGONS:,} polygons; export the annotations alone, "
                             "without detections, or merge them.")
        shape = _area(used, number, path)
        vertices += shapely.get_num_coordinates(shape)
        if vertices > MAX_VERTICES:
            raise InputError(f"label {path}: more than {MAX_VERTICES:,} vertices; simplify the annotations.")
        shapes.append((classes[name], shape))
    _check_named(path, unnamed, unknown, named, classes_from)
    if not shapes:
        raise InputError(f"label {path}: holds no area annotation (Polygon or MultiPolygon) of a class; annotate "
                         "the slide's regions (a segmentation may take a label image instead).")
    _check_on_slide(path, [shape for _, shape in shapes], l0_shape)
    return Annotations(tuple(shapes), shapely.STRtree([shape for _, shape in shapes]), dict(left_out), ignore)


def _json(path: Path) -> Any:
    try:
        return read_json(path, MAX_BYTES, strict=True)
    except Unreadable as error:
        remedy = {"missing": "check the label column", "large": "export the annotations alone, without detections",
                  "invalid": "export the annotations from QuPath as GeoJSON"}[error.kind]
        raise InputError(f"label {path}: {error.reason}; {remedy}.") from None


def _features(data: Any, path: Path) -> list[Any]:
    """The features of a FeatureCollection, of a list of features (QuPath before 0.4), or one Feature."""
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        features = data
    if not isinstance(features, list):
        raise InputError(f"label {path}: not a GeoJSON FeatureCollection or list of features; export the "
                         "annotations from QuPath as GeoJSON.")
    if len(features) > MAX_FEATURES:
        raise InputError(f"label {path}: {len(features):,} features, more than {MAX_FEATURES:,}.")
    return features


def _used(feature: Any, number: int, path: Path) -> dict[str, Any] | str:
    """The feature's area geometry, or why it is left out (a QuPath object that is not an
    annotation, a geometry without an area); InputError for what is not a GeoJSON Feature."""
    if not isinstance(feature, dict) or feature.get("type", "Feature") != "Feature":
        raise InputError(f"label {path}: feature {number} is {str(feature)[:40]!r}, not a GeoJSON Feature object.")
    properties = feature.get("properties")
    kind = properties.get("objectType") if isinstance(properties, dict) else None
    if kind is None:                          # an older export names the object's class in its id
        kind = QUPATH_OBJECTS.get(str(feature.get("id")), "annotation")
    if kind != "annotation":
        return f"{str(kind)[:40]} object(s)"
    geometry = feature.get("geometry")
    if geometry is None:
        return "feature(s) without a geometry"
    shape_type = geometry.get("type") if isinstance(geometry, dict) else None
    if shape_type in NO_AREA:
        return "point(s) or line(s)"
    if shape_type not in AREAS:
        raise InputError(f"label {path}: feature {number}'s geometry type {str(shape_type)[:40]!r} is not a GeoJSON "
                         f"geometry type; the areas are {', '.join(AREAS)} (spelt so).")
    return geometry


def _class_name(feature: dict[str, Any]) -> str | None:
    """QuPath's `classification.name`, a derived class's `classification.names` joined as QuPath
    names it ("Tumor: Positive"), an older export's `classification` string; else None."""
    properties = feature.get("properties")
    classification = properties.get("classification") if isinstance(properties, dict) else None
    if isinstance(classification, dict):
        names = classification.get("names")
        if isinstance(names, list) and names and all(isinstance(n, str) and n for n in names):
            return ": ".join(names)
        classification = classification.get("name")
    return classification if isinstance(classification, str) and classification else None


def _area(geometry: dict[str, Any], number: int, path: Path) -> Any:
    """The polygonal area of the GeoJSON geometry, prepared; InputError where its coordinates are
    not numbers or it is not a valid area."""
    import shapely
    from shapely.geometry import shape

    where = f"label {path}: feature {number} ({geometry.get('type')})"
    if not _numbers_only(geometry.get("coordinates", geometry.get("geometries"))):
        raise InputError(f"{where} has coordinates that are not finite numbers [x, y].")
    try:
        made = shape(geometry)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, shapely.errors.ShapelyError) as error:
        raise InputError(f"{where}: its coordinates are not rings of [x, y] points "
                         f"({' '.join(str(error).split())[:100]}).") from None
    parts = [part for part in shapely.get_parts(made) if part.geom_type in ("Polygon", "MultiPolygon")]
    if not all(part.is_valid for part in parts):
        reason = next(shapely.is_valid_reason(part) for part in parts if not part.is_valid)
        raise InputError(f"{where} is not a valid polygon ({reason}): a hole outside its shell, a ring crossing "
                         "itself or one without an area; redraw it, or delete it.")
    area = shapely.union_all(parts) if parts else None
    if area is None or area.is_empty or area.area <= 0:
        raise InputError(f"{where} holds no area; draw the region as a polygon, or delete it.")
    shapely.prepare(area)
    return area


def _polygon_count(geometry: dict[str, Any], nested: bool = False) -> int:
    """The polygons a GeoJSON area holds, counted from its coordinates before any is made (a
    collection's members one level down; deeper ones are refused with their coordinates)."""
    kind, coordinates = geometry.get("type"), geometry.get("coordinates")
    if kind == "MultiPolygon":
        return len(coordinates) if isinstance(coordinates, list) else 1
    members = geometry.get("geometries")
    if kind == "GeometryCollection" and not nested and isinstance(members, list):
        return sum(_polygon_count(member, True) if isinstance(member, dict) else 1 for member in members)
    return 1


def _numbers_only(value: Any, depth: int = 0) -> bool:
    """Nested lists (at most 6 deep) whose leaves are finite numbers, never booleans."""
    if isinstance(value, list):
        return depth < 6 and all(_numbers_only(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return depth < 6 and _numbers_only(value.get("coordinates", value.get("geometries")), depth + 1)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:                      # an integer beyond any float
        return False


def _check_named(path: Path, unnamed: int, unknown: set[str], classes: Mapping[str, int], classes_from: str) -> None:
    known = ", ".join(f"{name} ({value})" for name, value in sorted(classes.items(), key=lambda item: item[1]))
    if unknown:
        shown = ", ".join(sorted(repr(name[:40]) for name in unknown)[:10])
        hint = (f"; {IGNORE_CLASS} regions are left unannotated only by a segmentation config (or a model "
                "trained with one) that sets data.ignore_value") if IGNORE_CLASS in unknown else ""
        raise InputError(f"label {path}: annotations of class(es) {shown}, which {classes_from} do(es) not name "
                         f"({known}); classify them as one of those in QuPath, or leave them out{hint}.")
    if unnamed:
        raise InputError(f"label {path}: {unnamed} area annotation(s) have no classification; classify them in "
                         f"QuPath as one of {classes_from} ({known}), or delete them.")


def _check_on_slide(path: Path, shapes: Sequence[Any], l0_shape: tuple[int, int]) -> None:
    """The annotations lie on the slide: coordinates in level-0 pixels, not in a downsampled frame
    or in microns, would place them elsewhere."""
    import shapely

    low_x, low_y, high_x, high_y = shapely.total_bounds(np.asarray(shapes, dtype=object))
    height, width = l0_shape
    if not (math.isfinite(low_x) and high_x > 0 and high_y > 0 and low_x < width and low_y < height):
        raise InputError(f"label {path}: the annotations span x {low_x:g} to {high_x:g} and y {low_y:g} to "
                         f"{high_y:g}, off the slide's {width} x {height} level-0 pixels; export them in level-0 "
                         "pixel coordinates, as QuPath does.")

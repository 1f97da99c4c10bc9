"""Slide annotations as training labels: the GeoJSON QuPath exports (File > Export objects as
GeoJSON), each area annotation's classification naming a class of data.classes.

A `label` cell of the slides CSV that names a `.geojson` (or `.json`) file gives the labels of that
slide's patches: each model pixel takes the class of the last annotation (in file order) that holds
its centre, 0 (the background) where none does. Coordinates are level-0 pixels, as QuPath writes
them. Polygons and MultiPolygons are read (a self-touching one is mended as GEOS makes it valid);
points and lines, which hold no area, are counted and left out. The file is read as data, bounded:
its size, its features and their vertices.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from runtime.errors import InputError

MAX_BYTES = 64 * 2**20             # a GeoJSON file of annotations (its objects take ten times that)
MAX_FEATURES = 1_000_000
MAX_VERTICES = 10_000_000          # over all the file's rings
AREAS = ("Polygon", "MultiPolygon")
ANNOTATION_SUFFIXES = (".geojson", ".json")


@dataclass(frozen=True)
class Annotations:
    """A slide's area annotations as (class value, shapely geometry in level-0 pixels), in file
    order, with an index of their bounding boxes; `skipped` counts those without an area."""

    shapes: tuple[tuple[int, Any], ...]
    tree: Any                       # shapely STRtree over the geometries
    skipped: int

    def patch(self, l0_per_pixel: float, top: int, left: int, height: int, width: int) -> np.ndarray:
        """(height, width) class values of the model pixels of the patch at (top, left): the class
        of the last annotation holding each pixel's centre, 0 where none does."""
        import shapely

        ys = (top + np.arange(height) + 0.5) * l0_per_pixel
        xs = (left + np.arange(width) + 0.5) * l0_per_pixel
        values = np.zeros((height, width), dtype=np.uint16)
        box = shapely.box(xs[0], ys[0], xs[-1], ys[-1])
        grid_x, grid_y = np.meshgrid(xs, ys)
        for index in sorted(int(i) for i in self.tree.query(box)):
            value, geometry = self.shapes[index]
            values[shapely.contains_xy(geometry, grid_x, grid_y)] = value
        return values


def is_annotation_file(path: Path) -> bool:
    return path.suffix.lower() in ANNOTATION_SUFFIXES


def read_annotations(path: Path, classes: Mapping[str, int], l0_shape: tuple[int, int]) -> Annotations:
    """The area annotations of `path`, their classification names looked up in `classes` (name ->
    value); InputError naming the file and what is wrong with it."""
    import shapely

    features = _features(_json(path), path)
    shapes, skipped, unnamed, unknown, vertices = [], 0, 0, set(), 0
    for feature in features:
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        kind = geometry.get("type") if isinstance(geometry, dict) else None
        if kind not in AREAS:
            skipped += 1
            continue
        name = _class_name(feature)
        if name is None:
            unnamed += 1
            continue
        if name not in classes:
            unknown.add(name)
            continue
        shape = _geometry(geometry, path)
        vertices += shapely.get_num_coordinates(shape)
        if vertices > MAX_VERTICES:
            raise InputError(f"label {path}: more than {MAX_VERTICES:,} vertices; simplify the annotations.")
        shapes.append((classes[name], shape))
    _check_named(path, unnamed, unknown, classes)
    if not shapes:
        raise InputError(f"label {path}: holds no area annotation (Polygon or MultiPolygon) of a class; annotate "
                         "the slide's regions, or give a label image.")
    _check_on_slide(path, [shape for _, shape in shapes], l0_shape)
    return Annotations(tuple(shapes), shapely.STRtree([shape for _, shape in shapes]), skipped)


def _json(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"label {path}: no such file; check the label column.")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise InputError(f"label {path}: {size:,} bytes is more than an annotation file may hold ({MAX_BYTES:,}); "
                         "export the annotations alone, without detections.")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as error:
        raise InputError(f"label {path}: not GeoJSON ({' '.join(str(error).split())[:120]}); export the "
                         "annotations from QuPath as GeoJSON.") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number GeoJSON holds")


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


def _class_name(feature: dict[str, Any]) -> str | None:
    """QuPath's `classification.name` (older exports: `classification` as a string), else None."""
    properties = feature.get("properties")
    classification = properties.get("classification") if isinstance(properties, dict) else None
    if isinstance(classification, dict):
        classification = classification.get("name")
    return classification if isinstance(classification, str) and classification else None


def _geometry(geometry: dict[str, Any], path: Path) -> Any:
    """A valid shapely area of the GeoJSON geometry; InputError where its coordinates are not finite points."""
    import shapely
    from shapely.geometry import shape

    try:
        made = shape(geometry)
        finite = bool(np.isfinite(shapely.get_coordinates(made)).all())
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, shapely.errors.ShapelyError) as error:
        raise InputError(f"label {path}: a {geometry.get('type')} whose coordinates are not rings of [x, y] points "
                         f"({' '.join(str(error).split())[:100]}).") from None
    if not finite:
        raise InputError(f"label {path}: a {geometry.get('type')} with coordinates that are not finite numbers.")
    made = made if made.is_valid else shapely.make_valid(made)
    shapely.prepare(made)
    return made


def _check_named(path: Path, unnamed: int, unknown: set[str], classes: Mapping[str, int]) -> None:
    known = ", ".join(f"{name} ({value})" for name, value in sorted(classes.items(), key=lambda item: item[1]))
    if unknown:
        shown = ", ".join(sorted(repr(name) for name in unknown)[:10])
        raise InputError(f"label {path}: annotations of class(es) {shown}, which data.classes does not name "
                         f"({known}); classify them as one of those in QuPath, or add the class to data.classes.")
    if unnamed:
        raise InputError(f"label {path}: {unnamed} area annotation(s) have no classification; classify them in "
                         f"QuPath as one of data.classes ({known}), or delete them.")


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

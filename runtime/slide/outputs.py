"""The outputs of a whole-slide prediction: a tiled pyramidal TIFF, an overlay PNG and GeoJSON regions.

The pyramid is written tile by tile from a reader, so memory holds a few tiles whatever the slide's
size; the overlay and the regions work on a low-resolution label image. Coordinates in GeoJSON are
level-0 pixels (`l0_x`, `l0_y`), as QuPath imports them.
"""
from __future__ import annotations

import colorsys
import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import tifffile
from PIL import Image
from scipy import ndimage
from skimage.measure import find_contours
from skimage.segmentation import find_boundaries

from runtime.errors import InputError, OutputError

Reader = Callable[[tuple[slice, slice], int], np.ndarray]
Color = tuple[int, int, int]

TIFF_TILE_MULTIPLE = 16        # TIFF tile sides must be multiples of 16
SIMPLIFY_TOLERANCE_PX = 0.5    # polygon simplification, in label pixels
MAX_DEFAULT_COLORS = 256

_PALETTE: tuple[Color, ...] = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (255, 225, 25), (0, 128, 128), (170, 110, 40),
    (128, 0, 0), (128, 128, 0), (0, 0, 128),
)


# Deflate level of the TIFF tiles: label maps and probabilities compress nearly as well at 1 as at 6,
# several times faster.
ZLIB_LEVEL = 1


def _write_error(path: Path, error: OSError) -> OutputError:
    """The one-line error of an output that could not be written."""
    return OutputError(f"cannot write {path}: {error}; check the folder exists, is writable and has space")


# --- pyramid -------------------------------------------------------------------------------------

def level_shape(shape: tuple[int, int], step: int) -> tuple[int, int]:
    """(height, width) of the level that takes every `step`-th pixel of a level 0 of `shape`."""
    return -(-shape[0] // step), -(-shape[1] // step)


def pyramid_steps(shape: tuple[int, int], tile: int) -> list[int]:
    """Steps 1, 2, 4, ... up to and including the first level whose both sides are <= `tile`."""
    steps = [1]
    while max(level_shape(shape, steps[-1])) > tile:
        steps.append(steps[-1] * 2)
    return steps


def _check_pyramid(shape: tuple[int, int], mpp: float, samples: int, tile: int) -> None:
    """Refuse sizes, resolutions and tile sides a pyramid cannot be written with."""
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(f"slide shape {tuple(shape)} is not a positive (height, width); "
                         "pass the level-0 size in pixels")
    if not (math.isfinite(mpp) and mpp > 0):
        raise InputError(f"mpp {mpp} is not a positive number; pass the level-0 microns per pixel")
    if samples < 1:
        raise InputError(f"samples {samples} is below 1; pass the number of values per pixel")
    if tile < TIFF_TILE_MULTIPLE or tile % TIFF_TILE_MULTIPLE:
        raise InputError(f"tile {tile} is not a positive multiple of {TIFF_TILE_MULTIPLE}, as TIFF requires; "
                         "pass e.g. 256")


def _read_tile(path: Path, read: Reader, rows: slice, cols: slice, step: int, expected: tuple[int, ...]) -> np.ndarray:
    """The reader's pixels of one region, checked against the shape that region has at `step`."""
    pixels = np.asarray(read((rows, cols), step))
    if pixels.shape != expected:
        raise OutputError(f"cannot write {path}: the reader returned shape {pixels.shape} for rows "
                          f"{rows.start}:{rows.stop}, columns {cols.start}:{cols.stop} at step {step}; "
                          f"expected {expected}")
    return pixels


def _tiles(path: Path, read: Reader, shape: tuple[int, int], step: int, tile: int, samples: int,
           dtype: np.dtype) -> Iterator[bytes]:
    """The tiles of one level in TIFF order (row by row), each padded with 0 to `tile` x `tile`
    and deflated; a tile of one value (the background of most of a slide) is deflated once."""
    height, width = level_shape(shape, step)
    extra = (samples,) if samples > 1 else ()
    uniform: dict[bytes, bytes] = {}
    for row in range(0, height, tile):
        for col in range(0, width, tile):
            rows = slice(row * step, min((row + tile) * step, shape[0]))
            cols = slice(col * step, min((col + tile) * step, shape[1]))
            size = (min(tile, height - row), min(tile, width - col))
            padded = np.zeros((tile, tile, *extra), dtype.newbyteorder("<"))
            padded[: size[0], : size[1]] = _read_tile(path, read, rows, cols, step, (*size, *extra))
            first = padded[0, 0]
            if (padded == first).all():
                key = first.tobytes()
                if key not in uniform:
                    uniform[key] = zlib.compress(padded.tobytes(), ZLIB_LEVEL)
                yield uniform[key]
            else:
                yield zlib.compress(padded.tobytes(), ZLIB_LEVEL)


def _page_options(level: int, step: int, mpp: float, samples: int, tile: int) -> dict[str, Any]:
    """tifffile options of one pyramid page: tiled, zlib, grey samples, its own resolution."""
    per_cm = 1e4 / (mpp * step)
    options: dict[str, Any] = {
        "tile": (tile, tile), "compression": "zlib",
        "photometric": "minisblack",
        "resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER",
        "subfiletype": 1 if level else 0, "metadata": None,
    }
    if samples > 1:
        options.update(planarconfig="contig", extrasamples=(0,) * (samples - 1))
    return options


def palette(colors: dict[int, Color]) -> np.ndarray:
    """A TIFF colour map (3, 256) uint16 that shows each value of `colors` (0 to 255) in its colour
    and every other value black."""
    table = np.zeros((3, 256), dtype=np.uint16)
    for value, color in colors.items():
        table[:, value] = np.asarray(color, dtype=np.uint16) * 257
    return table


def write_pyramid(path: Path, read: Reader, shape: tuple[int, int], dtype: Any, mpp: float,
                  samples: int = 1, tile: int = 256, description: str | None = None,
                  colormap: np.ndarray | None = None) -> None:
    """Write a tiled pyramidal BigTIFF, one page per level, that OpenSlide and QuPath open.

    Level n takes every 2**n-th pixel of level 0 (size ceil(shape / 2**n), mpp * 2**n); the last
    level is the first whose both sides are <= `tile`. `read((rows, cols), step)` returns the
    pixels of that level-0 region taken every `step`-th pixel, shaped (h, w) or (h, w, samples);
    it is asked one tile's region at a time, starting on a multiple of `step` and inside `shape`.
    Samples > 1 are stored contiguous as grey values with unspecified extra samples (not RGB).
    `description` (ASCII) is level 0's ImageDescription (OpenSlide: `tiff.ImageDescription`).
    `colormap` (`palette`; uint8, one sample) stores the pages as palette images: the values stay
    as they are (tifffile, Pillow) and OpenSlide shows them in their colours.
    """
    _check_pyramid(shape, mpp, samples, tile)
    dtype = np.dtype(dtype)
    if colormap is not None and (dtype != np.uint8 or samples != 1):
        raise ValueError("a colour map is for one sample of uint8")
    extra = (samples,) if samples > 1 else ()
    try:
        with tifffile.TiffWriter(path, bigtiff=True, byteorder="<") as writer:
            for level, step in enumerate(pyramid_steps(shape, tile)):
                options = _page_options(level, step, mpp, samples, tile)
                if description is not None and level == 0:
                    options["description"] = description
                if colormap is not None:
                    options.update(photometric="palette", colormap=colormap)
                writer.write(data=_tiles(path, read, shape, step, tile, samples, dtype),
                             shape=(*level_shape(shape, step), *extra), dtype=dtype, **options)
    except OSError as error:
        Path(path).unlink(missing_ok=True)
        raise _write_error(path, error) from error


# --- colours and overlay -------------------------------------------------------------------------

def _hue_color(index: int) -> Color:
    """A saturated colour whose hue steps round the circle by the golden ratio."""
    hue = (index * 0.618033988749895) % 1.0
    value = (0.95, 0.7)[index % 2]
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def default_colors(count: int) -> list[Color]:
    """`count` distinct, saturated colours, one per class; index 0 (background) is black."""
    if not 0 <= count <= MAX_DEFAULT_COLORS:
        raise InputError(f"{count} default colours asked for; between 0 and {MAX_DEFAULT_COLORS} exist, "
                         "pass colours of your own for more classes")
    colors = list(_PALETTE[:count])
    index = 0
    while len(colors) < count:
        color = _hue_color(index)
        index += 1
        if color not in colors:
            colors.append(color)
    return colors


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """A 2-D array of non-negative integer class indices."""
    grid = np.asarray(labels)
    if grid.ndim != 2 or grid.size == 0:
        raise InputError(f"labels of shape {grid.shape} are not a non-empty 2-D image of class indices")
    if grid.dtype.kind not in "biu":
        raise InputError(f"labels of dtype {grid.dtype} are not integer class indices; round or cast them first")
    if grid.dtype.kind == "i" and grid.min() < 0:
        raise InputError(f"labels hold the negative class {int(grid.min())}; class indices start at 0")
    return grid.astype(np.int64, copy=False)


def _check_classes(top: int, colors: Sequence[Color], names: Sequence[str] | None = None) -> None:
    """Refuse labels whose highest class has no colour (or no name)."""
    for what, values in (("colours", colors), ("names", names)):
        if values is not None and len(values) <= top:
            raise InputError(f"labels hold class {top} but {len(values)} {what} were given; give one per class, "
                             "background (0) included")
    for color in colors[: top + 1]:
        if len(color) != 3 or not all(0 <= int(value) <= 255 for value in color):
            raise InputError(f"colour {tuple(color)} is not an (r, g, b) triple of 0..255")


def _fit_labels(labels: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """`labels` resized with nearest neighbour to (height, width) `size_hw`."""
    if labels.shape == size_hw:
        return labels
    image = Image.fromarray(labels.astype(np.int32))
    return np.asarray(image.resize((size_hw[1], size_hw[0]), Image.Resampling.NEAREST)).astype(np.int64)


def blend(thumbnail: np.ndarray, labels: np.ndarray, colors: Sequence[Color], alpha: float) -> np.ndarray:
    """Classes >= 1 blended over the thumbnail in their colour, outlined in the full colour."""
    palette = np.asarray([tuple(int(v) for v in c) for c in colors[: int(labels.max()) + 1]], np.float32)
    out = thumbnail.astype(np.float32)
    covered = labels > 0
    out[covered] = (1 - alpha) * out[covered] + alpha * palette[labels[covered]]
    outline = find_boundaries(labels, mode="inner", background=0) & covered
    out[outline] = palette[labels[outline]]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# the colour the tissue mask's outline is drawn in on an overlay
TISSUE_OUTLINE: Color = (0, 0, 0)


def overlay_png(path: Path, thumbnail: np.ndarray, labels: np.ndarray, colors: Sequence[Color],
                alpha: float = 0.4, tissue: np.ndarray | None = None,
                legend: Sequence[tuple[str, Color]] = ()) -> None:
    """Save a PNG of the RGB thumbnail with each class >= 1 blended in its colour and outlined,
    the outline of the boolean `tissue` mask (the windows run touched it) in TISSUE_OUTLINE, and
    the `legend`'s (name, colour) entries in a box at the top left where it fits.

    Labels and the mask are resized to the thumbnail with nearest neighbour; class 0 is left uncovered.
    """
    image = np.asarray(thumbnail)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"thumbnail of shape {image.shape} and dtype {image.dtype} is not (h, w, 3) uint8 RGB")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"overlay alpha {alpha} is outside 0..1")
    fitted = _fit_labels(_check_labels(labels), image.shape[:2])
    _check_classes(int(fitted.max()), colors)
    blended = blend(image, fitted, colors, alpha)
    if tissue is not None:
        inside = _fit_labels(np.asarray(tissue, dtype=np.uint8), image.shape[:2]) > 0
        blended[find_boundaries(inside, mode="inner") & inside] = TISSUE_OUTLINE
    picture = with_legend(Image.fromarray(blended), legend)
    try:
        picture.save(path, format="PNG")
    except OSError as error:
        raise _write_error(path, error) from error


LEGEND_NAME = 40                   # characters of a name a legend shows


def with_legend(picture: Image.Image, entries: Sequence[tuple[str, Color]]) -> Image.Image:
    """`picture` with each (name, colour) entry drawn as a swatch and its name in a white box at the
    top left, its text about a sixtieth of the picture's longer side; as it was where there are no
    entries or the box would take more than half its width or height."""
    from PIL import ImageDraw, ImageFont

    if not entries:
        return picture
    size = max(10, max(picture.size) // 60)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(picture)
    names = [" ".join(name.split()) or "?" for name, _ in entries]        # one line each, however written
    names = [name if len(name) <= LEGEND_NAME else name[:LEGEND_NAME - 1] + "…" for name in names]
    pad = max(2, size // 2)
    width = 3 * pad + size + int(max(draw.textlength(name, font=font) for name in names))
    height = pad + len(entries) * (size + pad)
    if 2 * width > picture.size[0] or 2 * height > picture.size[1]:
        return picture
    draw.rectangle((0, 0, width, height), fill=(255, 255, 255), outline=(0, 0, 0))
    for row, (name, (_, color)) in enumerate(zip(names, entries)):
        top = pad + row * (size + pad)
        draw.rectangle((pad, top, pad + size, top + size), fill=tuple(int(v) for v in color), outline=(0, 0, 0))
        draw.text((2 * pad + size, top), name, fill=(0, 0, 0), font=font)
    return picture


# --- GeoJSON regions -----------------------------------------------------------------------------

def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of an (n, 2) closed ring of [x, y]: positive when counter-clockwise (y up)."""
    x, y = ring[:, 0], ring[:, 1]
    return float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) / 2)


def _snap_corners(points: np.ndarray, padded: np.ndarray) -> np.ndarray:
    """Points moved onto their nearest pixel corner, except at corners where the mask crosses diagonally."""
    corners = np.rint(points).astype(np.intp)
    rows, cols = corners[:, 0], corners[:, 1]
    upper_left, upper_right = padded[rows - 1, cols - 1], padded[rows - 1, cols]
    lower_left, lower_right = padded[rows, cols - 1], padded[rows, cols]
    saddle = (upper_left == lower_right) & (upper_right == lower_left) & (upper_left != upper_right)
    snapped = np.where(saddle[:, None], points, corners)
    keep = np.ones(len(snapped), bool)
    keep[1:] = np.any(snapped[1:] != snapped[:-1], axis=1)
    return snapped[keep]


def _edge_contour(mask: np.ndarray, connectivity: str) -> np.ndarray:
    """The longest boundary of `mask` as (row, col) on pixel edges, in the mask's own pixels.

    The mask is padded with 0 and upsampled by 2 before contouring at 0.5, so boundaries lie on
    pixel edges; corners are then snapped onto the pixel corner, except where the mask meets
    itself diagonally: there the corner stays cut by a quarter pixel, so the ring never touches
    itself.
    """
    padded = np.pad(mask, 1)
    upsampled = padded.repeat(2, axis=0).repeat(2, axis=1).astype(np.float32)
    contour = max(find_contours(upsampled, 0.5, fully_connected=connectivity), key=len)
    return _snap_corners((contour + 0.5) / 2, padded) - 1


def _ring(mask: np.ndarray, origin: tuple[int, int], scale: tuple[float, float], connectivity: str,
          counter_clockwise: bool) -> list[list[float]]:
    """One closed, simplified, oriented ring of [x, y] level-0 pixels around `mask`."""
    edges = _edge_contour(mask, connectivity) + np.asarray(origin, np.float64)
    simplified = shapely.get_coordinates(   # Douglas-Peucker (GEOS)
        shapely.simplify(shapely.linearrings(edges), SIMPLIFY_TOLERANCE_PX, preserve_topology=False))
    if len(simplified) < 4:
        simplified = edges
    if not np.array_equal(simplified[0], simplified[-1]):
        simplified = np.vstack((simplified, simplified[:1]))
    ring = np.column_stack((simplified[:, 1] * scale[1], simplified[:, 0] * scale[0]))
    if (_signed_area(ring) > 0) != counter_clockwise:
        ring = ring[::-1]
    return ring.tolist()


def _polygon(region: np.ndarray, origin: tuple[int, int], scale: tuple[float, float],
             min_pixels: int) -> list[list[list[float]]]:
    """Outer ring (counter-clockwise) and hole rings (clockwise) of one 8-connected region."""
    filled = ndimage.binary_fill_holes(region)
    rings = [_ring(filled, origin, scale, "high", True)]
    holes, _ = ndimage.label(filled & ~region)
    for number, box in enumerate(ndimage.find_objects(holes), start=1):
        if box is None:
            continue
        hole = holes[box] == number
        if hole.sum() >= min_pixels:
            corner = (origin[0] + box[0].start, origin[1] + box[1].start)
            rings.append(_ring(hole, corner, scale, "low", False))
    return rings


def _geometry(rings: list[list[list[float]]]) -> dict[str, Any]:
    """The Polygon of `rings`, or, where a hole meets the outer ring so that the polygon's inside
    falls apart (not a valid polygon, which GIS tools refuse), the valid Polygon or MultiPolygon
    GEOS makes of it: the outer ring's area less the holes' (its "structure" method, which on a
    fragmented map of thousands of holes took a quarter of the time of its default, with the same
    areas); rings oriented as RFC 7946 asks."""
    polygon = shapely.Polygon(rings[0], rings[1:])
    if polygon.is_valid:
        return {"type": "Polygon", "coordinates": rings}
    fixed = shapely.make_valid(polygon, method="structure", keep_collapsed=False)
    parts = [shapely.geometry.polygon.orient(part, 1.0) for part in getattr(fixed, "geoms", [fixed])
             if isinstance(part, shapely.Polygon) and not part.is_empty]
    parts += [shapely.geometry.polygon.orient(piece, 1.0) for part in getattr(fixed, "geoms", [])
              if isinstance(part, shapely.MultiPolygon) for piece in part.geoms]
    coordinates = [[[list(point) for point in ring.coords] for ring in (part.exterior, *part.interiors)]
                   for part in parts]
    if len(coordinates) == 1:
        return {"type": "Polygon", "coordinates": coordinates[0]}
    return {"type": "MultiPolygon", "coordinates": coordinates}


def _feature(rings: list[list[list[float]]], index: int, name: str, color: Color) -> dict[str, Any]:
    """A QuPath annotation Feature of one class."""
    return {
        "type": "Feature",
        "geometry": _geometry(rings),
        "properties": {
            "objectType": "annotation",
            "classification": {"name": str(name), "color": [int(value) for value in color]},
            "class_index": index,
        },
    }


def _class_features(mask: np.ndarray, index: int, scale: tuple[float, float], name: str, color: Color,
                    min_pixels: int) -> tuple[list[dict[str, Any]], int, int]:
    """One Feature per 8-connected region of `mask` with at least `min_pixels` pixels; the count
    and the pixels of the regions left out."""
    regions, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    features, small, small_pixels = [], 0, 0
    for number, box in enumerate(ndimage.find_objects(regions), start=1):
        region = regions[box] == number
        size = int(region.sum())
        if size >= min_pixels:
            origin = (box[0].start, box[1].start)
            features.append(_feature(_polygon(region, origin, scale, min_pixels), index, name, color))
        else:
            small, small_pixels = small + 1, small_pixels + size
    return features, small, small_pixels


@dataclass(frozen=True)
class Traced:
    """The GeoJSON FeatureCollection of a label map's regions, and the regions left out as too small."""

    collection: dict[str, Any]
    small: int                  # regions of fewer than min_pixels label pixels, left out
    small_pixels: int           # their label pixels
    min_pixels: int


def geojson_regions(labels: np.ndarray, scale: tuple[float, float], names: Sequence[str],
                    colors: Sequence[Color], min_pixels: int = 4) -> dict:
    """`trace_regions`' FeatureCollection."""
    return trace_regions(labels, scale, names, colors, min_pixels).collection


def trace_regions(labels: np.ndarray, scale: tuple[float, float], names: Sequence[str],
                  colors: Sequence[Color], min_pixels: int = 4) -> Traced:
    """A GeoJSON FeatureCollection, as QuPath imports it, of the regions of each class >= 1.

    One Polygon Feature per 8-connected region of a class (its holes are the 4-connected pieces of
    other classes it encloses); regions, and holes, of fewer than `min_pixels` label pixels are
    left out (small holes are filled). `scale` is the level-0 pixels per label pixel along
    (y, x); coordinates are [x, y] level-0 pixels with boundaries on pixel edges (label pixel
    (r, c) spans x in [c * scale[1], (c + 1) * scale[1]]) and corners on pixel corners, except
    where a region meets itself diagonally (that corner is cut by a quarter label pixel), simplified
    to within half a label pixel. Rings are closed; by RFC 7946, outer rings are
    counter-clockwise and holes clockwise, taking x right and y up (on screen, with y down, the
    turn reads the other way).
    """
    grid = _check_labels(labels)
    if len(scale) != 2 or not all(math.isfinite(s) and s > 0 for s in scale):
        raise InputError(f"scale {tuple(scale)} is not two positive level-0 pixels per label pixel (y, x)")
    top = int(grid.max())
    _check_classes(top, colors, names)
    features: list[dict[str, Any]] = []
    small = small_pixels = 0
    for index in range(1, top + 1):
        found, count, pixels = _class_features(grid == index, index, scale, names[index], colors[index], min_pixels)
        features, small, small_pixels = features + found, small + count, small_pixels + pixels
    return Traced({"type": "FeatureCollection", "features": features}, small, small_pixels, min_pixels)

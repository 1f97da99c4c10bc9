"""Slide outputs: pyramids OpenSlide and tifffile read back exactly, overlays, QuPath GeoJSON regions."""
from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from runtime.errors import InputError, OutputError
from runtime.slide.outputs import (
    TISSUE_OUTLINE,
    default_colors,
    geojson_regions,
    overlay_png,
    trace_regions,
    write_pyramid,
)

HEIGHT, WIDTH, TILE = 1300, 900, 256


def _pattern(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    rows, cols = np.mgrid[:height, :width]
    return ((rows * 7 + cols * 13 + (rows * cols) % 251) % 256).astype(np.uint8)


def _checked_reader(full: np.ndarray, calls: list[tuple[slice, slice, int]]):
    """A reader over `full` that asserts every region lies inside it and spans at most one tile."""
    def read(region: tuple[slice, slice], step: int) -> np.ndarray:
        rows, cols = region
        for axis, part in enumerate(region):
            assert part.start % step == 0
            assert 0 <= part.start < part.stop <= full.shape[axis]
            assert math.ceil((part.stop - part.start) / step) <= TILE
        calls.append((rows, cols, step))
        return full[rows, cols][::step, ::step]
    return read


def _signed_area(ring: list[list[float]]) -> float:
    xy = np.asarray(ring)
    return float(np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1]) / 2)


def test_pyramid_opens_in_openslide_with_levels_mpp_and_exact_pixels(tmp_path: Path) -> None:
    full, calls = _pattern(), []
    path = tmp_path / "map.tif"
    write_pyramid(path, _checked_reader(full, calls), (HEIGHT, WIDTH), np.uint8, mpp=0.5, tile=TILE)
    slide = openslide.OpenSlide(path)
    assert slide.level_dimensions == ((900, 1300), (450, 650), (225, 325), (113, 163))
    assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
    level0 = np.asarray(slide.read_region((0, 0), 0, (WIDTH, HEIGHT)))
    level1 = np.asarray(slide.read_region((0, 0), 1, (WIDTH // 2, HEIGHT // 2)))
    slide.close()
    np.testing.assert_array_equal(level0[..., 0], full)
    np.testing.assert_array_equal(level1[..., 0], full[::2, ::2])
    tiles = sum(math.ceil(HEIGHT / TILE / s) * math.ceil(WIDTH / TILE / s) for s in (1, 2, 4, 8))
    assert len(calls) == tiles


def test_probability_pyramid_keeps_its_samples_as_grey_extra_samples(tmp_path: Path) -> None:
    full = np.stack([_pattern(), 255 - _pattern(), _pattern() // 2], axis=-1)
    path = tmp_path / "probabilities.tif"
    write_pyramid(path, _checked_reader(full, []), (HEIGHT, WIDTH), np.uint8, mpp=0.25, samples=3, tile=TILE)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and len(tif.pages) == 4
        assert [level.shape for level in tif.series[0].levels] == [
            (1300, 900, 3), (650, 450, 3), (325, 225, 3), (163, 113, 3)]
        page = tif.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK and len(page.extrasamples) == 2
        assert page.is_tiled and page.tags["XResolution"].value == (40000, 1)
        np.testing.assert_array_equal(page.asarray(), full)
        np.testing.assert_array_equal(tif.pages[1].asarray(), full[::2, ::2])
        assert tif.pages[3].shape == (163, 113, 3) and tif.pages[3].subfiletype == 1


def test_pyramid_memory_stays_at_a_few_tiles_for_a_large_slide(tmp_path: Path) -> None:
    def read(region: tuple[slice, slice], step: int) -> np.ndarray:
        return np.full([math.ceil((part.stop - part.start) / step) for part in region], 7, np.uint8)
    tracemalloc.start()
    try:
        write_pyramid(tmp_path / "big.tif", read, (12_000, 12_000), np.uint8, mpp=0.25)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20      # the full level 0 alone would be 137 MiB


def test_pyramid_refuses_bad_tiles_readers_and_folders(tmp_path: Path) -> None:
    full = _pattern(64, 64)
    with pytest.raises(InputError, match="multiple of 16"):
        write_pyramid(tmp_path / "a.tif", lambda r, s: full[r][::s, ::s], (64, 64), np.uint8, 0.5, tile=100)
    with pytest.raises(OutputError, match="expected"):
        write_pyramid(tmp_path / "b.tif", lambda r, s: full[r], (64, 64), np.uint8, 0.5, samples=2, tile=16)
    with pytest.raises(OutputError, match="cannot write"):
        write_pyramid(tmp_path / "missing" / "c.tif", lambda r, s: full[r][::s, ::s], (64, 64), np.uint8, 0.5)


def test_overlay_covers_classes_outlines_them_and_leaves_background(tmp_path: Path) -> None:
    thumbnail = np.full((60, 80, 3), 120, np.uint8)
    labels = np.zeros((58, 78), np.uint8)            # a few pixels off the thumbnail's size
    labels[10:30, 10:40], labels[35:50, 50:70] = 1, 2
    colors = default_colors(3)
    path = tmp_path / "overlay.png"
    overlay_png(path, thumbnail, labels, colors, alpha=0.5)
    image = np.asarray(Image.open(path))
    assert image.shape == (60, 80, 3)
    np.testing.assert_array_equal(image[2:8, 2:8], thumbnail[2:8, 2:8])
    inside = np.rint(0.5 * 120 + 0.5 * np.asarray(colors[1], float))
    np.testing.assert_array_equal(image[20, 25], inside)
    assert np.any(image[42, 62] != thumbnail[42, 62])
    assert tuple(image[10, 25]) == colors[1]           # the outline, in the full colour


def test_overlay_outlines_the_tissue_mask_at_its_scale(tmp_path: Path) -> None:
    thumbnail = np.full((60, 80, 3), 120, np.uint8)
    tissue = np.zeros((15, 20), bool)                 # a quarter of the thumbnail's size
    tissue[5:10, 5:15] = True
    path = tmp_path / "overlay.png"
    overlay_png(path, thumbnail, np.zeros((60, 80), np.uint8), default_colors(2), tissue=tissue)
    black = np.all(np.asarray(Image.open(path)) == TISSUE_OUTLINE, axis=-1)
    rows, columns = np.nonzero(black)
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (20, 39, 20, 59)
    assert not black[25:35, 25:55].any()              # the outline only


def test_overlay_draws_a_legend_of_its_entries_where_it_fits(tmp_path: Path) -> None:
    thumbnail = np.full((600, 800, 3), 120, np.uint8)
    colors = default_colors(3)
    legend = [("nuclei", colors[1]), ("stroma", colors[2]), ("tissue mask (outline)", TISSUE_OUTLINE)]
    path = tmp_path / "overlay.png"
    overlay_png(path, thumbnail, np.zeros((600, 800), np.uint8), colors, legend=legend)
    image = np.asarray(Image.open(path))
    for color in (colors[1], colors[2]):                            # each swatch, in the box at the top left
        rows, columns = np.nonzero(np.all(image == color, axis=-1))
        assert rows.size >= 100 and rows.max() < 100 and columns.max() < 50
    assert np.all(image[300:, 400:] == 120)                         # the rest as it was
    overlay_png(path, thumbnail, np.zeros((600, 800), np.uint8), colors, legend=[("a\nb", colors[1]), ("", colors[2])])
    assert np.any(np.all(np.asarray(Image.open(path)) == colors[1], axis=-1))     # a name of two lines, one empty
    overlay_png(path, thumbnail[:40, :60], np.zeros((40, 60), np.uint8), colors, legend=legend)
    assert np.all(np.asarray(Image.open(path)) == 120)              # no room: no legend


def test_overlay_refuses_classes_without_colours(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="class 3"):
        overlay_png(tmp_path / "o.png", np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 3), default_colors(3))


@pytest.mark.parametrize("count", [0, 1, 3, 15, 40, 256])
def test_default_colors_are_distinct(count: int) -> None:
    colors = default_colors(count)
    assert len(colors) == count == len(set(colors))
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colors)
    assert all(max(c) - min(c) >= 60 for c in colors[1:])     # saturated, not grey


def _regions() -> np.ndarray:
    labels = np.zeros((40, 50), np.uint8)
    labels[5:25, 5:25] = 1
    labels[10:15, 10:15] = 0                          # a hole of 25 pixels
    labels[30:36, 30:45] = 2
    labels[2, 40:42] = 2                              # 2 pixels: below min_pixels
    return labels


def test_geojson_regions_have_classes_holes_areas_and_orientation() -> None:
    scale, names, colors = (4.0, 2.0), ["background", "tumour", "stroma"], default_colors(3)
    collection = geojson_regions(_regions(), scale, names, colors)
    json.dumps(collection)
    features = collection["features"]
    assert collection["type"] == "FeatureCollection"
    assert [f["properties"]["classification"]["name"] for f in features] == ["tumour", "stroma"]
    assert features[1]["properties"] == {"objectType": "annotation", "class_index": 2,
                                         "classification": {"name": "stroma", "color": list(colors[2])}}
    rings = [f["geometry"]["coordinates"] for f in features]
    assert [len(r) for r in rings] == [2, 1]
    for ring in (r for polygon in rings for r in polygon):
        assert len(ring) >= 4 and ring[0] == ring[-1]
        assert all(0 <= x <= 50 * scale[1] and 0 <= y <= 40 * scale[0] for x, y in ring)
    assert all(_signed_area(polygon[0]) > 0 for polygon in rings)
    assert _signed_area(rings[0][1]) < 0
    pixel = scale[0] * scale[1]
    areas = [sum(_signed_area(ring) for ring in polygon) for polygon in rings]
    assert areas == pytest.approx([(400 - 25) * pixel, 90 * pixel], rel=0.03)
    traced = trace_regions(_regions(), scale, names, colors)
    assert traced.collection == collection and (traced.small, traced.small_pixels, traced.min_pixels) == (1, 2, 4)


def test_geojson_boundaries_lie_on_pixel_edges() -> None:
    labels = np.zeros((10, 12), np.uint8)
    labels[3:6, 4:8] = 1
    labels[8, 1] = 1
    features = geojson_regions(labels, (3.0, 5.0), ["bg", "x"], default_colors(2), min_pixels=1)["features"]
    boxes = [(np.min(r, axis=0).tolist(), np.max(r, axis=0).tolist())
             for r in (np.asarray(f["geometry"]["coordinates"][0]) for f in features)]
    assert boxes == [([20.0, 9.0], [40.0, 18.0]), ([5.0, 24.0], [10.0, 27.0])]


def test_geojson_joins_diagonal_neighbours_into_one_region() -> None:
    labels = np.zeros((8, 8), np.uint8)
    labels[1:3, 1:3] = labels[3:5, 3:5] = 1
    features = geojson_regions(labels, (1.0, 1.0), ["bg", "x"], default_colors(2))["features"]
    assert len(features) == 1
    assert _signed_area(features[0]["geometry"]["coordinates"][0]) == pytest.approx(8, rel=0.1)


def test_geojson_polygons_are_valid_where_holes_meet_their_outer_ring() -> None:
    """Speckled maps, where holes meet the outer ring at corners (GEOS: "Interior is disconnected",
    which GIS tools refuse): every geometry is valid, a Polygon or a MultiPolygon, its rings
    oriented, and the area is the region's."""
    import shapely

    rng = np.random.default_rng(0)
    for _ in range(40):
        labels = (rng.random((12, 12)) < 0.55).astype(np.uint8)
        features = geojson_regions(labels, (1.0, 1.0), ["bg", "x"], default_colors(2), min_pixels=1)["features"]
        shapes = [shapely.geometry.shape(feature["geometry"]) for feature in features]
        assert all(shape.is_valid for shape in shapes), [shapely.is_valid_reason(s) for s in shapes]
        for feature in features:
            geometry = feature["geometry"]
            polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
            assert all(_signed_area(polygon[0]) > 0 for polygon in polygons)
            assert all(_signed_area(hole) < 0 for polygon in polygons for hole in polygon[1:])
        assert sum(shape.area for shape in shapes) == pytest.approx(labels.sum(), rel=0.15)


def test_geojson_refuses_classes_without_names() -> None:
    with pytest.raises(InputError, match="names"):
        geojson_regions(_regions(), (1.0, 1.0), ["background", "tumour"], default_colors(3))

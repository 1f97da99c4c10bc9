"""QuPath's annotations read as the classes of tiles."""
from __future__ import annotations

import numpy as np
import shapely

from runtime.slide.annotations import TILE_POINTS, Annotations, covering_classes


def test_a_tiles_class_is_the_one_covering_more_than_half_of_its_points_as_the_grid_reads_them():
    """Overlapping annotations (the last in file order wins), a triangle, and an Ignore* region
    (value 9, over every other): each tile's class equals the cover of the grid's own reading of
    the tile's points; tiles in more than one batch of points."""
    shapes = ((9, shapely.box(100, 100, 180, 180)), (1, shapely.box(0, 0, 400, 300)),      # Ignore* first in the
              (2, shapely.box(200, 0, 600, 300)), (1, shapely.Polygon([(0, 300), (600, 300), (0, 700)])))  # file
    annotations = Annotations(shapes, shapely.STRtree([geometry for _, geometry in shapes]), {}, ignore=9)
    side = 64
    boxes = np.array([(x, y, side, side) for y in range(0, 768, side) for x in range(0, 704, side)], dtype=np.int64)
    step = side / TILE_POINTS
    expected = [covering_classes(annotations.grid((TILE_POINTS, TILE_POINTS), (step, step), unannotated=-1,
                                                  origin=(int(y / step), int(x / step))).reshape(-1))
                for x, y, _, _ in boxes.tolist()]
    found = annotations.tile_classes(boxes)
    assert found.tolist() == [int(value) for value in expected]
    assert {-1, 1, 2, 9} <= set(found.tolist())
    half = annotations.tile_classes(np.array([[568, 0, 64, 64]]))          # 2 holds half of it: no class
    assert half.tolist() == [-1]


def test_covering_classes_needs_more_than_half_of_the_points():
    points = np.array([[1, 1, 2, 2], [1, 1, 1, 2], [-1, -1, -1, 3], [-1, -1, -1, -1]])
    assert covering_classes(points).tolist() == [-1, 1, -1, -1]

"""The window engine's maths: settings, plans, sources and mergers, in numpy alone.

`plan(shape, spec)` lays a `WindowSpec`'s windows over an image; a source (`ArraySource`) cuts
each pass's windows; a backend runs them (`runtime.backends`, which owns execution and threads);
a merger (`MemoryMerger`, `RowMerger`, `ChunkedMerger`, `MeanMerger`) stitches the outputs and finishes the
result. See docs/engine.md.
"""
from runtime.window.chunked import ChunkedArray, ChunkedMerger
from runtime.window.grid import Window, window_grid, window_size, window_starts
from runtime.window.merger import Merger, MeanMerger, MemoryMerger, WindowTable
from runtime.window.plan import CoarseMask, Pass, Plan, mirror_sets, plan
from runtime.window.source import ArraySource, Map, WindowSource, in_order, row_parts
from runtime.window.spec import BLENDINGS, WindowSpec
from runtime.window.stream import RowMerger
from runtime.window.weights import blending_weights

__all__ = [
    "ArraySource",
    "BLENDINGS",
    "ChunkedArray",
    "ChunkedMerger",
    "CoarseMask",
    "Map",
    "MeanMerger",
    "Merger",
    "MemoryMerger",
    "Pass",
    "Plan",
    "RowMerger",
    "Window",
    "WindowSource",
    "WindowSpec",
    "WindowTable",
    "blending_weights",
    "in_order",
    "mirror_sets",
    "plan",
    "row_parts",
    "window_grid",
    "window_size",
    "window_starts",
]

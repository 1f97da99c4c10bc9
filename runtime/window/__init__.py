"""Pure-numpy sliding window: tile grids, blending weights, one accumulator, and the loop."""
from runtime.window.accumulator import Accumulator
from runtime.window.grid import Window, window_grid, window_starts
from runtime.window.pipeline import Predictor, WindowCutting, WindowRunner
from runtime.window.sliding import sliding_window, window_average
from runtime.window.weights import blending_weights

__all__ = [
    "Accumulator",
    "Predictor",
    "Window",
    "WindowCutting",
    "WindowRunner",
    "blending_weights",
    "sliding_window",
    "window_average",
    "window_grid",
    "window_starts",
]

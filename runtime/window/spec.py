"""The settings of a sliding window, in one frozen object that every stage of a run reads."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Sequence

BLENDINGS = ("gaussian", "constant", "nnunet", "monai")
# How the windows are laid along an axis: spread evenly from border to border, or as MONAI's
# sliding_window_inference lays them (`blending: monai` takes its window starts with its weights).
PLACEMENTS = ("even", "monai")


@dataclass(frozen=True)
class WindowSpec:
    """How windows are laid over an image and their outputs blended back.

    `patch`: the input window, in voxels (pixels) per spatial axis. `overlap` in [0, 1): the
    share of a window that its neighbour covers at least (the starts are spread evenly, so they may
    overlap more). `blending`: one of BLENDINGS.
    `batch_size`: windows per model call. `mirror_axes`: spatial axes (0-based) whose every
    flipped combination is run and averaged. `skip_empty`: windows holding no foreground voxel
    are not run. `output_scale`: the model's output patch is the input patch divided by this
    integer on every axis (1: the output has the input's grid; 4: a quarter of its size, as a
    slide model that reads 0.25 µm pixels and answers at 1 µm).

    Every value is checked here, once; ValueError names the setting.
    """

    patch: tuple[int, ...]
    overlap: float = 0.5
    blending: str = "gaussian"
    batch_size: int = 1
    mirror_axes: tuple[int, ...] = ()
    skip_empty: bool = False
    output_scale: int = 1

    def __post_init__(self) -> None:
        patch = _integers(self.patch, "patch")
        object.__setattr__(self, "patch", patch)
        object.__setattr__(self, "mirror_axes", _integers(self.mirror_axes, "mirror_axes"))
        if not patch or any(p < 1 for p in patch):
            raise ValueError(f"window patch must be positive sizes, got {patch}")
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ValueError(f"window overlap must be in [0, 1), got {self.overlap}")
        object.__setattr__(self, "overlap", float(self.overlap))
        if self.blending not in BLENDINGS:
            raise ValueError(f"unknown blending {self.blending!r}; expected one of {BLENDINGS}")
        if _not_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        axes = self.mirror_axes
        if len(set(axes)) != len(axes) or any(not 0 <= axis < len(patch) for axis in axes):
            raise ValueError(f"mirror axes {axes} must be distinct spatial axes in [0, {len(patch)})")
        scale = self.output_scale
        if _not_int(scale) or scale < 1 or any(p % scale for p in patch):
            raise ValueError(f"output scale {scale} must be a positive integer that divides the patch {patch}")

    @property
    def placement(self) -> str:
        """How the windows are laid along each axis (PLACEMENTS): MONAI's starts with its blending."""
        return "monai" if self.blending == "monai" else "even"

    @property
    def dims(self) -> int:
        """The number of spatial axes."""
        return len(self.patch)

    @property
    def output_patch(self) -> tuple[int, ...]:
        """The model's output window, in output voxels per spatial axis."""
        return tuple(p // self.output_scale for p in self.patch)


def _not_int(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _integers(values: Sequence[int], name: str) -> tuple[int, ...]:
    """`values` as a tuple of ints; numpy integers count, booleans and floats do not."""
    try:
        items = tuple(values)
    except TypeError:
        raise ValueError(f"window {name} must be a sequence of integers, got {values!r}") from None
    if any(isinstance(v, bool) or not hasattr(v, "__index__") for v in items):
        raise ValueError(f"window {name} must be integers, got {values!r}")
    return tuple(operator.index(v) for v in items)

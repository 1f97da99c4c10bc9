"""Reorientation: a scan's voxels turned (axes permuted and flipped, nothing interpolated) so that
its index axes point where a model was trained to see them, and the model's outputs turned back.

A manifest or training config asks for it with a first preprocessing step
`reorient: {orientation: RAS}`: three DICOM letters (L/R, P/A, S/I, one of each pair) naming the
direction each ITK index axis (x, y, z) increases toward, as SimpleITK's `DICOMOrient` takes them
(a NIfTI written by nibabel's canonical form is RAS; DICOM's native order is LPS). SimpleITK's
orientation filter decides the permutation and flips from the scan's direction; they are applied
here to numpy arrays in (z, y, x) order with any leading axes (channels, classes), as views.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

PAIRS = ("LR", "PA", "SI")


def orientation_problem(value: object) -> str | None:
    """Why `value` is not an orientation code; None when it is one."""
    wrong = f"must be three capital letters, one of each of L/R, P/A and S/I, such as RAS or LPS; got {value!r}"
    if not isinstance(value, str) or len(value) != 3:
        return wrong
    axes = []
    for letter in value:
        found = [index for index, pair in enumerate(PAIRS) if letter in pair]
        if not found:
            return wrong
        axes.append(found[0])
    return None if sorted(axes) == [0, 1, 2] else wrong


@dataclass(frozen=True)
class Reorientation:
    """The permutation and flips that take a scan of one direction to an orientation code, in
    ITK index order (x, y, z): output axis i is input axis permute[i], then flipped if flips[i]."""

    permute: tuple[int, ...]
    flips: tuple[bool, ...]

    @classmethod
    def of(cls, direction: Sequence[float], code: str) -> Reorientation:
        orient = sitk.DICOMOrientImageFilter()
        orient.SetDesiredCoordinateOrientation(code)
        probe = sitk.Image([1, 1, 1], sitk.sitkUInt8)
        probe.SetDirection([float(v) for v in direction])
        orient.Execute(probe)
        return cls(tuple(int(i) for i in orient.GetPermuteOrder()), tuple(bool(f) for f in orient.GetFlipAxes()))

    @property
    def identity(self) -> bool:
        return self.permute == (0, 1, 2) and not any(self.flips)

    def apply(self, array_zyx: np.ndarray) -> np.ndarray:
        """(..., z, y, x) turned to the target orientation (a view)."""
        lead = array_zyx.ndim - 3
        xyz = _xyz(array_zyx)
        xyz = xyz.transpose(*range(lead), *(lead + p for p in self.permute))
        for axis, flip in enumerate(self.flips):
            if flip:
                xyz = np.flip(xyz, lead + axis)
        return _xyz(xyz)

    def undo(self, array_zyx: np.ndarray) -> np.ndarray:
        """The inverse of `apply`: (..., z, y, x) of the target orientation back to the scan's (a view)."""
        lead = array_zyx.ndim - 3
        xyz = _xyz(array_zyx)
        for axis, flip in enumerate(self.flips):
            if flip:
                xyz = np.flip(xyz, lead + axis)
        inverse = np.argsort(self.permute)
        return _xyz(xyz.transpose(*range(lead), *(lead + int(p) for p in inverse)))

    def spacing(self, spacing_zyx: Sequence[float]) -> tuple[float, ...]:
        """The spacing (z, y, x) after `apply`."""
        xyz = tuple(reversed(tuple(spacing_zyx)))
        return tuple(reversed(tuple(float(xyz[p]) for p in self.permute)))


def _xyz(array: np.ndarray) -> np.ndarray:
    """The last three axes reversed: (..., z, y, x) <-> (..., x, y, z)."""
    lead = array.ndim - 3
    return array.transpose(*range(lead), lead + 2, lead + 1, lead)


def reorient_code(steps: Sequence[object]) -> str | None:
    """The orientation a first `reorient` step turns scans to; None when the steps start otherwise."""
    first = steps[0] if steps else None
    if first is None or getattr(first, "name", None) != "reorient":
        return None
    return str(first.params["orientation"])  # type: ignore[attr-defined]


def reorientation(steps: Sequence[object], direction: Sequence[float]) -> Reorientation | None:
    """The turn a first `reorient` step asks of a scan of `direction`; None when there is no such
    step or the scan already lies so."""
    code = reorient_code(steps)
    if code is None:
        return None
    turn = Reorientation.of(direction, code)
    return None if turn.identity else turn

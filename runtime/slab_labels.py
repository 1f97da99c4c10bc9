"""Labels alone on the input grid, made a slab of rows at a time while the sliding window's
merger hands on the model grid's rows (`runtime.window.stream.RowMerger`): no whole class map
exists on either grid, so the memory a label map takes beyond the input and the labels themselves
does not grow with the number of classes or the scan's length.
"""
from __future__ import annotations

import math

import numpy as np

from runtime.manifest import Manifest
from runtime.postprocess import activate, background_probability, expected_channels, label_index
from runtime.preprocess import Record, invert_rows, rows_needed

# Bytes of class maps on the input grid that are brought back and labelled at a time.
SLAB_BYTES = 64 * 2**20


def slabs(record: Record, channels: int) -> list[tuple[int, int]]:
    """The slabs of rows [first, stop) of `record`'s original grid that are brought back and labelled
    at a time: SLAB_BYTES of `channels` float32 maps each."""
    rows, plane = record.original_shape[0], math.prod(record.original_shape[1:])
    step = max(1, SLAB_BYTES // (4 * channels * plane))
    return [(first, min(first + step, rows)) for first in range(0, rows, step)]


class SlabLabels:
    """Class indices (1, *S) on the input grid of `record`, from the rows of the preprocessed grid
    lent in order to `add(first, rows)` (K, n, *rest): each slab of input rows is inverted
    (`invert_rows`) and labelled (`label_index`) as soon as the rows it needs are in, and rows no
    later slab needs are let go. The rows are copied and activated with `activation`; None labels
    them as they come (an argmax that an activation would not change, where inverting
    interpolates nothing), keeping one byte a voxel instead of K floats. The labels are those of
    `invert` and then `label_index` on the whole map (the interpolation may differ in the last bit)."""

    def __init__(self, record: Record, manifest: Manifest, activation: str | None) -> None:
        self.record = record
        self.manifest = manifest
        self.activation = activation
        channels = expected_channels(manifest)
        self.dtype = np.uint8 if max(channels, len(manifest.classes)) <= 256 else np.uint16
        self.fill = background_probability(manifest) if activation is not None else np.zeros(1, self.dtype)
        self.interpolation = "linear" if activation is not None else "nearest"
        self.slabs = slabs(record, channels if activation is not None else 1)
        self.needs = [rows_needed(record, first, stop) for first, stop in self.slabs]
        self.done = 0                                       # slabs labelled
        self.blocks: list[tuple[int, np.ndarray]] = []      # rows given and still needed, by first row
        self.index: np.ndarray | None = None

    def add(self, first: int, rows: np.ndarray) -> None:
        """Rows [first, first + n) of the preprocessed grid, the next in order."""
        if self.activation is None:
            kept = label_index(rows, self.manifest)[np.newaxis]
        else:
            kept = activate(np.array(rows, dtype=np.float32), self.activation)
        self.blocks.append((first, kept))
        self._label(first + rows.shape[1])

    def finish(self) -> np.ndarray:
        """The class indices (1, *S), once every row was added."""
        self._label(math.inf)
        assert self.index is not None
        return self.index[np.newaxis]

    def _label(self, available: float) -> None:
        """Label every slab whose rows are in (rows before `available`), then let go of the rows
        no later slab needs."""
        while self.done < len(self.slabs):
            low, high = self.needs[self.done]
            if high > available:
                break
            first, stop = self.slabs[self.done]
            part = invert_rows(self.record, self._rows(low, high), low, first, stop, self.fill, self.interpolation)
            part = label_index(part, self.manifest) if self.activation is not None else part[0]
            if self.index is None:
                self.index = np.empty(self.record.original_shape, dtype=self.dtype)
            self.index[first:stop] = part
            self.done += 1
        later = [low for low, high in self.needs[self.done:] if high > low]
        keep_from = later[0] if later else math.inf
        self.blocks = [(start, block) for start, block in self.blocks if start + block.shape[1] > keep_from]

    def _rows(self, low: int, high: int) -> np.ndarray:
        """Rows [low, high) of the preprocessed grid from the blocks held."""
        parts = [block[:, max(low, start) - start:min(high, start + block.shape[1]) - start]
                 for start, block in self.blocks if start < high and start + block.shape[1] > low]
        if not parts:
            return np.zeros((len(self.fill), 0, *self.record.shape[1:]), self.fill.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

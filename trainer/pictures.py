"""A picture of each subject a fold scores one by one, at its best epoch: the slice holding most of
the subject's labelled voxels (a 2D image whole), its image in grey with the truth drawn over it
on the left and the prediction on the right, in the class colours of the runtime's slide overlays.
Drawn on the grid the model ran on (after preprocessing), where the truth and the prediction meet
the image voxel for voxel; the scores of the cases tables are of the grid as read.

Each evaluation keeps a small `Slice` per subject (its longest side at most MAX_SIDE pixels), and
the pictures are drawn only when the best epoch's are written."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.slide.outputs import MAX_DEFAULT_COLORS, blend, default_colors

# A picture narrower than this many pixels is enlarged (whole pixels, nearest) to be seen.
MIN_WIDTH = 256
# A slice longer than this along either side is taken every n-th pixel to fit it.
MAX_SIDE = 512
GAP = 4             # pixels of white between the truth and the prediction
ALPHA = 0.45


@dataclass(frozen=True)
class Slice:
    """What a subject's picture is drawn from: the grey image (uint8) and the truth's and the
    prediction's class indices (uint16) of one slice."""

    grey: np.ndarray
    truth: np.ndarray
    predicted: np.ndarray


def picture_slice(image: np.ndarray, label: np.ndarray, probabilities: np.ndarray) -> Slice:
    """The slice along the first axis holding most labelled voxels (a 3D image; a 2D one whole) of
    the first channel of `image` ((C, *spatial)), the truth (`label`, class indices, negative where
    unannotated: none drawn) and the prediction (argmax of `probabilities`, (K, *spatial))."""
    truth = np.where(label > 0, label, 0)
    if image.ndim == 4:
        counts = np.count_nonzero(truth.reshape(truth.shape[0], -1), axis=1)
        index = int(np.argmax(counts)) if counts.any() else truth.shape[0] // 2
        grey, truth, scores = image[0, index], truth[index], probabilities[:, index]
    else:
        grey, scores = image[0], probabilities
    step = max(1, -(-max(grey.shape) // MAX_SIDE))
    grey, truth, scores = grey[::step, ::step], truth[::step, ::step], scores[:, ::step, ::step]
    low, high = np.percentile(grey, (0.5, 99.5)) if grey.size else (0.0, 1.0)
    scaled = np.clip((grey - low) / (high - low if high > low else 1.0), 0, 1)
    return Slice((scaled * 255).astype(np.uint8), truth.astype(np.uint16),
                 np.argmax(scores, axis=0).astype(np.uint16))


def picture(drawn: Slice, classes: int) -> np.ndarray:
    """(h, 2w + GAP, 3) uint8: the truth over the grey image, a white gap, the prediction over it,
    each class in its overlay colour (the colours repeat past MAX_DEFAULT_COLORS classes)."""
    palette = default_colors(min(classes, MAX_DEFAULT_COLORS))
    colors = [palette[index % len(palette)] for index in range(classes)]
    rgb = np.repeat(drawn.grey[..., None], 3, axis=2)
    left = blend(rgb, drawn.truth.astype(np.int64), colors, ALPHA)
    right = blend(rgb, drawn.predicted.astype(np.int64), colors, ALPHA)
    gap = np.full((rgb.shape[0], GAP, 3), 255, np.uint8)
    whole = np.concatenate([left, gap, right], axis=1)
    scale = max(1, -(-MIN_WIDTH // whole.shape[1]))
    return np.repeat(np.repeat(whole, scale, axis=0), scale, axis=1)


def file_name(subject: str) -> str:
    """The subject id as a file name: itself where it is one (runtime.commands.rows.SAFE_ID), else
    its other characters made `_`, with a hash of the id so that two ids never meet."""
    import hashlib
    import re

    from runtime.commands.rows import SAFE_ID

    if SAFE_ID.match(subject):
        return subject
    digest = hashlib.sha256(subject.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', subject)[:100].lstrip('.')}_{digest}"


def write_pictures(folder: Path, slices: Sequence[tuple[str, Slice]], classes: int) -> None:
    """Each (subject, slice) drawn (`picture`) as `folder/<subject>.png` (`file_name`), written whole
    (a hidden file, then a rename); the pictures of other subjects an earlier best epoch left there
    are removed."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = set()
    for subject, drawn in slices:
        name = f"{file_name(subject)}.png"
        handle, partial = tempfile.mkstemp(prefix=".", suffix=".png", dir=folder)
        os.close(handle)
        Image.fromarray(picture(drawn, classes)).save(partial, format="PNG")
        os.replace(partial, folder / name)
        names.add(name)
    for stale in folder.glob("*.png"):
        if stale.name not in names:
            stale.unlink(missing_ok=True)

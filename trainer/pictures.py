"""A picture of each subject a fold scores one by one, at its best epoch: the slice holding most of
the subject's labelled classes (a 2D image whole), its image in grey with the truth drawn over it
on the left and the prediction on the right, in the class colours of the runtime's slide overlays.
Drawn on the grid the model ran on (after preprocessing), where the truth and the prediction meet
the image voxel for voxel; the scores of the cases tables are of the grid as read."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.slide.outputs import blend, default_colors

# A picture narrower than this many pixels is enlarged (whole pixels, nearest) to be seen.
MIN_WIDTH = 256
GAP = 4             # pixels of white between the truth and the prediction
ALPHA = 0.45


def slice_picture(image: np.ndarray, label: np.ndarray, probabilities: np.ndarray, classes: int) -> np.ndarray:
    """(h, 2w + GAP, 3) uint8: the truth (`label`, class indices, negative where unannotated) and the
    prediction (argmax of `probabilities`, (K, *spatial)) over the first channel of `image`
    ((C, *spatial)), on the slice along the first axis holding most labelled classes (a 3D image)."""
    truth = np.where(label > 0, label, 0)
    if image.ndim == 4:
        counts = np.count_nonzero(truth.reshape(truth.shape[0], -1), axis=1)
        index = int(np.argmax(counts)) if counts.any() else truth.shape[0] // 2
        grey, truth, scores = image[0, index], truth[index], probabilities[:, index]
    else:
        grey, scores = image[0], probabilities
    predicted = np.argmax(scores, axis=0)
    low, high = np.percentile(grey, (0.5, 99.5)) if grey.size else (0.0, 1.0)
    scaled = np.clip((grey - low) / (high - low if high > low else 1.0), 0, 1)
    rgb = np.repeat((scaled * 255).astype(np.uint8)[..., None], 3, axis=2)
    colors = default_colors(classes)
    left, right = blend(rgb, truth.astype(np.int64), colors, ALPHA), blend(rgb, predicted, colors, ALPHA)
    gap = np.full((rgb.shape[0], GAP, 3), 255, np.uint8)
    picture = np.concatenate([left, gap, right], axis=1)
    scale = max(1, -(-MIN_WIDTH // picture.shape[1]))
    return np.repeat(np.repeat(picture, scale, axis=0), scale, axis=1)


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


def write_pictures(folder: Path, pictures: Sequence[tuple[str, np.ndarray]]) -> None:
    """Each (subject, picture) as `folder/<subject>.png` (`file_name`), written whole (a hidden file, then a rename);
    the pictures of other subjects an earlier best epoch left there are removed."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = set()
    for subject, picture in pictures:
        name = f"{file_name(subject)}.png"
        handle, partial = tempfile.mkstemp(prefix=".", suffix=".png", dir=folder)
        os.close(handle)
        Image.fromarray(picture).save(partial, format="PNG")
        os.replace(partial, folder / name)
        names.add(name)
    for stale in folder.glob("*.png"):
        if stale.name not in names:
            stale.unlink(missing_ok=True)

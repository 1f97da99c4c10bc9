"""The tissue mask of a slide, on a low-resolution overview: Otsu's threshold on the brightness
(tissue is darker than the glass), moved up past pale tissue where the slide has dark tissue too,
specks removed and holes filled; or a mask image given by
the user. Only windows that touch the mask are read and run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import InputError
from runtime.slide.reader import Slide

# The overview is read at most this many pixels a side (a finer tissue_mpp is coarsened to fit).
MAX_OVERVIEW_SIDE = 8192
# Level pixels one read of the overview takes at most per side.
_READ_SIDE = 2048
# Regions of the overview without image that are each tried on another level (a slide whose
# scanner left out more areas than this has the rest untried).
MAX_REGIONS_TRIED = 1000
# Tissue must be at least this much darker (0-255 grey levels) than the glass around it.
MIN_CONTRAST = 25.0
# Where the brighter Otsu class is darker than this, the slide has no glass to separate from:
# everything darker than NEAR_WHITE is tissue.
GLASS_BRIGHTNESS = 200.0
NEAR_WHITE = 235.0
# How many times the bright class may split again into paler tissue and glass (glass_threshold),
# and how far apart (0-255) their colours must lie, once each is divided by its brightness.
PALER_SPLITS = 3
MIN_CHROMA = 12.0
# What a slide the tissue mask finds no tissue on is told to do, run on its own.
TISSUE_REMEDY = "give the tissue with --tissue-mask"


@dataclass(frozen=True)
class TissueMask:
    """A boolean mask (rows, columns) over the slide; one mask pixel spans `l0_per_pixel`
    (along y, along x) level-0 pixels."""

    mask: np.ndarray
    l0_per_pixel: tuple[float, float]
    unscanned: np.ndarray | None = None     # where the overview's level holds no image, as on every level

    @property
    def share(self) -> float:
        return float(np.count_nonzero(self.mask)) / max(1, self.mask.size)

    @cached_property
    def interior(self) -> np.ndarray:
        """The mask's pixels whose eight neighbours are tissue too (past the slide's edge counts as
        tissue), none of them unscanned (an area no level holds, which the mask's hole filling may
        take in): where a finer level must hold image, whatever the mask's coarse pixels blur."""
        from scipy import ndimage

        scanned = self.mask if self.unscanned is None else self.mask & ~self.unscanned
        return ndimage.binary_erosion(scanned, np.ones((3, 3), dtype=bool), border_value=1)


def check_image_in_tissue(slide: Slide, level: int, l0_x: int, l0_y: int, holes: np.ndarray,
                          tissue: TissueMask) -> None:
    """InputError where a pixel the slide holds no image for (`holes`, of a read of `level` from
    level-0 corner (l0_x, l0_y)) lies in the interior of `tissue`: the mask, made on a coarser
    level or given, has tissue where this level has a tile missing from the file. An area a
    scanner left out is missing on every level, so the Otsu mask never lies over it."""
    scale = slide.levels[level].downsample
    rows, cols = np.nonzero(holes)
    l0_ys = (math.floor(l0_y / scale) + rows + 0.5) * scale
    l0_xs = (math.floor(l0_x / scale) + cols + 0.5) * scale
    mask_rows = (l0_ys // tissue.l0_per_pixel[0]).astype(np.int64)
    mask_cols = (l0_xs // tissue.l0_per_pixel[1]).astype(np.int64)
    inside = (mask_rows < tissue.mask.shape[0]) & (mask_cols < tissue.mask.shape[1])
    hit = np.flatnonzero(tissue.interior[mask_rows[inside], mask_cols[inside]])
    if hit.size:
        at = np.flatnonzero(inside)[hit[0]]
        raise InputError(f"{slide.path}: level {level} holds no image at level-0 pixel ({int(l0_xs[at])}, "
                         f"{int(l0_ys[at])}), inside the tissue mask ({hit.size} such pixels in this read); a tile is "
                         "missing from the file there: copy the slide again from its source, or give a --tissue-mask "
                         "that leaves out what its scanner did not scan.")


def overview(slide: Slide, l0_per_pixel: float) -> tuple[np.ndarray, tuple[float, float]]:
    """The slide as RGB uint8 at about `l0_per_pixel` level-0 pixels per pixel (coarser where
    that would exceed MAX_OVERVIEW_SIDE), read from the best level in pieces of at most
    _READ_SIDE level pixels a side, and the level-0 pixels per overview pixel along y and x
    (overview pixel i covers level-0 pixels [i * scale, (i + 1) * scale)). The last pixel of a row or
    column, which reaches past the slide's edge, is of the slide's part alone (`_edge_filled`)."""
    rgb, scale, _, _ = overview_with_holes(slide, l0_per_pixel)
    return rgb, scale


def overview_with_holes(slide: Slide, l0_per_pixel: float) -> tuple[np.ndarray, tuple[float, float], np.ndarray,
                                                                     int]:
    """`overview`, with the overview pixels whose whole area the level read holds no image for
    (transparent), and that level."""
    from PIL import Image

    width, height = slide.l0_width, slide.l0_height
    scale = max(l0_per_pixel, max(width, height) / MAX_OVERVIEW_SIDE, 1.0)
    out_w, out_h = max(1, math.ceil(width / scale)), max(1, math.ceil(height / scale))
    level = slide.best_level(scale)
    per_level = scale / slide.levels[level].downsample          # level pixels per overview pixel
    block = max(1, int(_READ_SIDE // per_level))              # overview pixels per read, per side
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    unscanned = np.zeros((out_h, out_w), dtype=bool)
    for top in range(0, out_h, block):
        for left in range(0, out_w, block):
            h, w = min(block, out_h - top), min(block, out_w - left)
            size = (max(1, round(w * per_level)), max(1, round(h * per_level)))
            l0_x, l0_y = round(left * scale), round(top * scale)
            pixels, holes = slide.read_with_holes(l0_x, l0_y, level, *size)
            pixels = _edge_filled(pixels, slide, level, l0_x, l0_y)
            if size != (w, h):
                pixels = np.asarray(Image.fromarray(pixels).resize((w, h), Image.Resampling.BOX))
                if holes is not None:
                    share = Image.fromarray(holes.astype(np.float32)).resize((w, h), Image.Resampling.BOX)
                    holes = np.asarray(share) >= 1.0 - 1e-6
            out[top:top + h, left:left + w] = pixels
            if holes is not None:
                unscanned[top:top + h, left:left + w] = holes
    return out, (scale, scale), unscanned, level


def check_unscanned(slide: Slide, level: int, unscanned: np.ndarray, scale: float) -> None:
    """InputError where the overview's `level` holds no image (`unscanned`, overview pixels of
    `scale` level-0 pixels) at a place where level 0 does: a tile missing from that level, where an
    area its scanner left out is missing on every level. Each region is tried at one of its pixels,
    up to MAX_REGIONS_TRIED. A slide of one level cannot tell the two apart and is refused wherever
    it holds no image; an overview read from level 0 of a slide of several is not tried (a coarser
    level holds image over an area a finer one leaves out, where a scanner's tile covers both)."""
    if not unscanned.any() or (level == 0 and len(slide.levels) > 1):
        return
    from scipy import ndimage

    regions, count = ndimage.label(unscanned)
    _, first = np.unique(regions.ravel(), return_index=True)          # each region's first pixel (0: the rest)
    rows, cols = np.unravel_index(first[1:MAX_REGIONS_TRIED + 1], unscanned.shape)
    for row, col in zip(rows.tolist(), cols.tolist()):
        l0_x, l0_y = int((col + 0.5) * scale), int((row + 0.5) * scale)
        if level == 0:
            raise InputError(f"{slide.path}: its one level holds no image at level-0 pixel ({l0_x}, {l0_y}) ({count} "
                             "such region(s)): a tile is missing from the file, or its scanner left the area out, "
                             "which a slide of one level cannot tell apart; copy the slide again from its source, or "
                             "give a --tissue-mask that leaves the area out.")
        _, holes = slide.read_with_holes(l0_x, l0_y, 0, 1, 1)
        if holes is None:
            raise InputError(f"{slide.path}: level {level} holds no image at level-0 pixel ({l0_x}, {l0_y}), where "
                             "level 0 does; a tile is missing from the file there: copy the slide again from its "
                             "source.")


def _edge_filled(pixels: np.ndarray, slide: Slide, level: int, l0_x: int, l0_y: int) -> np.ndarray:
    """A read of `level` from level-0 (l0_x, l0_y) whose part past the slide's right or bottom edge
    repeats the slide's last column or row, so that a pixel averaged over it is the slide's colour,
    not paled towards the white outside (tissue at the edge would read as glass)."""
    scale = slide.levels[level].downsample
    inside_x = slide.levels[level].width - math.floor(l0_x / scale)
    inside_y = slide.levels[level].height - math.floor(l0_y / scale)
    if 0 < inside_x < pixels.shape[1]:
        pixels[:, inside_x:] = pixels[:, inside_x - 1:inside_x]
    if 0 < inside_y < pixels.shape[0]:
        pixels[inside_y:] = pixels[inside_y - 1:inside_y]
    return pixels


def brightness(rgb: np.ndarray) -> np.ndarray:
    """Grey levels 0-255 (float32) of RGB uint8, by the ITU-R 601 luma weights."""
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def otsu_mask(slide: Slide, tissue_mpp: float, min_object_um2: float, min_hole_um2: float,
              remedy: str = TISSUE_REMEDY) -> TissueMask:
    """Tissue on an overview at `tissue_mpp` microns per pixel: darker than Otsu's threshold on the
    brightness (moved up past pale tissue, `glass_threshold`), regions smaller than `min_object_um2`
    removed and holes smaller than `min_hole_um2` filled. A slide with no glass (everything darker
    than GLASS_BRIGHTNESS on the bright side of the threshold, or nothing brighter than it) is
    tissue wherever it is darker than NEAR_WHITE; a uniform one is all tissue, or none where it is
    as bright as glass. InputError where the slide shows no tissue; its message ends in `remedy`."""
    from skimage.filters import threshold_otsu

    rgb, (scale_y, scale_x), unscanned, level = overview_with_holes(slide, tissue_mpp / slide.mpp)
    check_unscanned(slide, level, unscanned, scale_x)
    unscanned = unscanned if unscanned.any() else None
    grey = brightness(rgb)
    if float(grey.max()) - float(grey.min()) < MIN_CONTRAST:
        if float(grey.mean()) >= NEAR_WHITE:
            _no_tissue(slide.path, "the slide is uniform glass", remedy)
        return TissueMask(np.ones(grey.shape, dtype=bool), (scale_y, scale_x), unscanned)
    threshold = float(threshold_otsu(grey))
    bright = grey[grey > threshold]
    if not bright.size or float(bright.mean()) < GLASS_BRIGHTNESS:
        threshold = NEAR_WHITE
    else:
        threshold = glass_threshold(grey, rgb, threshold)
    mask = grey < threshold
    glass = grey[~mask]
    if not mask.any() or (glass.size and float(glass.mean()) - float(grey[mask].mean()) < MIN_CONTRAST):
        _no_tissue(slide.path, "nothing on it is darker than the glass", remedy)
    pixel_um2 = scale_y * scale_x * slide.mpp ** 2
    mask = clean(mask, math.ceil(min_object_um2 / pixel_um2), math.ceil(min_hole_um2 / pixel_um2))
    if not mask.any():
        height_um, width_um = slide.l0_height * slide.mpp, slide.l0_width * slide.mpp
        whole = (f"; the whole slide measures {width_um:.4g} x {height_um:.4g} microns at {slide.mpp:g} um/pixel: "
                 f"if that is not its size, give its true resolution with {slide.mpp_from}"
                 if width_um * height_um < min_object_um2 * 10 else "")
        _no_tissue(slide.path, f"every dark region is smaller than {min_object_um2:g} square microns{whole}", remedy)
    return TissueMask(mask, (scale_y, scale_x), unscanned)


def glass_threshold(grey: np.ndarray, rgb: np.ndarray, threshold: float) -> float:
    """The threshold between the glass and the palest tissue, from Otsu's first `threshold`: where
    dark tissue (nuclei-rich, or dense) shares a slide with pale tissue (stroma, oedema, mucin),
    Otsu's threshold falls between the two tissues and takes the pale one for glass. While the
    bright class splits again, by Otsu, into a paler class at least MIN_CONTRAST darker than a
    glass-bright one and of another colour (each class's mean colour divided by its brightness
    differing by at least MIN_CHROMA in some channel against another, so that grey glass beside
    white fill, or glass lit two ways, stays glass, and a tint of the glass itself cancels), the
    threshold moves up to that split. Tissue as grey as the glass cannot be told from it so."""
    from skimage.filters import threshold_otsu

    for _ in range(PALER_SPLITS):
        above = grey > threshold
        bright = grey[above]
        if bright.size < 2 or float(bright.max()) - float(bright.min()) < MIN_CONTRAST:
            break
        split = float(threshold_otsu(bright))
        lower = bright <= split
        paler, glass = bright[lower], bright[~lower]
        if not (paler.size and glass.size) or float(glass.mean()) < GLASS_BRIGHTNESS \
                or float(glass.mean()) - float(paler.mean()) < MIN_CONTRAST:
            break
        colours = rgb[above].astype(np.float64)
        difference = (colours[lower].mean(axis=0) / float(paler.mean())
                      - colours[~lower].mean(axis=0) / float(glass.mean())) * 255
        if float(difference.max() - difference.min()) < MIN_CHROMA:
            break
        threshold = split
    return threshold


def clean(mask: np.ndarray, min_object: int, min_hole: int) -> np.ndarray:
    """`mask` without regions of fewer than `min_object` pixels and with holes (background not
    connected to the border) of fewer than `min_hole` pixels filled; 8-connected regions."""
    from scipy import ndimage

    structure = np.ones((3, 3), dtype=bool)
    if min_object > 1:
        labels, count = ndimage.label(mask, structure)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = sizes >= min_object
        keep[0] = False
        mask = keep[labels]
    if min_hole > 1:
        holes, count = ndimage.label(~mask)
        sizes = np.bincount(holes.ravel(), minlength=count + 1)
        border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        fill = sizes < min_hole
        fill[0] = False
        fill[border] = False
        mask = mask | fill[holes]
    return mask


def aspect_problem(width: int, height: int, l0_size: tuple[int, int]) -> str | None:
    """What keeps an image of width x height from covering the whole slide of level-0 size
    (width, height) `l0_size`, or None: it must be the slide scaled by one factor on both axes,
    each side rounded either way (within a pixel of the slide's side over the factor), so that a
    label or mask cut short by a few columns is not stretched over the slide."""
    l0_width, l0_height = l0_size
    low = max(l0_width / (width + 1), l0_height / (height + 1))
    high = min(l0_width / (width - 1) if width > 1 else math.inf, l0_height / (height - 1) if height > 1 else math.inf)
    if low >= high:
        return (f"{width} x {height} pixels is not the whole slide ({l0_width} x {l0_height}) at any one scale: its "
                "aspect ratio differs by more than a pixel's rounding; give an image of the whole slide")
    return None


def class_image(path: Path, what: str) -> np.ndarray:
    """A mask or label image as one value per pixel: a palette image's indices, a grey image's
    values (`grey_values`), a coloured image's grey levels; InputError naming `what` where it
    cannot be read."""
    from runtime.slide.reader import open_plain

    image = open_plain(path, what)
    values = grey_values(image)
    return values if values is not None else np.asarray(image.convert("L"))


GREY_MODES = ("P", "L", "1", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def grey_values(image: object) -> np.ndarray | None:
    """A Pillow image's one value per pixel: a grey or palette image's values, or a colour image's
    where its colour channels are equal (a grey image saved as RGB); None for a coloured one, or
    one of 16-bit colour (which Pillow reads as 8-bit: its values are not the file's)."""
    from runtime.slide.reader import SAMPLE_BITS

    mode = getattr(image, "mode", "")
    if mode in GREY_MODES:
        return np.asarray(image)
    if mode in ("RGB", "RGBA", "LA") and getattr(image, "info", {}).get(SAMPLE_BITS, 8) == 8:
        pixels = np.asarray(image)
        colour = pixels[..., :1] if mode == "LA" else pixels[..., :3]
        if (colour == colour[..., :1]).all():
            return np.ascontiguousarray(colour[..., 0])
    return None


def not_values(image: object, values: np.ndarray | None) -> str | None:
    """What an image's pixels are where they are not integer class values (`values`, its
    `grey_values`): "floating-point", "16-bit colour (RGB)" or its colour mode; None where they are."""
    from runtime.slide.reader import SAMPLE_BITS

    if values is not None:
        return "floating-point" if values.dtype.kind == "f" else None
    mode = getattr(image, "mode", "")
    return f"16-bit colour ({mode})" if getattr(image, "info", {}).get(SAMPLE_BITS, 8) > 8 else mode


def mask_from_image(path: Path, slide: Slide) -> TissueMask:
    """A mask image (PNG, TIFF, ...; non-zero is tissue) covering the whole slide at any
    resolution of the slide's aspect ratio."""
    from runtime.slide.reader import image_size

    width, height = image_size(path, "--tissue-mask")
    problem = aspect_problem(width, height, (slide.l0_width, slide.l0_height))
    if problem:
        raise InputError(f"--tissue-mask {path}: {problem}.")
    mask = _mask_pixels(path)
    if not mask.any():
        raise InputError(f"--tissue-mask {path}: the mask is empty, so there is nothing to run the model on.")
    return TissueMask(mask, (slide.l0_height / height, slide.l0_width / width))


def _mask_pixels(path: Path) -> np.ndarray:
    """A mask image's tissue. A palette image: its non-zero indices, but for pixels of a transparent
    index. An image with an alpha channel that leaves some pixel transparent (a layer drawn over the
    slide, whatever its colours or their edges' shades): its opaque pixels (alpha at least half).
    Any other: its non-zero grey levels; InputError for a coloured one (a thumbnail, an overlay),
    whose pixels would not tell which are tissue."""
    from runtime.slide.reader import open_plain

    image = open_plain(path, "--tissue-mask")
    alpha = _transparency(image)
    if image.mode == "P":
        indices = np.asarray(image) > 0
        return indices if alpha is None else indices & (alpha >= 128)
    if alpha is not None:
        return alpha >= 128
    values = grey_values(image)
    kind = not_values(image, values)
    if kind is not None and values is None:
        raise InputError(f"--tissue-mask {path}: its pixels are coloured ({kind}) and none is transparent, so which "
                         "are tissue is not told; give a grey or palette image, non-zero where the tissue is, or one "
                         "transparent where it is not.")
    return values > 0


def _transparency(image: Any) -> np.ndarray | None:
    """A Pillow image's alpha (0 transparent) where some pixel is less than opaque; None where none
    is, or it has no alpha (a palette that declares a transparent index no pixel uses has none)."""
    if image.mode == "P" and "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA").getchannel("A"))
    elif image.mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(image.getchannel("A"))
    else:
        return None
    return alpha if bool((alpha < 255).any()) else None


def _no_tissue(path: Path, why: str, remedy: str) -> None:
    raise InputError(f"{path}: no tissue found ({why}); check the slide, or {remedy}.")

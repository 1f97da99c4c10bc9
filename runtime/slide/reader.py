"""Reading whole-slide images: OpenSlide for every format it reads (Aperio SVS, generic tiled
TIFF, Hamamatsu, MIRAX, ...), Pillow for a small plain PNG, JPEG or TIFF.

Coordinates carry their frame in their name: `l0_` are pixels of level 0 (the finest), `_um`
microns; a region read at another level is given by its level-0 corner, as OpenSlide takes it.
Every read returns RGB uint8 with transparent pixels (outside a scanned area) made white, the
colour of the glass.
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from runtime.contract import MPP_RANGE
from runtime.errors import InputError
from runtime.io.formats import check_tiff, is_tiff_file

log = logging.getLogger(__name__)

# Suffixes only slides have; a `.tif`/`.tiff`, `.png` or `.jpg` is a slide for a histology model
# and a 2D image for a radiology one.
SLIDE_SUFFIXES = (".svs", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")
SHARED_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
# A plain image is decoded whole: at most this many pixels (a pyramidal TIFF has no such bound).
MAX_PLAIN_PIXELS = 20000 * 20000
# Bytes a plain image takes per pixel at its peak, held against the memory budget before it is
# decoded: its decoded samples, an RGBA copy (a slide) or an integer array of its values (a mask
# or a label), and the regions read from it (9.1 measured on a 12000 x 12000 RGB slide).
PLAIN_BYTES_PER_PIXEL = 10
# Level-0 pixels a slide may hold on a side (the largest scanners make about 250,000).
MAX_SLIDE_SIDE = 1_000_000
# Pixels a side one region read may take (a window read from a level far finer than the model).
MAX_READ_SIDE = 8192
# Level downsamples within this share of each other count as the same resolution.
RESOLUTION_TOLERANCE = 1e-3
# A model's resolution may be finer than a slide's level 0 by up to this share of it, its windows
# read and resized up: scanners' nominal resolutions differ by a few percent (an Aperio 40x scan is
# 0.2527 microns per pixel, a 40x model's 0.25).
UPSAMPLE_TOLERANCE = 0.1
# A level coarser than the model's resolution by less than this share of its own is read and
# resized up rather than a finer level of up to 16 times the pixels (its scanner's rounding, as
# above; narrower, so that a level the model's resolution is not is never read in its place).
LEVEL_TOLERANCE = 0.03
WHITE = 255


def is_slide_input(path: Path, modality: str) -> bool:
    """Whether `path` is read as a slide: a slide-only suffix, or an image suffix given to a
    histology model (a folder never is)."""
    suffix = Path(path).suffix.lower()
    return suffix in SLIDE_SUFFIXES or (modality == "histology" and suffix in SHARED_SUFFIXES)


def pyramid_levels(path: Path) -> int:
    """How many levels the TIFF at `path` holds as a tiled pyramid (a whole-slide image); 0 for any
    other file, or one that cannot be read as a TIFF."""
    if Path(path).suffix.lower() not in (".tif", ".tiff") or not Path(path).is_file():
        return 0
    with _quiet_tiff(path) as tiff:
        try:
            series = tiff.series[0] if tiff.series else None
            tiled = bool(tiff.pages) and bool(tiff.pages[0].is_tiled)
            levels = len(series.levels) if series is not None else 0
        except Exception:  # noqa: BLE001 - any file tifffile cannot read is no pyramid here
            return 0
    return levels if tiled and levels > 1 else 0


@contextlib.contextmanager
def _quiet_tiff(path: Path) -> Iterator[Any]:
    """`path` opened by tifffile, its log quiet (a damaged file is the slide or scan reader's to
    name, in one line); None where tifffile cannot open it."""
    import tifffile

    quiet = logging.getLogger("tifffile")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        try:
            tiff = tifffile.TiffFile(path)
        except Exception:  # noqa: BLE001 - any failure to open is told by the None
            yield None
            return
        with tiff:
            yield tiff
    finally:
        quiet.setLevel(level)


@dataclass(frozen=True)
class Level:
    """One pyramid level: its size in its own pixels, and level-0 pixels per pixel of it; `uneven`
    where its x and y scales differ beyond rounding (`_evened`), so that no read is made from it."""

    width: int
    height: int
    downsample: float
    uneven: bool = False


class Slide:
    """An opened slide: its levels, level 0's microns per pixel, and region reads.

    `mpp` given (the --mpp option) replaces what the file says, which is then not read at all; a
    file that says nothing and no `mpp` given is refused by `mpp`, where a resolution is first
    needed. `mpp_from` names where a user gives the resolution, in the refusals.
    """

    def __init__(self, path: Path, mpp: float | None = None, mpp_from: str = "--mpp") -> None:
        self.path = Path(path)
        self.mpp_from = mpp_from
        self.given_mpp = None if mpp is None else _checked_mpp(mpp, mpp_from, self.path, mpp_from)
        self._handle, self.vendor = _open(self.path)
        try:
            self.levels = _levels(self._handle, self.path)
            self.file_mpp = (None if self.given_mpp is not None
                             else _file_mpp(self._handle.properties, self.path, mpp_from))
        except BaseException:
            self._handle.close()
            raise
        self.objective = _number(self._handle.properties.get("openslide.objective-power"))

    @property
    def l0_width(self) -> int:
        return self.levels[0].width

    @property
    def l0_height(self) -> int:
        return self.levels[0].height

    @property
    def mpp(self) -> float:
        """Microns per level-0 pixel: --mpp when given, else the file's; InputError when neither."""
        if self.given_mpp is not None:
            return self.given_mpp
        if self.file_mpp is not None:
            return self.file_mpp
        hint = ""
        if math.isfinite(self.objective) and self.objective > 0:
            hint = (f" (it says its objective power is {self.objective:g}x; at 10 microns / objective power "
                    f"that would be --mpp {10 / self.objective:g}, if that holds for its scanner)")
        example = "--mpp 0.25 for a 40x scan or --mpp 0.5 for 20x" if self.mpp_from == "--mpp" \
            else "0.25 for a 40x scan or 0.5 for 20x"
        said = ("is a plain image (read whole through Pillow, not tiled), whose resolution tags or dpi are not "
                "read" if self.vendor == "plain" else "carries no resolution (no openslide.mpp-x)")
        raise InputError(
            f"{self.path} {said}{hint}; give the microns per pixel of its level 0 with {self.mpp_from}, e.g. "
            f"{example}."
        )

    @property
    def mpp_said(self) -> str:
        """Where `mpp` comes from, for a refusal: the user's value, or the file's."""
        if self.given_mpp is not None:
            return f"given with {self.mpp_from}"
        return f"the file's openslide.mpp-x; where that is wrong (a 72 dpi placeholder), give {self.mpp_from}"

    def best_level(self, downsample: float) -> int:
        """The coarsest level no coarser than `downsample` level-0 pixels per pixel, or coarser by
        less than LEVEL_TOLERANCE of its resolution (read and resized up a little, rather than a
        level up to 16 times the pixels read and resized down)."""
        chosen = 0
        for index, level in enumerate(self.levels):
            if not level.uneven and level.downsample * (1 - LEVEL_TOLERANCE) <= downsample:
                chosen = index
        return chosen

    def read(self, l0_x: int, l0_y: int, level: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB of `level` from level-0 corner (l0_x, l0_y). Only the part
        inside the slide is read; the rest is white. A read of more than MAX_READ_SIDE pixels a
        side is refused (a model far coarser than the slide's nearest level, or a wrong --mpp)."""
        return self.read_with_holes(l0_x, l0_y, level, width, height)[0]

    def read_with_holes(self, l0_x: int, l0_y: int, level: int, width: int,
                        height: int) -> tuple[np.ndarray, np.ndarray | None]:
        """`read`, and where the slide holds no image in the read (fully transparent pixels: an
        area its scanner left out, or a tile missing from the file), a (height, width) bool mask of
        them; None where it holds image throughout, or is a plain image (whose transparent pixels
        are a background it was saved with, no tile lost)."""
        if width > MAX_READ_SIDE or height > MAX_READ_SIDE:
            raise InputError(f"{self.path}: a read of {width} x {height} pixels of level {level} is more than "
                             f"{MAX_READ_SIDE} a side; the slide has no level near the model's resolution, or --mpp "
                             "is wrong.")
        out = np.full((height, width, 3), WHITE, dtype=np.uint8)
        scale = self.levels[level].downsample
        lx0, ly0 = math.floor(l0_x / scale), math.floor(l0_y / scale)
        x0, y0 = max(lx0, 0), max(ly0, 0)
        x1 = min(lx0 + width, self.levels[level].width)
        y1 = min(ly0 + height, self.levels[level].height)
        if x1 <= x0 or y1 <= y0:
            return out, None
        location = (int(round(x0 * scale)) if x0 != lx0 else l0_x, int(round(y0 * scale)) if y0 != ly0 else l0_y)
        try:
            region = self._handle.read_region(location, level, (x1 - x0, y1 - y0))
        except Exception as error:  # OpenSlideError, or Pillow's on a damaged plain image
            raise InputError(f"{self.path}: reading {x1 - x0} x {y1 - y0} pixels of level {level} from level-0 "
                             f"({location[0]}, {location[1]}) failed ({_one_line(error)}); the file is truncated or "
                             "damaged somewhere in that region: copy it again from its source") from None
        rgba = np.asarray(region)
        out[y0 - ly0:y1 - ly0, x0 - lx0:x1 - lx0] = on_white(rgba)
        if self.vendor == "plain" or rgba[..., 3].min() > 0:
            return out, None
        holes = np.zeros((height, width), dtype=bool)
        holes[y0 - ly0:y1 - ly0, x0 - lx0:x1 - lx0] = rgba[..., 3] == 0
        return out, holes

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def on_white(rgba: np.ndarray) -> np.ndarray:
    """RGB of an RGBA array composited over white (OpenSlide's RGBA is not premultiplied)."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return rgb
    weight = alpha[..., None].astype(np.float32) / 255.0
    return (rgb * weight + WHITE * (1.0 - weight) + 0.5).astype(np.uint8)


def _open(path: Path) -> tuple[Any, str]:
    import openslide

    vendor = detect_vendor(path)
    if vendor is not None:
        if is_tiff_file(path) and _tiff_samples(path) == 1:
            _warn_grey(path, "a TIFF of one sample per pixel")
        try:
            return openslide.OpenSlide(str(path)), vendor
        except Exception as error:
            raise InputError(f"{path}: OpenSlide cannot open this {vendor} slide ({_one_line(error)}); the file may be "
                             "truncated or damaged.") from None
    return _open_plain(path), "plain"


def detect_vendor(path: Path) -> str | None:
    """The slide format OpenSlide finds in `path` (its vendor), or None for a plain image (which
    Pillow reads whole, and which carries no resolution); InputError where there is no file."""
    import openslide

    if not path.is_file():
        raise InputError(f"{path}: no such slide file; check the path.")
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception as error:
        raise InputError(f"{path}: cannot be read as a slide ({_one_line(error)}).") from None


# Pillow modes of one grey channel (with or without alpha): no stained slide is stored so.
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_WARNED_GREY: set[str] = set()


def _open_plain(path: Path) -> Any:
    """A plain image through Pillow, its size checked from the header before any pixel is decoded;
    a grey one is warned of (a label map or a mask given as the slide reads as all tissue)."""
    import openslide

    image = open_plain(path, "slide")
    if image.mode in GREY_MODES:
        _warn_grey(path, f"Pillow mode {image.mode}")
    return openslide.ImageSlide(image.convert("RGBA"))


def _warn_grey(path: Path, how: str) -> None:
    """Once per run, however often the slide is opened: a grey slide is most likely a label map or
    a mask (this runtime's own --output map among them), which reads as all tissue."""
    if str(path) not in _WARNED_GREY:
        _WARNED_GREY.add(str(path))
        log.warning("%s is a grey image (one channel, %s): each of the model's RGB channels reads that grey, where "
                    "a stained slide is a colour scan; is it a label map or a mask?", path, how)


def _tiff_samples(path: Path) -> int | None:
    """Samples per pixel of a TIFF's first page; None where tifffile cannot read it (OpenSlide then
    names the damage)."""
    with _quiet_tiff(path) as tiff:
        try:
            return int(tiff.pages[0].samplesperpixel) if tiff is not None and tiff.pages else None
        except Exception:  # noqa: BLE001 - a damaged first page is OpenSlide's to name, in one line
            return None


def image_size(path: Path, what: str) -> tuple[int, int]:
    """(width, height) of a plain image from its header, nothing decoded; InputError naming
    `what` where Pillow cannot read it or it claims more than MAX_PLAIN_PIXELS pixels."""
    from PIL import Image, UnidentifiedImageError

    if is_tiff_file(path):
        check_tiff(path)       # a directory or tile past the end of the file: truncated, named as such
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                  # what Pillow warns of, the error below says
            with Image.open(path) as probe:
                width, height = probe.size
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputError(f"{what} {path}: neither OpenSlide nor Pillow reads this file ({_one_line(error)}); give a "
                         "slide (SVS, tiled TIFF, NDPI, MRXS, ...) or a PNG/JPEG/TIFF image.") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    if width * height > MAX_PLAIN_PIXELS:
        raise InputError(f"{what} {path}: a plain image of {width} x {height} pixels is decoded whole, and at most "
                         f"{MAX_PLAIN_PIXELS:,} pixels are; save it smaller, or as a tiled pyramidal TIFF.")
    return width, height


# The `info` key of an image open_plain gives: bits per sample in the file (16 for a 16-bit image,
# which Pillow gives as 8-bit where it is in colour).
SAMPLE_BITS = "medflow_sample_bits"


def open_plain(path: Path, what: str) -> Any:
    """A plain image (PNG, JPEG, TIFF) through Pillow, decoded, its size checked first; its file's
    bits per sample in `info[SAMPLE_BITS]`."""
    from PIL import Image

    from runtime.budget import check_memory

    width, height = image_size(path, what)
    remedy = ("save it as a tiled pyramidal TIFF, which is read a tile at a time" if what == "slide" else
              "save it smaller (any one scale of the whole slide is read)")
    check_memory(width * height * PLAIN_BYTES_PER_PIXEL, f"decoding {what} {path} ({width} x {height} pixels, read "
                 "whole)", f"{remedy}, or raise the budget.")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PLAIN_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(path)
            image.info[SAMPLE_BITS] = 16 if any(";16" in str(tile.args) for tile in image.tile) else 8
            image.load()
    except Exception as error:
        raise InputError(f"{what} {path}: the image does not decode ({_one_line(error)}); the file may be "
                         "truncated.") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return image


def _levels(handle: Any, path: Path) -> tuple[Level, ...]:
    levels = []
    for (width, height), downsample in zip(handle.level_dimensions, handle.level_downsamples):
        if not (0 < width <= MAX_SLIDE_SIDE and 0 < height <= MAX_SLIDE_SIDE) or not downsample >= 1:
            raise InputError(f"{path}: level {len(levels)} claims {width} x {height} pixels at downsample "
                             f"{downsample}; a slide's levels are 1 to {MAX_SLIDE_SIDE:,} pixels a side, level 0 finest.")
        levels.append(Level(int(width), int(height), float(downsample)))
    if not levels:
        raise InputError(f"{path}: the slide has no levels.")
    return tuple(_evened(level, levels[0], index, path) for index, level in enumerate(levels))


def _evened(level: Level, base: Level, index: int, path: Path) -> Level:
    """`level`, marked uneven (and warned of) where no one scale gives both its sides from level 0's,
    each rounded either way: a level scaled 2.048 along x and 2.0 along y, which OpenSlide's one
    downsample per level (the mean of the two) would misplace. A level whose two scales differ only
    by the rounding of its size (a long, thin slide's 4 and 4.012) is read as OpenSlide reads it."""
    low = max(side / (size + 1) for side, size in ((base.width, level.width), (base.height, level.height)))
    high = min(side / max(size - 1, 0.5) for side, size in ((base.width, level.width), (base.height, level.height)))
    if low <= high:
        return level
    log.warning("%s: level %d (%d x %d) is scaled %.4g along x and %.4g along y, more than rounding its size "
                "explains; OpenSlide's one downsample for it (%.4g) would misplace its pixels, so it is not read (a "
                "finer level is)", path, index, level.width, level.height, base.width / level.width,
                base.height / level.height, level.downsample)
    return Level(level.width, level.height, level.downsample, uneven=True)


def _file_mpp(properties: Any, path: Path, mpp_from: str = "--mpp") -> float | None:
    """Level 0's microns per pixel from the file, None when it says nothing; InputError when it
    says something unusable or different along x and y."""
    values = [properties.get(f"openslide.mpp-{axis}") for axis in "xy"]
    if values[0] is None and values[1] is None:
        return None
    mpp_x, mpp_y = (_checked_mpp(_number(v), f"openslide.mpp-{axis}", path, mpp_from) for v, axis in zip(values, "xy"))
    if abs(mpp_x - mpp_y) > RESOLUTION_TOLERANCE * 10 * max(mpp_x, mpp_y):
        raise InputError(f"{path}: its pixels are not square (openslide.mpp-x {mpp_x}, mpp-y {mpp_y}); "
                         f"this runtime reads square pixels only: where the file's resolution is wrong, give level "
                         f"0's microns per pixel with {mpp_from}, which replaces it.")
    return mpp_x


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def in_mpp_range(value: float) -> bool:
    """Whether `value` is a level-0 resolution the runtime takes: finite, within MPP_RANGE."""
    low, high = MPP_RANGE
    return math.isfinite(value) and low <= value <= high


def mpp_cell(text: str) -> float | None:
    """A table cell's level-0 microns per pixel: None where it is empty; ValueError where it is no
    number within MPP_RANGE."""
    if not text:
        return None
    try:
        mpp = float(text)
    except ValueError:
        mpp = math.nan
    if not in_mpp_range(mpp):
        raise ValueError(text)
    return mpp


def _checked_mpp(value: float, field: str, path: Path, mpp_from: str = "--mpp") -> float:
    if not in_mpp_range(value):
        low, high = MPP_RANGE
        raise InputError(f"{path}: {field} is {value}, not a resolution in [{low}, {high}] microns per pixel; "
                         f"give the right one with {mpp_from}.")
    return float(value)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__

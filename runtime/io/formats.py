"""Checks for image formats whose readers accept a truncated file: JPEG (libjpeg fills the missing
rows with grey and only prints "Premature end of JPEG file"), BMP (the missing rows are read as
garbage) and TIFF (a strip past the end of the file is read short). None of them carries a
checksum, so damage inside a complete file cannot be found; PNG (chunk CRCs, zlib's Adler-32) is
refused by its own library when damaged."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Iterator

from runtime.errors import InputError

_DICOM_MAGIC_AT = 128
_BMP_UNCOMPRESSED = (0, 3)  # BI_RGB, BI_BITFIELDS


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: "DICM" after its 128-byte preamble."""
    try:
        with open(path, "rb") as handle:
            handle.seek(_DICOM_MAGIC_AT)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_tiff_file(path: Path) -> bool:
    """A TIFF or BigTIFF file: its byte order mark and version (42, or 43 for BigTIFF) first."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    except OSError:
        return False


_JPEG_SCAN = 0xDA          # start of scan: entropy-coded data follow
_JPEG_END = b"\xff\xd9"   # end of image; in entropy-coded data 0xFF is always followed by 0x00 or RSTn


# Start-of-frame markers: JPEG's SOF0-3, 5-7, 9-11, 13-15, and JPEG-LS's SOF55.
_JPEG_FRAME = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7))


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, offset, length) of each segment after the start-of-image marker, up to and with the
    first start-of-scan; stops where the segments cannot be walked."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return
        marker = data[position + 1]
        if marker == 0xFF:
            position += 1
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        yield marker, position, length
        if marker == _JPEG_SCAN:
            return
        position += 2 + length


def _first_scan(data: bytes) -> int | None:
    """The offset just past the first start-of-scan segment, walking the segments before it."""
    return next((at + 2 + length for marker, at, length in _jpeg_segments(data) if marker == _JPEG_SCAN), None)


def jpeg_frame_size(stream: bytes) -> tuple[int, int] | None:
    """(rows, columns) of a JPEG or JPEG-LS stream, from its start-of-frame segment; None where the
    stream holds none before its scan."""
    if not stream.startswith(b"\xff\xd8"):
        return None
    for marker, at, _ in _jpeg_segments(stream):
        if marker in _JPEG_FRAME and at + 9 <= len(stream):
            return int.from_bytes(stream[at + 5:at + 7], "big"), int.from_bytes(stream[at + 7:at + 9], "big")
    return None


def _check_jpeg(path: Path) -> None:
    """A start-of-image marker, and an end-of-image marker after the first scan's data (thumbnails
    end earlier; a camera's trailer may follow)."""
    data = path.read_bytes()
    if not data.startswith(b"\xff\xd8"):
        raise InputError(f"{path} does not start with a JPEG start-of-image marker; it is damaged or not JPEG.")
    scan = _first_scan(data)
    if scan is None or data.find(_JPEG_END, scan) < 0:
        raise InputError(f"{path} is truncated: its image data do not end with a JPEG end-of-image marker; copy the "
                         "file again.")


def _bmp_needed(header: bytes) -> int | None:
    """The bytes an uncompressed BMP needs (pixel offset + rows), or None where that is not known."""
    offset, info = struct.unpack("<I", header[10:14])[0], struct.unpack("<I", header[14:18])[0]
    if info == 12:
        width, height, bits = struct.unpack("<HH2xH", header[18:26])
        compression = 0
    elif info >= 40 and len(header) >= 34:
        width, height, _, bits, compression = struct.unpack("<iiHHI", header[18:34])
    else:
        return None
    if compression not in _BMP_UNCOMPRESSED:
        return None
    row = (bits * abs(width) + 31) // 32 * 4
    return offset + row * abs(height)


def _check_bmp(path: Path) -> None:
    with open(path, "rb") as handle:
        header = handle.read(54)
    if len(header) < 26 or header[:2] != b"BM":
        raise InputError(f"{path} does not start with a BMP header; it is damaged or not BMP.")
    needed, present = _bmp_needed(header), path.stat().st_size
    if needed is not None and present < needed:
        raise InputError(f"{path} is truncated: it holds {present} bytes of the {needed} its header describes; "
                         "copy the file again.")


_TIFF_PIECES = {273: 279, 324: 325}   # StripOffsets -> StripByteCounts, TileOffsets -> TileByteCounts
_TIFF_WIDTHS = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_TIFF_INTEGERS = {3: "H", 4: "I", 16: "Q"}
MAX_TIFF_PAGES = 1 << 16


class _Tiff:
    """One TIFF file's directories, read with every offset checked against the file's size."""

    def __init__(self, handle: BinaryIO, size: int, order: str, big: bool) -> None:
        self.handle, self.size, self.order, self.big = handle, size, order, big

    def read(self, offset: int, count: int) -> bytes:
        if offset + count > self.size:
            raise EOFError(f"{count} bytes at offset {offset} lie past the end of the file")
        self.handle.seek(offset)
        return self.handle.read(count)

    def unpack(self, fmt: str, data: bytes) -> tuple:
        return struct.unpack(self.order + fmt, data)

    def page(self, offset: int) -> tuple[dict[int, list[int]], int]:
        """The strip and tile tags of the IFD at `offset`, and the offset of the next IFD."""
        word, size = ("Q", 20) if self.big else ("H", 12)
        count = self.unpack(word, self.read(offset, 8 if self.big else 2))[0]
        start = offset + (8 if self.big else 2)
        raw = self.read(start, count * size)
        entries = {}
        for index in range(count):
            tag, values = self._entry(raw[index * size:(index + 1) * size])
            if values is not None:
                entries[tag] = values
        pointer = "Q" if self.big else "I"
        following = self.unpack(pointer, self.read(start + count * size, 8 if self.big else 4))[0]
        return entries, following

    def _entry(self, entry: bytes) -> tuple[int, list[int] | None]:
        tag, kind = self.unpack("HH", entry[:4])
        number = self.unpack("Q" if self.big else "I", entry[4:12] if self.big else entry[4:8])[0]
        inline = entry[12:20] if self.big else entry[8:12]
        length = _TIFF_WIDTHS.get(kind, 1) * number
        data = inline[:length] if length <= len(inline) else \
            self.read(self.unpack("Q" if self.big else "I", inline)[0], length)
        if tag not in (*_TIFF_PIECES, *_TIFF_PIECES.values()) or kind not in _TIFF_INTEGERS:
            return tag, None
        return tag, list(self.unpack(_TIFF_INTEGERS[kind] * number, data))


def check_tiff(path: Path) -> None:
    """Every directory, every tag's values and every strip or tile lie inside the file."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 8:
            raise InputError(f"{path} does not start with a TIFF header; it is damaged or not TIFF.")
        big = struct.unpack(order + "H", head[2:4])[0] == 43
        tiff = _Tiff(handle, size, order, big)
        try:
            offset = tiff.unpack("Q" if big else "I", head[8:16] if big else head[4:8])[0]
            seen: set[int] = set()
            while offset and offset not in seen and len(seen) < MAX_TIFF_PAGES:
                seen.add(offset)
                entries, offset = tiff.page(offset)
                _check_tiff_page(path, entries, size)
        except (struct.error, EOFError) as exc:
            raise InputError(f"{path} is truncated or damaged: its TIFF directory reaches past the end of the file "
                             f"({exc}); copy the file again.") from None


def _check_tiff_page(path: Path, entries: dict[int, list[int]], size: int) -> None:
    for offsets_tag, counts_tag in _TIFF_PIECES.items():
        for start, count in zip(entries.get(offsets_tag, []), entries.get(counts_tag, [])):
            if start + count > size:
                raise InputError(f"{path} is truncated: it holds {size} bytes, but its image data reach byte "
                                 f"{start + count}; copy the file again.")


def check_unchecked_format(path: Path) -> None:
    """Refuse a truncated JPEG, BMP or TIFF file."""
    try:
        name = path.name.lower()
        if name.endswith(".bmp"):
            _check_bmp(path)
        elif name.endswith((".tif", ".tiff")):
            check_tiff(path)
        else:
            _check_jpeg(path)
    except OSError as exc:
        raise InputError(f"{path} cannot be read ({exc.strerror or exc}); check the file.") from None


# What a plain image of a Pillow mode is, where ITK reads it otherwise than a user expects.
_MODES = {"P": "a palette image, whose pixels ITK reads as their colours (RGB)",
          "PA": "a palette image with an alpha channel, which ITK does not read",
          "LA": "a grey image with an alpha channel, which ITK does not read",
          "La": "a grey image with an alpha channel, which ITK does not read"}


def plain_mode_problem(path: Path) -> str | None:
    """What a PNG, BMP, TIFF or JPEG file is where ITK reads its pixels otherwise than as grey or
    colour values (a palette, an 8-bit BMP, grey with alpha), with the remedy; None for any other
    file or one Pillow cannot open. Only the header is read."""
    if Path(path).suffix.lower() not in (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg"):
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode = image.mode
    except Exception:  # noqa: BLE001 - a file Pillow cannot open is the image reader's to name
        return None
    suffix = Path(path).suffix.lower()
    if suffix == ".bmp" and mode in ("L", "P"):
        return f"{path} is an 8-bit BMP, whose palette ITK reads as colours (RGB); save a grey image as PNG"
    if suffix in (".tif", ".tiff") and mode == "P":
        return (f"{path} is a palette TIFF (Pillow mode P), whose pixels ITK reads as its colour table's 16-bit "
                "values, neither grey levels nor colours; save it as 8-bit greyscale (mode L), or as RGB")
    if mode not in _MODES:
        return None
    return f"{path} is {_MODES[mode]} (Pillow mode {mode}); save it as 8-bit greyscale (mode L), or as RGB"

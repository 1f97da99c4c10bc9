"""Checking an image file's stored voxel data against its header, before its voxels are trusted.

Raw data must hold exactly the bytes the header describes. Compressed data (gzip, zlib) are
decoded in bounded chunks: every checksum the stream carries (gzip's CRC-32 and length, zlib's
Adler-32) must hold, the stream must end, and it must decode to exactly the bytes the header
describes. Floating-point voxels are also checked to be finite, since some readers turn NaN into 0.
`read_voxels` and `decode_into` keep the voxels they decode; `verify_stream` keeps nothing, and as decoding releases
the GIL, `runtime.io.scan` runs it beside ITK's own read where ITK must read the file itself.
"""
from __future__ import annotations

import zlib
from typing import BinaryIO

import numpy as np

from runtime.budget import show_size
from runtime.errors import InputError
from runtime.io.header import Header

try:  # zlib-ng inflates about 1.7 times as fast as zlib, with the same checks
    from zlib_ng import zlib_ng as inflate
except ImportError:  # pragma: no cover - a platform without its wheel
    inflate = zlib

_CHUNK = 1 << 22
_GZIP_MAGIC = b"\x1f\x8b"
# zlib's window bits for a gzip stream (NIfTI, NRRD) and for a zlib stream (MetaImage).
_WBITS = {"gzip": 31, "zlib": 15}


class _Voxels:
    """Counts the decoded bytes, casts the voxels among them into `out` (a C-contiguous array of
    the header's element count, any real dtype) when one is given, and checks floating-point
    voxels for NaN and infinity."""

    def __init__(self, header: Header, out: np.ndarray | None = None) -> None:
        self.dtype = header.dtype
        self.begin = max(0, header.stream.skip)
        self.end = self.begin + header.nbytes
        self.floats = header.dtype.kind == "f"
        if out is not None and (out.size != header.elements or not out.flags.c_contiguous):
            raise ValueError(f"an array of {out.size} elements (C-contiguous: {out.flags.c_contiguous}) cannot "
                             f"hold the header's {header.elements}")
        self.out = None if out is None else out.reshape(-1)
        self.filled = 0
        self.position = 0
        self.carry = b""
        self.bad = 0
        self.overflow = 0

    def feed(self, chunk: bytes) -> None:
        low, high = max(self.position, self.begin), min(self.position + len(chunk), self.end)
        if low < high and (self.out is not None or self.floats):
            values = self._elements(memoryview(chunk)[low - self.position:high - self.position])
            if self.out is not None:
                self._cast(values)
            if self.floats:
                self.bad += int(values.size - np.count_nonzero(np.isfinite(values)))
        self.position += len(chunk)

    def _cast(self, values: np.ndarray) -> None:
        """Cast `values` into the next elements of `out`, counting the finite ones a narrower
        floating-point type cannot hold (float64 past float32's range) in `overflow`."""
        target = self.out[self.filled:self.filled + values.size]
        narrowing = target.dtype.kind == "f" and values.dtype.kind == "f" and target.itemsize < values.itemsize
        with np.errstate(over="ignore", invalid="ignore"):
            target[...] = values
        if narrowing:
            self.overflow += int(np.count_nonzero(np.isinf(target) & np.isfinite(values)))
        self.filled += values.size

    def _elements(self, piece: memoryview) -> np.ndarray:
        """The whole elements of the bytes held over and `piece`; a split element's bytes are held."""
        data = self.carry + piece if self.carry else piece
        whole = len(data) - len(data) % self.dtype.itemsize
        self.carry = bytes(data[whole:])
        return np.frombuffer(data, dtype=self.dtype, count=whole // self.dtype.itemsize)


# Deflate (gzip, zlib) cannot expand data more than about 1032-fold.
MAX_DEFLATE_RATIO = 1032


def check_promise(header: Header) -> None:
    """Refuse a header that promises more voxel data than its stored data could hold, from the
    file sizes alone, before anything is decoded or allocated."""
    stream = header.stream
    try:
        size = stream.file.stat().st_size
    except OSError as exc:
        raise InputError(f"{stream.file} cannot be read ({exc.strerror or exc}); check the file.") from None
    if stream.start > size:
        raise InputError(f"{header.path}: its header puts the voxel data at byte {stream.start} (the data offset: "
                         f"NIfTI's vox_offset, a NRRD's or MetaImage's header size), past the end of "
                         f"{stream.file} ({size} bytes); the header is damaged: export the image again.")
    stored = size - stream.start
    if stream.length is not None:
        stored = min(stored, stream.length)
    needed = header.nbytes + max(0, stream.skip)
    if stream.encoding == "raw" and needed > stored:
        raise _truncated(header, stored, needed)
    if needed > stored * MAX_DEFLATE_RATIO:
        raise InputError(f"{header.path} is truncated or its header lies: the header describes {show_size(needed)} "
                         f"of voxel data ({header.elements} elements of {header.dtype.name}), more than its "
                         f"{show_size(stored)} of stored data can hold; check the file's sizes and copy it again.")


def verify_stream(header: Header) -> None:
    """Refuse stored data that are short, long, damaged or not finite (InputError naming the file)."""
    _run(header, _Voxels(header))


def read_voxels(header: Header, shape: tuple[int, ...]) -> np.ndarray:
    """The voxels, decoded once with every check of `verify_stream`, as an array of `shape` (the
    header's element count, slowest axis first) in the machine's byte order."""
    out = np.empty(shape, dtype=header.dtype.newbyteorder("="))
    decode_into(header, out)
    return out


def decode_into(header: Header, out: np.ndarray) -> None:
    """Decode the voxels once, with every check of `verify_stream`, casting them into `out` (a
    C-contiguous array of the header's element count, slowest axis first, of any real dtype) a
    chunk at a time, so that no array of the stored type is made."""
    _run(header, _Voxels(header, out))


def _run(header: Header, voxels: _Voxels) -> None:
    stream = header.stream
    try:
        size = stream.file.stat().st_size
        with open(stream.file, "rb") as handle:
            handle.seek(stream.start)
            if stream.encoding == "raw":
                _read_raw(header, handle, size, voxels)
            else:
                _decode(header, handle, size, voxels)
    except OSError as exc:
        raise InputError(f"{stream.file} cannot be read ({exc.strerror or exc}); check the file.") from None
    if voxels.bad:
        raise InputError(f"{header.path} holds {voxels.bad} NaN or infinite voxels; fix them, or mask them, first.")
    if voxels.overflow:
        raise InputError(f"{header.path} holds {voxels.overflow} voxels beyond single precision's range (±3.4e38), "
                         "which the runtime computes in; rescale the image to a narrower range.")


# A file holding less than this share of the voxel bytes its header describes was more likely
# given wrong sizes than cut short.
_LYING_SHARE = 1 / 1000


def _truncated(header: Header, present: int, needed: int) -> InputError:
    described = f"{needed} its header describes ({header.elements} elements of {header.dtype.name})"
    if present < needed * _LYING_SHARE:
        return InputError(f"{header.path} is truncated or its header lies: it holds {present} bytes of the "
                          f"{described}; check the header's sizes and element type, or copy the file again.")
    return InputError(f"{header.path} is truncated: it holds {present} bytes of the {described}; copy the file "
                      "again.")


def _too_long(header: Header, extra: int) -> InputError:
    return InputError(f"{header.path} holds {extra} bytes more data than its header describes ({header.elements} "
                      f"elements of {header.dtype.name}); its sizes or element type do not match the data: "
                      "export the image again.")


def _read_raw(header: Header, handle: BinaryIO, size: int, voxels: _Voxels) -> None:
    stream = header.stream
    present = size - stream.start
    needed = header.nbytes if stream.skip < 0 else stream.skip + header.nbytes
    if present < needed:
        raise _truncated(header, present, needed)
    if present > needed and stream.skip >= 0:
        raise _too_long(header, present - needed)
    if not voxels.floats and voxels.out is None:
        return
    handle.seek(size - header.nbytes if stream.skip < 0 else stream.start)
    voxels.position = voxels.begin = 0
    voxels.end = header.nbytes
    while chunk := handle.read(min(_CHUNK, max(0, voxels.end - voxels.position))):
        voxels.feed(chunk)


def _stored(header: Header, size: int) -> int:
    """The stored bytes of the compressed stream: what the header says, or the rest of the file."""
    stream = header.stream
    present = size - stream.start
    if stream.length is None:
        return present
    if stream.length > present:
        raise InputError(f"{header.path} is truncated: its header promises {stream.length} bytes of compressed data, "
                         f"the file holds {present}; copy the file again.")
    return stream.length


class _Reader:
    """The stored stream, read in chunks up to its end."""

    def __init__(self, handle: BinaryIO, remaining: int) -> None:
        self.handle, self.remaining = handle, remaining

    def read(self) -> bytes:
        data = self.handle.read(min(_CHUNK, self.remaining))
        self.remaining -= len(data)
        return data


def _decode(header: Header, handle: BinaryIO, size: int, voxels: _Voxels) -> None:
    """Decode every member of a zlib or gzip stream; the decoder checks each member's checksum and
    length itself. Output comes out a bounded chunk at a time, whatever the compression ratio."""
    reader, needed = _Reader(handle, _stored(header, size)), voxels.end
    wbits = _WBITS[header.stream.encoding]
    decoder, pending = inflate.decompressobj(wbits), b""
    try:
        while True:
            pending = pending or reader.read()
            out = decoder.decompress(pending, _CHUNK)
            pending = decoder.unconsumed_tail
            voxels.feed(out)
            if voxels.position > needed:
                raise _too_long(header, voxels.position - needed)
            if decoder.eof:
                pending = _next_member(header, decoder.unused_data, reader)
                if pending is None:
                    break
                decoder = inflate.decompressobj(wbits)
            elif not out and not pending and reader.remaining <= 0:
                break
    except (zlib.error, inflate.error) as exc:
        raise InputError(f"{header.path} is damaged: its compressed data fail their check ({exc}); "
                         "copy the file again.") from None
    if not decoder.eof:
        raise InputError(f"{header.path} is truncated: its compressed data end before their end marker; "
                         "copy the file again.")
    if voxels.position < needed:
        raise _truncated(header, voxels.position, needed)


def _next_member(header: Header, pending: bytes, reader: _Reader) -> bytes | None:
    """After one compressed member ends: the stored bytes from the next gzip member on, or None at
    the end of the stream; refuses anything else but zero padding."""
    rest = pending if len(pending) >= len(_GZIP_MAGIC) else pending + reader.read()
    if header.stream.encoding == "gzip" and rest.startswith(_GZIP_MAGIC):
        return rest
    while rest:
        if rest.strip(b"\x00"):
            raise InputError(f"{header.path} holds data after the end of its compressed data; the file is damaged "
                             "or two files were joined: export the image again.")
        rest = reader.read()
    return None

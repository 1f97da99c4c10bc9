"""A blending merger in bounded memory: the weighted sums kept in chunks on disk.

The output grid is cut into chunks (`chunk` voxels per axis); each chunk holds its K weighted
sums and its summed weight as one float32 file. At most `max_bytes` of chunks stay in memory,
the least recently used written out when more are needed, so the memory a merge takes does not
grow with the output's size: a slide's probability map of many gigabytes is stitched in a few
hundred megabytes. Finishing divides chunk by chunk into result files of (K, *chunk) and gives a
`ChunkedArray` that reads any region back. `Product`s (a label map) are made from each chunk as it
is finished and kept beside the blend, or in its place, so nothing reads the blend back to make them.
"""
from __future__ import annotations

import itertools
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from runtime.window.grid import Window
from runtime.window.merger import Blending, background_vector, check_finite
from runtime.window.plan import Pass, Plan
from runtime.window.source import Map, in_order

DEFAULT_MAX_BYTES = 256 * 2**20
_DEFAULT_CHUNK = {1: 65536, 2: 512, 3: 64}
_FLOAT = 4

Chunk = tuple[int, ...]


@dataclass(frozen=True)
class Product:
    """A map made from each finished chunk and kept as chunk files of its own, `<kind>-<index>`:
    `make(values)` turns a chunk's (K, *extent) float32 values into (C, *extent) values of
    `dtype`, and `fill` (C,) is the product where no window ran. `make` is given the blend, or
    with `from_sums` the chunk's weighted sums undivided (for what dividing each voxel by its
    positive weight leaves as it is, such as an argmax; the blend is then not divided for it).
    `make` must neither keep nor change what it is given."""

    kind: str
    make: Callable[[np.ndarray], np.ndarray]
    dtype: Any
    fill: np.ndarray
    from_sums: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "fill", np.asarray(self.fill, dtype=self.dtype).reshape(-1))


class ChunkedMerger(Blending):
    """Blends a plan's outputs into chunk files under `folder` (which must be empty or new, and
    which the caller removes when done with the result), holding at most `max_bytes` of chunks
    in memory. Not shared out over threads: its chunk cache is one.

    Given the `background` (K,) of voxels no window covers up front, a chunk is finished as soon
    as the last pass that reaches it is taken (the plan says which, before any runs): its blend is
    written once, and its sums are never written out and read back. Passes must then be taken in
    the plan's order, as every schedule takes them. `reached` holds every chunk a window reaches.

    Each of `products` is made from every finished chunk (`product(kind)` reads it back);
    `keep_blend` False writes none of the blend itself, so `finish` gives None."""

    parallel = False

    def __init__(self, plan: Plan, folder: Path | str, max_bytes: int = DEFAULT_MAX_BYTES,
                 chunk: Sequence[int] | None = None, background: np.ndarray | None = None,
                 products: Sequence[Product] = (), keep_blend: bool = True) -> None:
        super().__init__(plan)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if any(self.folder.iterdir()):
            raise ValueError(f"the chunk folder {self.folder} is not empty")
        dims = len(plan.output_shape)
        side = _DEFAULT_CHUNK.get(dims, 32)
        self.chunk = tuple(int(c) for c in (chunk or [side] * dims))
        if len(self.chunk) != dims or any(c < 1 for c in self.chunk):
            raise ValueError(f"chunk {self.chunk} does not fit an output of {dims} axes")
        self.max_bytes = int(max_bytes)
        self._cache: OrderedDict[Chunk, np.ndarray] = OrderedDict()
        self._chunk_bytes = 0
        self.background = None if background is None else np.asarray(background, dtype=np.float32).reshape(-1)
        self.products = tuple(products)
        self.keep_blend = keep_blend
        self._products_done = False
        if len({product.kind for product in self.products} | {"result", "sums"}) != len(self.products) + 2:
            raise ValueError(f"products {[p.kind for p in self.products]} need kinds of their own, not result or sums")
        self._taken = 0
        self._done: set[Chunk] = set()
        last = self._last_passes()
        self.reached = frozenset(last)
        self._closing: dict[int, list[Chunk]] = {}
        if background is not None:
            for index, number in last.items():
                self._closing.setdefault(number, []).append(index)

    def _last_passes(self) -> dict[Chunk, int]:
        """Every chunk a window reaches, and the number of the last pass that reaches it."""
        last: dict[Chunk, int] = {}
        for number, step in enumerate(self.plan.passes):
            for target in step.targets:
                for index in self._chunks_of(target):
                    last[index] = number
        return last

    def take(self, step: Pass, output: np.ndarray, share: Map = in_order, parts: int = 1) -> None:
        super().take(step, output, share, parts)
        for index in self._closing.pop(self._taken, ()):
            self._finish_chunk(index, self._take(index), self._fill(), share)
            self._done.add(index)
        self._taken += 1

    def _fill(self) -> np.ndarray:
        channels = int(self.channels or 0)
        return background_vector(self.background, channels, 0, 0)

    def make(self, channels: int) -> None:
        self._chunk_bytes = (channels + 1) * math.prod(self.chunk) * _FLOAT

    def add_rows(self, window: Window, prediction: np.ndarray, factor: np.ndarray | None,
                 weights: np.ndarray | None, rows: slice) -> None:
        start = window[0].start
        region = (slice(start + rows.start, start + rows.stop), *window[1:])
        for index in self._chunks_of(region):
            block = self._load(index)
            inside, in_patch = _overlap(region, window, index, self.chunk)
            values = prediction[(slice(None), *in_patch)]
            if factor is not None:
                values = values * (factor if factor.ndim == 0 else factor[in_patch])
            sums = block[(slice(0, -1), *inside)]
            np.add(sums, values, out=sums, casting="unsafe")
            weight = block[(-1, *inside)]
            np.add(weight, 1.0 if weights is None else weights[in_patch], out=weight)

    def finish(self, background: np.ndarray | None = None, share: Map = in_order) -> ChunkedArray | None:
        """The blend as a `ChunkedArray` (K, *output_shape) in result files beside the sums,
        which are removed as each chunk is done (None where the blend is not kept). Voxels no
        window covered get `background` (K,) (the one given when the merger was made, where that
        was), or ModelError when it is None (counted over the whole output). A chunk no window
        reached gets no file: the array reads it as the background, so a slide that is mostly
        background takes disk for its tissue only."""
        if self.background is not None:
            background = self.background
        channels = self._start_finish(background)
        fill = None if background is None else background_vector(background, channels, 0, 0)
        chunks = [index for index in self._all_chunks() if index not in self._done]
        for number, index in enumerate(chunks):
            block = self._take(index)
            if block is None and fill is not None:
                continue
            if block is None:
                block = np.zeros(self._shape(index), dtype=np.float32)
            if fill is None and not (block[-1] > 0).all():
                missing = int(np.count_nonzero(block[-1] <= 0)) + self._uncovered(chunks[number + 1:])
                background_vector(None, channels, missing, math.prod(self.plan.output_shape))
            self._finish_chunk(index, block, fill, share)
        self._products_done = True
        if not self.keep_blend:
            return None
        return ChunkedArray(self.folder, (channels, *self.plan.output_shape), self.chunk, fill)

    def product(self, kind: str) -> ChunkedArray:
        """The finished product `kind` as a `ChunkedArray` (C, *output_shape)."""
        if not self._products_done:
            raise ValueError("the merger has not finished")
        product = next((p for p in self.products if p.kind == kind), None)
        if product is None:
            raise ValueError(f"no product {kind!r}; the merger makes {[p.kind for p in self.products]}")
        return ChunkedArray(self.folder, (product.fill.size, *self.plan.output_shape), self.chunk, product.fill,
                            product.dtype, kind)

    def _finish_chunk(self, index: Chunk, block: np.ndarray | None, fill: np.ndarray | None, share: Map) -> None:
        """Check one chunk's sums, make the products of its sums, divide them by the weights
        (voxels no window covered get `fill`), write the blend as the chunk's result file and
        make the products of the blend; a chunk no window reached gets no file."""
        if block is None:
            return
        sums, weight = block[:-1], block[-1]
        check_finite(sums, share)
        covered = weight > 0
        uncovered = None if covered.all() else ~covered
        for product in self.products:
            if product.from_sums:
                self._write_product(product, index, sums, uncovered)
        if not self.keep_blend and all(product.from_sums for product in self.products):
            return
        if uncovered is None:
            np.divide(sums, weight, out=sums)
        else:
            np.divide(sums, weight, out=sums, where=covered)
            sums[:, uncovered] = fill[:, None]
        if self.keep_blend:
            np.ascontiguousarray(sums).tofile(self._path("result", index))
        for product in self.products:
            if not product.from_sums:
                self._write_product(product, index, sums, uncovered)

    def _write_product(self, product: Product, index: Chunk, values: np.ndarray, uncovered: np.ndarray | None) -> None:
        made = np.asarray(product.make(values), dtype=product.dtype)
        if np.shares_memory(made, values):
            made = made.copy()
        if made.ndim != values.ndim or made.shape[1:] != values.shape[1:]:
            raise ValueError(f"product {product.kind} made shape {made.shape} from a chunk of {values.shape}")
        if uncovered is not None:
            made[:, uncovered] = product.fill[:, np.newaxis]
        made.tofile(self.folder / ChunkedArray.file_name(product.kind, index, product.dtype))

    def _uncovered(self, chunks: list[Chunk]) -> int:
        """The voxels of `chunks` that no window covered (a chunk never made is all uncovered)."""
        total = 0
        for index in chunks:
            block = self._peek(index)
            if block is None:
                total += math.prod(_extent(index, self.chunk, self.plan.output_shape))
            else:
                total += int(np.count_nonzero(block[-1] <= 0))
        return total

    def _chunks_of(self, region: Window) -> Iterator[Chunk]:
        ranges = [range(part.start // c, (part.stop - 1) // c + 1) for part, c in zip(region, self.chunk)]
        return itertools.product(*ranges)

    def _all_chunks(self) -> Iterator[Chunk]:
        return itertools.product(*(range(-(-s // c)) for s, c in zip(self.plan.output_shape, self.chunk)))

    def _path(self, kind: str, index: Chunk) -> Path:
        return self.folder / ChunkedArray.file_name(kind, index)

    def _shape(self, index: Chunk) -> tuple[int, ...]:
        return (int(self.channels or 1) + 1, *_extent(index, self.chunk, self.plan.output_shape))

    def _load(self, index: Chunk) -> np.ndarray:
        block = self._cache.get(index)
        if block is not None:
            self._cache.move_to_end(index)
            return block
        block = self._peek(index)
        if block is None:
            block = np.zeros(self._shape(index), dtype=np.float32)
        while self._cache and (len(self._cache) + 1) * self._chunk_bytes > self.max_bytes:
            self._evict()
        self._cache[index] = block
        return block

    def _peek(self, index: Chunk) -> np.ndarray | None:
        """The chunk from the cache or its file, without caching it; None where none was made."""
        block = self._cache.get(index)
        if block is not None:
            return block
        path = self._path("sums", index)
        if not path.exists():
            return None
        return np.fromfile(path, dtype=np.float32).reshape(self._shape(index))

    def _take(self, index: Chunk) -> np.ndarray | None:
        """The chunk, out of the cache and off the disk (finishing works on it last); None where
        no window reached it."""
        block = self._cache.pop(index, None)
        if block is None:
            block = self._peek(index)
        path = self._path("sums", index)
        if path.exists():
            os.remove(path)
        return block

    def _evict(self) -> None:
        index, block = self._cache.popitem(last=False)
        block.tofile(self._path("sums", index))


class ChunkedArray:
    """A finished (K, *S) result kept as chunk files `<kind>-<index>.f32` (float32 unless `dtype`
    says otherwise); `read(region)` assembles any spatial region, `np.asarray` the whole (only for
    what fits in memory). A chunk with no file holds `fill` (K,) everywhere. The files are those
    in the folder when the array is made."""

    def __init__(self, folder: Path, shape: tuple[int, ...], chunk: tuple[int, ...],
                 fill: np.ndarray | None = None, dtype: object = np.float32, kind: str = "result") -> None:
        self.folder = folder
        self.shape = shape
        self.chunk = chunk
        self.fill = fill
        self.dtype = np.dtype(dtype)
        self.kind = kind
        with os.scandir(folder) as entries:
            self._files = frozenset(entry.name for entry in entries)

    @staticmethod
    def file_name(kind: str, index: Chunk, dtype: object = np.float32) -> str:
        dtype = np.dtype(dtype)
        suffix = "f32" if dtype == np.float32 else dtype.name
        return f"{kind}-{'-'.join(map(str, index))}.{suffix}"

    def path(self, index: Chunk) -> Path:
        return self.folder / self.file_name(self.kind, index, self.dtype)

    def has_file(self, index: Chunk) -> bool:
        return self.file_name(self.kind, index, self.dtype) in self._files

    def chunks(self) -> Iterator[Chunk]:
        """Every chunk index of the array, whether it has a file or not."""
        return itertools.product(*(range(-(-s // c)) for s, c in zip(self.shape[1:], self.chunk)))

    def read_chunk(self, index: Chunk) -> np.ndarray | None:
        """The chunk's values (K, *extent), or None where it has no file (it holds `fill`)."""
        if not self.has_file(index):
            return None
        extent = _extent(index, self.chunk, self.shape[1:])
        return np.fromfile(self.path(index), dtype=self.dtype).reshape((self.shape[0], *extent))

    def read(self, region: Window, step: int = 1) -> np.ndarray:
        """The values of `region` (K, *size), or with `step` > 1 every step-th voxel of it on
        every axis from the region's start (`read(region)[:, ::step, ::step, ...]`), reading one
        chunk at a time."""
        region = tuple(slice(part.start, min(part.stop, size)) for part, size in zip(region, self.shape[1:]))
        if any(part.start < 0 or part.stop <= part.start for part in region) or step < 1:
            raise ValueError(f"region {region} (step {step}) does not lie inside {self.shape[1:]}")
        out = np.empty((self.shape[0], *(-(-(part.stop - part.start) // step) for part in region)), dtype=self.dtype)
        ranges = [range(part.start // c, (part.stop - 1) // c + 1) for part, c in zip(region, self.chunk)]
        for index in itertools.product(*ranges):
            extent = _extent(index, self.chunk, self.shape[1:])
            origin = tuple(i * c for i, c in zip(index, self.chunk))
            # the first voxel of the step-grid (region.start + k * step) inside this chunk, per axis
            firsts = [max(o, p.start + (-(-(max(o, p.start) - p.start) // step)) * step) for o, p in zip(origin, region)]
            lasts = [min(p.stop, o + e) for p, o, e in zip(region, origin, extent)]
            if any(first >= last for first, last in zip(firsts, lasts)):
                continue
            inside = tuple(slice(f - o, l - o, step) for f, l, o in zip(firsts, lasts, origin))
            placed = tuple(slice((f - p.start) // step, (f - p.start) // step + len(range(f, l, step)))
                           for f, l, p in zip(firsts, lasts, region))
            block = self.read_chunk(index)
            if block is None and self.fill is not None:
                out[(slice(None), *placed)] = self.fill.reshape((-1,) + (1,) * len(region))
                continue
            if block is None:
                raise FileNotFoundError(self.path(index))
            out[(slice(None), *placed)] = block[(slice(None), *inside)]
        return out

    def all_fill(self, region: Window) -> bool:
        """Whether every voxel of `region` holds `fill` (every chunk it meets has no file)."""
        if self.fill is None:
            return False
        ranges = [range(part.start // c, (min(part.stop, s) - 1) // c + 1)
                  for part, c, s in zip(region, self.chunk, self.shape[1:])]
        return not any(self.has_file(index) for index in itertools.product(*ranges))

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        whole = self.read(tuple(slice(0, s) for s in self.shape[1:]))
        return whole if dtype is None else whole.astype(dtype)


def _extent(index: Chunk, chunk: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """The voxels of chunk `index` along each axis (the last chunks may be cut by the edge)."""
    return tuple(min(c, s - i * c) for i, c, s in zip(index, chunk, shape))


def _overlap(region: Window, window: Window, index: Chunk, chunk: Sequence[int]) -> tuple[Window, Window]:
    """Where `region` (part of `window`) meets chunk `index`: in the chunk's coordinates and in
    the window's."""
    inside, in_patch = [], []
    for part, whole, i, c in zip(region, window, index, chunk):
        low, high = max(part.start, i * c), min(part.stop, (i + 1) * c)
        inside.append(slice(low - i * c, high - i * c))
        in_patch.append(slice(low - whole.start, high - whole.start))
    return tuple(inside), tuple(in_patch)

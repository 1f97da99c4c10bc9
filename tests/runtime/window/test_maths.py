"""The window engine's maths: grids, weights, plans, sources and mergers, on tiny arrays, with no
model and no thread."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import InputError, ModelError
from runtime.window import (
    ArraySource, CoarseMask, MemoryMerger, Pass, WindowSpec, blending_weights, plan, window_grid, window_starts,
)
from runtime.window.chunked import ChunkedMerger, Product
from tests.windowkit import OVERLAPS, add, memory, merge, random_image, spec


# --- grid -------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", OVERLAPS)
@pytest.mark.parametrize("size,patch", [(5, 5), (7, 4), (10, 3), (31, 8), (240, 96), (155, 96)])
def test_window_starts_cover_the_axis(size: int, patch: int, overlap: float) -> None:
    starts = window_starts(size, patch, overlap)
    assert starts[0] == 0 and starts[-1] == size - patch
    assert starts == sorted(set(starts))
    covered = np.zeros(size, dtype=bool)
    for start in starts:
        covered[start : start + patch] = True
    assert covered.all()
    steps = np.diff(starts)
    assert np.all(steps <= patch * (1 - overlap) + 1)


def test_window_starts_known_values() -> None:
    assert window_starts(240, 96, 0.5) == [0, 48, 96, 144]
    assert window_starts(155, 96, 0.5) == [0, 30, 59]
    assert window_starts(96, 96, 0.5) == [0]
    assert window_starts(10, 4, 0.0) == [0, 3, 6]


def test_window_starts_rejects_an_axis_smaller_than_the_patch() -> None:
    with pytest.raises(ValueError, match="smaller than the patch"):
        window_starts(3, 4, 0.5)


@pytest.mark.parametrize("settings,named", [
    ({"overlap": 1.0}, "overlap"), ({"overlap": -0.1}, "overlap"), ({"patch": (4, 0)}, "patch"),
    ({"blending": "triangle"}, "blending"), ({"batch_size": 0}, "batch size"),
    ({"mirror_axes": (0, 0)}, "mirror axes"), ({"mirror_axes": (2,)}, "mirror axes"),
    ({"output_scale": 3}, "output scale"), ({"batch_size": True}, "batch size"),
])
def test_window_spec_refuses_each_bad_setting_by_name(settings: dict, named: str) -> None:
    values = {"patch": (4, 6), **settings}
    with pytest.raises(ValueError, match=named):
        WindowSpec(**values)


def test_window_grid_covers_every_voxel() -> None:
    shape, patch = (11, 7, 9), (4, 7, 5)
    grid = window_grid(shape, patch, 0.5)
    per_axis = [len(window_starts(s, p, 0.5)) for s, p in zip(shape, patch)]
    assert len(grid) == int(np.prod(per_axis))
    count = np.zeros(shape, dtype=int)
    for window in grid:
        assert tuple(s.stop - s.start for s in window) == patch
        count[window] += 1
    assert count.min() >= 1


# --- weights ----------------------------------------------------------------------------------


@pytest.mark.parametrize("patch", [(9,), (8, 5), (6, 7, 4), (96, 96, 96)])
def test_gaussian_weights(patch: tuple[int, ...]) -> None:
    weights = blending_weights(patch, "gaussian")
    assert weights.shape == patch and weights.dtype == np.float32
    assert weights.max() == 1.0
    assert weights.min() > 0
    for axis in range(len(patch)):
        np.testing.assert_array_equal(weights, np.flip(weights, axis))
    centre = tuple(p // 2 for p in patch)
    assert weights[centre] > weights[(0,) * len(patch)]
    assert blending_weights(list(patch), "gaussian") is weights
    assert not weights.flags.writeable


def test_constant_weights_and_unknown_blending() -> None:
    weights = blending_weights((3, 4), "constant")
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(weights, np.ones((3, 4)))
    with pytest.raises(ValueError, match="blending"):
        blending_weights((3, 4), "triangle")


# --- in-memory merger ------------------------------------------------------------------------------


def test_merger_weighted_average_by_hand() -> None:
    merger = memory(1, (4,))
    add(merger, (slice(0, 3),), np.array([[1.0, 2.0, 3.0]]), np.array([1.0, 1.0, 3.0]))
    add(merger, (slice(1, 4),), np.array([[5.0, 7.0, 9.0]]), np.array([1.0, 1.0, 1.0]))
    expected = [1.0, (2 + 5) / 2, (3 * 3 + 7) / 4, 9.0]
    np.testing.assert_allclose(merger.finish()[0], expected, rtol=1e-6)


def test_merger_raises_on_uncovered_voxels() -> None:
    merger = memory(2, (5,))
    add(merger, (slice(0, 3),), np.ones((2, 3)), np.ones(3))
    with pytest.raises(ModelError, match="2 of 5 voxels were covered by no window"):
        merger.finish()


def test_merger_fills_uncovered_voxels_with_background() -> None:
    merger = memory(2, (5,))
    add(merger, (slice(0, 3),), np.full((2, 3), 4.0), np.full(3, 0.5))
    result = merger.finish(np.array([7.0, -1.0]))
    np.testing.assert_array_equal(result, [[4, 4, 4, 7, 7], [4, 4, 4, -1, -1]])


def test_merger_rejects_background_of_wrong_length() -> None:
    merger = memory(2, (5,))
    add(merger, (slice(0, 3),), np.ones((2, 3)), np.ones(3))
    with pytest.raises(ModelError, match="background has 3 values"):
        merger.finish(np.zeros(3))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_merger_raises_on_non_finite(bad: float) -> None:
    merger = memory(2, (3, 3))
    prediction = np.ones((2, 3, 3))
    prediction[1, 0, 0] = bad
    prediction[0, 2, 1] = bad
    add(merger, (slice(0, 3), slice(0, 3)), prediction, np.ones((3, 3)))
    with pytest.raises(ModelError, match="2 voxels .* NaN/Inf"):
        merger.finish()


def test_merger_without_weights_hands_over_the_undivided_sums() -> None:
    merger = memory(1, (4,), normalise=False)
    add(merger, (slice(0, 3),), np.array([[1.0, 2.0, 3.0]]), np.array([1.0, 1.0, 3.0]))
    add(merger, (slice(1, 3),), np.array([[5.0, 7.0]]), np.array([2.0, 1.0]))
    np.testing.assert_allclose(merger.finish()[0], [1.0, 2 + 10, 9 + 7, 0.0], rtol=1e-6)
    with pytest.raises(RuntimeError, match="already finished"):
        merger.finish()


def test_merger_sums_refuse_non_finite_values() -> None:
    merger = memory(2, (3,), normalise=False)
    add(merger, (slice(0, 3),), np.array([[1.0, np.nan, 1.0], [0.0, 0.0, np.inf]]), np.ones(3))
    with pytest.raises(ModelError, match="2 voxels .* NaN/Inf"):
        merger.finish()


@pytest.mark.parametrize("flip", [(), (0,), (1, 2)])
def test_gathering_in_parts_equals_gathering_whole(flip: tuple[int, ...]) -> None:
    image = random_image((3, 20, 17, 15)).astype(np.float64)
    windows = tuple(window_grid(image.shape[1:], (7, 9, 8), 0.5)[:3])
    step = Pass(windows, windows, flip, True, True)
    source = ArraySource(image)
    whole = source.gather(step)
    expected = np.stack([np.flip(image[(slice(None), *w)], tuple(a + 1 for a in flip)) for w in windows])
    np.testing.assert_array_equal(whole, expected.astype(np.float32))
    buffer = np.full(whole.shape, np.nan, dtype=np.float32)
    pieces: list[object] = []
    assert source.gather(step, buffer, lambda work, items: pieces.extend(map(work, items)), 3) is buffer
    assert len(pieces) == 3 * len(windows)
    np.testing.assert_array_equal(buffer, whole)


def test_adding_rows_in_parts_equals_adding_the_whole_window() -> None:
    prediction = random_image((2, 6, 5, 4), seed=3)
    weights = blending_weights((6, 5, 4), "gaussian")
    window = (slice(1, 7), slice(2, 7), slice(0, 4))
    whole, parts = memory(2, (8, 9, 4)), memory(2, (8, 9, 4))
    add(whole, window, prediction, weights)
    for rows in (slice(0, 1), slice(1, 5), slice(5, 6)):
        parts.add_rows(window, prediction, weights, weights, rows)
    np.testing.assert_array_equal(parts.finish(np.zeros(2)), whole.finish(np.zeros(2)))


# --- plans ------------------------------------------------------------------------------------


def test_a_plan_batches_the_grid_and_runs_each_batch_once_per_mirror_set() -> None:
    planned = plan((11, 9), spec((5, 4), batch_size=3, mirror_axes=(1, 0)))
    grid = window_grid((11, 9), (5, 4), 0.5)
    assert planned.windows == planned.total == len(grid) and planned.skipped == 0 and planned.mirrors == 4
    assert [step.flip for step in planned.passes[:4]] == [(), (1,), (0,), (1, 0)]
    assert [(step.first, step.last) for step in planned.passes[:4]] == [
        (True, False), (False, False), (False, False), (False, True)]
    run = [window for step in planned.passes if step.first for window in step.windows]
    assert run == grid and all(len(step.windows) <= 3 for step in planned.passes)
    assert all(step.targets == step.windows for step in planned.passes)


def test_a_plan_skips_the_windows_without_foreground_and_counts_them() -> None:
    foreground = np.zeros((12, 12), dtype=bool)
    foreground[10:, 10:] = True
    planned = plan((12, 12), spec((4, 4), skip_empty=True), foreground)
    assert (planned.windows, planned.skipped) == (1, 24)
    assert planned.passes[0].windows == ((slice(8, 12), slice(8, 12)),)
    with pytest.raises(InputError, match="foreground mask of the image's shape"):
        plan((12, 12), spec((4, 4), skip_empty=True), foreground[1:])


def test_a_scaled_plan_lays_its_windows_on_the_output_grid() -> None:
    settings = WindowSpec(patch=(8, 8), overlap=0.5, output_scale=4)
    planned = plan((21, 16), settings)
    assert settings.output_patch == (2, 2) and planned.output_shape == (6, 4)
    for step in planned.passes:
        for window, target in zip(step.windows, step.targets):
            assert window == tuple(slice(t.start * 4, t.stop * 4) for t in target)
    assert planned.passes[-1].windows[0][0] == slice(16, 24)  # past the input's 21 rows


def test_a_window_past_the_image_end_is_filled_with_zeros() -> None:
    image = random_image((2, 21, 16))
    window = (slice(16, 24), slice(8, 16))
    for flip in [(), (0,)]:
        batch = ArraySource(image).gather(Pass((window,), (window,), flip, True, True))
        expected = np.zeros((2, 8, 8), np.float32)
        expected[:, :5] = image[:, 16:21, 8:16]
        np.testing.assert_array_equal(batch[0], np.flip(expected, tuple(a + 1 for a in flip)))


# --- the chunked merger -------------------------------------------------------------------------


@pytest.mark.parametrize("shape,patch,chunk,mirrors", [
    ((37, 29), (8, 6), (7, 5), ()), ((37, 29), (8, 6), (64, 64), (0,)), ((13, 11, 9), (5, 4, 3), (4, 3, 5), (0, 2)),
])
@pytest.mark.parametrize("blending", ["gaussian", "constant"])
def test_the_chunked_merger_gives_the_in_memory_result(tmp_path, shape, patch, chunk, mirrors, blending) -> None:
    planned = plan(shape, spec(patch, blending=blending, batch_size=2, mirror_axes=mirrors, overlap=0.4))
    in_memory, on_disk = MemoryMerger(planned), ChunkedMerger(planned, tmp_path / "chunks", 3 * 4 * 4 * 35, chunk)
    merge(in_memory, planned)
    merge(on_disk, planned)
    expected = in_memory.finish()
    result = on_disk.finish()
    assert result.shape == expected.shape
    np.testing.assert_allclose(np.asarray(result), expected, rtol=1e-6, atol=1e-6)
    region = tuple(slice(s // 3, s - 1) for s in shape)
    np.testing.assert_array_equal(result.read(region), np.asarray(result)[(slice(None), *region)])
    assert not list((tmp_path / "chunks").glob("sums-*"))


def test_the_chunked_merger_refuses_uncovered_voxels_and_non_finite_values(tmp_path) -> None:
    foreground = np.zeros((20, 20), dtype=bool)
    foreground[:4, :4] = True
    planned = plan((20, 20), spec((4, 4), skip_empty=True), foreground)
    merger = ChunkedMerger(planned, tmp_path / "a", chunk=(6, 6))
    merge(merger, planned, channels=2)
    with pytest.raises(ModelError, match="364 of 400 voxels were covered by no window"):
        merger.finish()
    filled = ChunkedMerger(planned, tmp_path / "b", chunk=(6, 6))
    merge(filled, planned, channels=2)
    result = np.asarray(filled.finish(np.array([5.0, -5.0])))
    np.testing.assert_array_equal(result[:, 10:, 10:], np.broadcast_to([[[5.0]], [[-5.0]]], (2, 10, 10)))
    poisoned = ChunkedMerger(plan((8, 8), spec((4, 4))), tmp_path / "c")
    for number, step in enumerate(poisoned.plan.passes):
        output = np.full((1, 2, 4, 4), np.nan if number == 3 else 1.0, dtype=np.float32)
        poisoned.take(step, poisoned.check(output, 1))
    with pytest.raises(ModelError, match="NaN or infinite"):
        poisoned.finish()


def test_the_chunked_merger_needs_an_empty_folder(tmp_path) -> None:
    (tmp_path / "left-over").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        ChunkedMerger(plan((8, 8), spec((4, 4))), tmp_path)


def test_a_coarse_mask_keeps_every_window_the_full_mask_keeps_and_few_more() -> None:
    foreground = np.zeros((200, 300), dtype=bool)
    foreground[50:90, 100:160] = True
    settings = spec((32, 32), skip_empty=True)
    full = plan((200, 300), settings, foreground)
    coarse = plan((200, 300), settings, CoarseMask(foreground[::8, ::8].copy(), (8.0, 8.0)))
    kept = {tuple((s.start, s.stop) for s in target) for step in full.passes for target in step.targets}
    kept_coarse = {tuple((s.start, s.stop) for s in target) for step in coarse.passes for target in step.targets}
    assert kept <= kept_coarse and len(kept_coarse) <= len(kept) + 8
    assert coarse.windows + coarse.skipped == full.total
    fractional = CoarseMask(np.array([[False, True]]), (200.0, 150.0))   # mask pixel 1 = columns [150, 300)
    assert fractional.any_in((slice(0, 32), slice(140, 172))) and not fractional.any_in((slice(0, 32), slice(0, 32)))
    with pytest.raises(InputError, match="coarse foreground mask"):
        plan((200, 300), settings, CoarseMask(np.ones((4, 4, 4), bool), (8.0, 8.0, 8.0)))


def test_chunks_no_window_reached_take_no_file_and_read_as_the_background(tmp_path) -> None:
    foreground = np.zeros((40, 40), dtype=bool)
    foreground[:5, :5] = True
    planned = plan((40, 40), spec((8, 8), skip_empty=True), foreground)
    merger, in_memory = ChunkedMerger(planned, tmp_path / "map", chunk=(8, 8)), MemoryMerger(planned)
    merge(merger, planned, channels=2)
    merge(in_memory, planned, channels=2)
    background = np.array([3.0, -3.0], np.float32)
    result, expected = merger.finish(background), in_memory.finish(background)
    assert len(list((tmp_path / "map").glob("result-*"))) < 25 // 2
    np.testing.assert_allclose(np.asarray(result), expected, rtol=1e-6, atol=1e-6)
    for step in (2, 3, 7):
        region = (slice(3, 37), slice(1, 40))
        np.testing.assert_allclose(result.read(region, step), expected[:, 3:37:step, 1:40:step], rtol=1e-6, atol=1e-6)


def test_a_chunked_merger_given_its_background_finishes_each_chunk_after_its_last_pass(tmp_path) -> None:
    foreground = np.zeros((60, 90), dtype=bool)
    foreground[5:50, 10:80] = True
    planned = plan((60, 90), spec((8, 8), skip_empty=True, batch_size=3, mirror_axes=(1,)), foreground)
    background = np.array([2.0, -2.0], np.float32)
    early = ChunkedMerger(planned, tmp_path / "early", 2 * 3 * 4 * 16 * 16, (16, 16), background=background)
    late, in_memory = ChunkedMerger(planned, tmp_path / "late", 2 * 3 * 4 * 16 * 16, (16, 16)), MemoryMerger(planned)
    for merger in (early, late, in_memory):
        merge(merger, planned, channels=2)
    assert len(list((tmp_path / "early").glob("result-*"))) >= 10      # finished while passes were taken
    assert not list((tmp_path / "early").glob("sums-*"))                # and never written out as sums
    assert list((tmp_path / "late").glob("sums-*"))                     # the small cache spilled these
    expected = in_memory.finish(background)
    for result in (early.finish(), late.finish(background)):
        np.testing.assert_allclose(np.asarray(result), expected, rtol=1e-6, atol=1e-6)


def _argmax_product(kind: str, from_sums: bool, fill: int) -> Product:
    return Product(kind, lambda values: np.argmax(values, axis=0).astype(np.uint8)[np.newaxis], np.uint8,
                   np.array([fill], np.uint8), from_sums=from_sums)


@pytest.mark.parametrize("keep_blend", [True, False])
def test_chunked_products_equal_the_same_work_on_the_whole_blend(tmp_path, keep_blend) -> None:
    foreground = np.zeros((70, 90), dtype=bool)
    foreground[5:40, 10:60] = True
    planned = plan((70, 90), spec((8, 8), skip_empty=True, batch_size=3, mirror_axes=(1,)), foreground)
    background = np.array([2.0, -2.0, -2.0], np.float32)
    scaled = Product("scaled", lambda blend: (blend[:1] * 10).astype(np.int16), np.int16, np.array([20], np.int16))
    products = [_argmax_product("labels", True, 0), scaled, _argmax_product("blend_labels", False, 0)]
    merger = ChunkedMerger(planned, tmp_path / "map", 4 * 4 * 16 * 16 * 2, (16, 16), background=background,
                           products=products, keep_blend=keep_blend)
    in_memory = MemoryMerger(planned)
    for each in (merger, in_memory):
        merge(each, planned)
    expected = in_memory.finish(background)
    result = merger.finish()
    assert (result is None) != keep_blend
    assert bool(list((tmp_path / "map").glob("result-*"))) == keep_blend
    labels, blend_labels = np.asarray(merger.product("labels")), np.asarray(merger.product("blend_labels"))
    assert labels.dtype == np.uint8 and labels.shape == (1, 70, 90)
    assert np.mean(labels[0] == np.argmax(expected, axis=0)) >= 0.9999    # sums and blend may tie apart in the last bit
    np.testing.assert_array_equal(blend_labels[0], np.argmax(expected, axis=0))
    np.testing.assert_array_equal(np.asarray(merger.product("scaled"))[0], (expected[0] * 10).astype(np.int16))
    assert labels[0, 60:, 80:].max() == 0 and len(list((tmp_path / "map").glob("labels-*"))) < 30   # unreached: no file


def test_a_chunked_product_fills_uncovered_voxels_and_needs_a_kind_of_its_own(tmp_path) -> None:
    foreground = np.zeros((20, 20), dtype=bool)
    foreground[:4, :4] = True
    planned = plan((20, 20), spec((4, 4), skip_empty=True), foreground)
    merger = ChunkedMerger(planned, tmp_path / "a", chunk=(4, 4), background=np.array([5.0, -5.0]),
                           products=[_argmax_product("labels", True, 7)], keep_blend=False)
    in_memory = MemoryMerger(planned)
    for each in (merger, in_memory):
        merge(each, planned, channels=2)
    with pytest.raises(ValueError, match="has not finished"):
        merger.product("labels")
    merger.finish()
    with pytest.raises(ValueError, match="no product 'probabilities'"):
        merger.product("probabilities")
    labels = np.asarray(merger.product("labels"))[0]
    uncovered = in_memory.finish(np.array([1e6, 1e6], np.float32))[0] == 1e6
    assert 0 < np.count_nonzero(uncovered[:8, :8]) and (labels[uncovered] == 7).all() and (labels[~uncovered] <= 1).all()
    with pytest.raises(ValueError, match="kinds of their own"):
        ChunkedMerger(planned, tmp_path / "b", products=[_argmax_product("result", True, 0)])

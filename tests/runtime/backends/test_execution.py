"""The schedules that run a plan (`runtime.backends.execution`): gathered batches between model
calls, batches beside the model, and windows cut by the backend in flight, on tiny arrays."""
from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from runtime.backends.execution import run_in_flight, run_plan
from runtime.errors import InputError, ModelError
from runtime.window import ArraySource, MemoryMerger, Pass, blending_weights, plan, window_grid
from runtime.window.plan import Plan
from tests.windowkit import (
    OVERLAPS, CountingPredictor, identity, random_image, sliding_window, spec, window_average,
)


# --- sliding window ---------------------------------------------------------------------------


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("blending", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", OVERLAPS)
@pytest.mark.parametrize(
    "shape,patch", [((2, 13, 10), (6, 4)), ((1, 9, 11, 7), (4, 5, 3))], ids=["2d", "3d"]
)
def test_identity_reproduces_input(
    shape: tuple[int, ...],
    patch: tuple[int, ...],
    overlap: float,
    blending: str,
    batch_size: int,
    mirror: bool,
) -> None:
    image = random_image(shape)
    mirror_axes = tuple(range(len(patch))) if mirror else ()
    result = sliding_window(
        image, identity, patch, overlap=overlap, blending=blending,
        batch_size=batch_size, mirror_axes=mirror_axes,
    )
    assert result.dtype == np.float32 and result.shape == image.shape
    np.testing.assert_allclose(result, image, atol=1e-5, rtol=1e-5)


def test_output_channels_may_differ_from_input_channels() -> None:
    image = random_image((2, 10, 9, 8))

    def three_channels(batch: np.ndarray) -> np.ndarray:
        return np.stack([batch[:, 0] * (k + 1) - batch[:, 1] for k in range(3)], axis=1)

    result = sliding_window(image, three_channels, (4, 4, 4), batch_size=2)
    expected = np.stack([image[0] * (k + 1) - image[1] for k in range(3)])
    np.testing.assert_allclose(result, expected, atol=1e-5)


def test_mirroring_averages_flipped_predictions() -> None:
    patch = (5, 4)
    ramp = np.arange(patch[0], dtype=np.float32)[:, None]
    image = random_image((1, 12, 9))

    def add_ramp(batch: np.ndarray) -> np.ndarray:
        return batch + ramp

    plain = sliding_window(image, add_ramp, patch, overlap=0.5)
    mirrored = sliding_window(image, add_ramp, patch, overlap=0.5, mirror_axes=(0,))
    np.testing.assert_allclose(mirrored, image + (patch[0] - 1) / 2, atol=1e-5)
    assert not np.allclose(plain, image + (patch[0] - 1) / 2, atol=1e-2)


def test_skipping_background_windows_keeps_the_foreground_result() -> None:
    image = random_image((2, 20, 18, 16))
    patch = (6, 6, 6)
    foreground = np.zeros(image.shape[1:], dtype=bool)
    foreground[2:5, 3:6, 1:4] = True
    background = np.array([-5.0, 9.0], dtype=np.float32)
    full_run, skipping = CountingPredictor(), CountingPredictor()
    full = sliding_window(image, full_run, patch, batch_size=2)
    skipped = sliding_window(
        image, skipping, patch, batch_size=2, foreground=foreground, background=background
    )
    grid = window_grid(image.shape[1:], patch, 0.5)
    kept = [window for window in grid if foreground[window].any()]
    assert full_run.windows == len(grid) and skipping.windows == len(kept) < len(grid)
    np.testing.assert_array_equal(skipped[:, foreground], full[:, foreground])
    covered = np.zeros(foreground.shape, dtype=bool)
    for window in kept:
        covered[window] = True
    assert not covered.all()
    outside = np.repeat(background[:, None], np.count_nonzero(~covered), axis=1)
    np.testing.assert_array_equal(skipped[:, ~covered], outside)


@pytest.mark.parametrize("blending", ["gaussian", "constant"])
@pytest.mark.parametrize("mirror", [False, True])
def test_unnormalised_sums_are_the_blend_times_the_summed_weights(blending: str, mirror: bool) -> None:
    image = random_image((3, 17, 14, 12))
    foreground = np.zeros(image.shape[1:], dtype=bool)
    foreground[:9] = True
    axes = (0, 2) if mirror else ()
    kwargs = dict(blending=blending, mirror_axes=axes, foreground=foreground, overlap=0.4)
    blend = sliding_window(image, identity, (6, 6, 5), background=np.zeros(3, np.float32), **kwargs)
    sums = sliding_window(image, identity, (6, 6, 5), normalise=False, **kwargs)
    weight = np.zeros(image.shape[1:], dtype=np.float64)
    for window in window_grid(image.shape[1:], (6, 6, 5), 0.4):
        if foreground[window].any():
            weight[window] += blending_weights((6, 6, 5), blending)
    assert (weight == 0).any() and (weight > 0).any()
    np.testing.assert_allclose(sums, blend * weight, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sums[:, weight == 0], 0)
    covered = weight > 0
    np.testing.assert_array_equal(np.argmax(sums, axis=0)[covered], np.argmax(blend, axis=0)[covered])


@pytest.mark.parametrize("normalise", [True, False])
def test_the_result_does_not_depend_on_the_threads_or_the_schedule(normalise: bool) -> None:
    image = random_image((2, 23, 19, 14))
    kwargs = dict(overlap=0.5, batch_size=3, mirror_axes=(0, 1), normalise=normalise)
    results = [sliding_window(image, lambda b: b * 1.5 - 0.25, (9, 7, 6), workers=workers, **kwargs)
               for workers in (1, 2, 3, 5)]
    results.append(sliding_window(image, lambda b: b * 1.5 - 0.25, (9, 7, 6), beside_model=True, **kwargs))
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


def test_empty_foreground_runs_no_window() -> None:
    predictor = CountingPredictor()
    image = random_image((1, 8, 8))
    result = sliding_window(
        image, predictor, (4, 4), foreground=np.zeros((8, 8), bool), background=np.array([1.0, 2.0])
    )
    assert predictor.windows == 0
    np.testing.assert_array_equal(result, np.stack([np.ones((8, 8)), np.full((8, 8), 2.0)]))


def test_skipped_windows_need_a_background_for_what_they_leave_uncovered() -> None:
    foreground = np.zeros((8, 8), bool)
    foreground[0, 0] = True
    with pytest.raises(ModelError, match="48 of 64 voxels were covered by no window; pass a background"):
        sliding_window(random_image((1, 8, 8)), identity, (4, 4), foreground=foreground)
    whole = sliding_window(random_image((1, 8, 8)), identity, (4, 4), foreground=np.ones((8, 8), bool))
    np.testing.assert_allclose(whole, random_image((1, 8, 8)), rtol=1e-6)


def test_progress_counts_every_window_including_skipped() -> None:
    image = random_image((1, 16, 16))
    foreground = np.zeros((16, 16), dtype=bool)
    foreground[:3, :3] = True
    reports: list[int] = []
    sliding_window(
        image, identity, (4, 4), batch_size=3, mirror_axes=(1,), foreground=foreground,
        background=np.zeros(1), progress=reports.append,
    )
    assert sum(reports) == len(window_grid((16, 16), (4, 4), 0.5))
    assert len(reports) > 1


class Boom(RuntimeError):
    pass


def test_predictor_exception_reaches_the_caller_and_threads_end() -> None:
    before = threading.active_count()
    calls = []

    def failing(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 3:
            raise Boom("model failed")
        return batch

    with pytest.raises(Boom, match="model failed"):
        sliding_window(random_image((1, 16, 16)), failing, (4, 4), mirror_axes=(0,))
    assert len(calls) == 3
    assert threading.active_count() == before


def test_progress_exception_reaches_the_caller() -> None:
    def failing_progress(done: int) -> None:
        raise Boom("progress failed")

    with pytest.raises(Boom, match="progress failed"):
        sliding_window(random_image((1, 16, 16)), identity, (4, 4), progress=failing_progress)


@pytest.mark.parametrize(
    "predictor",
    [lambda b: b[:, :, :2], lambda b: b[:, 0], lambda b: np.concatenate([b, b], axis=0)],
    ids=["patch", "ndim", "batch"],
)
def test_wrong_output_shape_raises_model_error(predictor) -> None:
    with pytest.raises(ModelError, match="expected"):
        sliding_window(random_image((1, 8, 8)), predictor, (4, 4), batch_size=2)


def test_model_nan_raises_model_error() -> None:
    def nan_model(batch: np.ndarray) -> np.ndarray:
        out = batch.copy()
        out[:, :, 0, 0] = np.nan
        return out

    with pytest.raises(ModelError, match="NaN/Inf"):
        sliding_window(random_image((1, 8, 8)), nan_model, (4, 4))


@pytest.mark.parametrize("shape", [(1, 3, 8), (1, 8, 3)])
def test_image_smaller_than_patch_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(InputError, match="pad"):
        sliding_window(random_image(shape), identity, (4, 4))


def test_image_with_wrong_dimensions_raises() -> None:
    with pytest.raises(InputError, match="spatial axes"):
        sliding_window(random_image((8, 8)), identity, (4, 4))


# --- window average ---------------------------------------------------------------------------


def corner_and_mean(batch: np.ndarray) -> np.ndarray:
    return np.stack([batch[:, 0, 0, 0], batch.mean(axis=(1, 2, 3))], axis=1)


@pytest.mark.parametrize("mirror_axes", [(), (0, 1)])
def test_window_average_equals_hand_computed_mean(mirror_axes: tuple[int, ...]) -> None:
    image = random_image((2, 11, 9))
    patch = (5, 4)
    values = []
    for window in window_grid(image.shape[1:], patch, 0.25):
        crop = image[(slice(None), *window)]
        for flips in itertools.chain.from_iterable(
            itertools.combinations(mirror_axes, n) for n in range(len(mirror_axes) + 1)
        ):
            flipped = np.flip(crop, tuple(a + 1 for a in flips)) if flips else crop
            values.append([flipped[0, 0, 0], flipped.mean()])
    result = window_average(
        image, corner_and_mean, patch, overlap=0.25, batch_size=3, mirror_axes=mirror_axes
    )
    assert result.dtype == np.float32 and result.shape == (2,)
    np.testing.assert_allclose(result, np.mean(values, axis=0), rtol=1e-5, atol=1e-6)


def test_window_average_skips_background_windows() -> None:
    image = random_image((1, 12, 12))
    foreground = np.zeros((12, 12), dtype=bool)
    foreground[10:, 10:] = True
    result = window_average(image, corner_and_mean, (4, 4), foreground=foreground)
    kept = [w for w in window_grid((12, 12), (4, 4), 0.5) if foreground[w].any()]
    expected = np.mean([[image[0][w][0, 0], image[0][w].mean()] for w in kept], axis=0)
    np.testing.assert_allclose(result, expected, rtol=1e-5)
    with pytest.raises(InputError, match="no window"):
        window_average(image, corner_and_mean, (4, 4), foreground=np.zeros((12, 12), bool))


# --- worker threads ---------------------------------------------------------------------------


def plan_of(shape: tuple[int, ...], windows: list) -> Plan:
    """A plan of the given windows, one per pass, with no mirror."""
    passes = tuple(Pass((window,), (window,), (), True, True) for window in windows)
    return Plan(spec((4, 4)), shape, shape, passes, len(windows), 0, 1)


class FailingConsumer:
    """A consumer whose stitching step fails on its second batch."""

    def __init__(self) -> None:
        self.taken = 0

    def check(self, output: np.ndarray, batch: int) -> np.ndarray:
        return output

    def take(self, step: Pass, output: np.ndarray, share: object = None, parts: int = 1) -> None:
        self.taken += 1
        if self.taken == 2:
            raise Boom("stitching failed")


@pytest.mark.parametrize("beside_model", [False, True])
def test_stitching_exception_reaches_the_caller_and_threads_end(beside_model: bool) -> None:
    before = threading.active_count()
    image = random_image((1, 16, 16))
    planned = plan_of((16, 16), window_grid((16, 16), (4, 4), 0.5))
    consumer = FailingConsumer()
    with pytest.raises(Boom, match="stitching failed"):
        run_plan(identity, ArraySource(image), planned, consumer, beside_model=beside_model)
    assert 2 <= consumer.taken < len(planned.passes)
    assert threading.active_count() == before


@pytest.mark.parametrize("beside_model", [False, True])
def test_gathering_exception_reaches_the_caller_and_threads_end(beside_model: bool) -> None:
    before = threading.active_count()
    image = random_image((1, 8, 8))
    outside = (slice(6, 10), slice(0, 4))
    outside = (slice(-2, 2), slice(0, 4))
    planned = plan_of((8, 8), [(slice(0, 4), slice(0, 4)), outside])
    with pytest.raises(ValueError, match="starts before the image"):
        run_plan(identity, ArraySource(image), planned, FailingConsumer(), beside_model=beside_model)
    assert threading.active_count() == before


def test_non_numeric_image_and_output_are_rejected() -> None:
    with pytest.raises(InputError, match="dtype"):
        sliding_window(np.full((1, 4, 4), "a", dtype=object), identity, (4, 4))
    with pytest.raises(ModelError, match="dtype"):
        sliding_window(random_image((1, 4, 4)), lambda b: b.astype(object), (4, 4))


# --- windows cut by the backend, several in flight ----------------------------------------------


class CuttingRunner(CountingPredictor):
    """A runner that cuts its own windows out of `image`: `depth` output buffers, reused in turn,
    and every output is poisoned with NaN when its buffer is reused, so an output read after
    the runner's contract ends shows up in the result. Waits are counted; `fail_at` makes that
    submission's wait raise."""

    def __init__(self, image: np.ndarray, depth: int, fail_at: int | None = None) -> None:
        super().__init__()
        self.source = ArraySource(image)
        self.depth, self.fail_at = depth, fail_at
        self.buffers: list[np.ndarray | None] = [None] * depth
        self.submitted = self.waited = self.cut = 0

    def submit(self, windows, flip):
        index = self.submitted
        self.submitted += 1
        slot = index % self.depth
        if self.buffers[slot] is not None:
            self.buffers[slot][...] = np.nan
        batch = self.source.gather(Pass(tuple(windows), tuple(windows), flip, True, True))
        self.cut += len(windows)
        self.buffers[slot] = self(batch)

        def wait() -> np.ndarray:
            self.waited += 1
            if index == self.fail_at:
                raise Boom("a batch in flight failed")
            return self.buffers[slot]

        return wait


def in_flight(image: np.ndarray, runner: CuttingRunner, settings, workers: int | None = None) -> np.ndarray:
    planned = plan(image.shape[1:], settings)
    merger = MemoryMerger(planned)
    run_in_flight(runner, planned, merger, workers=workers)
    return merger.finish()


@pytest.mark.parametrize("depth", [1, 2, 5])
@pytest.mark.parametrize("batch_size,mirror", [(1, ()), (3, ()), (2, (0, 1))])
def test_windows_cut_in_flight_give_the_gathered_result(depth: int, batch_size: int,
                                                        mirror: tuple[int, ...]) -> None:
    image = random_image((2, 13, 11))
    expected = sliding_window(image, CountingPredictor(), (5, 4), batch_size=batch_size,
                              mirror_axes=mirror)
    cutting = CuttingRunner(image, depth)
    result = in_flight(image, cutting, spec((5, 4), batch_size=batch_size, mirror_axes=mirror))
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)
    windows = len(window_grid((13, 11), (5, 4), 0.5)) * 2 ** len(mirror)
    assert cutting.cut == windows and cutting.waited == cutting.submitted


def test_a_failure_in_flight_reaches_the_caller_after_every_batch_ends() -> None:
    image = random_image((1, 16, 16))
    cutting = CuttingRunner(image, depth=3, fail_at=2)
    with pytest.raises(Boom, match="in flight failed"):
        in_flight(image, cutting, spec((4, 4)))
    assert cutting.submitted == 5 and cutting.waited == 5  # batches 3 and 4 were in flight


def test_windows_cut_in_flight_stitch_the_same_on_any_number_of_threads() -> None:
    image = random_image((2, 17, 13))
    results = [in_flight(image, CuttingRunner(image, depth=3), spec((5, 4), batch_size=2), workers)
               for workers in (1, 2, 5)]
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])

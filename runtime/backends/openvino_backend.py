"""The OpenVINO backend: an ONNX model compiled for the CPU, with a compiled-model cache on disk.

Importing this module imports `openvino`; `runtime.backends` imports it only when asked to.
"""
from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from runtime.backends import blob_cache, common
from runtime.errors import ModelError
from runtime.backends.execution import Progress, run_in_flight
from runtime.window import ArraySource, Merger, Plan, Window, WindowSource, window_size

log = logging.getLogger(__name__)

DEVICE = "CPU"
HINTS = ("LATENCY", "THROUGHPUT")
DEFAULT_HINT = "LATENCY"


class OpenVinoBackend(common.BatchRunner):
    """Runs an ONNX model with OpenVINO; call it with a float32 (B, C, *patch) batch.

    Called with batches, it runs them one at a time on one reused InferRequest, compiled for
    latency. A sliding window gets more from `run`: a second graph, compiled for
    throughput, cuts the windows out of the whole image itself, and several batches run at once
    on OpenVINO's streams. Inference runs in float32 on every CPU (OpenVINO would otherwise pick
    bfloat16 on CPUs that support it), so results agree with onnxruntime to float32 rounding.
    """

    def __init__(self, onnx_path: Path, input_name: str, output_name: str, *,
                 threads: int | None = None, cache_dir: Path | None = None,
                 hint: str = DEFAULT_HINT) -> None:
        self.onnx_path = Path(onnx_path)
        self.input_name = input_name
        self.output_name = output_name
        self.name = f"openvino[{DEVICE}]"
        self.on_cpu = True
        started = time.perf_counter()
        self._graph = _read(self.onnx_path)
        self._config = _config(threads, cache_dir, hint, self.onnx_path)
        compiled = _compile(self._graph, self.onnx_path, self._config)
        self._input_dims = _declared_dims(compiled, input_name, self.onnx_path)
        self._output = _output_port(compiled, output_name, self.onnx_path)
        self._request = compiled.create_infer_request()
        self._cutters: dict[tuple[int, ...], ov.CompiledModel | None] = {}
        log.info("%s (%s hint) compiled %s in %.2f s", self.name, hint, self.onnx_path.name,
                 time.perf_counter() - started)

    def _run(self, batch: np.ndarray, borrow: bool = False) -> np.ndarray:
        try:
            results = self._request.infer({self.input_name: batch}, share_inputs=True,
                                          share_outputs=True)
        except RuntimeError as error:
            raise common.run_failed(self.onnx_path, batch.shape, self._input_dims, error) from error
        # The shared output is a view of the request's own memory, which the next call reuses:
        # lent as it is when borrowed, else copied.
        if borrow:
            return np.ascontiguousarray(results[self._output], dtype=np.float32)
        return np.array(results[self._output], dtype=np.float32, order="C", copy=True)

    def run(self, source: WindowSource, plan: Plan, merger: Merger, progress: Progress | None = None) -> None:
        """Run `plan` over `source` into `merger`. An image in memory is cut into windows inside
        a second graph, compiled for throughput: the image is lent to OpenVINO once and each
        batch passes only its windows' bounds, so no batch is copied out in numpy, and several
        batches run at once on OpenVINO's streams while the caller stitches (`run_in_flight`).

        Batches are gathered instead (the default schedule) where the source is not in memory,
        the graph's batch size is fixed, it has more than one input, it does not take
        (batch_size, C, *patch), or the cutting graph does not compile (a shape the graph does
        not take is then reported by the first call)."""
        cutter = self.cutter(source, plan)
        if cutter is None:
            super().run(source, plan, merger, progress)
        else:
            run_in_flight(cutter, plan, merger, progress)

    def prepare(self, batch_shape: tuple[int, ...]) -> None:
        """Compile the window-cutting graph for batches of `batch_shape` (B, C, *patch) now,
        where the graph can cut windows and takes that shape."""
        key = tuple(int(n) for n in batch_shape)
        if self._cuts_windows() and self._takes(key):
            self._cutting_model(key)

    def cutter(self, source: WindowSource, plan: Plan) -> WindowCutter | None:
        """A runner that cuts `plan`'s batches out of `source`'s image inside the graph, several
        in flight; None where `run` gathers them instead (see there)."""
        if not isinstance(source, ArraySource) or not plan.passes or plan.spec.output_scale != 1:
            return None
        batch = max(len(step.windows) for step in plan.passes)
        key = (batch, source.channels, *plan.spec.patch)
        if not self._cuts_windows() or not self._takes(key):
            return None
        compiled = self._cutting_model(key)
        if compiled is None:
            return None
        return WindowCutter(self, compiled, np.ascontiguousarray(source.array, dtype=np.float32), key)

    @property
    def streams_config(self) -> dict[str, Any]:
        """The settings the window-cutting graph is compiled with: this backend's own (threads,
        precision, cache), with the throughput hint, which gives it several streams."""
        return {**self._config, "PERFORMANCE_HINT": "THROUGHPUT"}

    def _cuts_windows(self) -> bool:
        """A graph with a free batch size and one input can be fed windows cut from an image."""
        return common.fixed_batch(self._input_dims) is None and len(self._graph.inputs) == 1

    def _takes(self, batch_shape: tuple[int, ...]) -> bool:
        try:
            common.check_input_shape(self.onnx_path, batch_shape, self._input_dims)
        except ModelError:
            return False
        return True

    def _cutting_model(self, key: tuple[int, ...]) -> ov.CompiledModel | None:
        """The graph that cuts `key` = (batch, channels, *patch) windows out of a (channels, *S)
        image, compiled once per key with the throughput hint; None when it does not compile."""
        if key not in self._cutters:
            started = time.perf_counter()
            try:
                graph = _cutting_graph(self._graph, key)
                self._cutters[key] = _compiled(graph, self.streams_config)
                log.info("%s compiled the window-cutting graph for %s (%s streams) in %.2f s",
                         self.name, key, self._cutters[key].get_property("NUM_STREAMS"),
                         time.perf_counter() - started)
            except RuntimeError as error:
                log.warning("%s cannot cut windows inside the graph (%s); gathering them instead",
                            self.name, common.one_line(error))
                self._cutters[key] = None
        return self._cutters[key]


class WindowCutter:
    """The OpenVINO backend bound to one image: each submitted batch of windows is cut out of
    the image by OpenVINO itself and run on the next of the cutting graph's requests, in turn:
    two per stream, so every stream has its next batch queued.

    A batch of fewer windows than the graph takes (the last one) is filled up with copies of its
    last window, whose outputs are dropped. An output is the memory of its request, which the
    batch submitted `depth` batches later reuses. The image must stay unchanged while batches are
    in flight; the requests go with the cutter, and the image with them."""

    def __init__(self, backend: OpenVinoBackend, compiled: ov.CompiledModel, image: np.ndarray,
                 key: tuple[int, ...]) -> None:
        self._backend = backend
        self._image = image
        self._tensor = ov.Tensor(image, shared_memory=True)
        self._key = key
        count = 2 * int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._requests = [compiled.create_infer_request() for _ in range(count)]
        for request in self._requests:
            request.set_tensor(_VOLUME, self._tensor)
        self._submitted = 0
        self.depth = count

    def submit(self, windows: Sequence[Window], flip: tuple[int, ...]) -> Callable[[], np.ndarray]:
        backend, image, key = self._backend, self._image, self._key
        patch = window_size(windows[0])
        real = len(windows)
        if not 1 <= real <= key[0] or patch != key[2:]:
            raise ValueError(f"this cutter takes up to {key[0]} windows of {key[2:]}, "
                             f"got {real} of {patch}")
        filled = [*windows, *[windows[-1]] * (key[0] - real)]
        request = self._requests[self._submitted % len(self._requests)]
        self._submitted += 1
        try:
            request.set_tensor(_BOUNDS, ov.Tensor(window_bounds(image.shape, filled, flip)))
            request.start_async()
        except RuntimeError as error:
            raise common.run_failed(backend.onnx_path, key, backend._input_dims, error) from error

        def wait() -> np.ndarray:
            try:
                request.wait()
            except RuntimeError as error:
                raise common.run_failed(backend.onnx_path, key, backend._input_dims,
                                        error) from error
            output = request.get_tensor(backend.output_name).data
            return output if real == key[0] else output[:real]

        return wait


_VOLUME = "medflow_window_volume"
_BOUNDS = "medflow_window_bounds"


def window_bounds(shape: Sequence[int], windows: Sequence[Window],
                  flip: tuple[int, ...]) -> np.ndarray:
    """(B, 3, 1 + D) int64: begin, end and step per axis of an image of `shape` (C, *S) for each
    window, channels whole; a flipped spatial axis runs from the window's end back to its start."""
    bounds = np.empty((len(windows), 3, len(shape)), dtype=np.int64)
    bounds[:, :, 0] = (0, shape[0], 1)
    for index, window in enumerate(windows):
        for axis, part in enumerate(window):
            if axis in flip:
                # a stop of -(size + 1) is before the first voxel, where start - 1 = -1 would wrap
                stop = part.start - 1 if part.start > 0 else -(shape[axis + 1] + 1)
                bounds[index, :, axis + 1] = (part.stop - 1, stop, -1)
            else:
                bounds[index, :, axis + 1] = (part.start, part.stop, 1)
    return bounds


def _cutting_graph(graph: ov.Model, key: tuple[int, ...]) -> ov.Model:
    """`graph` fed from a whole image and window bounds instead of a batch: B Slice nodes cut the
    windows (flipped where their step is -1), joined into the (B, C, *patch) batch the graph
    took. The image's spatial size is free, so one compiled graph serves every image."""
    batch, channels, *patch = key
    cut = graph.clone()
    (old_input,) = cut.get_parameters()
    volume = ops.parameter(ov.PartialShape([channels] + [-1] * len(patch)), ov.Type.f32,
                           name=_VOLUME)
    bounds = ops.parameter([batch, 3, 1 + len(patch)], ov.Type.i64, name=_BOUNDS)
    volume.output(0).get_tensor().set_names({_VOLUME})
    bounds.output(0).get_tensor().set_names({_BOUNDS})
    axis0 = ops.constant(np.int64(0))
    windows = []
    for index in range(batch):
        row = ops.gather(bounds, ops.constant(np.int64(index)), axis0)
        begin, end, step = (ops.gather(row, ops.constant(np.int64(part)), axis0) for part in range(3))
        windows.append(ops.unsqueeze(ops.slice(volume, begin, end, step), axis0))
    joined = windows[0] if batch == 1 else ops.concat(windows, 0)
    shaped = ops.reshape(joined, ops.constant(np.array(key, dtype=np.int64)), False)
    for target in list(old_input.output(0).get_target_inputs()):
        target.replace_source_output(shaped.output(0))
    return ov.Model(cut.get_results(), [volume, bounds], "medflow_window_cutting")


def _config(threads: int | None, cache_dir: Path | None, hint: str, onnx_path: Path) -> dict[str, Any]:
    if hint not in HINTS:
        raise ValueError(f"unknown OpenVINO performance hint {hint!r}; expected one of {HINTS}")
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    cache = _usable_cache_dir(blob_cache.model_folder(cache_dir or common.default_cache_dir("openvino"), onnx_path))
    if cache is not None:
        config["CACHE_DIR"] = str(cache)
    return config


def _compiled(graph: ov.Model, config: dict[str, Any]) -> ov.CompiledModel:
    """The graph compiled, through the cache folder of `config` with its blobs checked first
    (`blob_cache`) and those it compiles recorded after."""
    if "CACHE_DIR" not in config:
        return shared_core().compile_model(graph, DEVICE, config)
    try:
        with blob_cache.guarded(Path(config["CACHE_DIR"])):
            return shared_core().compile_model(graph, DEVICE, config)
    except blob_cache.Unusable as why:
        log.warning("OpenVINO compiled-model cache not used (%s); compiling without it", why)
        return shared_core().compile_model(graph, DEVICE, {k: v for k, v in config.items() if k != "CACHE_DIR"})


def _usable_cache_dir(cache: Path) -> Path | None:
    """The cache folder, created if needed; None (no cache) when it cannot be created."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.warning("OpenVINO cache folder %s cannot be created (%s); compiling without a cache",
                    cache, error)
        return None
    return cache


@functools.lru_cache(maxsize=1)
def shared_core() -> ov.Core:
    """The one OpenVINO Core of this process. Each Core loads its own CPU plugin, and each plugin
    installs an alternate signal stack on the thread that compiles, restored when the plugin
    goes; plugins that go in another order than they came leave a freed stack installed, and
    the next signal handled on that thread (a child process ending, Ctrl-C) kills the process."""
    return ov.Core()


def _read(onnx_path: Path) -> ov.Model:
    """The model's graph, read before compiling so that the cache key is computed from the graph
    and its weights: a cache keyed on the file path alone can hand back a stale compiled model
    when a model file is rewritten in place within the same second."""
    common.require_model_file(onnx_path)
    try:
        return shared_core().read_model(str(onnx_path))
    except RuntimeError as error:
        raise _unloadable(onnx_path, error) from error


def _compile(graph: ov.Model, onnx_path: Path, config: dict[str, Any]) -> ov.CompiledModel:
    try:
        return _compiled(graph, config)
    except RuntimeError as error:
        raise _unloadable(onnx_path, error) from error


def _unloadable(onnx_path: Path, error: Exception) -> ModelError:
    reason = common.one_line(error)
    if common.out_of_memory(reason):
        return ModelError(f"OpenVINO ran out of memory loading model {onnx_path} ({reason[:300]}): its graph "
                          "allocates more than this machine holds (a constant or node it builds whole): check the "
                          "graph it was exported as")
    return ModelError(
        f"OpenVINO cannot load model {onnx_path}: {reason}. The file may be "
        "truncated or not an ONNX model; re-export it (`python -m export build --onnx`)"
    )


def _port_names(ports: list[ov.Output]) -> list[str]:
    return sorted(name for port in ports for name in port.get_names())


def _declared_dims(compiled: ov.CompiledModel, input_name: str,
                   onnx_path: Path) -> list[int | None] | None:
    """The graph's declared input shape, free dimensions as None; None when the rank is free."""
    common.require_name(onnx_path, "input", input_name, _port_names(compiled.inputs))
    shape = compiled.input(input_name).get_partial_shape()
    if shape.rank.is_dynamic:
        return None
    return [dim.get_length() if dim.is_static else None for dim in shape]


def _output_port(compiled: ov.CompiledModel, output_name: str, onnx_path: Path) -> ov.Output:
    common.require_name(onnx_path, "output", output_name, _port_names(compiled.outputs))
    return compiled.output(output_name)

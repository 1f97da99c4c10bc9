"""Backends: onnxruntime and OpenVINO run tiny ONNX graphs built here and agree with numpy."""
from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.backends import (
    DEVICES,
    available_backends,
    onnx_runtime,
    open_backend,
    openvino_available,
)
from runtime.errors import InputError, ModelError
from runtime.parallel import physical_cores
from runtime.backends.execution import sliding_window
from runtime.window import ArraySource, MemoryMerger, Pass, WindowSpec, plan, window_grid
from tests.conftest import DEMO, REPO

IN_CHANNELS, OUT_CHANNELS = 2, 3
PATCH_ZYX = (5, 6, 4)
HAS_OPENVINO = openvino_available()
HAS_GPU = bool(onnx_runtime.gpu_devices())
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
CPU_DEVICES = ["cpu", pytest.param("openvino", marks=needs_openvino)]


def conv_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(OUT_CHANNELS, IN_CHANNELS, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(size=OUT_CHANNELS).astype(np.float32)
    return weight, bias


def save_model(path: Path, nodes: list, initializers: list, batch: int | str = "batch",
               in_channels: int = IN_CHANNELS, out_channels: int = OUT_CHANNELS) -> Path:
    """Save a one-input, one-output opset-17 graph with input 'input' and output 'output'."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, in_channels, *PATCH_ZYX])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                      [batch, out_channels, *PATCH_ZYX])
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def save_conv(path: Path, batch: int | str = "batch", seed: int = 0) -> Path:
    """A 3D convolution, 3x3x3 kernel, zero padding 1, fixed weights from `seed`."""
    weight, bias = conv_weights(seed)
    conv = helper.make_node("Conv", ["input", "w", "b"], ["output"], pads=[1] * 6)
    tensors = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    return save_model(path, [conv], tensors, batch)


def conv_reference(batch: np.ndarray, seed: int = 0) -> np.ndarray:
    """The same convolution in numpy (cross-correlation, as ONNX Conv defines it)."""
    weight, bias = conv_weights(seed)
    padded = np.pad(batch.astype(np.float64), [(0, 0), (0, 0), (1, 1), (1, 1), (1, 1)])
    out = np.zeros((batch.shape[0], OUT_CHANNELS, *PATCH_ZYX))
    for dz, dy, dx in np.ndindex(3, 3, 3):
        window = padded[:, :, dz:dz + PATCH_ZYX[0], dy:dy + PATCH_ZYX[1], dx:dx + PATCH_ZYX[2]]
        out += np.einsum("oi,bizyx->bozyx", weight[:, :, dz, dy, dx], window)
    return out + bias[None, :, None, None, None]


def random_batch(size: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(size, IN_CHANNELS, *PATCH_ZYX)).astype(np.float32)


@pytest.fixture(scope="module")
def conv_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_conv(tmp_path_factory.mktemp("conv") / "conv.onnx")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("device", CPU_DEVICES)
def test_conv_matches_numpy_for_batch_1_and_3_on_one_backend(conv_path: Path, cache_dir: Path,
                                                             device: str) -> None:
    backend = open_backend(conv_path, "input", "output", device=device, cache_dir=cache_dir)
    for size in (1, 3):
        batch = random_batch(size, seed=size)
        result = backend(batch)
        assert result.dtype == np.float32 and result.flags.c_contiguous
        np.testing.assert_allclose(result, conv_reference(batch), rtol=1e-4, atol=1e-4)


@needs_openvino
def test_onnxruntime_and_openvino_give_the_same_numbers(conv_path: Path, cache_dir: Path) -> None:
    batch = random_batch(2, seed=7)
    ort_out = open_backend(conv_path, "input", "output", device="cpu")(batch)
    ov_backend = open_backend(conv_path, "input", "output", device="openvino", cache_dir=cache_dir)
    ov_out = ov_backend(batch)
    np.testing.assert_allclose(ov_out, ort_out, rtol=1e-4, atol=1e-4)


@needs_openvino
def test_a_compiled_model_changed_in_the_cache_is_compiled_again_not_run(tmp_path: Path, caplog) -> None:
    """A blob of another model's weights put in the model's cache folder under its name (as damage
    or a hand might) would run as the model: it is removed and the model compiled afresh."""
    from export import graphs

    cache = tmp_path / "cache"
    doubled, tripled = (graphs.save(graphs.scaled(1, 3, scale), tmp_path / f"{scale}.onnx") for scale in (2.0, 3.0))
    batch = np.ones((1, 1, 4, 4, 4), np.float32)
    assert float(open_backend(doubled, "input", "output", device="openvino", cache_dir=cache)(batch).max()) == 2.0
    assert float(open_backend(tripled, "input", "output", device="openvino", cache_dir=cache)(batch).max()) == 3.0
    (mine,), (other,) = _blobs_of(cache, doubled, tripled)
    shutil.copyfile(other, mine)
    assert float(open_backend(doubled, "input", "output", device="openvino", cache_dir=cache)(batch).max()) == 2.0
    assert "is not as it was written (changed or damaged); it is removed" in caplog.text
    (mine.parent / "stray.blob").write_bytes(other.read_bytes())
    assert float(open_backend(doubled, "input", "output", device="openvino", cache_dir=cache)(batch).max()) == 2.0
    assert "(not recorded)" in caplog.text and not (mine.parent / "stray.blob").exists()
    (mine.parent / "odd.blob").mkdir()                                 # a cache it cannot use: compiled without it
    assert float(open_backend(doubled, "input", "output", device="openvino", cache_dir=cache)(batch).max()) == 2.0
    assert "OpenVINO compiled-model cache not used" in caplog.text and "odd.blob is not a file" in caplog.text


@needs_openvino
def test_a_cache_on_a_file_system_without_locks_is_left_unused(tmp_path: Path, caplog, monkeypatch) -> None:
    import errno
    import fcntl

    from export import graphs

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    doubled = graphs.save(graphs.scaled(1, 3, 2.0), tmp_path / "doubled.onnx")
    backend = open_backend(doubled, "input", "output", device="openvino", cache_dir=tmp_path / "cache")
    assert float(backend(np.ones((1, 1, 4, 4, 4), np.float32)).max()) == 2.0
    assert "cache not used" in caplog.text and "No locks available" in caplog.text


def _blobs_of(cache: Path, *models: Path) -> list[list[Path]]:
    from runtime.backends.blob_cache import model_folder

    return [sorted(model_folder(cache, model).glob("*.blob")) for model in models]


@pytest.mark.parametrize("device", CPU_DEVICES)
def test_identity_reproduces_its_input(tmp_path: Path, cache_dir: Path, device: str) -> None:
    node = helper.make_node("Identity", ["input"], ["output"])
    path = save_model(tmp_path / "identity.onnx", [node], [], out_channels=IN_CHANNELS)
    backend = open_backend(path, "input", "output", device=device, cache_dir=cache_dir)
    batch = random_batch(2)
    np.testing.assert_array_equal(backend(batch), batch)


@pytest.mark.parametrize("device", CPU_DEVICES)
def test_output_stays_valid_after_the_next_call(conv_path: Path, cache_dir: Path,
                                                device: str) -> None:
    backend = open_backend(conv_path, "input", "output", device=device, cache_dir=cache_dir)
    first_batch = random_batch(2, seed=11)
    first = backend(first_batch)
    backend(random_batch(2, seed=12))
    np.testing.assert_allclose(first, conv_reference(first_batch), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", CPU_DEVICES)
def test_borrowed_output_is_right_until_the_next_call(conv_path: Path, cache_dir: Path, device: str) -> None:
    backend = open_backend(conv_path, "input", "output", device=device, cache_dir=cache_dir)
    outputs = []
    for seed in (21, 22):
        batch = random_batch(2, seed=seed)
        borrowed = backend.borrow(batch)
        assert borrowed.dtype == np.float32 and borrowed.flags.c_contiguous
        np.testing.assert_allclose(borrowed, conv_reference(batch), rtol=1e-4, atol=1e-4)
        outputs.append(borrowed)
    if device == "openvino":  # lent, not copied: the engine's output memory, reused by the next call
        assert np.shares_memory(outputs[0], outputs[1])
        kept = backend(random_batch(2, seed=23))
        assert not np.shares_memory(kept, backend.borrow(random_batch(2, seed=24)))


@pytest.mark.parametrize("device", CPU_DEVICES)
def test_borrow_from_a_fixed_batch_model_joins_the_chunks(tmp_path: Path, cache_dir: Path, device: str) -> None:
    backend = open_backend(save_conv(tmp_path / "fixed.onnx", batch=2), "input", "output", device=device,
                           cache_dir=cache_dir)
    for size in (1, 2, 3, 5):
        batch = random_batch(size, seed=30 + size)
        np.testing.assert_allclose(backend.borrow(batch), conv_reference(batch), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", CPU_DEVICES)
def test_fixed_batch_model_runs_any_batch_size(tmp_path: Path, cache_dir: Path,
                                               device: str) -> None:
    path = save_conv(tmp_path / "fixed.onnx", batch=2)
    backend = open_backend(path, "input", "output", device=device, cache_dir=cache_dir)
    for size in (1, 2, 3):
        batch = random_batch(size, seed=size)
        result = backend(batch)
        assert result.shape == (size, OUT_CHANNELS, *PATCH_ZYX)
        np.testing.assert_allclose(result, conv_reference(batch), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(HAS_GPU or not HAS_OPENVINO, reason="auto picks openvino only without a GPU")
def test_auto_picks_openvino_when_it_is_installed(conv_path: Path, cache_dir: Path) -> None:
    backend = open_backend(conv_path, "input", "output", device="auto", cache_dir=cache_dir)
    assert backend.name == "openvino[CPU]"


def test_cpu_picks_onnxruntime(conv_path: Path) -> None:
    backend = open_backend(conv_path, "input", "output", device="cpu")
    assert backend.name == "onnxruntime[CPUExecutionProvider]"


def test_available_backends_lists_what_runs_here() -> None:
    available = available_backends()
    assert available[0] == "cpu"
    assert ("openvino" in available) == (importlib.util.find_spec("openvino") is not None)
    assert ("cuda" in available) == ("CUDAExecutionProvider" in onnxruntime.get_available_providers())
    assert set(available) <= set(DEVICES) - {"auto"}


def test_unknown_device_is_an_input_error(conv_path: Path) -> None:
    with pytest.raises(InputError, match="unknown device 'npu'"):
        open_backend(conv_path, "input", "output", device="npu")


@pytest.mark.skipif(HAS_GPU, reason="CUDA is available here")
def test_unavailable_device_names_what_to_install(conv_path: Path) -> None:
    with pytest.raises(InputError, match=r"'cuda' is not available.*pip uninstall -y onnxruntime && "
                                         r"pip install onnxruntime-gpu$"):
        open_backend(conv_path, "input", "output", device="cuda")


@pytest.mark.parametrize("gpu", [0, 2])
def test_gpu_providers_run_on_the_chosen_cuda_device(tmp_path: Path, gpu: int) -> None:
    cuda = onnx_runtime._provider_list("cuda", None, gpu)
    assert cuda == [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]
    tensorrt = onnx_runtime._provider_list("tensorrt", tmp_path, gpu)
    assert tensorrt[0] == ("TensorrtExecutionProvider", {
        "device_id": gpu, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(tmp_path),
        "trt_timing_cache_enable": True, "trt_timing_cache_path": str(tmp_path), "trt_fp16_enable": False})
    assert tensorrt[1:] == cuda
    assert onnx_runtime._provider_list("cpu", None, gpu) == ["CPUExecutionProvider"]


@pytest.mark.parametrize("gpu", [-1, 1.0, "1", True])
def test_a_gpu_number_that_is_not_an_ordinal_is_an_input_error(conv_path: Path, gpu: object) -> None:
    with pytest.raises(InputError, match="is not a CUDA device ordinal"):
        open_backend(conv_path, "input", "output", device="cpu", gpu=gpu)  # type: ignore[arg-type]


def test_cpu_backends_ignore_the_gpu_number(conv_path: Path, cache_dir: Path) -> None:
    batch = random_batch(2, seed=4)
    for device in available_backends():
        if device in ("cpu", "openvino"):
            backend = open_backend(conv_path, "input", "output", device=device, cache_dir=cache_dir, gpu=3)
            np.testing.assert_allclose(backend(batch), conv_reference(batch), rtol=1e-4, atol=1e-4)


def fake_distribution(site: Path, name: str, version: str, top_level: str) -> None:
    """Installed-package metadata for `name` in the folder `site`, as pip leaves it."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(top_level + "\n")


def test_installed_builds_are_the_distributions_of_the_onnxruntime_module(tmp_path: Path) -> None:
    fake_distribution(tmp_path, "onnxruntime-gpu", "1.31.1", "onnxruntime")
    fake_distribution(tmp_path, "onnx-helpers", "1.0", "onnx_helpers")
    assert onnx_runtime.installed_builds([str(tmp_path)]) == ["onnxruntime-gpu"]
    # an installer that wrote no top_level.txt: the files it installed tell, and names are normalised
    info = tmp_path / "onnxruntime_directml-1.20.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime_DirectML\nVersion: 1.20.0\n")
    (info / "RECORD").write_text("onnxruntime/__init__.py,,\nonnxruntime_directml-1.20.0.dist-info/METADATA,,\n")
    assert onnx_runtime.installed_builds([str(tmp_path)]) == ["onnxruntime-directml", "onnxruntime-gpu"]
    own = onnx_runtime.installed_builds()  # this environment's own build: the CPU or the GPU one
    assert set(own) & {"onnxruntime", "onnxruntime-gpu"}
    assert onnx_runtime.installed_builds([str(tmp_path), *sys.path]) == sorted(
        {"onnxruntime-directml", "onnxruntime-gpu", *own})


def test_a_provider_that_does_not_start_is_one_error_in_onnxruntime_s_words(
        conv_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """onnxruntime prints a GPU provider's failure on stdout and falls back to the CPU; the
    backend keeps stdout clean, puts those words into one InputError, and sets onnxruntime's
    log level back after quieting it."""
    real_session = onnxruntime.InferenceSession

    def failing_gpu_session(path: str, sess_options: object = None, providers: object = None) -> object:
        print("*** EP Error: CUDA failure 100: no CUDA-capable device is detected ***")
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    severities: list[int] = []
    monkeypatch.setattr(onnx_runtime.ort, "InferenceSession", failing_gpu_session)
    monkeypatch.setattr(onnx_runtime.ort, "set_default_logger_severity", severities.append)
    with pytest.raises(InputError, match=r"could not start it on GPU 2 \(onnxruntime says: EP Error: CUDA "
                                         r"failure 100: no CUDA-capable device is detected\)"):
        onnx_runtime.OnnxRuntimeBackend(conv_path, "input", "output", device="cuda", gpu=2, quiet=True)
    assert capsys.readouterr().out == ""
    assert severities == [4, 2]


@pytest.mark.skipif(HAS_GPU, reason="onnxruntime lists a GPU provider here")
def test_a_gpu_build_overwritten_by_the_cpu_build_is_named_with_its_fix(tmp_path: Path) -> None:
    """pip installs onnxruntime-gpu beside the runtime's onnxruntime into one folder; the CPU
    build's files win and no GPU provider is listed. Both commands say so and how to mend it."""
    site = tmp_path / "site"
    fake_distribution(site, "onnxruntime-gpu", "1.31.1", "onnxruntime")
    assert onnx_runtime.shadowed_gpu_build() is None  # this environment holds one build
    shadowed = onnx_runtime.shadowed_gpu_build([str(site), *sys.path])
    assert shadowed is not None and "whose files now come from onnxruntime" in shadowed
    assert shadowed.endswith("pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    demo = [sys.executable, "-m", "runtime.commands.cli", "demo", "--model", str(DEMO)]
    forced = subprocess.run([*demo, "--output-dir", str(tmp_path / "cuda"), "--device", "cuda"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert forced.returncode == 1, forced.stderr
    assert forced.stderr.strip() == f"error: device 'cuda' is not available here: {shadowed}"
    assert not (tmp_path / "cuda" / "phantom_mask.nii.gz").exists()
    auto = subprocess.run([*demo, "--output-dir", str(tmp_path / "auto"), "--device", "auto"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert auto.returncode == 0, auto.stderr
    assert auto.stderr.count("device 'auto' cannot use the GPU: onnxruntime and onnxruntime-gpu") == 1
    assert (tmp_path / "auto" / "phantom_mask.nii.gz").is_file()


@pytest.mark.skipif(HAS_GPU or not sys.platform.startswith("linux"),
                    reason="needs a Linux onnxruntime build without GPU providers")
def test_provider_failure_says_which_library_is_missing_or_that_the_gpu_is(tmp_path: Path) -> None:
    assert onnx_runtime.provider_failure("cuda") == (
        "libonnxruntime_providers_cuda.so is not part of this onnxruntime build")
    (tmp_path / "libonnxruntime_providers_cuda.so").write_text("not a shared library")
    assert onnx_runtime.provider_failure("cuda", tmp_path).startswith(
        "libonnxruntime_providers_cuda.so does not load: ")
    shared = Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_shared.so"
    shutil.copyfile(shared, tmp_path / "libonnxruntime_providers_tensorrt.so")  # a library that loads
    assert onnx_runtime.provider_failure("tensorrt", tmp_path, gpu=1) == (
        "libonnxruntime_providers_tensorrt.so loads, so the GPU is not usable as asked: "
        "check the NVIDIA driver (nvidia-smi) and that this process sees a GPU numbered 1")


@pytest.mark.parametrize("device", CPU_DEVICES)
@pytest.mark.parametrize("content", ["truncated", "text"])
def test_broken_model_file_is_a_model_error(conv_path: Path, tmp_path: Path, cache_dir: Path,
                                            device: str, content: str) -> None:
    broken = tmp_path / "broken.onnx"
    data = conv_path.read_bytes()
    broken.write_bytes(data[: len(data) // 2] if content == "truncated" else b"not a model\n")
    with pytest.raises(ModelError, match=r"broken\.onnx.*re-export"):
        open_backend(broken, "input", "output", device=device, cache_dir=cache_dir)


def test_missing_model_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        open_backend(tmp_path / "absent.onnx", "input", "output", device="cpu")


@pytest.mark.parametrize("device", CPU_DEVICES)
def test_wrong_input_or_output_name_lists_the_graph_names(conv_path: Path, cache_dir: Path,
                                                          device: str) -> None:
    with pytest.raises(ModelError, match=r"no input named 'image'.*'input'"):
        open_backend(conv_path, "image", "output", device=device, cache_dir=cache_dir)
    with pytest.raises(ModelError, match=r"no output named 'logits'.*'output'"):
        open_backend(conv_path, "input", "logits", device=device, cache_dir=cache_dir)


@pytest.mark.parametrize("device", CPU_DEVICES)
def test_wrong_channels_or_rank_names_expected_and_given_shape(conv_path: Path, cache_dir: Path,
                                                               device: str) -> None:
    backend = open_backend(conv_path, "input", "output", device=device, cache_dir=cache_dir)
    wrong_channels = np.zeros((1, IN_CHANNELS + 1, *PATCH_ZYX), np.float32)
    expected = r"expects input shape \(\?, 2, 5, 6, 4\).*given \(1, 3, 5, 6, 4\)"
    with pytest.raises(ModelError, match=expected):
        backend(wrong_channels)
    with pytest.raises(ModelError, match=r"given \(2, 5, 6, 4\)"):
        backend(np.zeros((IN_CHANNELS, *PATCH_ZYX), np.float32))


@pytest.mark.parametrize("device", CPU_DEVICES)
def test_free_channel_axis_mismatch_is_reported_by_the_run(tmp_path: Path, cache_dir: Path,
                                                           device: str, capfd) -> None:
    path = save_conv(tmp_path / "free.onnx")
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "channels"
    onnx.save(model, str(path))
    backend = open_backend(path, "input", "output", device=device, cache_dir=cache_dir)
    capfd.readouterr()
    with pytest.raises(ModelError, match=r"failed on an input of shape \(1, 3, 5, 6, 4\)") as caught:
        backend(np.zeros((1, IN_CHANNELS + 1, *PATCH_ZYX), np.float32))
    assert "check the manifest's channels and window.patch_size" in str(caught.value)
    assert len(str(caught.value)) < 1000 and "\n" not in str(caught.value)
    printed = capfd.readouterr()
    assert "onnxruntime" not in printed.err + printed.out        # the backend's own log line is not printed too


@needs_openvino
def test_openvino_cache_is_written_and_a_rewritten_model_is_recompiled(tmp_path: Path) -> None:
    cache, path = tmp_path / "cache", tmp_path / "model.onnx"
    batch = random_batch(1)
    save_conv(path, seed=0)
    first = open_backend(path, "input", "output", device="openvino", cache_dir=cache)(batch)
    assert any(cache.iterdir())
    save_conv(path, seed=5)
    second = open_backend(path, "input", "output", device="openvino", cache_dir=cache)(batch)
    np.testing.assert_allclose(first, conv_reference(batch, seed=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(second, conv_reference(batch, seed=5), rtol=1e-4, atol=1e-4)


@needs_openvino
def test_openvino_default_cache_follows_xdg_cache_home(conv_path: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    open_backend(conv_path, "input", "output", device="openvino")
    assert any((tmp_path / "medflow" / "openvino").iterdir())


def test_physical_cores_counts_allowed_cores_once() -> None:
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= physical_cores() <= allowed


def cut_image(channels: int = IN_CHANNELS, seed: int = 2) -> np.ndarray:
    """An image (C, *S) a little larger than the patch on every axis."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(channels, 9, 11, 7)).astype(np.float32)


def gathered(image: np.ndarray, windows, flip: tuple[int, ...]) -> np.ndarray:
    return ArraySource(image).gather(Pass(tuple(windows), tuple(windows), flip, True, True))


def cutter_of(backend, image: np.ndarray, batch_size: int):
    """The backend's in-graph cutter for batches of up to `batch_size` windows over `image`."""
    return backend.cutter(ArraySource(image), plan(image.shape[1:], WindowSpec(PATCH_ZYX, batch_size=batch_size)))


@needs_openvino
@pytest.mark.parametrize("flip", [(), (0,), (1, 2), (0, 1, 2)])
def test_openvino_cuts_windows_in_its_graph_as_gathering_would(conv_path: Path, cache_dir: Path,
                                                               flip: tuple[int, ...]) -> None:
    """Batches of 3, 2 and 1 windows (a short batch is filled up and its extra outputs dropped),
    `depth` of them in flight at once, the requests each reused: every output is read just
    before its request runs again, as the sliding window reads them."""
    image = cut_image()
    grid = window_grid(image.shape[1:], PATCH_ZYX, 0.5)
    backend = open_backend(conv_path, "input", "output", device="openvino", cache_dir=cache_dir)
    runner = cutter_of(backend, image, 3)
    assert runner is not None and runner.depth >= 2
    sizes = itertools.islice(itertools.cycle((3, 2, 1)), 2 * runner.depth + 1)
    batches = [[grid[(3 * index + k) % len(grid)] for k in range(size)] for index, size in enumerate(sizes)]
    pending = []
    for windows in batches:
        if len(pending) == runner.depth:
            done, wait = pending.pop(0)
            np.testing.assert_allclose(wait(), conv_reference(gathered(image, done, flip)),
                                       rtol=1e-4, atol=1e-4)
        pending.append((windows, runner.submit(windows, flip)))
    for done, wait in pending:
        np.testing.assert_allclose(wait(), conv_reference(gathered(image, done, flip)),
                                   rtol=1e-4, atol=1e-4)


@needs_openvino
def test_openvino_cut_windows_reach_every_border_of_the_image(conv_path: Path, cache_dir: Path) -> None:
    """The last windows end at the image's far borders, and a flip runs back to index 0."""
    image = cut_image()
    backend = open_backend(conv_path, "input", "output", device="openvino", cache_dir=cache_dir)
    runner = cutter_of(backend, image, 1)
    for windows in ([tuple(slice(0, p) for p in PATCH_ZYX)],
                    [tuple(slice(s - p, s) for s, p in zip(image.shape[1:], PATCH_ZYX))]):
        for flip in ((), (0, 1, 2)):
            np.testing.assert_allclose(runner.submit(windows, flip)(),
                                       conv_reference(gathered(image, windows, flip)),
                                       rtol=1e-4, atol=1e-4)


@needs_openvino
def test_openvino_gathers_what_its_graph_cannot_cut(conv_path: Path, cache_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Another channel count than the graph takes, or a cutting graph that does not compile:
    no runner, so the sliding window gathers (and reports a wrong shape at the first call)."""
    backend = open_backend(conv_path, "input", "output", device="openvino", cache_dir=cache_dir)
    assert cutter_of(backend, cut_image(channels=IN_CHANNELS + 1), 1) is None

    def broken(graph, key):
        raise RuntimeError("no Slice here")

    from runtime.backends import openvino_backend

    monkeypatch.setattr(openvino_backend, "_cutting_graph", broken)
    fresh = open_backend(conv_path, "input", "output", device="openvino", cache_dir=cache_dir)
    assert cutter_of(fresh, cut_image(), 1) is None
    assert "cannot cut windows inside the graph (no Slice here)" in caplog.text


@pytest.mark.parametrize("device", CPU_DEVICES)
def test_every_backend_runs_a_plan_to_the_gathered_result(tmp_path: Path, cache_dir: Path, device: str) -> None:
    """Free and fixed batch sizes (a fixed one cannot be cut in the graph: its batches are gathered),
    with mirrors: `backend.run` blends what the reference convolution gives window by window."""
    image = cut_image()
    settings = WindowSpec(PATCH_ZYX, batch_size=2, mirror_axes=(0, 2))
    expected = sliding_window(image, conv_reference, settings)
    for batch in ("batch", 2):
        model = save_conv(tmp_path / f"conv-{batch}.onnx", batch=batch)
        backend = open_backend(model, "input", "output", device=device, cache_dir=cache_dir)
        if device == "openvino":
            assert (cutter_of(backend, image, 2) is None) == (batch == 2)
        planned = plan(image.shape[1:], settings)
        merger = MemoryMerger(planned)
        backend.run(ArraySource(image), planned, merger)
        np.testing.assert_allclose(merger.finish(), expected, rtol=1e-4, atol=1e-4)


@needs_openvino
def test_openvino_models_leave_the_signal_stack_usable(conv_path: Path, tmp_path: Path) -> None:
    """Two OpenVINO models loaded and dropped in either order, then a signal handled in Python on
    the same thread: each CPU plugin installs an alternate signal stack, and a stack freed while
    installed would kill the process (SIGSEGV) at that signal. Run in a child process."""
    script = f"""
import faulthandler, gc, os, signal
from pathlib import Path
from runtime.backends import open_backend
faulthandler.enable()
def load():
    return open_backend(Path({str(conv_path)!r}), "input", "output", device="openvino",
                        cache_dir=Path({str(tmp_path)!r}))
first, second = load(), load()
del first
gc.collect()
del second
gc.collect()
caught = []
signal.signal(signal.SIGUSR1, lambda number, frame: caught.append(number))
os.kill(os.getpid(), signal.SIGUSR1)
print("caught", caught)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"caught [{int(signal.SIGUSR1)}]" in done.stdout


def test_a_forward_pass_that_ran_out_of_memory_is_said_so_not_blamed_on_the_input():
    from pathlib import Path

    from runtime.backends.common import run_failed

    failed = run_failed(Path("m.onnx"), (2, 1, 8, 8, 8), (None, 1, None, None, None),
                        RuntimeError("Failed to allocate memory for requested buffer of size 20000000000"))
    assert "ran out of memory on an input of shape" in str(failed) and "lower window.batch_size" in str(failed)
    wrong = run_failed(Path("m.onnx"), (2, 1, 8, 8, 8), (None, 1, None, None, None), RuntimeError("Invalid rank"))
    assert "the network does not take this input" in str(wrong)

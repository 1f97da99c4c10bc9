"""Part 1, the synthetic BraTS-like case: for each backend, the runtime end to end (A) against
MONAI (B) and against that backend's compute alone (D); TorchIO (C), D1 and torch for context;
then A stage by stage."""
from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from runtime.errors import InputError
from runtime.predict import Model

from window_bench import main_report, report
from window_bench.cli_run import cli_run
from window_bench.compute import Windows, device_compute, gathered_windows, one_at_a_time, torch_compute
from window_bench.contenders import monai_end_to_end, runtime_end_to_end, torchio_end_to_end
from window_bench.data import ensure_synthetic
from window_bench.networks import ensure_network, load_timed, package
from window_bench.options import CHANNELS, ENGINES, FULL_SHAPE_XYZ, PATCH, QUICK_SHAPE_XYZ, Settings
from window_bench.timing import Labels, Timed, in_turns, time_once, warm_up


StageTimer = Callable[[Model, Sequence[Path], Path], dict[str, float]]


@dataclass(frozen=True)
class Case:
    shape_xyz: tuple[int, int, int]
    inputs: list[Path]
    net: torch.nn.Module
    onnx_path: Path
    model_dir: Path
    windows: Windows
    work: Path


@dataclass(frozen=True)
class Engine:
    """One backend of the runtime: the model loaded on it, and the seconds of a load with an
    empty and with a warm compiled-model cache."""

    device: str
    model: Model
    cold: float
    warm: float

    @property
    def name(self) -> str:
        return self.model.backend.name

    @property
    def tag(self) -> str:
        return ENGINES[self.device]


@dataclass(frozen=True)
class Lineup:
    """One backend's contenders: A, its D, and D1 where D is not already one batch at a time."""

    engine: Engine
    a: Timed
    d: Timed
    d1: Timed | None


def prepare_case(settings: Settings, work: Path) -> Case:
    shape_xyz = QUICK_SHAPE_XYZ if settings.quick else FULL_SHAPE_XYZ
    inputs = ensure_synthetic(settings.cache, shape_xyz)
    net, onnx_path = ensure_network(settings.cache, len(CHANNELS))
    model_dir = package(onnx_path, work / "models", "bench_unet_brats", CHANNELS,
                        [{"zscore": {"region": "nonzero"}}], settings.batch_size)
    windows = gathered_windows(inputs, settings.batch_size)
    return Case(shape_xyz, inputs, net, onnx_path, model_dir, windows, work)


def load_engine(settings: Settings, case: Case, device: str) -> Engine | None:
    """The model on `device`, loaded twice (the first time with an empty OpenVINO cache); None,
    with a message, where that backend is not available here."""
    xdg = case.work / f"xdg_{device}"
    try:
        _, cold = load_timed(case.model_dir, xdg, settings.threads, device)
    except InputError as error:
        print(f"\nbackend {device} left out: {error}")
        return None
    model, warm = load_timed(case.model_dir, xdg, settings.threads, device)
    return Engine(device, model, cold, warm)


def lineup(settings: Settings, case: Case, engine: Engine) -> Lineup:
    size, model = settings.batch_size, engine.model
    output = case.work / f"a_{engine.device}_labels.nii.gz"
    a = Timed(f"A runtime end to end ({engine.tag})", lambda: runtime_end_to_end(model, case.inputs, output))
    label, compute = device_compute(model, case.onnx_path, engine.device)
    d = Timed(label, lambda: compute(case.windows, size))
    d1 = None
    if engine.device == "openvino":
        d1 = Timed(f"D1 compute, one batch at a time ({engine.tag})",
                   lambda: one_at_a_time(model.backend, case.windows, size))
    return Lineup(engine, a, d, d1)


def peers(settings: Settings, case: Case) -> dict[str, Timed]:
    """B and C, where not skipped."""
    size, net, work = settings.batch_size, case.net, case.work
    found = {}
    if not settings.skip_monai:
        found["B"] = Timed("B MONAI sliding_window_inference (torch)",
                           lambda: monai_end_to_end(net, case.inputs, work / "b_labels.nii.gz", size))
    if not settings.skip_torchio:
        found["C"] = Timed("C TorchIO GridSampler + GridAggregator",
                           lambda: torchio_end_to_end(net, case.inputs, work / "c_labels.nii.gz", size))
    return found


def context_runs(settings: Settings, case: Case) -> list[Timed]:
    """torch's compute alone, and B at the other batch size (1 <-> 2), once each, for context."""
    size = settings.batch_size
    runs = [Timed("torch compute alone (1 run, for context)", lambda: torch_compute(case.net, case.windows, size))]
    if not settings.skip_monai and size <= 2:
        other = 3 - size
        runs.append(Timed(f"B MONAI at batch {other} (1 run, for context)",
                          lambda: monai_end_to_end(case.net, case.inputs, case.work / "b2_labels.nii.gz", other)))
    for timed in runs:
        time_once(timed)
    return runs


def batch_trial(engines: list[Engine], case: Case, windows: int) -> dict[str, dict[int, float]]:
    """Seconds per window, best of two interleaved turns, of each engine alone at batch 1 and 2,
    called one batch at a time (D1's way)."""
    calls: dict[str, Callable[[Windows, int], None]] = {
        engine.name: lambda w, size, backend=engine.model.backend: one_at_a_time(backend, w, size)
        for engine in engines}
    calls["torch"] = lambda w, size: torch_compute(case.net, w, size)
    sources = {size: Windows(gathered_windows(case.inputs, size, distinct=2).batches, windows) for size in (1, 2)}
    runs: dict[str, dict[int, list[float]]] = {name: {1: [], 2: []} for name in calls}
    for _ in range(2):
        for name, compute in calls.items():
            for size, source in sources.items():
                timed = Timed(name, lambda c=compute, s=source, n=size: c(s, n))
                time_once(timed)
                runs[name][size].append(timed.seconds[0] / windows)
    return {name: {size: min(values) for size, values in sizes.items()} for name, sizes in runs.items()}


def cli_once(settings: Settings, case: Case, engine: Engine) -> tuple[float, Labels]:
    """`runtime predict` on the case as a new process, with the OpenVINO cache A's loads warmed."""
    device = engine.device
    return cli_run(case.inputs, case.model_dir, case.work / f"cli_{device}.nii.gz", settings.threads, device,
                   case.work / f"xdg_{device}")


def stage_timer(settings: Settings) -> StageTimer | None:
    """The function that times A stage by stage; None with --no-stages. Checked before any work:
    it needs the window engine's public API, which an older runtime lacks."""
    if not settings.stages:
        return None
    try:
        from window_bench.stages import runtime_stages
    except ImportError as error:
        raise SystemExit(f"A stage by stage needs the runtime's window engine API (plan, ArraySource, "
                         f"MemoryMerger), which the runtime at {report.runtime_text()} lacks ({error}); "
                         "pass --no-stages") from error
    return runtime_stages


def stage_runs(timer: StageTimer | None, case: Case, lineups: list[Lineup]) -> dict[str, dict[str, float]]:
    """A stage by stage, once per backend; empty without a timer."""
    if timer is None:
        return {}
    found = {}
    for line in lineups:
        gc.collect()
        found[line.engine.device] = timer(line.engine.model, case.inputs,
                                          case.work / f"stages_{line.engine.device}.nii.gz")
    return found


def main_comparison(settings: Settings, work: Path) -> None:
    timer = stage_timer(settings)
    case = prepare_case(settings, work)
    engines = [e for e in (load_engine(settings, case, device) for device in settings.devices) if e]
    if not engines:
        return
    main_report.report_setup(settings, case, engines, batch_trial(engines, case, 8 if settings.quick else 12))
    lineups = [lineup(settings, case, engine) for engine in engines]
    others = peers(settings, case)
    every = [*(x for line in lineups for x in (line.a, line.d)), *others.values(),
             *(line.d1 for line in lineups if line.d1)]
    print(f"\n{case.windows.count} windows of {PATCH}^3 on a {'x'.join(map(str, case.shape_xyz))} (x y z) volume, "
          f"batch {settings.batch_size}, {settings.threads} threads; timing {settings.repeats} turn(s) ...", flush=True)
    warm_up(every)
    in_turns(every, settings.repeats, [(line.a, line.d) for line in lineups])
    context = context_runs(settings, case)
    cli = {engine.device: cli_once(settings, case, engine) for engine in engines}
    stages = stage_runs(timer, case, lineups)
    main_report.report_main(settings, case, lineups, others, context, cli)
    for line in lineups:
        if line.engine.device in stages:
            main_report.report_stages(line, stages[line.engine.device])

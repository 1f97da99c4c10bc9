"""What part 1 prints: load times, the batch-size trial, the fairness checks, the table of
times, for each backend A against B and D (the targets) with the context ratios, the label maps'
agreement, and A stage by stage."""
from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from runtime.window import window_starts

from window_bench import report
from window_bench.compute import forward_difference
from window_bench.contenders import monai_starts, torchio_starts
from window_bench.options import OVERLAP, PATCH, TARGET_A_B, TARGET_A_D, Settings
from window_bench.timing import Labels, Timed

if TYPE_CHECKING:
    from window_bench.main_case import Case, Engine, Lineup


def report_setup(settings: Settings, case: Case, engines: list[Engine], trial: dict[str, dict[int, float]]) -> None:
    """Load times, the batch-size trial, and the fairness checks: same weights, window places."""
    for engine in engines:
        print(f"model loaded on {engine.name}: {load_text(engine)}")
    report_trial(trial)
    for engine in engines:
        difference, largest = forward_difference(engine.model.backend, case.net, case.windows)
        print(f"same weights: one real batch through {engine.name} and torch differs by at most "
              f"{difference:.2e} in the logits (largest |logit| {largest:.2f})")
    shape_zyx = tuple(reversed(case.shape_xyz))
    ours = report.starts_text([window_starts(size, PATCH, OVERLAP) for size in shape_zyx])
    theirs = report.starts_text([monai_starts(size) for size in shape_zyx])
    torchio = "" if settings.skip_torchio else f"; TorchIO {report.starts_text(torchio_starts(shape_zyx))}"
    print(f"window starts (z; y; x): runtime {ours}; MONAI {theirs}{torchio}")


def load_text(engine: Engine) -> str:
    if engine.device == "openvino":
        return f"cold {engine.cold:.2f} s (empty OpenVINO cache), warm {engine.warm:.2f} s (cached)"
    return f"{engine.cold:.2f} s, again {engine.warm:.2f} s"


def report_trial(trial: dict[str, dict[int, float]]) -> None:
    print("batch-size trial, each engine alone (s/window, best of 2 turns):")
    for name, sizes in trial.items():
        faster = min(sizes, key=sizes.__getitem__)
        print(f"  {name:<34s} " + ", ".join(f"batch {size}: {seconds:.3f}" for size, seconds in sizes.items())
              + f"  (faster: batch {faster})")


def report_ratios(line: Lineup, others: dict[str, Timed], judged: bool) -> None:
    """A against B and D (against the targets where `judged`), C and D1, turn by turn, CPU and steal
    seconds, for one backend."""
    a, d, tag = line.a, line.d, f"[{line.engine.device}]"
    print(f"\n{line.engine.name}:")
    print(report.ratio_text(f"A/B {tag}", a, others.get("B"), TARGET_A_B if judged else None))
    print(report.ratio_text(f"A/D {tag}", a, d, TARGET_A_D if judged else None))
    if judged:
        print(report.paired_text(f"A/D {tag}", a, d, TARGET_A_D))
    else:
        print(f"(one turn, --quick: the ratios are printed, not judged against the targets A/B <= {TARGET_A_B:.2f} "
              f"and A/D <= {TARGET_A_D:.2f})")
    print(report.ratio_text(f"A/C {tag}", a, others.get("C")))
    if line.d1 is not None:
        print(report.ratio_text(f"A/D1 {tag}", a, line.d1))
        print(report.ratio_text(f"D/D1 {tag}", d, line.d1))
    print("A/D turn by turn (each A timed back to back with the D of its turn): "
          + ", ".join(f"{x:.3f}" for x in report.turn_ratios(a, d)))
    cpu_a, cpu_d = statistics.median(a.cpu), statistics.median(d.cpu)
    print(f"CPU seconds of this process's threads (median): A {cpu_a:.2f}, D {cpu_d:.2f}, A/D {cpu_a / cpu_d:.3f} "
          "(the work each did; it leaves out time the VM's host took, which moves wall times)")
    kernel_a, kernel_d = statistics.median(a.kernel), statistics.median(d.kernel)
    print(f"  of which in the kernel: A {kernel_a:.2f}, D {kernel_d:.2f} (mostly the first touch of memory A "
          "allocates afresh each run, which D, reusing its windows and requests, does not take)")
    if a.steal and d.steal:
        print(f"CPU seconds the host took during each A: {report.seconds_list(a.steal)}; "
              f"during each D: {report.seconds_list(d.steal)}")


def report_labels(line: Lineup, others: dict[str, Timed], cli_labels: Labels) -> None:
    a, b, c = line.a.labels, others.get("B"), others.get("C")
    print(f"labels equal A [{line.engine.device}] vs B: {report.percent_equal(a, b.labels if b else None)}; "
          f"vs C: {report.percent_equal(a, c.labels if c else None)}; vs CLI: {report.percent_equal(a, cli_labels)}")


def report_main(settings: Settings, case: Case, lineups: list[Lineup], others: dict[str, Timed],
                context: list[Timed], cli: dict[str, tuple[float, Labels]]) -> None:
    report.header("synthetic BraTS-like case", "contender")
    for timed in [*(x for line in lineups for x in (line.a, line.d, line.d1) if x), *others.values(), *context]:
        print(report.row(timed.label, timed))
    for line in lineups:
        print(f"{line.engine.name}: runtime predict CLI, one whole process (start, imports, load, run, write): "
              f"{cli[line.engine.device][0]:.2f} s; model load {load_text(line.engine)}")
    windows = case.windows
    print(f"windows per case: {windows.count} (batch {settings.batch_size}, {windows.calls(settings.batch_size)} "
          "model calls)")
    for line in lineups:
        report_ratios(line, others, judged=not settings.quick)
    print()
    for line in lineups:
        report_labels(line, others, cli[line.engine.device][1])
    if len(lineups) > 1:
        first, second = lineups[0], lineups[1]
        print(f"labels equal A [{first.engine.device}] vs A [{second.engine.device}]: "
              f"{report.percent_equal(first.a.labels, second.a.labels)}")
    print(f"A's label map: {report.class_fractions(lineups[0].a.labels)}")
    print("(the weights are the same (see above); labels differ where the windows are placed or blended "
          "differently, since an untrained network's output depends on where a window starts)")


def report_stages(line: Lineup, stages: dict[str, float]) -> None:
    from window_bench.stages import SLIDING_STAGE

    total = sum(stages.values())
    print(f"\nA stage by stage on {line.engine.name} (one more run, {total:.2f} s in all):")
    for name, seconds in stages.items():
        print(f"  {name:<44s} {seconds:7.2f} s  {100.0 * seconds / total:5.1f} %")
    print(f"  {'sliding window minus D (cutting, stitching)':<44s} {stages[SLIDING_STAGE] - line.d.median:7.2f} s")

"""Part 3, the real CT series: where skipping pays. The 1-channel network's manifest starts with a
`foreground` step, so the air around the body (about -1000 HU, not 0) is the background that
skipped windows leave out; the runtime runs end to end with and without skipping, in turns."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.io import Scan

from window_bench import report
from window_bench.contenders import skip_runs
from window_bench.data import ct_input, window_counts
from window_bench.options import PATCH, Settings
from window_bench.scans import real_case
from window_bench.timing import Timed, in_turns

AIR_BELOW = -900.0
STEPS = [{"foreground": {"min": AIR_BELOW}}, {"clip": {"min": -1000, "max": 1000}}, {"zscore": {"region": "nonzero"}}]


def report_ct(runs: list[Timed], scan: Scan, kept: int, total: int) -> None:
    skip, full = runs
    body = scan.array_zyx[0] >= AIR_BELOW
    report.header(f"real CT (1 channel, native grid, padded to {PATCH} slices)", "run")
    for timed in runs:
        print(report.row(timed.label, timed))
    print(f"windows run with skip_background: {kept} of {total} ({kept / total:.3f}); "
          f"time skip/full = {skip.median / full.median:.3f} (of the minima {skip.best / full.best:.3f})")
    print(f"body (>= {AIR_BELOW:g} HU): {100.0 * float(np.mean(body)):.1f} % of the voxels")
    if skip.labels is not None and full.labels is not None:
        inside = report.percent_equal(skip.labels[body], full.labels[body])
        print(f"labels equal skip vs full: inside the body {inside}, "
              f"everywhere {report.percent_equal(skip.labels, full.labels)}")
        print("(in the air no kept window reaches, the skipping run says background; the full run gives the "
              "untrained network's guess there)")


def ct_comparison(settings: Settings, work: Path) -> None:
    path = ct_input(settings, work)
    if path is None:
        return
    case = real_case(settings, work, path, "bench_unet_ct", "ct", STEPS)
    scan = case.scan
    print(f"\nreal CT {path.name} on {case.model.backend.name}: {scan.array_zyx.shape[1:]} (z y x) at "
          f"{report.mm(scan.spacing_zyx)} mm, air below {AIR_BELOW:g} HU is background; "
          f"timing {settings.repeats} turn(s) ...", flush=True)
    runs = skip_runs(case.model, path, work, "ct")
    in_turns(runs, settings.repeats)
    report_ct(runs, scan, *window_counts(case.volume.foreground, PATCH))

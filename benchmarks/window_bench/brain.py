"""Part 2, the real brain MR: the runtime end to end with and without skipping background windows
(resampled to 1 mm, z-scored), MONAI on the same preprocessed array, and how many windows
skipping could leave out of this scan and of it with everything outside the head set to 0."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from runtime.io import Scan
from runtime.predict import Model

from window_bench import report
from window_bench.contenders import monai_labels, skip_runs
from window_bench.data import brain_input, window_counts
from window_bench.options import PATCH, Settings
from window_bench.scans import RealCase, real_case, through_steps
from window_bench.timing import Timed, in_turns

STEPS = [{"resample": {"spacing": [1.0, 1.0, 1.0]}}, {"zscore": {"region": "nonzero"}}]
COUNTED_PATCHES = (PATCH, 64, 48)


def head_masked(scan: Scan) -> np.ndarray:
    """The scan with everything outside the head set to exactly 0, the way brain-extracted inputs
    (BraTS, say) come: Otsu threshold, the largest connected part, holes filled."""
    image = sitk.GetImageFromArray(scan.array_zyx[0])
    head = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.OtsuThreshold(image, 0, 1)),
                                 sortByObjectSize=True) == 1
    head = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(head, [3, 3, 1]))
    return scan.array_zyx * sitk.GetArrayFromImage(head).astype(bool)


def reach_text(head: np.ndarray) -> str:
    """How far the head reaches along each axis, in voxels of the scan as stored."""
    parts = []
    for axis, name in enumerate("zyx"):
        present = np.flatnonzero(head.any(axis=tuple(a for a in range(head.ndim) if a != axis)))
        parts.append(f"{name} {int(present.min())}..{int(present.max())} of {head.shape[axis]}")
    return ", ".join(parts)


def report_skippable(model: Model, scan: Scan) -> None:
    """Windows skipping would leave out, for this scan and for it with a zero background, at the
    benchmark's patch and smaller ones (counts only, resampled as the model resamples)."""
    masked = head_masked(scan)
    print("windows holding some non-zero voxel / all windows, overlap 0.5 (counts only):")
    for name, array in (("as stored", scan.array_zyx), ("background outside the head set to 0", masked)):
        counts = []
        for patch in COUNTED_PATCHES:
            volume = through_steps(model, array, scan.spacing_zyx, patch, steps=1)  # the resampling alone
            counts.append("{}^3: {}/{}".format(patch, *window_counts(volume.foreground, patch)))
        print(f"  {name:<38s} " + ", ".join(counts))
    print(f"the head reaches {reach_text(masked[0] != 0)} (voxels of the scan as stored)")


def report_brain(runs: list[Timed], monai: Timed | None, case: RealCase) -> None:
    scan, volume = case.scan, case.volume
    kept, total = window_counts(volume.foreground, PATCH)
    skip, full = runs
    report.header("real brain MR (1 channel, resampled to 1 mm)", "run")
    for timed in (*runs, monai):
        print(report.row(timed.label if timed else "MONAI (skipped)", timed))
    print(f"windows run with skip_background: {kept} of {total}; time skip/full = {skip.median / full.median:.3f}")
    print(f"exact-zero voxels: {100.0 * float(np.mean(scan.array_zyx == 0)):.1f} % of the input, "
          f"{100.0 * (1.0 - float(np.mean(volume.foreground))):.1f} % of the resampled grid")
    if kept == total:
        print("every window holds some non-zero voxel: this scan has too little exact-zero background "
              "for skipping to save any window, so the two runs do the same work.")
    elif kept > 0.9 * total:
        print(f"only {total - kept} of {total} windows are pure background: skipping saves little on this scan.")
    print(f"labels equal skip vs full: {report.percent_equal(skip.labels, full.labels)}")
    report_skippable(case.model, scan)


def brain_comparison(settings: Settings, work: Path) -> None:
    path = brain_input(settings, work)
    if path is None:
        return
    case = real_case(settings, work, path, "bench_unet_brain", "image", STEPS)
    scan, volume = case.scan, case.volume
    print(f"\nreal brain MR {path.name} on {case.model.backend.name}: {scan.array_zyx.shape[1:]} (z y x) at "
          f"{report.mm(scan.spacing_zyx)} mm -> {volume.array.shape[1:]} at 1 mm; "
          f"timing {settings.repeats} turn(s) ...", flush=True)
    runs = skip_runs(case.model, path, work, "brain")
    monai = None
    if not settings.skip_monai:
        monai = Timed("MONAI on the resampled, z-scored array",
                      lambda: monai_labels(case.net, volume.array.copy(), settings.batch_size))
    in_turns([*runs, monai] if monai else runs, settings.repeats)
    report_brain(runs, monai, case)

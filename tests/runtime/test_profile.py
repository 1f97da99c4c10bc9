"""The input profile: a scan held against what the model saw in training, on real scans."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from export import graphs
from runtime.commands.cli import main
from runtime.errors import ManifestError
from runtime.io import read_scan
from runtime.preprocess import Step
from runtime.profile import build_profile, deviations, orientation_of, parse_profile, scan_stats
from tests.conftest import REPO
from tests.modelkit import make_model


def stats_of(path: Path):
    scan = read_scan([path])
    return scan_stats(scan.array_zyx, scan.spacing_zyx, scan.reference.GetDirection())


@pytest.fixture()
def ct_profile(data_dir):
    """Two CTs: the small abdominal one (3 mm, RAS) and the DICOM series (0.98 x 0.98 x 2 mm, LPS)."""
    cts = [data_dir / "radiology" / "totalseg_example_ct_sm.nii.gz", data_dir / "dicom" / "totalseg_ct_series"]
    return build_profile([stats_of(p) for p in cts], ["ct"])


def test_orientation_letters_are_itks(data_dir):
    for name in ("totalseg_example_ct_sm.nii.gz", "pyradiomics_brain1_image.nrrd", "totalseg_example_mr_sm.nii.gz"):
        image = sitk.ReadImage(str(data_dir / "radiology" / name))
        expected = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(image.GetDirection())
        assert orientation_of(image.GetDirection(), 3) == expected


def test_the_cts_pass_and_two_mrs_are_far_outside_a_ct_profile(ct_profile, data_dir):
    profile = parse_profile(ct_profile, ["ct"])
    assert ct_profile["subjects"] == 2 and ct_profile["orientations"] == ["LPS", "RAS"]
    for ct in (data_dir / "radiology" / "totalseg_example_ct_sm.nii.gz", data_dir / "dicom" / "totalseg_ct_series"):
        assert deviations(profile, stats_of(ct), ["ct"]) == []
    brain = deviations(profile, stats_of(data_dir / "radiology" / "pyradiomics_brain1_image.nrrd"), ["ct"])
    assert any(d.startswith("ct 0.5th percentile ") for d in brain), brain        # no air below 0 in an MR
    assert any(d.startswith("spacing 6.5 mm on axis 0 (z)") for d in brain), brain      # 6.5 mm slices
    assert any(d.startswith("orientation LAS") for d in brain), brain
    abdomen_mr = deviations(profile, stats_of(data_dir / "radiology" / "totalseg_example_mr_sm.nii.gz"), ["ct"])
    assert any("percentile" in d for d in abdomen_mr), abdomen_mr


def test_a_volume_given_to_a_2d_model_is_held_against_its_slices_orientation(data_dir):
    """A 2D model trained on slices whose x and y run L and P: a volume stored LPS gives it such
    slices (no warning of `orientation LPS (training LP)`), one stored RAS does not."""
    flat = [scan_stats(np.array([[[1.0, 2.0], [3.0, 4.0]]]), (1.0, 1.0), (1.0, 0.0, 0.0, 1.0))]
    profile = parse_profile(build_profile(flat, ["image"]), ["image"])
    assert profile.orientations == ("LP",)
    series = deviations(profile, stats_of(data_dir / "dicom" / "totalseg_ct_series"), ["image"])
    assert not any(d.startswith("orientation") for d in series), series
    ras = deviations(profile, stats_of(data_dir / "radiology" / "totalseg_example_ct_sm.nii.gz"), ["image"])
    assert any(d.startswith("orientation RA (training LP)") for d in ras), ras


def _model(tmp_path: Path, profile: dict) -> Path:
    return make_model(tmp_path / "repo", graphs.bright_structures(3), channels=["ct"],
                      window={"mode": "sliding", "patch_size": [8, 16, 16], "overlap": 0.25, "blending": "gaussian",
                              "batch_size": 4, "mirror_axes": [], "skip_background": False},
                      provenance={"description": "CT model", "input_profile": profile})


def test_a_brain_mr_given_to_a_ct_model_is_warned_of_and_refused_with_strict_input(tmp_path, ct_profile, data_dir):
    model = _model(tmp_path, ct_profile)
    brain = data_dir / "radiology" / "pyradiomics_brain1_image.nrrd"
    warned = subprocess.run([sys.executable, "-m", "runtime.commands.cli", "predict", str(brain), "--model", str(model),
                             "--output", str(tmp_path / "brain.nii.gz"), "--quiet"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert warned.returncode == 0, warned.stderr
    lines = [line for line in warned.stderr.splitlines() if "far outside" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "--strict-input" in lines[0], warned.stderr
    assert "99.5th percentile" in lines[0] and (tmp_path / "brain.nii.gz").is_file()
    refused = CliRunner().invoke(main, ["predict", str(brain), "--model", str(model), "--output",
                                        str(tmp_path / "refused.nii.gz"), "--strict-input", "--quiet"])
    output = [line for line in refused.output.splitlines() if line.strip()]
    assert refused.exit_code == 1 and len(output) == 1 and output[0].startswith("error: "), refused.output
    assert "far outside what model test_model saw in training" in output[0] and "99.5th percentile" in output[0]
    assert not (tmp_path / "refused.nii.gz").exists()
    ct = CliRunner().invoke(main, ["predict", str(data_dir / "radiology" / "totalseg_example_ct_sm.nii.gz"),
                                   "--model", str(model), "--output", str(tmp_path / "ct.nii.gz"), "--strict-input",
                                   "--quiet"])
    assert ct.exit_code == 0 and "far outside" not in ct.output, ct.output


@pytest.mark.parametrize("edit,named", [
    (lambda p: p["channels"]["ct"].update(p50=[5, 1]), "channels.ct.p50"),
    (lambda p: p.update(spacing_mm="3 mm"), "spacing_mm"),
    (lambda p: p["spacing_mm"].__setitem__(0, [1, float("nan")]), "spacing_mm[0]"),
    (lambda p: p.update(orientations=[1, 2]), "orientations"),
    (lambda p: p["spacing_mm"].__setitem__(0, [1, 10 ** 400]), "spacing_mm[0]"),
    (lambda p: p.update(spacing_mm=[[1, 2]] * 5), "spacing_mm"),
    (lambda p: p.update(frame="sideways"), "frame"),
])
def test_a_damaged_profile_is_refused_naming_its_field(ct_profile, edit, named):
    damaged = json.loads(json.dumps(ct_profile))
    edit(damaged)
    with pytest.raises(ManifestError, match=f"input_profile.{named.split('[')[0]}"):
        parse_profile(damaged, ["ct"])


def test_figures_after_preprocessing_are_held_against_training_s_too(tmp_path, ct_profile, data_dir):
    ct = data_dir / "radiology" / "totalseg_example_ct_sm.nii.gz"
    # The model has no preprocessing, so the CT's figures after it are those as read, which pass.
    same = _model(tmp_path / "same", {**ct_profile, "preprocessed": ct_profile["channels"]})
    passed = CliRunner().invoke(main, ["predict", str(ct), "--model", str(same), "--output", str(tmp_path / "a.nii.gz"),
                                       "--strict-input", "--quiet"])
    assert passed.exit_code == 0 and "far outside" not in passed.output, passed.output
    shifted = {key: [low + 2000, high + 2000] for key, (low, high) in ct_profile["channels"]["ct"].items()}
    moved = _model(tmp_path / "moved", {**ct_profile, "preprocessed": {"ct": shifted}})
    refused = CliRunner().invoke(main, ["predict", str(ct), "--model", str(moved), "--output",
                                        str(tmp_path / "b.nii.gz"), "--strict-input", "--quiet"])
    output = [line for line in refused.output.splitlines() if line.strip()]
    assert refused.exit_code == 1 and len(output) == 1 and output[0].startswith("error: "), refused.output
    assert "ct median" in output[0] and "after preprocessing" in output[0] and "--strict-input" in output[0]
    assert not (tmp_path / "b.nii.gz").exists()
    damaged = {**ct_profile, "preprocessed": {"ct": {"p50": [3, 1]}}}
    with pytest.raises(ManifestError, match="input_profile.preprocessed.ct.p50"):
        parse_profile(damaged, ["ct"])


def test_a_model_that_reorients_is_measured_on_the_scan_as_turned(tmp_path, data_dir):
    original = data_dir / "radiology" / "pyradiomics_brain1_image.nrrd"
    sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(original)), "SAL"), str(tmp_path / "brain_sal.nrrd"))
    steps = (Step("reorient", {"orientation": "RAS"}),)

    def stats(path: Path, with_steps: tuple = steps):
        scan = read_scan([path])
        return scan_stats(scan.array_zyx, scan.spacing_zyx, scan.reference.GetDirection(), with_steps)

    turned = build_profile([stats(original)], ["mr"], reoriented=True)
    assert turned["frame"] == "reoriented" and turned["orientations"] == ["RAS"]
    as_read = build_profile([stats(original, ())], ["mr"])       # a model exported before profiles said their frame
    assert "frame" not in as_read and as_read["orientations"] == ["LAS"]
    unturned = deviations(parse_profile(as_read, ["mr"]), stats(tmp_path / "brain_sal.nrrd", ()), ["mr"])
    assert any(d.startswith("orientation SAL") for d in unturned) and any("spacing" in d for d in unturned), unturned

    def predicted(profile: dict, scan: Path, name: str):
        model = make_model(tmp_path / name, graphs.bright_structures(3), channels=["mr"],
                           preprocessing=[{"name": "reorient", "params": {"orientation": "RAS"}}],
                           provenance={"description": "MR model", "input_profile": profile})
        return CliRunner().invoke(main, ["predict", str(scan), "--model", str(model), "--output",
                                         str(tmp_path / f"{name}.nii.gz"), "--strict-input", "--quiet"])

    for result in (predicted(turned, tmp_path / "brain_sal.nrrd", "turned"), predicted(as_read, original, "as_read")):
        assert result.exit_code == 0 and "far outside" not in result.output, result.output
    refused = predicted(as_read, tmp_path / "brain_sal.nrrd", "as_read_sal")
    assert refused.exit_code == 1 and "orientation SAL (training LAS)" in refused.output, refused.output


def test_an_mr_in_its_own_units_is_held_to_where_its_zero_lies_as_read_and_to_its_scale_after_standardisation(
        data_dir):
    """A breast MR scaled by 20 gives a model that z-scores or histogram-standardises it the same
    labels, and was warned of (refused with --strict-input) as far outside training. As read, such
    a channel is held to the share of its range below 0 alone: a CT (air at -1000) given to an MR
    model, an MR given to a CT model, or an MR whose contrast was inverted is still far. Its values
    as read count in full where a fixed step reads them first, or where no figures after
    preprocessing would check it instead."""
    from runtime.profile import own_units

    path = data_dir / "radiology" / "pyradiomics_breast1_image.nrrd"
    scan = read_scan([path])
    direction = scan.reference.GetDirection()
    built = build_profile([stats_of(path)], ["t1"])
    with_after = parse_profile({**built, "preprocessed": built["channels"]}, ["t1"])
    scaled = scan_stats(scan.array_zyx * 20, scan.spacing_zyx, direction)
    inverted = scan_stats(-scan.array_zyx, scan.spacing_zyx, direction)
    ct = stats_of(data_dir / "radiology" / "totalseg_example_ct_sm.nii.gz")
    zscore = [Step("resample", {"spacing": [2, 1, 1]}), Step("zscore", {"region": "nonzero"})]
    histogram = [Step("histogram_standardise", {"landmarks": [[0, 50, 100]], "percentiles": [1, 50, 99]})]
    by_percentiles = [Step("clip", {"min": 0}), Step("rescale", {"percentiles": [0.5, 99.5]})]
    by_range = [Step("foreground", {"fill_holes": True}), Step("threshold", {"min": 0}), Step("rescale", {})]
    for steps in (zscore, histogram, by_percentiles, by_range):
        assert deviations(with_after, scaled, ["t1"], steps) == [], steps
        for stranger in (inverted, ct):
            found = deviations(with_after, stranger, ["t1"], steps)
            assert any(d.startswith("t1 0.5th to 99.5th percentile -") and d.endswith("below 0 (training 0% to 0%)")
                       for d in found), found
    cts = [data_dir / "radiology" / "totalseg_example_ct_sm.nii.gz", data_dir / "dicom" / "totalseg_ct_series"]
    ct_built = build_profile([stats_of(p) for p in cts], ["t1"])
    ct_model = parse_profile({**ct_built, "preprocessed": ct_built["channels"]}, ["t1"])
    mr = stats_of(data_dir / "radiology" / "totalseg_example_mr_sm.nii.gz")
    assert deviations(ct_model, ct, ["t1"], zscore) == []
    assert any("1% of it below 0 (training 67% to 79%)" in d for d in deviations(ct_model, mr, ["t1"], zscore))
    fixed_first = [Step("clip", {"min": 0, "max": 400}), Step("zscore", {"region": "nonzero"})]
    for profile, steps in ((with_after, fixed_first), (with_after, [Step("normalize", {"mean": [0], "std": [100]})]),
                           (with_after, [Step("rescale", {"in_min": 0, "in_max": 400})]),
                           (parse_profile(built, ["t1"]), zscore), (with_after, ())):
        assert any(d.startswith("t1 median 1200 (training 60 to 60)") for d in deviations(profile, scaled, ["t1"],
                                                                                            steps)), steps
    assert own_units([Step("zscore", {"region": "whole", "channels": [1]}), Step("clip", {"min": 0})], 3) == {1}


def test_a_2d_model_run_slice_by_slice_holds_a_volume_to_its_scale_as_read(tmp_path, data_dir):
    """Slice by slice, no check after preprocessing follows: the values as read are held in full."""
    import dataclasses

    from runtime.manifest import load_manifest
    from runtime.predict import check_input

    path = data_dir / "radiology" / "pyradiomics_breast1_image.nrrd"
    scan = read_scan([path])
    built = build_profile([stats_of(path)], ["t1"])
    profile = {**built, "preprocessed": built["channels"], "spacing_mm": built["spacing_mm"][1:],
               "orientations": [o[:2] for o in built["orientations"]]}
    model = make_model(tmp_path, graphs.bright_structures(2), channels=["t1"], dimensions=2, axis_order="yx",
                       preprocessing=[{"name": "zscore", "params": {"region": "nonzero"}}],
                       window={"mode": "sliding", "patch_size": [16, 16], "overlap": 0.5, "blending": "gaussian",
                               "batch_size": 2, "mirror_axes": [], "skip_background": False},
                       provenance={"description": "2D MR model", "input_profile": profile})
    manifest = load_manifest(model)[0]
    assert check_input(manifest, scan) == []
    found = check_input(manifest, dataclasses.replace(scan, array_zyx=scan.array_zyx * 20))
    assert any(d.startswith("t1 median 1200") and "never" not in d for d in found), found

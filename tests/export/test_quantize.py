"""`python -m export quantize`: an int8 version calibrated on real windows of the subjects, kept only
where its labels agree with the float version's on held-out subjects, and run by the runtime like
any version."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from export import graphs
from export.cli import main as export_main
from runtime.commands.cli import main as runtime_main
from tests.conftest import REPO, missing
from tests.modelkit import blob_volume, write_scan


@pytest.fixture()
def model_and_subjects(tmp_path) -> tuple[Path, Path]:
    try:
        import nncf  # noqa: F401
    except ImportError:
        missing("nncf is not installed: pip install -e '.[dev]'")
    onnx_path = graphs.save(graphs.bright_structures(3), tmp_path / "bright.onnx")
    result = CliRunner().invoke(export_main, ["build", "--from-onnx", str(onnx_path), "--spec",
                                              str(REPO / "export" / "demo_spec.yaml"), "--repository",
                                              str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    rows = ["subject_id,image"]
    for index in range(5):
        write_scan(tmp_path / f"s{index}.nii.gz", blob_volume((24, 96, 80), seed=index), spacing_xyz=(1.0, 1.25, 2.5))
        rows.append(f"case{index},s{index}.nii.gz")
    (tmp_path / "subjects.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "repo" / "demo_bright_structures", tmp_path / "subjects.csv"


def test_an_int8_version_agrees_with_the_float_one_and_runs_like_any_version(model_and_subjects, tmp_path):
    model, subjects = model_and_subjects
    result = CliRunner().invoke(export_main, ["quantize", str(model / "1"), "--calibration", str(subjects)])
    assert result.exit_code == 0, result.output
    assert "calibrating on" in result.output and "held-out subject(s)" in result.output
    assert result.output.strip().splitlines()[-2] == str(model / "2")
    record = json.loads((model / "2" / "manifest.json").read_text())["provenance"]["quantization"]
    assert record["from_version"] == 1 and record["calibration_subjects"] == 4 and record["held_out_subjects"] == 1
    assert record["label_agreement"] >= 0.995 and record["calibration_windows"] >= 3
    verified = CliRunner().invoke(runtime_main, ["verify", str(model / "2")])
    assert verified.exit_code == 0 and "reproduced" in verified.output, verified.output
    labels = {}
    for version in ("1", "2"):
        out = tmp_path / f"v{version}.nii.gz"
        done = CliRunner().invoke(runtime_main, ["predict", str(tmp_path / "s4.nii.gz"), "--model",
                                                 str(model / version), "--output", str(out), "--quiet"])
        assert done.exit_code == 0, done.output
        labels[version] = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert np.count_nonzero(labels["1"]) > 100
    assert np.mean(labels["1"] == labels["2"]) >= 0.995
    assert "2=sha256:" in (model / "config.pbtxt").read_text()


def _refused(args: list[str]) -> str:
    """Run `python -m export ARGS`: exit code 1 and one `error:` line on stderr (progress may come
    before it on stdout), no traceback; that line."""
    result = CliRunner().invoke(export_main, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    return lines[0]


def test_too_few_subjects_or_too_little_agreement_writes_nothing(model_and_subjects, tmp_path):
    model, subjects = model_and_subjects
    lines = subjects.read_text().splitlines()
    (tmp_path / "one.csv").write_text("\n".join(lines[:2]) + "\n")
    assert "holds 1 subject(s); give at least 2" in _refused(["quantize", str(model / "1"), "--calibration",
                                                               str(tmp_path / "one.csv")])
    message = _refused(["quantize", str(model / "1"), "--calibration", str(subjects), "--min-agreement", "0.99999"])
    assert "under the 99.999 % required; nothing was written" in message
    assert sorted(p.name for p in model.iterdir() if p.is_dir()) == ["1"]

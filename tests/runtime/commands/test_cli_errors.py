"""Every bad input gets one clear `error:` line, exit code 1, no traceback and no partial output."""
from __future__ import annotations

import csv

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from export import graphs
from runtime.commands.cli import main
from tests.conftest import missing
from tests import modelkit
from tests.modelkit import blob_volume, make_model, nearly_flat, write_scan


def tree(folder) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder`: its size and modification time."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*"))}


@pytest.fixture(autouse=True)
def nothing_written(tmp_path, monkeypatch):
    """Every failing command of this module leaves its test's folder as it found it: no file or
    folder added, changed or removed, so no partial output and no touched input."""

    def run_failing(args: list[str], *expected: str) -> str:
        before = tree(tmp_path)
        line = modelkit.run_failing(args, *expected)
        assert tree(tmp_path) == before, f"the failing run {args} changed {tmp_path}"
        return line

    monkeypatch.setitem(globals(), "run_failing", run_failing)


def test_missing_input_file(tmp_path, model_dir):
    out = tmp_path / "mask.nii.gz"
    run_failing(["predict", str(tmp_path / "nope.nii.gz"), "--model", str(model_dir), "--output", str(out)],
                "nope.nii.gz", "does not exist")
    assert not out.exists()


def test_a_server_timeout_given_to_a_local_run_is_refused_not_ignored(tmp_path, model_dir, scan):
    run_failing(["predict", str(scan), "--model", str(model_dir), "--output", str(tmp_path / "m.nii.gz"),
                 "--timeout", "5"], "--timeout is for --server")
    run_failing(["listen", "--model", str(model_dir), "--send-to", "PACS@127.0.0.1:4242", "--allow", "CTSCANNER",
                 "--storage", str(tmp_path / "storage"), "--timeout", "5"], "--timeout is for --server")


def test_truncated_image(tmp_path, model_dir, scan):
    data = scan.read_bytes()
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(data[: len(data) // 2])
    out = tmp_path / "mask.nii.gz"
    run_failing(["predict", str(broken), "--model", str(model_dir), "--output", str(out)],
                "broken.nii.gz", "is truncated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.nii.gz", "repo", "scan.nii.gz"]


def test_not_an_image(tmp_path, model_dir):
    text = tmp_path / "notes.nrrd"
    text.write_text("hello")
    run_failing(["predict", str(text), "--model", str(model_dir), "--output", str(tmp_path / "m.nii.gz")],
                "notes.nrrd")


def test_channel_count_differs_from_the_manifest(tmp_path, model_dir, scan, data_dir):
    run_failing(["predict", str(scan), str(scan), "--model", str(model_dir), "--output", str(tmp_path / "m.nii.gz")],
                "expects 1 channel", "got 2")
    from PIL import Image

    Image.fromarray(np.arange(40 * 60 * 4).reshape(40, 60, 4).astype(np.uint8)).save(tmp_path / "slide.png")
    run_failing(["predict", str(tmp_path / "slide.png"), "--model", str(model_dir), "--output",
                 str(tmp_path / "m.nii.gz")], "expects 1 channel", "got 4", "slide.png is a colour image: its 4 "
                "components (RGB or RGBA) are channels; a radiology model of 1 channel(s) takes grey images)")
    import pydicom

    from tests.dicomkit import copy_series

    def colour(index: int, dataset: pydicom.Dataset) -> None:         # an ultrasound-like RGB series
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, "RGB", 0
        dataset.BitsAllocated = dataset.BitsStored = 8
        dataset.HighBit, dataset.PixelRepresentation = 7, 0
        for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
            if keyword in dataset:
                delattr(dataset, keyword)
        dataset.PixelData = (np.arange(dataset.Rows * dataset.Columns * 3) % 90).astype(np.uint8).tobytes()

    copy_series(data_dir / "dicom" / "dcmqi_ct3", tmp_path / "rgb_series", edit=colour)
    said = run_failing(["predict", str(tmp_path / "rgb_series"), "--model", str(model_dir), "--output",
                        str(tmp_path / "m.nii.gz")], "expects 1 channel", "got 3",
                       "rgb_series is a colour image: its 3 components (RGB or RGBA) are channels")
    assert "pass one image per channel" not in said
    import SimpleITK as sitk

    vector = sitk.GetImageFromArray(nearly_flat((16, 32, 32, 4), 1.0), isVector=True)    # a volume of 4 values
    sitk.WriteImage(vector, str(tmp_path / "vector.nii.gz"))
    said = run_failing(["predict", str(tmp_path / "vector.nii.gz"), "--model", str(model_dir), "--output",
                        str(tmp_path / "m.nii.gz")], "expects 1 channel", "got 4", "pass one image per channel")
    assert "colour" not in said
    volume = sitk.GetImageFromArray(nearly_flat((16, 32, 32), 1.0))
    sitk.WriteImage(sitk.JoinSeries([volume] * 3), str(tmp_path / "series.nii.gz"))           # 3 time points
    run_failing(["predict", str(tmp_path / "series.nii.gz"), "--model", str(model_dir), "--output",
                 str(tmp_path / "m.nii.gz")], "series.nii.gz is a 4D image; the runtime reads 2D and 3D images",
                "save each channel or time point as its own file")
    from export import graphs
    from tests.modelkit import make_model, window

    rgb_model = make_model(tmp_path / "rgb", graphs.identity(3, 2), dimensions=2, axis_order="yx",
                           channels=["red", "green", "blue"], classes=[{"value": 0, "name": "a"},
                                                                       {"value": 1, "name": "b"},
                                                                       {"value": 2, "name": "c"}],
                           window=window(patch_size=[16, 16]))
    run_failing(["predict", str(tmp_path / "slide.png"), "--model", str(rgb_model), "--output",
                 str(tmp_path / "m.nii.gz")], "expects 3 channel", "got 4", "slide.png is RGBA: save it as RGB, "
                "without its alpha channel")


def test_grey_images_itk_reads_as_colour_or_cannot_read_say_how_to_save_them(tmp_path):
    from PIL import Image

    grey = Image.fromarray((np.arange(40 * 60).reshape(40, 60) % 256).astype(np.uint8))
    grey.save(tmp_path / "grey.bmp")
    grey.convert("P").save(tmp_path / "palette.png")
    grey.convert("LA").save(tmp_path / "alpha.png")
    grey.convert("P").save(tmp_path / "palette.tif")           # ITK reads its colour table's 16-bit values
    flat = make_model(tmp_path / "repo", graphs.bright_structures(2), dimensions=2, axis_order="yx",
                      window=modelkit.window(patch_size=[16, 16]))
    for name, expected in (("grey.bmp", "grey.bmp is an 8-bit BMP, whose palette ITK reads as colours (RGB); save a "
                                        "grey image as PNG"),
                           ("palette.png", "palette.png is a palette image, whose pixels ITK reads as their colours "
                                           "(RGB) (Pillow mode P); save it as 8-bit greyscale (mode L), or as RGB"),
                           ("alpha.png", "alpha.png is a grey image with an alpha channel, which ITK does not read "
                                         "(Pillow mode LA)"),
                           ("palette.tif", "palette.tif is a palette TIFF (Pillow mode P), whose pixels ITK reads as "
                                           "its colour table's 16-bit values")):
        run_failing(["predict", str(tmp_path / name), "--model", str(flat), "--output", str(tmp_path / "m.nii.gz")],
                    expected)


def test_grids_that_disagree_name_both_files(tmp_path, scan):
    other = write_scan(tmp_path / "other.nii.gz", blob_volume((10, 20, 20)), spacing_xyz=(1.0, 1.0, 2.0))
    two = make_model(tmp_path / "repo2", graphs.identity(2, 3), channels=["a", "b"],
                     classes=[{"value": 0, "name": "a"}, {"value": 1, "name": "b"}])
    message = run_failing(["predict", str(scan), str(other), "--model", str(two), "--output", str(tmp_path / "m.nii.gz")],
                          "same grid")
    assert "scan.nii.gz" in message and "other.nii.gz" in message


def test_nan_voxels(tmp_path, model_dir):
    array = blob_volume((10, 20, 20))
    array[3, 4, 5] = np.nan
    array[3, 4, 6] = np.inf
    path = write_scan(tmp_path / "nan.nii.gz", array)
    run_failing(["predict", str(path), "--model", str(model_dir), "--output", str(tmp_path / "m.nii.gz")],
                "2 NaN or infinite voxels")


def test_empty_image(tmp_path, model_dir):
    path = write_scan(tmp_path / "empty.nii.gz", np.zeros((10, 20, 20), dtype=np.int16))
    run_failing(["predict", str(path), "--model", str(model_dir), "--output", str(tmp_path / "m.nii.gz")],
                "every voxel is 0")


def test_an_image_of_one_value_is_refused_not_answered(tmp_path):
    """A scan of padding alone (every voxel -2000) normalises to zeros, from which a classifier
    gave a confident class with exit 0."""
    from export import graphs
    from tests.modelkit import window

    model = make_model(tmp_path / "repo", graphs.channel_classifier(1, 3, 2), task="classification",
                       preprocessing=[{"name": "zscore", "params": {"region": "whole"}}],
                       window=window(patch_size=[10, 20, 20], mode="whole"))
    path = write_scan(tmp_path / "padding.nii.gz", np.full((10, 20, 20), -2000, dtype=np.int16))
    run_failing(["predict", str(path), "--model", str(model), "--output", str(tmp_path / "p.csv")],
                "padding.nii.gz: every voxel is -2000", "nothing to predict from")
    assert not (tmp_path / "p.csv").exists()


def test_model_folder_without_manifest(tmp_path, scan):
    (tmp_path / "bare" / "1").mkdir(parents=True)
    run_failing(["predict", str(scan), "--model", str(tmp_path / "bare"), "--output", str(tmp_path / "m.nii.gz")],
                "manifest.json")
    (tmp_path / "nothing").mkdir()
    run_failing(["info", str(tmp_path / "nothing")], "no manifest.json")


def test_manifest_with_an_unknown_key(tmp_path, model_dir, scan):
    path = model_dir / "1" / "manifest.json"
    data = json.loads(path.read_text())
    data["colour"] = "blue"
    path.write_text(json.dumps(data))
    run_failing(["predict", str(scan), "--model", str(model_dir), "--output", str(tmp_path / "m.nii.gz")],
                "colour: unknown key")


def test_checksum_mismatch(tmp_path, model_dir, scan):
    onnx_file = model_dir / "1" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    out = tmp_path / "m.nii.gz"
    run_failing(["predict", str(scan), "--model", str(model_dir), "--output", str(out)], "sha256", "model.onnx")
    run_failing(["info", str(model_dir)], "sha256")
    assert not out.exists()


def test_output_that_cannot_be_written(tmp_path, model_dir, scan):
    run_failing(["predict", str(scan), "--model", str(model_dir), "--output", str(tmp_path / "no" / "m.nii.gz")],
                "does not exist")
    run_failing(["predict", str(scan), "--model", str(model_dir), "--output", str(tmp_path / "m.png")],
                "--output", "m.png must end with one of .nii.gz")
    run_failing(["predict", str(scan), "--model", str(model_dir), "--output", str(tmp_path / "m.nii.gz"),
                 "--probabilities", str(tmp_path / "p.png")], "--probabilities", "p.png must end with one of")
    run_failing(["predict", str(scan), "--model", str(model_dir), "--output", str(tmp_path)], "is a folder")


def test_output_in_a_folder_that_takes_no_files_is_refused_before_the_work(tmp_path, model_dir, scan):
    """/proc takes no new file even from root, whom permission bits never stop."""
    run_failing(["predict", str(scan), "--model", str(model_dir), "--output", str(tmp_path / "m.nii.gz"),
                 "--probabilities", "/proc/probabilities.nii.gz"],
                "cannot write /proc/probabilities.nii.gz: folder /proc is not writable (")
    assert list(tmp_path.glob("m*")) == []


def test_failure_keeps_an_earlier_good_output(tmp_path, model_dir, scan):
    out = tmp_path / "m.nii.gz"
    assert CliRunner().invoke(main, ["predict", str(scan), "--model", str(model_dir), "--output", str(out)]).exit_code == 0
    before = out.read_bytes()
    empty = write_scan(tmp_path / "empty.nii.gz", np.zeros((10, 20, 20), dtype=np.int16))
    run_failing(["predict", str(empty), "--model", str(model_dir), "--output", str(out)], "every voxel is 0")
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_a_model_that_answers_nan_is_named_with_the_scan_it_ran_on(tmp_path, scan):
    nan = make_model(tmp_path / "repo_nan", graphs.scaled(2, 3, float("nan")), name="nan", channels=["a", "b"])
    run_failing(["predict", str(scan), str(scan), "--model", str(nan), "--output", str(tmp_path / "m.nii.gz")],
                f"model nan v1 on {scan}, {scan}: ", "voxels of the stitched output are NaN or infinite",
                "check the input's intensities against the model's preprocessing, and the model file")


def test_model_output_that_breaks_its_manifest(tmp_path, scan):
    three = make_model(tmp_path / "repo3", graphs.bright_structures(3), classes=[
        {"value": 0, "name": "a"}, {"value": 1, "name": "b"}, {"value": 2, "name": "c"}])
    run_failing(["predict", str(scan), "--model", str(three), "--output", str(tmp_path / "m.nii.gz")],
                "promises", "3 classes")


def test_a_2d_image_given_to_a_3d_model_is_refused_with_the_way_to_give_it(tmp_path, model_dir):
    from PIL import Image

    Image.fromarray(np.arange(24 * 20).reshape(24, 20).astype(np.uint8)).save(tmp_path / "slice.png")
    run_failing(["predict", str(tmp_path / "slice.png"), "--model", str(model_dir), "--output",
                 str(tmp_path / "m.nii.gz")], "is 3D but", "slice.png is a 2D image; give it a volume",
                "or run a 2D model")


def test_csv_problems_are_reported_together(tmp_path, model_dir, scan):
    csv_path = tmp_path / "subjects.csv"
    csv_path.write_text("subject_id,image\na,scan.nii.gz\na,scan.nii.gz\nb/c,missing.nii.gz\n")
    message = run_failing(["predict", "--csv", str(csv_path), "--model", str(model_dir), "--output-dir",
                           str(tmp_path / "out")], "3 problem(s)")
    assert "appears twice" in message and "'b/c'" in message
    assert f"missing.nii.gz does not exist (looked for as {tmp_path / 'missing.nii.gz'})" in message
    assert not (tmp_path / "out").exists()
    csv_path.write_text("subject_id,image\na,scan.nii.gz\nb\n")                 # a row short of cells
    run_failing(["predict", "--csv", str(csv_path), "--model", str(model_dir), "--output-dir", str(tmp_path / "out")],
                "1 problem(s)", "line 3: column image is empty")
    csv_path.write_text("subject_id,t1\na,scan.nii.gz\n")
    run_failing(["predict", "--csv", str(csv_path), "--model", str(model_dir), "--output-dir", str(tmp_path / "out")],
                "lacks the column(s) image")
    csv_path.write_text("subject_id,slide\na,slide.svs\n")
    run_failing(["predict", "--csv", str(csv_path), "--model", str(model_dir), "--output-dir", str(tmp_path / "out")],
                "lacks the column(s) image", "lists slides (a column slide), which a histology model runs",
                "is a radiology model")


@pytest.mark.parametrize("rows, expected, failed, written", [
    ("good,scan.nii.gz\nbad,empty.nii.gz\n", "1 of 2 subject(s) failed, the others were written", ["bad"],
     ["failures.csv", "good.nii.gz"]),
    ("a,empty.nii.gz\nb,empty.nii.gz\n", "2 of 2 subject(s) failed, no prediction was written", ["a", "b"],
     ["failures.csv"]),
])
def test_csv_subjects_that_fail_keep_the_others(tmp_path, model_dir, scan, rows, expected, failed, written):
    write_scan(tmp_path / "empty.nii.gz", np.zeros((10, 20, 20), dtype=np.int16))
    csv_path = tmp_path / "subjects.csv"
    csv_path.write_text("subject_id,image\n" + rows)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["predict", "--csv", str(csv_path), "--model", str(model_dir),
                                       "--output-dir", str(out)])
    assert result.exit_code == 1
    assert f"error: {expected} (listed in {out / 'failures.csv'}): {failed[0]}: " in result.output
    assert all(f"{subject}: failed: " in result.output for subject in failed)
    assert ("1/2 good: done in " in result.output) is ("good" in written[-1])    # a line per subject written
    assert sorted(p.name for p in out.iterdir()) == written
    listed = list(csv.DictReader((out / "failures.csv").open()))
    assert [row["subject_id"] for row in listed] == failed
    assert all("empty.nii.gz" in row["error"] and "\n" not in row["error"] for row in listed)
    (out / f"{failed[0]}.nii.gz").write_bytes((tmp_path / "scan.nii.gz").read_bytes())    # as if an earlier run's
    again = CliRunner().invoke(main, ["predict", "--csv", str(csv_path), "--model", str(model_dir),
                                      "--output-dir", str(out)])
    assert f"{failed[0]}: failed: " in again.output and \
        f"({failed[0]}.nii.gz: an earlier run's, left as they were)" in again.output, again.output
    csv_path.write_text("subject_id,image\ngood,scan.nii.gz\n")
    result = CliRunner().invoke(main, ["predict", "--csv", str(csv_path), "--model", str(model_dir),
                                       "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert not (out / "failures.csv").exists()


def test_demo_output_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "taken").write_text("a file")
    run_failing(["demo", "--output-dir", str(tmp_path / "taken" / "demo"), "--device", "cpu"],
                f"cannot create the output folder {tmp_path / 'taken' / 'demo'}")


def test_csv_output_folder_in_the_way_of_a_file(tmp_path, model_dir, scan):
    csv_path = tmp_path / "subjects.csv"
    csv_path.write_text("subject_id,image\na,scan.nii.gz\n")
    (tmp_path / "taken").write_text("a file")
    run_failing(["predict", "--csv", str(csv_path), "--model", str(model_dir), "--output-dir",
                 str(tmp_path / "taken")], "cannot create the output folder", "taken")


def test_csv_output_folder_that_cannot_be_written_is_refused_before_any_subject(tmp_path, model_dir, scan):
    """A folder of mode 555. Root may write into any folder whatever its mode, so as root the command
    runs without the capabilities that allow it (util-linux's setpriv)."""
    csv_path = tmp_path / "subjects.csv"
    csv_path.write_text("subject_id,image\na,scan.nii.gz\n")
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            missing("running as root without setpriv (util-linux), and a folder's mode does not stop root")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    command = [*prefix, sys.executable, "-c", "from runtime.commands.cli import main; main()", "predict", "--csv",
               str(csv_path), "--model", str(model_dir), "--output-dir", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    out.chmod(0o755)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"error: cannot write into the output folder {out}: Permission denied; "
                     "choose another --output-dir or make it writable."]
    assert done.stdout == "" and list(out.iterdir()) == []


def test_unavailable_device(tmp_path, model_dir, scan):
    run_failing(["predict", str(scan), "--model", str(model_dir), "--output", str(tmp_path / "m.nii.gz"),
                 "--device", "cuda"], "cuda")


def test_a_csv_naming_a_column_twice_is_refused_not_read_as_its_last(tmp_path, model_dir, scan):
    csv_path = tmp_path / "subjects.csv"
    csv_path.write_text("subject_id,image,image\ns1,scan.nii.gz,x\n")
    run_failing(["predict", "--csv", str(csv_path), "--model", str(model_dir), "--output-dir", str(tmp_path / "out")],
                f"{csv_path} names column(s) image more than once; keep one of each.")
    assert not (tmp_path / "out").exists()


def test_a_csv_too_large_or_too_wide_is_refused_before_it_is_read(tmp_path, model_dir, monkeypatch):
    """A table of a million columns is checked in linear time; one past the size bound is not read."""
    from runtime import validation

    wide = ["subject_id", "image", *(f"c{i}" for i in range(1_000_000))]
    assert validation.repeated_columns(wide + ["c7"]) == ["c7"]
    csv_path = tmp_path / "subjects.csv"
    csv_path.write_text("subject_id,image\ns1," + "x" * 2000 + "\n")
    monkeypatch.setattr(validation, "MAX_TABLE_BYTES", 1000)
    run_failing(["predict", "--csv", str(csv_path), "--model", str(model_dir), "--output-dir", str(tmp_path / "out")],
                f"{csv_path} is 2,021 bytes, more than the 1,000 a table of subjects or slides holds")
    assert not (tmp_path / "out").exists()


def test_a_csv_run_of_many_failures_names_three_in_its_closing_line(tmp_path):
    """Each failure is said as it happens and listed in failures.csv; the closing error line names the
    first three and counts the rest, not all of them (a 30 KB line for 120 subjects)."""
    from runtime.commands.rows import finish_rows
    from runtime.errors import InputError

    failures = [(f"s{i}", f"reason {i}") for i in range(7)]
    with pytest.raises(InputError) as caught:
        finish_rows(failures, 0, 7, "subject", tmp_path)
    assert str(caught.value).endswith("s0: reason 0 | s1: reason 1 | s2: reason 2 | and 4 more")
    assert (tmp_path / "failures.csv").read_text().count("reason") == 7

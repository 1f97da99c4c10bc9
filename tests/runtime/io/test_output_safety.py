"""Outputs never destroy an input, never stand in for each other, and killed runs leave nothing
that the next run does not clear away."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from runtime.commands.cli import main
from runtime.errors import OutputError
from runtime.io import OutputSet
from runtime.io.write import stale_partials
from runtime.staging import host_name, pid_namespace
from tests.modelkit import blob_volume, run_failing, write_scan


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _predict(scan: Path, model: Path, *options: str) -> list[str]:
    return ["predict", str(scan), "--model", str(model), *options]


@pytest.mark.parametrize("option", ["--output", "--probabilities"])
def test_an_output_that_is_the_input_is_refused(tmp_path, model_dir, scan, option):
    before = _sha(scan)
    run_failing(_predict(scan, model_dir, option, str(scan)), f"{option} {scan} is the input {scan}",
                "never overwritten")
    assert _sha(scan) == before


def test_an_output_linked_to_the_input_is_refused(tmp_path, model_dir, scan):
    before = _sha(scan)
    soft, hard = tmp_path / "soft.nii.gz", tmp_path / "hard.nii.gz"
    soft.symlink_to(scan)
    os.link(scan, hard)
    for link in (soft, hard):
        run_failing(_predict(scan, model_dir, "--output", str(link)), f"--output {link} is the input")
    mask = write_scan(tmp_path / "mask.nii.gz", (blob_volume((10, 20, 20)) > 60).astype(np.uint8))
    run_failing(_predict(scan, model_dir, "--output", str(mask), "--mask", str(mask)), "is the input")
    assert _sha(scan) == before and _sha(hard) == before


def test_one_path_for_both_outputs_is_refused_before_any_work(tmp_path, model_dir, scan):
    out = tmp_path / "x.nii.gz"
    run_failing(_predict(scan, model_dir, "--output", str(out), "--probabilities", str(out)),
                f"--probabilities {out} and --output {out} are the same file")
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_an_output_that_is_a_link_is_replaced_and_its_target_kept(tmp_path, model_dir, scan):
    target = tmp_path / "elsewhere.nii.gz"
    target.write_bytes(b"kept")
    link = tmp_path / "mask.nii.gz"
    link.symlink_to(target)
    assert CliRunner().invoke(main, _predict(scan, model_dir, "--output", str(link))).exit_code == 0
    assert not link.is_symlink() and sitk.ReadImage(str(link)).GetSize() == (20, 20, 10)
    assert target.read_bytes() == b"kept"


def test_a_csv_run_never_writes_over_its_inputs(tmp_path, model_dir, scan):
    out = tmp_path / "out"
    out.mkdir()
    inside = write_scan(out / "a.nii.gz", blob_volume((10, 20, 20)))
    before = _sha(inside)
    table = tmp_path / "subjects.csv"
    table.write_text("subject_id,image\na,out/a.nii.gz\n")
    run_failing(["predict", "--csv", str(table), "--model", str(model_dir), "--output-dir", str(out)],
                f"subject a's labels {out / 'a.nii.gz'} is the input")
    assert _sha(inside) == before
    named_like_an_output = tmp_path / "summary.csv"
    named_like_an_output.write_text("subject_id,image\na,scan.nii.gz\n")
    run_failing(["predict", "--csv", str(named_like_an_output), "--model", str(model_dir), "--output-dir",
                 str(tmp_path)], f"--output-dir file {named_like_an_output} is the input")


def _staging(folder: Path, pid: int, host: str) -> Path:
    path = folder / f".medflow-partial-{pid}-{host}"
    path.mkdir()
    (path / "mask.nii.gz").write_bytes(b"half a mask")
    return path


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_the_next_run_removes_what_a_killed_run_left(tmp_path, model_dir, scan):
    dead = _staging(tmp_path, _dead_pid(), host_name())
    legacy = tmp_path / f".mask.nii.gz.{_dead_pid()}.partial.nii.gz"
    legacy.write_bytes(b"half a mask")
    live = _staging(tmp_path, os.getppid(), host_name())
    elsewhere = _staging(tmp_path, _dead_pid(), "another-host")
    namespace = pid_namespace()
    slide_map = tmp_path / f".medflow-slide-{_dead_pid()}-{host_name()}-{namespace}-k2x_9q"   # a slide's map on disk
    live_map = tmp_path / f".medflow-slide-{os.getppid()}-{host_name()}-{namespace}-a8c1"
    other_container = tmp_path / f".medflow-slide-{_dead_pid()}-{host_name()}-{namespace + 1}-b7d2"
    dead_job = tmp_path / f".medflow-partial-{_dead_pid()}-{host_name()}-{namespace}-x1y2"       # staged outputs
    other_job = tmp_path / f".medflow-partial-{_dead_pid()}-{host_name()}-{namespace + 1}-z3w4"  # another container
    for folder in (slide_map, live_map, other_container, dead_job, other_job):
        folder.mkdir()
        (folder / "result-0-0.f32").write_bytes(b"\0" * 16)
    not_ours = [tmp_path / f".thesis.{_dead_pid()}.partial", tmp_path / f".scan.nii.gz.{_dead_pid()}.partial.txt"]
    for path in not_ours:
        path.write_text("a user's file")
    not_ours.append(tmp_path / f".medflow-slide-{_dead_pid()}")                            # not one of ours
    not_ours[-1].mkdir()
    assert stale_partials(tmp_path) == sorted([dead, legacy, slide_map, dead_job])
    result = CliRunner().invoke(main, _predict(scan, model_dir, "--output", str(tmp_path / "mask.nii.gz")))
    assert result.exit_code == 0, result.output
    assert not dead.exists() and not legacy.exists() and not slide_map.exists() and not dead_job.exists()
    assert live.exists() and live_map.exists() and other_container.exists() and elsewhere.exists()
    assert other_job.exists()
    assert all(path.exists() for path in not_ours)


def test_a_killed_run_leaves_only_what_the_next_run_removes(tmp_path, model_dir, scan):
    """A real `runtime predict` killed with SIGKILL while it writes its output."""
    out = tmp_path / "out"
    out.mkdir()
    code = ("import os, signal, runtime.io.write as w\n"
            "real = w._gzip_file\n"
            "def killed(source, target):\n"
            "    real(source, target)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "w._gzip_file = killed\n"
            "from runtime.commands.cli import main\nmain()\n")
    done = subprocess.run([sys.executable, "-c", code, *_predict(scan, model_dir, "--output", str(out / "m.nii.gz"))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -9
    left = [p.name for p in out.iterdir()]
    assert len(left) == 1 and left[0].startswith(".medflow-partial-"), left
    result = CliRunner().invoke(main, _predict(scan, model_dir, "--output", str(out / "m.nii.gz")))
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.iterdir()] == ["m.nii.gz"]


def test_a_detached_output_keeps_its_data_file(tmp_path, model_dir, scan):
    """An .mhd or .nhdr output names its data file as published, and the next run keeps it."""
    for _ in range(2):
        for name in ("m.mhd", "m.nhdr"):
            result = CliRunner().invoke(main, _predict(scan, model_dir, "--output", str(tmp_path / name)))
            assert result.exit_code == 0, result.output
    assert {"m.mhd", "m.zraw", "m.nhdr", "m.raw.gz"} <= {p.name for p in tmp_path.iterdir()}
    for name in ("m.mhd", "m.nhdr"):
        assert sitk.ReadImage(str(tmp_path / name)).GetSize() == (20, 20, 10)
    assert not list(tmp_path.glob(".medflow-partial-*"))


@pytest.mark.parametrize("header, data, output", [("in.nhdr", "in.zraw", "in.mhd"), ("in.mhd", "m.raw.gz", "m.nhdr")])
def test_an_output_whose_data_file_is_an_inputs_data_file_is_refused(tmp_path, model_dir, scan, header, data, output):
    """A detached input header's data file is an input too: an .mhd output writes <stem>.zraw, an
    .nhdr one <stem>.raw.gz, which an input's header may name."""
    voxels = sitk.GetArrayFromImage(sitk.ReadImage(str(scan))).astype("<f4")
    (tmp_path / data).write_bytes(voxels.tobytes())
    z, y, x = voxels.shape
    text = (f"NRRD0004\ntype: float\ndimension: 3\nsizes: {x} {y} {z}\nspacings: 1 1 1\nendian: little\n"
            f"encoding: raw\ndata file: {data}\n\n" if header.endswith(".nhdr") else
            f"ObjectType = Image\nNDims = 3\nDimSize = {x} {y} {z}\nElementSpacing = 1 1 1\n"
            f"ElementType = MET_FLOAT\nElementByteOrderMSB = False\nElementDataFile = {data}\n")
    (tmp_path / header).write_text(text)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / header))).shape == voxels.shape
    before = _sha(tmp_path / data)
    run_failing(_predict(tmp_path / header, model_dir, "--output", str(tmp_path / output)),
                f"--output {tmp_path / data} is the input {tmp_path / data}")
    assert _sha(tmp_path / data) == before and not (tmp_path / output).exists()


def test_a_grid_the_output_format_cannot_hold_is_refused_not_coerced(tmp_path):
    reference = sitk.Image([4, 5, 6], sitk.sitkUInt8)
    reference.SetDirection((1, 0.5, 0, 0, 1, 0, 0, 0, 1))
    for name in ("mask.nii.gz", "mask.nrrd"):
        with pytest.raises(OutputError, match=rf"cannot write .*{name} on the input's grid.*write \.mha"):
            with OutputSet() as outputs:
                outputs.image(np.ones((6, 5, 4), np.uint8), reference, tmp_path / name)
    assert list(tmp_path.iterdir()) == []
    with OutputSet() as outputs:
        outputs.image(np.ones((6, 5, 4), np.uint8), reference, tmp_path / "mask.mha")
    assert np.allclose(sitk.ReadImage(str(tmp_path / "mask.mha")).GetDirection(), reference.GetDirection())


def test_an_output_with_a_folder_in_its_place_is_refused_before_any_work(tmp_path, model_dir, scan):
    """Also a detached header's data file, and one subject's file of a --csv run: the run's other
    outputs, written by an earlier run, stay as they were."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "o.nii.gz").write_bytes(b"earlier")
    (out / "p.zraw").mkdir()
    run_failing(_predict(scan, model_dir, "--output", str(out / "o.nii.gz"), "--probabilities", str(out / "p.mhd")),
                f"--probabilities {out / 'p.mhd'} writes its data file {out / 'p.zraw'}, which is a folder")
    table = tmp_path / "subjects.csv"
    table.write_text("subject_id,image\nx,scan.nii.gz\n")
    (out / "x_probabilities.nii.gz").mkdir()
    (out / "x.nii.gz").write_bytes(b"earlier")
    run_failing(["predict", "--csv", str(table), "--model", str(model_dir), "--output-dir", str(out),
                 "--save-probabilities"], f"{out / 'x_probabilities.nii.gz'} is a folder")
    assert (out / "o.nii.gz").read_bytes() == b"earlier" and (out / "x.nii.gz").read_bytes() == b"earlier"


def test_only_images_ask_for_lower_case_suffixes(tmp_path):
    """ITK names an image of another case otherwise; a slide's TIFF, an overlay or a table do not."""
    from runtime.io.write import IMAGE_SUFFIXES, check_writable

    for name, suffixes in (("m.TIF", (".tif", ".tiff")), ("o.PNG", (".png",)), ("p.CSV", (".csv",))):
        check_writable(tmp_path / name, suffixes)
    with pytest.raises(OutputError, match="in lower case"):
        check_writable(tmp_path / "m.MHA", IMAGE_SUFFIXES)


def test_output_names_that_would_fail_after_the_work_are_refused_before_it(tmp_path, model_dir, scan):
    """An upper-case suffix (ITK writes such a file under another name), a name too long for the
    file system, a folder that is a file, a subject id too long for its outputs' names."""
    for name, expected in (("b.MHA", "must end with one of .nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd (in lower case"),
                           ("f.Nii.Gz", "(in lower case"), ("a" * 260 + ".nii.gz", "File name too long"),
                           ("scan.nii.gz/o.nii.gz", f"folder {scan} is a file, not a folder")):
        run_failing(_predict(scan, model_dir, "--output", str(tmp_path / name)), expected)
    table = tmp_path / "subjects.csv"
    table.write_text(f"subject_id,image\n{'x' * 201},scan.nii.gz\n")
    run_failing(["predict", "--csv", str(table), "--model", str(model_dir), "--output-dir", str(tmp_path / "out"),
                 "--save-probabilities"], "beginning with a letter or digit, at most 200 (it names output files)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "scan.nii.gz", "subjects.csv"]


def test_two_subjects_whose_outputs_share_a_name_are_named_in_the_refusal(tmp_path, model_dir, scan):
    table = tmp_path / "subjects.csv"
    table.write_text("subject_id,image\na,scan.nii.gz\na_probabilities,scan.nii.gz\n")
    out = tmp_path / "out"
    run_failing(["predict", "--csv", str(table), "--model", str(model_dir), "--output-dir", str(out),
                 "--save-probabilities"], f"subject a_probabilities's labels {out / 'a_probabilities.nii.gz'} and "
                f"subject a's probabilities {out / 'a_probabilities.nii.gz'} are the same file")


def test_a_killed_runs_staging_folder_holding_replaced_outputs_is_kept_not_removed(tmp_path, model_dir, scan, caplog):
    """Killed between two renames, a run leaves the earlier files it replaced (.replaced-N) in its
    staging folder, the only copy of some: the next run keeps the folder, renamed, and says so."""
    import logging

    dead = tmp_path / f".medflow-partial-{_dead_pid()}-{host_name()}-{pid_namespace()}-k1l2"
    dead.mkdir()
    (dead / ".replaced-0").write_text("the earlier report\n")
    with caplog.at_level(logging.WARNING, logger="runtime.io.write"):
        result = CliRunner().invoke(main, _predict(scan, model_dir, "--output", str(tmp_path / "mask.nii.gz")))
    assert result.exit_code == 0, result.output
    kept = tmp_path / dead.name.replace(".medflow-partial-", ".medflow-kept-", 1)
    assert not dead.exists() and (kept / ".replaced-0").read_text() == "the earlier report\n"
    assert any(f"kept {kept}, left by an interrupted run" in r.getMessage() for r in caplog.records)

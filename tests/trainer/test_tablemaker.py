"""`trainer csv`: the subject CSV made from a folder by file-name patterns, then trained from."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from tests.modelkit import blob_volume, write_scan
from tests.trainerkit import TINY_RUN, write_config
from trainer.cli import main


def per_subject_folders(root: Path, count: int = 6) -> None:
    """root/<subject>/anat/<subject>_T1w.nii.gz and root/<subject>/<subject>_seg.nii.gz, as a BIDS-like tree."""
    for i in range(count):
        subject = root / f"sub-{i:02d}"
        (subject / "anat").mkdir(parents=True)
        array = blob_volume((16, 24, 24), seed=i)
        write_scan(subject / "anat" / f"sub-{i:02d}_T1w.nii.gz", array)
        write_scan(subject / f"sub-{i:02d}_seg.nii.gz", (array > 100).astype(np.uint8))


def test_a_folder_per_subject_becomes_a_table_that_trainer_check_accepts(tmp_path):
    per_subject_folders(tmp_path / "data")
    runner = CliRunner()
    made = runner.invoke(main, ["csv", str(tmp_path / "data"), "--channel", "image=*_T1w.nii.gz",
                                "--label", "*_seg.nii.gz", "--output", str(tmp_path / "subjects.csv")])
    assert made.exit_code == 0, made.output
    assert "6 subject(s)" in made.output
    lines = (tmp_path / "subjects.csv").read_text().splitlines()
    assert lines[0] == "subject_id,image,label"
    assert lines[1] == "sub-00,data/sub-00/anat/sub-00_T1w.nii.gz,data/sub-00/sub-00_seg.nii.gz"
    checked = runner.invoke(main, ["check", str(write_config(tmp_path, TINY_RUN))])
    assert checked.exit_code == 0, checked.output


def test_a_flat_folder_takes_the_subject_from_the_patterns_star(tmp_path):
    data = tmp_path / "flat"
    data.mkdir()
    for i in range(3):
        array = blob_volume((8, 12, 12), seed=i)
        write_scan(data / f"case{i}_t1.nii.gz", array)
        write_scan(data / f"case{i}_flair.nii.gz", array * 2)
    (data / "notes.txt").write_text("not an image")
    out = tmp_path / "tables" / "subjects.csv"
    made = CliRunner().invoke(main, ["csv", str(data), "--channel", "t1=*_t1.nii.gz", "--channel",
                                     "flair=*_flair.nii.gz", "--output", str(out)])
    assert made.exit_code == 0, made.output
    assert out.read_text().splitlines() == [
        "subject_id,t1,flair", "case0,../flat/case0_t1.nii.gz,../flat/case0_flair.nii.gz",
        "case1,../flat/case1_t1.nii.gz,../flat/case1_flair.nii.gz",
        "case2,../flat/case2_t1.nii.gz,../flat/case2_flair.nii.gz"]


def test_a_scan_beside_its_label_of_a_longer_name_goes_to_the_pattern_that_spells_more_of_it(tmp_path):
    """`ct_*.nii.gz` matches `ct_00_seg.nii.gz` too; that file goes to the label, whose pattern
    spells more of its name (every subject had "no label file" and its `00_seg` a subject of its
    own). Two patterns that spell as much are refused naming the file."""
    data = tmp_path / "flat"
    data.mkdir()
    for i in range(2):
        array = blob_volume((8, 12, 12), seed=i)
        write_scan(data / f"ct_{i:02d}.nii.gz", array)
        write_scan(data / f"ct_{i:02d}_seg.nii.gz", (array > 100).astype(np.uint8))
    made = CliRunner().invoke(main, ["csv", str(data), "--channel", "ct=ct_*.nii.gz", "--label", "ct_*_seg.nii.gz",
                                     "--output", str(tmp_path / "subjects.csv")])
    assert made.exit_code == 0, made.output
    assert (tmp_path / "subjects.csv").read_text().splitlines() == [
        "subject_id,ct,label", "00,flat/ct_00.nii.gz,flat/ct_00_seg.nii.gz",
        "01,flat/ct_01.nii.gz,flat/ct_01_seg.nii.gz"]
    write_scan(data / "ct_02.nii.gz", blob_volume((8, 12, 12), seed=2))                # no label of its own
    lacking = CliRunner().invoke(main, ["csv", str(data), "--channel", "ct=ct_*.nii.gz", "--label", "ct_*_seg.nii.gz",
                                        "--output", str(tmp_path / "lacking.csv")])
    assert lacking.exit_code == 1 and "02 has no label file (ct_*_seg.nii.gz)" in lacking.output, lacking.output
    assert "spells most" not in lacking.output                    # the other subjects' shared files are no cause
    (data / "ct_02.nii.gz").unlink()
    tied = CliRunner().invoke(main, ["csv", str(data), "--channel", "a=ct_*.nii.gz", "--channel", "b=*_00.nii.gz",
                                     "--output", str(tmp_path / "tied.csv")])
    assert tied.exit_code == 1 and not (tmp_path / "tied.csv").exists(), tied.output
    assert f"{data / 'ct_00.nii.gz'} matches both ct_*.nii.gz (a) and *_00.nii.gz (b); make the patterns tell its " \
        "column apart" in tied.output
    folders = tmp_path / "by_subject"
    for i in range(2):
        (folders / f"s{i}").mkdir(parents=True)
        write_scan(folders / f"s{i}" / "image.nii.gz", blob_volume((8, 12, 12), seed=i))
        write_scan(folders / f"s{i}" / "image_mask.nii.gz", np.zeros((8, 12, 12), np.uint8))
    taken = CliRunner().invoke(main, ["csv", str(folders), "--channel", "img=image*.nii.gz", "--label", "*mask.nii.gz",
                                      "--output", str(tmp_path / "taken.csv")])
    assert taken.exit_code == 1 and not (tmp_path / "taken.csv").exists(), taken.output
    assert "s0 has 2 img files" in taken.output and "s0 has no label file (*mask.nii.gz)" in taken.output
    assert "a file several patterns match goes to the one that spells most of its name: s0's image_mask.nii.gz " \
        "(image*.nii.gz, *mask.nii.gz) went to img; s1's image_mask.nii.gz" in taken.output
    made = CliRunner().invoke(main, ["csv", str(folders), "--channel", "img=image.nii.gz", "--label", "*mask.nii.gz",
                                     "--output", str(tmp_path / "made.csv")])
    assert made.exit_code == 0 and (tmp_path / "made.csv").read_text().splitlines()[1] == \
        "s0,by_subject/s0/image.nii.gz,by_subject/s0/image_mask.nii.gz", made.output


def test_folders_of_links_into_shared_storage_are_read_through_their_links(tmp_path):
    store, data, flat = tmp_path / "store", tmp_path / "links", tmp_path / "flat"
    for folder in (store, data / "case0", data / "case1", flat):
        folder.mkdir(parents=True)
    write_scan(store / "a.nii.gz", blob_volume((8, 12, 12)))
    for case in ("case0", "case1"):
        (data / case / "ct.nii.gz").symlink_to(store / "a.nii.gz")
        (flat / f"{case}_ct.nii.gz").symlink_to(store / "a.nii.gz")
    (data / "loop").symlink_to(data, target_is_directory=True)      # a link to a folder is not walked into
    out = tmp_path / "subjects.csv"
    made = CliRunner().invoke(main, ["csv", str(data), "--channel", "ct=ct.nii.gz", "--output", str(out)])
    assert made.exit_code == 0, made.output
    assert out.read_text().splitlines() == ["subject_id,ct", "case0,links/case0/ct.nii.gz", "case1,links/case1/ct.nii.gz"]
    out.unlink()
    made = CliRunner().invoke(main, ["csv", str(flat), "--channel", "ct=*_ct.nii.gz", "--output", str(out)])
    assert made.exit_code == 0, made.output
    assert out.read_text().splitlines() == ["subject_id,ct", "case0,flat/case0_ct.nii.gz", "case1,flat/case1_ct.nii.gz"]
    (tmp_path / "elsewhere" / "tables").mkdir(parents=True)
    (tmp_path / "tables").symlink_to(tmp_path / "elsewhere" / "tables", target_is_directory=True)
    linked = tmp_path / "tables" / "subjects.csv"          # the table's folder is itself a link
    made = CliRunner().invoke(main, ["csv", str(flat), "--channel", "ct=*_ct.nii.gz", "--output", str(linked)])
    assert made.exit_code == 0, made.output
    first = linked.read_text().splitlines()[1].split(",")[1]
    assert (linked.parent.resolve() / first).resolve() == (store / "a.nii.gz").resolve() and first.endswith("_ct.nii.gz")


def _refused(args: list[str], *expected: str) -> str:
    """The one error line of a refused run."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_every_subject_missing_a_file_or_holding_two_is_named_at_once_and_nothing_is_written(tmp_path):
    per_subject_folders(tmp_path / "data", count=4)
    (tmp_path / "data" / "sub-01" / "sub-01_seg.nii.gz").unlink()
    shutil.copyfile(tmp_path / "data" / "sub-02" / "anat" / "sub-02_T1w.nii.gz",
                    tmp_path / "data" / "sub-02" / "sub-02_run2_T1w.nii.gz")
    out = tmp_path / "subjects.csv"
    args = ["csv", str(tmp_path / "data"), "--channel", "image=*_T1w.nii.gz", "--label", "*_seg.nii.gz",
            "--output", str(out)]
    assert "imagesTr" not in _refused(args, "2 problem(s)", "sub-01 has no label file", "sub-02 has 2 image files")
    assert not out.exists()
    shutil.copyfile(tmp_path / "data" / "sub-02" / "anat" / "sub-02_T1w.nii.gz",
                    tmp_path / "data" / "sub-01" / "sub-01_seg.nii.gz")
    (tmp_path / "data" / "sub-02" / "sub-02_run2_T1w.nii.gz").unlink()
    nrrd = tmp_path / "data" / "sub-03"
    for path in list(nrrd.rglob("*.nii.gz")):
        path.rename(path.with_name(path.name.replace(".nii.gz", ".nrrd")))      # another format: no pattern matches
    (tmp_path / "data" / ".git").mkdir()
    (tmp_path / "data" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")  # a hidden folder is no subject
    made = CliRunner().invoke(main, args)
    assert made.exit_code == 0 and "3 subject(s)" in made.output, made.output
    assert "warning: folder(s) sub-03 of" in made.stderr and "widen the patterns" in made.stderr, made.stderr
    out.unlink()
    _refused(["csv", str(tmp_path / "data"), "--channel", "t1", "--output", str(out)], "NAME=PATTERN")
    _refused(["csv", str(tmp_path / "nowhere"), "--channel", "t1=*.nii.gz", "--output", str(out)], "not a folder")
    _refused(["csv", str(tmp_path / "data"), "--channel", "t1=*_CT.nii.gz", "--output", str(out)], "no file",
             "or the names in one folder of DATA_DIR, e.g. imagesTr/*_0000.nii.gz")
    out.write_text("keep me\n")
    _refused(["csv", str(tmp_path / "data" / "sub-00"), "--channel", "t1=*_T1w.nii.gz", "--output", str(out)],
             "already exists")
    assert out.read_text() == "keep me\n"


def test_matching_files_both_in_subject_folders_and_at_the_top_are_refused(tmp_path):
    per_subject_folders(tmp_path / "data", count=2)
    shutil.copyfile(tmp_path / "data" / "sub-00" / "anat" / "sub-00_T1w.nii.gz", tmp_path / "data" / "sub-09_T1w.nii.gz")
    (tmp_path / "data" / "notes").mkdir()
    (tmp_path / "data" / "notes" / "readme.txt").write_text("not an image")
    _refused(["csv", str(tmp_path / "data"), "--channel", "image=*_T1w.nii.gz", "--output",
              str(tmp_path / "subjects.csv")], "both directly in it (sub-09_T1w.nii.gz)", "keep one layout")
    (tmp_path / "data" / "sub-09_T1w.nii.gz").unlink()
    made = CliRunner().invoke(main, ["csv", str(tmp_path / "data"), "--channel", "image=*_T1w.nii.gz", "--output",
                                     str(tmp_path / "subjects.csv")])
    assert made.exit_code == 0 and "2 subject(s)" in made.output, made.output


def test_folders_sorted_by_kind_as_nnunet_lays_them_out_take_the_folder_in_each_pattern(tmp_path):
    data = tmp_path / "Dataset001_Blobs"
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (data / folder).mkdir(parents=True)
    for i in range(3):
        array = blob_volume((8, 12, 12), seed=i)
        write_scan(data / "imagesTr" / f"case_{i:03d}_0000.nii.gz", array)
        write_scan(data / "imagesTr" / f"case_{i:03d}_0001.nii.gz", array * 2)
        write_scan(data / "labelsTr" / f"case_{i:03d}.nii.gz", (array > 100).astype(np.uint8))
    write_scan(data / "imagesTs" / "case_100_0000.nii.gz", blob_volume((8, 12, 12)))
    (data / "dataset.json").write_text("{}")
    out = tmp_path / "subjects.csv"
    guessed = ["csv", str(data), "--channel", "t1=*_0000.nii.gz", "--channel", "t2=*_0001.nii.gz", "--label",
               "case_???.nii.gz", "--output", str(out)]
    _refused(guessed, "imagesTr has 3 t1 files", "name the folder in each pattern: imagesTr/*_0000.nii.gz")
    made = CliRunner().invoke(main, ["csv", str(data), "--channel", "t1=imagesTr/*_0000.nii.gz", "--channel",
                                     "t2=imagesTr/*_0001.nii.gz", "--label", "labelsTr/*.nii.gz", "--output", str(out)])
    assert made.exit_code == 0 and "3 subject(s)" in made.output and "warning" not in made.output, made.output
    assert out.read_text().splitlines()[1:] == [
        f"case_{i:03d},Dataset001_Blobs/imagesTr/case_{i:03d}_0000.nii.gz,Dataset001_Blobs/imagesTr/case_{i:03d}"
        f"_0001.nii.gz,Dataset001_Blobs/labelsTr/case_{i:03d}.nii.gz" for i in range(3)]
    out.unlink()
    _refused(["csv", str(data), "--channel", "t1=imagesTr/*_0000.nii.gz", "--label", "*.nii.gz", "--output",
              str(out)], "every pattern names its folder")
    _refused(["csv", str(data), "--channel", "t1=imagesTr/*_0000.nii.gz", "--label", "labelsTR/*.nii.gz", "--output",
              str(out)], "has no folder labelsTR (pattern labelsTR/*.nii.gz); its folders are imagesTr, imagesTs, "
             "labelsTr")
    _refused(["csv", str(data), "--channel", "t1=../*_0000.nii.gz", "--output", str(out)], "plain folder inside")
    _refused(["csv", str(data), "--channel", "t1=images*/*_0000.nii.gz", "--output", str(out)], "plain folder inside")
    _refused(["csv", str(data), "--channel", "t1=imagesTr/case_*_*.nii.gz", "--output", str(out)], "exactly one '*'")
    assert not out.exists()

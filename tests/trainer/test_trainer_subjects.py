"""The subject CSV (every problem reported together) and the `trainer check` / `trainer splits` commands."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from click.testing import CliRunner

from tests.modelkit import write_scan
from tests.trainerkit import TINY_RUN, blob_subjects, write_config
from trainer.cli import main
from trainer.config import ConfigError, load_config
from trainer.splits import read_splits
from trainer.subjects import Subject, read_subjects


def image(path: Path, size: tuple[int, ...] = (8, 8, 4), spacing: tuple[float, ...] = (1.0, 1.0, 2.0),
          pixel: int = sitk.sitkFloat32) -> Path:
    """A small image of random voxels (so that a gzip file is mostly data, not header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    voxels = np.random.default_rng(0).integers(0, 100, size=size[::-1])
    img = sitk.Cast(sitk.GetImageFromArray(voxels), pixel)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


def truncated(path: Path, keep: float) -> Path:
    """A real image file cut to a fraction of its bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def config_file(folder: Path, task: str = "segmentation", **extra: Any) -> Path:
    classes = {"regression": {0: "age"}, "classification": {0: "benign", 1: "malignant"}}
    data = {
        "name": "toy", "task": task, "modality": "radiology", "dimensions": 3,
        "data": {"csv": "table/subjects.csv", "channels": ["t1", "flair"], "label": "label",
                 "classes": classes.get(task, {0: "background", 1: "lesion"})},
        "patch": {"size": [32, 32, 32]}, **extra,
    }
    if task != "segmentation":                  # the model takes the whole image, resized to the patch
        data.setdefault("preprocessing", [{"resize": {"shape": list(data["patch"]["size"])}}])
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def table(folder: Path, rows: list[str], header: str = "subject_id,t1,flair,label") -> Path:
    """The subject table; a row naming the very image files of an earlier row (one scan under two
    ids, which the trainer refuses) names hard links of its own to them instead."""
    path = folder / "table" / "subjects.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    seen: set[tuple[str, ...]] = set()
    written = []
    for row in rows:
        cells = row.split(",")
        channels = tuple(cells[1:-1])
        if channels in seen and all((path.parent / c).is_file() for c in channels if c):
            cells[1:-1] = [_linked(path.parent, c, cells[0]) if c else c for c in channels]
        seen.add(channels)
        written.append(",".join(cells))
    path.write_text("\n".join([header, *written]) + "\n", encoding="utf-8")
    return path


def _linked(folder: Path, cell: str, subject_id: str) -> str:
    """A hard link (or copy) in the table's folder, named for the subject, to the file `cell` names."""
    source = folder / cell
    target = folder / f"{subject_id}_{source.name}"
    target.unlink(missing_ok=True)
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copyfile(source, target)
    return target.name


def test_segmentation_subjects_resolve_paths_relative_to_the_csv(tmp_path: Path) -> None:
    for name in ("t1", "flair"):
        image(tmp_path / "images" / f"{name}.nii.gz")
    image(tmp_path / "images" / "label.nrrd", pixel=sitk.sitkUInt8)
    table(tmp_path, ["s1,../images/t1.nii.gz,../images/flair.nii.gz,../images/label.nrrd"])
    subjects = read_subjects(load_config(config_file(tmp_path)))
    folder = tmp_path / "images"
    assert subjects == [Subject("s1", (folder / "t1.nii.gz", folder / "flair.nii.gz"), folder / "label.nrrd")]


def test_every_table_problem_is_reported_together(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for name in ("t1", "flair", "label"):
        image(folder / f"{name}.nii.gz")
    plain = truncated(image(folder / "cut.nii", size=(16, 16, 8)), 0.6)
    zipped = truncated(image(folder / "cut.nii.gz", size=(32, 32, 24)), 0.5)
    image(folder / "coarse_label.nii.gz", spacing=(1.0, 1.0, 3.0))
    (folder / "notes.nrrd").write_text("not an image\n", encoding="utf-8")
    rows = [
        "s1,../images/t1.nii.gz,../images/flair.nii.gz,../images/label.nii.gz",          # line 2: fine
        "s2,../images/absent.nii.gz,../images/flair.nii.gz,../images/label.nii.gz",      # line 3: missing file
        "s3,../images/t1.nii.gz,../images/cut.nii,../images/label.nii.gz",               # line 4: truncated .nii
        "s4,../images/t1.nii.gz,../images/flair.nii.gz,../images/coarse_label.nii.gz",   # line 5: other grid
        "s5,../images/t1.nii.gz,,../images/label.nii.gz",                                # line 6: empty cell
        "s1,../images/t1.nii.gz,../images/flair.nii.gz,../images/label.nii.gz",          # line 7: duplicate id
        "s6,../images/cut.nii.gz,../images/flair.nii.gz,../images/label.nii.gz",         # line 8: truncated .gz
        "s7,../images/notes.nrrd,../images/flair.nii.gz,../images/label.nii.gz",         # line 9: not an image
    ]
    table(tmp_path, rows)
    with pytest.raises(ConfigError) as caught:
        read_subjects(load_config(config_file(tmp_path)))
    problems = caught.value.problems
    expected = [
        f"line 3 (subject s2), column t1: {folder / 'absent.nii.gz'} does not exist",
        f"line 4 (subject s3), column flair: {plain} is truncated: it holds",
        f"line 5 (subject s4): label {folder / 'coarse_label.nii.gz'} (size 8×8×4, spacing 1×1×3 mm",
        "line 6 (subject s5): empty cell(s) in column(s) flair",
        "subject s1: appears on lines 2, 7; subject ids must be unique",
        f"line 8 (subject s6), column t1: {zipped} is truncated",
        f"line 9 (subject s7), column t1: {folder / 'notes.nrrd'} does not start with an NRRD magic line",
    ]
    assert len(problems) == len(expected), problems
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)
    grid = next(p for p in problems if p.startswith("line 5"))
    assert f"is not on the grid of t1 {tmp_path / 'table' / 's4_t1.nii.gz'}" in grid


def test_missing_columns_are_named(tmp_path: Path) -> None:
    table(tmp_path, ["s1,a.nii.gz,b.nii.gz"], header="id,t1,flair")
    with pytest.raises(ConfigError) as caught:
        read_subjects(load_config(config_file(tmp_path)))
    assert caught.value.problems == (f"{tmp_path / 'table' / 'subjects.csv'}: missing column(s) subject_id, label; "
                                     "the header has id, t1, flair",)
    table(tmp_path, ["s1,a.nii.gz,b.nii.gz,c.nii.gz,1"], header="subject_id,t1,flair,t1,label")
    with pytest.raises(ConfigError) as caught:
        read_subjects(load_config(config_file(tmp_path)))
    assert caught.value.problems == (f"{tmp_path / 'table' / 'subjects.csv'}: names column(s) t1 more than once; "
                                     "keep one of each",)


def test_class_values_and_regression_targets_are_checked(tmp_path: Path) -> None:
    for name in ("t1", "flair"):
        image(tmp_path / "table" / f"{name}.nii.gz")
    table(tmp_path, ["a,t1.nii.gz,flair.nii.gz,1", "b,t1.nii.gz,flair.nii.gz,malignant",
                     "c,t1.nii.gz,flair.nii.gz,0.0", "d,t1.nii.gz,flair.nii.gz,2", "e,t1.nii.gz,flair.nii.gz,big"])
    with pytest.raises(ConfigError) as caught:
        read_subjects(load_config(config_file(tmp_path, "classification")))
    assert [p.split(":")[0] for p in caught.value.problems] == ["line 5 (subject d), column label",
                                                               "line 6 (subject e), column label"]
    assert "class '2' is not in data.classes (0 (benign), 1 (malignant))" in caught.value.problems[0]

    table(tmp_path, ["a,t1.nii.gz,flair.nii.gz,1", "b,t1.nii.gz,flair.nii.gz,61.5"])
    assert [s.label for s in read_subjects(load_config(config_file(tmp_path, "regression")))] == [1.0, 61.5]
    table(tmp_path, ["a,t1.nii.gz,flair.nii.gz,nan", "b,t1.nii.gz,flair.nii.gz,old"])
    with pytest.raises(ConfigError) as caught:
        read_subjects(load_config(config_file(tmp_path, "regression")))
    assert len(caught.value.problems) == 2
    assert all("must be a finite number (the regression target)" in p and "leave its row out of the table" in p
               for p in caught.value.problems)


def test_a_2d_config_refuses_volumes(tmp_path: Path) -> None:
    image(tmp_path / "table" / "slice.nii.gz", size=(8, 8, 1))
    image(tmp_path / "table" / "volume.nii.gz", size=(8, 8, 3))
    table(tmp_path, ["a,slice.nii.gz,slice.nii.gz,0", "b,slice.nii.gz,volume.nii.gz,1"])
    path = config_file(tmp_path, "classification", dimensions=2, patch={"size": [32, 32]})
    with pytest.raises(ConfigError) as caught:
        read_subjects(load_config(path))
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith("line 3 (subject b), column flair:")
    assert ("is a 3D image of size 8×8×3; the config has dimensions: 2; give 2D images, or 3D images one slice "
            "thick along z") in caught.value.problems[0]


def test_real_scans_and_their_grids(tmp_path: Path, data_dir: Path) -> None:
    radiology = (data_dir / "radiology").resolve()  # the table names files by their resolved paths
    breast, breast_label = radiology / "pyradiomics_breast1_image.nrrd", radiology / "pyradiomics_breast1_label.nrrd"
    brain_label = radiology / "pyradiomics_brain1_label.nrrd"
    table(tmp_path, [f"breast,{breast},{breast},{breast_label}", f"mixed,{breast},{breast},{brain_label}"])
    with pytest.raises(ConfigError) as caught:
        read_subjects(load_config(config_file(tmp_path)))
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(f"line 3 (subject mixed): label {brain_label} (size 256×256×25")
    assert f"is not on the grid of t1 {tmp_path / 'table' / 'mixed_'}{breast.name} (size 45×120×21" in caught.value.problems[0]


# ----------------------------------------------------------------------------- the commands

def classification_project(folder: Path, subjects: int = 10, **extra: Any) -> Path:
    for name in ("t1", "flair"):
        image(folder / "table" / f"{name}.nii.gz")
    table(folder, [f"case{i:02d},t1.nii.gz,flair.nii.gz,{i % 2}" for i in range(subjects)])
    return config_file(folder, "classification", **extra)


def run(*args: str | Path) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_check_reports_ok(tmp_path: Path) -> None:
    result = run("check", classification_project(tmp_path, cross_validation={"testing_folds": 2, "validation_folds": 2}))
    assert result.exit_code == 0, result.output
    assert result.output == "config OK: 10 subjects, 4 folds (2 testing folds x 2 validation folds); vgg16 exports to ONNX\n"


def test_check_warns_of_a_validation_set_of_one_class(tmp_path: Path) -> None:
    """Its AUC is undefined and the best epoch would be chosen on it blindly."""
    one = run("check", classification_project(tmp_path, cross_validation={
        "testing_folds": 0, "validation_fraction": 0.1, "stratify": False}))
    assert one.exit_code == 0, one.output
    assert "warning: the validation subjects of fold(s) 0.1 (" in one.stderr and "hold one class only" in one.stderr, \
        one.stderr
    both = run("check", classification_project(tmp_path, cross_validation={"testing_folds": 2, "validation_folds": 2}))
    assert both.exit_code == 0 and "warning" not in both.stderr, both.stderr


def test_check_warns_of_a_class_no_subject_holds_and_of_folds_that_train_without_one(tmp_path: Path) -> None:
    """Balanced accuracy averages the classes present, so a table of one class scores 1 unwarned."""
    for name in ("t1", "flair"):
        image(tmp_path / "table" / f"{name}.nii.gz")
    table(tmp_path, [f"case{i:02d},t1.nii.gz,flair.nii.gz,0" for i in range(8)])
    never = run("check", config_file(tmp_path, "classification",
                                     cross_validation={"testing_folds": 2, "validation_folds": 2}))
    assert never.exit_code == 0, never.output
    assert "warning: no subject of the table holds class(es) malignant (1): the model cannot learn them" in \
        never.stderr, never.stderr
    assert "training subjects of fold(s)" not in never.stderr                # said once, for the table
    table(tmp_path, [f"case{i:02d},t1.nii.gz,flair.nii.gz,{int(i == 0)}" for i in range(8)])
    rare = run("check", config_file(tmp_path, "classification", cross_validation={
        "testing_folds": 2, "validation_folds": 2, "stratify": False}))
    assert rare.exit_code == 0, rare.output
    found = re.search(r"warning: the training subjects of fold\(s\) (.*) hold no subject of the class\(es\) in "
                      r"brackets, so those folds cannot learn them", rare.stderr)
    assert found and "(malignant)" in found.group(1), rare.stderr
    assert "no subject of the table holds" not in rare.stderr
    both = run("check", classification_project(tmp_path / "both", cross_validation={
        "testing_folds": 2, "validation_folds": 2}))
    assert both.exit_code == 0 and "warning" not in both.stderr, both.stderr


def test_check_warns_of_subject_ids_the_runtime_refuses(tmp_path: Path) -> None:
    """Training takes any id, but runtime predict --csv names output files after them."""
    blob_subjects(tmp_path, count=4)
    table_path = tmp_path / "subjects.csv"
    rows = table_path.read_text().splitlines()
    renamed = {"s0": "sub 000", "s1": ".s1"}
    table_path.write_text("\n".join([rows[0], *(",".join([renamed.get(r.split(",")[0], r.split(",")[0]),
                                                            *r.split(",")[1:]]) for r in rows[1:])]) + "\n")
    config = write_config(tmp_path, {**TINY_RUN, "cross_validation": {"testing_folds": 0, "validation_folds": 2}})
    result = run("check", config)
    assert result.exit_code == 0, result.output
    assert "warning: subject id(s) 'sub 000', '.s1' are not letters, digits, '.', '_' or '-', beginning with a " \
           "letter or digit, at most 200; training takes them, but runtime predict --csv" in result.stderr, \
        result.stderr
    table_path.write_text("\n".join(rows) + "\n")
    assert "warning" not in run("check", config).stderr


def test_check_lists_every_config_problem(tmp_path: Path) -> None:
    path = classification_project(tmp_path, training={"optimizer": {"lr": -1}, "epochs": 0})
    result = run("check", path)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"config {path} has 2 problem(s) (see docs/trainer.md):",
        "error: training.epochs: must be >= 1, got 0",
        "error: training.optimizer.lr: must be > 0, got -1",
    ]


def test_check_lists_every_table_problem(tmp_path: Path) -> None:
    path = classification_project(tmp_path)
    with open(tmp_path / "table" / "subjects.csv", "a", encoding="utf-8") as handle:
        handle.write("case01,t1.nii.gz,gone.nii.gz,1\ncase99,t1.nii.gz,flair.nii.gz,7\n")
    result = run("check", path)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"subject table {tmp_path / 'table' / 'subjects.csv'} has 3 problem(s) (see docs/trainer.md):"
    assert [line.split(":")[1].strip() for line in lines[1:]] == [
        "line 12 (subject case01), column flair", "line 13 (subject case99), column label", "subject case01"]


def test_check_refuses_too_few_subjects_for_the_folds(tmp_path: Path) -> None:
    result = run("check", classification_project(tmp_path, subjects=6))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: 6 subjects are too few for 5 testing folds x 5 validation folds")
    assert "at least 7;" in result.stderr


def test_check_of_a_missing_config(tmp_path: Path) -> None:
    result = run("check", tmp_path / "absent.yaml")
    assert result.exit_code == 1 and result.stderr.startswith("error: config file ")


def test_splits_shows_and_writes_the_folds(tmp_path: Path) -> None:
    path = classification_project(tmp_path, subjects=12, cross_validation={"testing_folds": 3, "validation_folds": 2})
    result = run("splits", path)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "12 subjects, 6 folds (3 testing folds x 2 validation folds)"
    assert lines[2].split() == ["1.1", "4", "4", "4", "0:2", "1:2", "|", "0:2", "1:2", "|", "0:2", "1:2"]
    assert len(lines) == 8 and not (tmp_path / "runs").exists()

    written = run("splits", path, "--write")
    splits_csv = tmp_path / "runs" / "toy" / "splits.csv"
    assert written.exit_code == 0 and written.output.endswith(f"wrote {splits_csv}\n")
    assert [f.id for f in read_splits(splits_csv)] == ["1.1", "1.2", "2.1", "2.2", "3.1", "3.2"]
    again = run("splits", path, "--write")
    assert again.exit_code == 0 and again.output.endswith("already holds these splits\n")

    reseeded = classification_project(tmp_path, subjects=12, seed=3,
                                      cross_validation={"testing_folds": 3, "validation_folds": 2})
    clash = run("splits", reseeded, "--write")
    assert clash.exit_code == 1 and "already holds other splits" in clash.stderr


def test_the_group_keeps_its_name() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "check" in result.output and "splits" in result.output


def test_check_with_labels_names_every_label_map_holding_a_value_that_is_no_class(tmp_path: Path) -> None:
    blob_subjects(tmp_path, count=4)
    (tmp_path / "store").mkdir()
    write_scan(tmp_path / "store" / "stray.nii.gz", np.full((16, 24, 24), 7, dtype=np.uint8))
    (tmp_path / "s1_seg.nii.gz").unlink()
    (tmp_path / "s1_seg.nii.gz").symlink_to(tmp_path / "store" / "stray.nii.gz")    # named as the table names it
    write_scan(tmp_path / "s3_seg.nii.gz", np.arange(16 * 24 * 24).reshape(16, 24, 24).astype(np.uint8) % 3)
    config = write_config(tmp_path, TINY_RUN)
    assert CliRunner().invoke(main, ["check", str(config)]).exit_code == 0
    result = CliRunner().invoke(main, ["check", str(config), "--labels"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: subject s1: label {tmp_path / 's1_seg.nii.gz'} holds value(s) [7] that are no class of "
                      "data.classes (0, 1); add them there, map them with data.relabel, mark "
                      "them unannotated with data.ignore_value, or fix the label map",
                      f"error: subject s3: label {tmp_path / 's3_seg.nii.gz'} holds value(s) [2] that are no class of "
                      "data.classes (0, 1); add them there, map them with data.relabel, mark "
                      "them unannotated with data.ignore_value, or fix the label map"], result.stderr
    assert "labels: subject 4/4 (s3) read" in result.stderr


def test_check_with_labels_refuses_a_label_map_of_fractions_that_training_would_read_as_background(
        tmp_path: Path) -> None:
    """A mask saved as 0 / 0.9999 (or resampled linearly) read as integers is all background: every
    fold then scored validation Dice 1.0 on empty maps. `trainer check --labels` names it."""
    blob_subjects(tmp_path, count=4)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "s2_seg.nii.gz"))).astype(np.float32)
    write_scan(tmp_path / "s2_seg.nii.gz", mask * np.float32(0.9999))
    config = write_config(tmp_path, TINY_RUN)
    result = CliRunner().invoke(main, ["check", str(config), "--labels"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: subject s2: {tmp_path / 's2_seg.nii.gz'} is not a label "
                                                     "map: it holds float32 values that are not whole numbers"), errors


def test_a_whole_image_model_whose_preprocessing_does_not_give_the_patch_size_is_refused(tmp_path: Path) -> None:
    """A classifier takes the whole preprocessed image: without a resize to patch.size it trained on
    the images as they were, and the exported model then refused every one of them."""
    path = classification_project(tmp_path, preprocessing=[{"zscore": {"region": "whole"}}])
    result = run("check", path)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "(10 in all): its image preprocesses to [4, 8, 8] (zyx), but a classification model " \
           "takes the whole image at patch.size [32, 32, 32]; add `- resize: {shape: [32, 32, 32]}`" in result.stderr
    fitting = classification_project(tmp_path / "fitting", preprocessing=[])
    for name in ("t1", "flair"):                                  # images of the patch's size need no resize
        image(tmp_path / "fitting" / "table" / f"{name}.nii.gz", size=(32, 32, 32))
    assert run("check", fitting).exit_code == 0
    gandlf = classification_project(tmp_path / "gandlf", preprocessing=[], patch={"size": [32, 32, 24]})
    for name in ("t1", "flair"):                                  # patch.size written x, y, z, as GaNDLF does
        image(tmp_path / "gandlf" / "table" / f"{name}.nii.gz", size=(32, 32, 24))
    result = run("check", gandlf)
    assert result.exit_code == 1, result.output
    assert ("takes the whole image at patch.size [32, 32, 24]; where patch.size is written in xyz order (as GaNDLF "
            "writes patch_size), which makes it the image's size, set axis_order: xyz; else add `- resize: {shape: "
            "[32, 32, 24]}`") in result.stderr, result.stderr
    xyz = classification_project(tmp_path / "xyz", preprocessing=[], patch={"size": [24, 32, 32]}, axis_order="xyz")
    for name in ("t1", "flair"):                                  # patch.size written z, y, x in an xyz config
        image(tmp_path / "xyz" / "table" / f"{name}.nii.gz", size=(32, 32, 24))
    result = run("check", xyz)
    assert "where patch.size is written in zyx order, which makes it the image's size, set axis_order: zyx; else" \
        in result.stderr and "GaNDLF" not in result.stderr, result.stderr


def test_the_input_profile_is_measured_on_subjects_of_every_kind_a_table_holds() -> None:
    """Every second row of a table whose rows alternate by class measured one class alone; a seeded
    draw takes both, the same each time, in table order."""
    from trainer.data import PROFILE_SUBJECTS, profile_sample
    from trainer.subjects import Subject

    subjects = [Subject(subject_id=f"s{i}", channels=(Path(f"s{i}.nii.gz"),), label=i % 2, group=None)
                for i in range(80)]
    chosen = profile_sample(subjects, seed=0)
    assert len(chosen) == PROFILE_SUBJECTS == 50 and chosen == profile_sample(subjects, seed=0)
    assert 15 < sum(s.label for s in chosen) < 35
    assert [int(s.subject_id[1:]) for s in chosen] == sorted(int(s.subject_id[1:]) for s in chosen)
    assert profile_sample(subjects[:30], seed=0) == subjects[:30]


def test_check_warns_of_regression_targets_far_beyond_units_of_one(tmp_path: Path) -> None:
    """Targets in the thousands trained worse than their mean (MSE 7.6e10 against 2.5e10): say so,
    with the factor to divide them by; targets of about 1 pass without a word."""
    for name in ("t1", "flair"):
        image(tmp_path / "table" / f"{name}.nii.gz")
    table(tmp_path, [f"case{i:02d},t1.nii.gz,flair.nii.gz,{1000 * (40 + i)}" for i in range(10)])
    result = run("check", config_file(tmp_path, "regression"))
    assert result.exit_code == 0, result.output
    assert ("warning: the regression targets run from 40000 to 49000; a network learns targets of about 1 far "
            "better") in result.stderr and result.stderr.rstrip().endswith("e.g. by 100000"), result.stderr
    table(tmp_path, [f"case{i:02d},t1.nii.gz,flair.nii.gz,{0.5 + i / 10}" for i in range(10)])
    assert "warning" not in run("check", config_file(tmp_path, "regression")).stderr


def test_one_problem_of_every_row_is_listed_once_with_its_rows_counted(tmp_path: Path) -> None:
    path = classification_project(tmp_path, subjects=12, preprocessing=[{"zscore": {"region": "whole"}}])
    result = run("check", path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 1 and len(errors) == 1, result.stderr
    assert errors[0].startswith("error: line 2 (subject case00), line 3 (subject case01), line 4 (subject case02) and "
                                "9 more (12 in all): its image preprocesses to [4, 8, 8]"), errors

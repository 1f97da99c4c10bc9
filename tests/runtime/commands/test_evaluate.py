"""`runtime evaluate`: a folder of predicted label maps scored against a folder of references."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from runtime.commands.cli import main
from tests.modelkit import bone_model, run_failing


def _folders(tmp_path: Path, data_dir: Path) -> tuple[Path, Path]:
    """References: the real CT's organ label map. Predictions: the same, with the liver (5) moved one
    voxel (3 mm) along x and the spleen (1) untouched."""
    predictions, labels = tmp_path / "predictions", tmp_path / "labels"
    predictions.mkdir()
    labels.mkdir()
    source = data_dir / "radiology" / "totalseg_example_seg.nii.gz"
    shutil.copyfile(source, labels / "ct.nii.gz")
    image = sitk.ReadImage(str(source))
    array = sitk.GetArrayFromImage(image)
    moved = array.copy()
    moved[array == 5] = 0
    moved[:, :, 1:][array[:, :, :-1] == 5] = 5
    out = sitk.GetImageFromArray(moved)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(predictions / "ct.nii.gz"))
    return predictions, labels


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_shifted_liver_scores_below_one_and_an_untouched_spleen_scores_perfectly(tmp_path, data_dir):
    predictions, labels = _folders(tmp_path, data_dir)
    out = tmp_path / "scores"
    result = CliRunner().invoke(main, ["evaluate", str(predictions), str(labels), "--output-dir", str(out),
                                       "--classes", "1:spleen,5:liver"])
    assert result.exit_code == 0, result.output
    assert "1 pair(s) scored" in result.output
    [row] = _rows(out / "metrics.csv")
    assert row["subject_id"] == "ct"
    assert float(row["dice_spleen"]) == 1.0 and float(row["hd95_spleen"]) == 0.0 and float(row["nsd_spleen"]) == 1.0
    assert 0.5 < float(row["dice_liver"]) < 1.0
    assert float(row["hd95_liver"]) == pytest.approx(3.0)            # one voxel of 3 mm
    assert float(row["nsd_liver"]) < 1.0                              # 3 mm is past the 1 mm tolerance
    assert float(row["dice_mean"]) == pytest.approx((1.0 + float(row["dice_liver"])) / 2, abs=1e-5)
    summary = {r["metric"]: r for r in _rows(out / "summary.csv")}
    assert summary["dice_liver"]["n"] == "1" and float(summary["dice_liver"]["mean"]) == float(row["dice_liver"])


def test_with_ignore_the_unannotated_voxels_count_in_no_score(tmp_path, data_dir):
    """The liver annotated on its moved voxels' half only: where the reference is 255 the
    prediction's liver counts nowhere, so the liver scores as it does on the annotated half alone."""
    predictions, labels = _folders(tmp_path, data_dir)
    image = sitk.ReadImage(str(labels / "ct.nii.gz"))
    reference = sitk.GetArrayFromImage(image).astype(np.uint8)
    half = reference.shape[2] // 2
    reference[:, :, half:] = 255
    sparse = sitk.GetImageFromArray(reference)
    sparse.CopyInformation(image)
    sitk.WriteImage(sparse, str(labels / "ct.nii.gz"))
    result = CliRunner().invoke(main, ["evaluate", str(predictions), str(labels), "--output-dir",
                                       str(tmp_path / "scores"), "--ignore", "255"])
    assert result.exit_code == 0 and "voxels whose label is 255 are unannotated" in result.output, result.output
    [row] = _rows(tmp_path / "scores" / "metrics.csv")
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / "ct.nii.gz")))[:, :, :half]
    truth = reference[:, :, :half]
    for value, name in ((1, "1"), (5, "5")):
        p, t = predicted == value, truth == value
        assert float(row[f"dice_{name}"]) == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()), abs=1e-6)
    assert not [key for key in row if "255" in key]
    assert row["hd95_5"] == row["nsd_5"] == "nan"                       # an annotation's edge is no liver's surface
    for args, expected in ((["--classes", "5:liver,255:other", "--ignore", "255"], "--ignore 255 is a class scored"),
                           (["--classes", "5:liver", "--ignore", "0"], "--ignore 0 is no label value of unannotated"),
                           (["--classes", "5:liver", "--ignore", "x"], "--ignore 'x' is no label value: give an"),
                           (["--classes", "5:liver", "--ignore", "1e9"], "--ignore '1e9' is no label value"),
                           (["--classes", "5:liver", "--ignore", "99999999"], "--ignore '99999999' is no label value"),
                           (["--classes", "5:liver", "--ignore", "70000"], "--ignore 70000 is no label value of"),
                           (["--classes", "5:liver", "--ignore", "255", "--relabel", "5=5,255=5"],
                            "--ignore 255 is mapped by --relabel as well")):
        run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(tmp_path / "refused"), *args],
                    expected)
    assert not (tmp_path / "refused").exists()
    typo = CliRunner().invoke(main, ["evaluate", str(predictions), str(labels), "--output-dir",
                                     str(tmp_path / "typo"), "--classes", "5:liver", "--ignore", "256"])
    assert typo.exit_code == 0 and "warning: no label map holds 256, the value of unannotated voxels" in typo.output


def test_without_classes_every_value_of_the_labels_is_scored_and_a_model_names_them(tmp_path, data_dir):
    predictions, labels = _folders(tmp_path, data_dir)
    result = CliRunner().invoke(main, ["evaluate", str(predictions), str(labels), "--output-dir", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    [row] = _rows(tmp_path / "a" / "metrics.csv")
    values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(labels / "ct.nii.gz"))))
    assert [k for k in row if k.startswith("dice_") and k != "dice_mean"] == [f"dice_{v}" for v in values if v]
    model = bone_model(tmp_path / "repo")
    named = CliRunner().invoke(main, ["evaluate", str(predictions), str(labels), "--output-dir", str(tmp_path / "b"),
                                      "--model", str(model)])
    assert named.exit_code == 0, named.output
    [row] = _rows(tmp_path / "b" / "metrics.csv")
    assert "dice_bone" in row


def test_hostile_folders_are_refused_in_one_line_and_nothing_is_written(tmp_path, data_dir):
    predictions, labels = _folders(tmp_path, data_dir)
    out = tmp_path / "scores"
    shutil.copyfile(labels / "ct.nii.gz", labels / "other.nii.gz")
    run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(out)],
                "other (label only)", "same file name")
    (labels / "other.nii.gz").unlink()
    image = sitk.ReadImage(str(predictions / "ct.nii.gz"))
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(predictions / "ct.nii.gz"))
    line = run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(out)], "not on the same grid")
    assert "direction" not in line
    turned = sitk.ReadImage(str(labels / "ct.nii.gz"))
    turned.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))                 # only the direction differs: a y-flip
    sitk.WriteImage(turned, str(predictions / "ct.nii.gz"))
    run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(out)], "not on the same grid",
                "direction (1,0,0,0,-1,0,0,0,1) vs", "direction (-1,0,0,0,-1,0,0,0,1)")
    floats = sitk.Cast(sitk.ReadImage(str(labels / "ct.nii.gz")), sitk.sitkFloat32) * 0.5 + 0.25
    sitk.WriteImage(floats, str(predictions / "ct.nii.gz"))
    run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(out)], "not whole numbers")
    run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(out), "--classes", "liver"],
                "--classes", "VALUE:NAME")
    run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(out), "--classes", "1:a",
                 "--model", str(tmp_path)], "not both")
    run_failing(["evaluate", str(predictions), str(tmp_path / "nowhere"), "--output-dir", str(out)], "not a folder")
    assert not out.exists()


def test_labels_that_are_no_label_maps_and_names_that_clash_are_refused(tmp_path, data_dir):
    predictions, labels = _folders(tmp_path, data_dir)
    out = tmp_path / "scores"
    run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(out), "--classes", "1:mean"],
                "other than 'mean'")
    shutil.copyfile(predictions / "ct.nii.gz", predictions / "ct.nii")
    run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(out)], "two images of one name")
    (predictions / "ct.nii").unlink()
    ct = data_dir / "radiology" / "totalseg_example_ct_sm.nii.gz"          # a CT given as the labels
    shutil.copyfile(ct, labels / "ct.nii.gz")
    run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(out)], "negative values")
    many = sitk.GetImageFromArray(np.arange(30 * 101 * 122, dtype=np.uint16).reshape(30, 101, 122) % 2000)
    many.CopyInformation(sitk.ReadImage(str(ct)))
    sitk.WriteImage(many, str(labels / "ct.nii.gz"))
    run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(out)], "1999 distinct values")
    assert not out.exists() or not any(out.iterdir())


def test_whole_number_floats_score_as_labels_a_missing_class_is_warned_of_and_the_tolerance_is_the_users(
        tmp_path, data_dir):
    predictions, labels = _folders(tmp_path, data_dir)
    floats = sitk.Cast(sitk.ReadImage(str(predictions / "ct.nii.gz")), sitk.sitkFloat32)   # as MONAI saves them
    sitk.WriteImage(floats, str(predictions / "ct.nii.gz"))
    result = CliRunner().invoke(main, ["evaluate", str(predictions), str(labels), "--output-dir", str(tmp_path / "a"),
                                       "--classes", "5:liver,200:typo", "--nsd-tolerance", "3"])
    assert result.exit_code == 0, result.output
    assert "warning: class typo (value 200) is in no prediction and no label map" in result.output
    [row] = _rows(tmp_path / "a" / "metrics.csv")
    assert float(row["dice_typo"]) == 1.0 and 0.5 < float(row["dice_liver"]) < 1.0
    assert float(row["nsd_liver"]) == 1.0                           # every surface voxel within 3 mm


def test_relabel_scores_a_many_structure_reference_as_a_models_few_classes(tmp_path, data_dir):
    source = data_dir / "radiology" / "totalseg_example_seg.nii.gz"
    predictions, labels = tmp_path / "predictions", tmp_path / "labels"
    predictions.mkdir()
    labels.mkdir()
    shutil.copyfile(source, labels / "ct.nii.gz")
    image = sitk.ReadImage(str(source))
    array = sitk.GetArrayFromImage(image)
    model_output = sitk.GetImageFromArray(np.select([array == 5, np.isin(array, (2, 3))], [1, 2], 0).astype(np.uint8))
    model_output.CopyInformation(image)
    sitk.WriteImage(model_output, str(predictions / "ct.nii.gz"))     # liver 1, kidneys 2, as the model's classes
    out = tmp_path / "scores"
    result = CliRunner().invoke(main, ["evaluate", str(predictions), str(labels), "--output-dir", str(out),
                                       "--classes", "1:liver,2:kidneys", "--relabel", "5=1,2=2,3=2"])
    assert result.exit_code == 0, result.output
    [row] = _rows(out / "metrics.csv")
    assert float(row["dice_liver"]) == 1.0 and float(row["dice_kidneys"]) == 1.0
    plain = CliRunner().invoke(main, ["evaluate", str(predictions), str(labels), "--output-dir", str(tmp_path / "raw"),
                                      "--classes", "1:liver,2:kidneys"])
    [raw] = _rows(tmp_path / "raw" / "metrics.csv")
    assert plain.exit_code == 0 and float(raw["dice_liver"]) < 0.1     # value 1 of the reference is the spleen
    assert "warning: the maps hold value(s) [3, 4, 5, 6, 7, 8, 9, 10, 11, 13] and more that are no class scored" in \
        plain.stderr and "map them with --relabel" in plain.stderr
    unheld = CliRunner().invoke(main, ["evaluate", str(predictions), str(labels), "--output-dir", str(tmp_path / "u"),
                                       "--classes", "1:liver,2:kidneys", "--relabel", "5=1,2=2,3=2,60000=1"])
    assert unheld.exit_code == 0 and "warning: --relabel value(s) [60000] are in no label map" in unheld.stderr
    run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(tmp_path / "bad"), "--classes",
                 "1:liver,2:kidneys", "--relabel", "5=3"], "--relabel maps to value(s) [3] that are no class scored (1, 2)")
    run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(tmp_path / "bad"), "--relabel", ""],
                "--relabel: '' is not VALUE=CLASS")
    run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(tmp_path / "bad"), "--relabel",
                 "5=99999999999999999999"], "--relabel: '5=99999999999999999999' names a value above 65535")
    run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(tmp_path / "bad"), "--relabel", "5:1"],
                "--relabel: '5:1' is not VALUE=CLASS")
    run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(tmp_path / "bad"), "--relabel", "5=0"],
                "--relabel maps every value to 0")
    assert not (tmp_path / "bad").exists()


def test_a_models_training_relabel_is_how_csv_runs_and_evaluate_score_its_labels(tmp_path, data_dir):
    """A model records the run's data.relabel (`export build`): `predict --csv` and `evaluate
    --model` score the references as training did (TotalSegmentator's vertebrae, 30 and 31, as
    class 1),
    and without a record, label values that are no class are warned of instead of passing silently."""
    from tests.modelkit import bone_model

    radiology = data_dir / "radiology"
    relabelled = bone_model(tmp_path / "a")
    manifest_path = relabelled / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["provenance"] = {**manifest.get("provenance", {}), "label_relabel": {"30": 1, "31": 1}}
    manifest_path.write_text(json.dumps(manifest))
    table = tmp_path / "subjects.csv"
    table.write_text(f"subject_id,image,label\nct,{radiology / 'totalseg_example_ct_sm.nii.gz'},"
                     f"{radiology / 'totalseg_example_seg.nii.gz'}\n")
    result = CliRunner().invoke(main, ["predict", "--csv", str(table), "--model", str(relabelled), "--output-dir",
                                       str(tmp_path / "preds"), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "preds" / "ct.nii.gz"))) == 1
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(radiology / "totalseg_example_seg.nii.gz")))
    spine = np.isin(truth, (30, 31))
    dice = 2 * np.count_nonzero(predicted & spine) / (np.count_nonzero(predicted) + np.count_nonzero(spine))
    [row] = _rows(tmp_path / "preds" / "metrics.csv")
    assert float(row["dice_bone"]) == pytest.approx(dice, abs=1e-6) and dice > 0.01
    labels = tmp_path / "labels"
    labels.mkdir()
    shutil.copyfile(radiology / "totalseg_example_seg.nii.gz", labels / "ct.nii.gz")
    preds = tmp_path / "preds_only"
    preds.mkdir()
    shutil.copyfile(tmp_path / "preds" / "ct.nii.gz", preds / "ct.nii.gz")
    scored = CliRunner().invoke(main, ["evaluate", str(preds), str(labels), "--output-dir", str(tmp_path / "e"),
                                       "--model", str(relabelled)])
    assert scored.exit_code == 0 and "labels scored as model bone was trained: 30=1, 31=1" in scored.output, \
        scored.output
    assert _rows(tmp_path / "e" / "metrics.csv")[0]["dice_bone"] == row["dice_bone"]
    plain = CliRunner().invoke(main, ["predict", "--csv", str(table), "--model", str(bone_model(tmp_path / "b")),
                                      "--output-dir", str(tmp_path / "plain"), "--device", "cpu", "--quiet"])
    assert plain.exit_code == 0, plain.output
    assert (f"warning: subject ct: label {radiology / 'totalseg_example_seg.nii.gz'} holds value(s) 2, 3, 4, 5"
            in plain.stderr) and "that are no class of model bone (0, 1)" in plain.stderr
    class_space = tmp_path / "class_space"                       # references already in the model's classes
    class_space.mkdir()
    image = sitk.ReadImage(str(radiology / "totalseg_example_seg.nii.gz"))
    spine_map = sitk.GetImageFromArray(spine.astype(np.uint8))
    spine_map.CopyInformation(image)
    sitk.WriteImage(spine_map, str(class_space / "ct.nii.gz"))
    taken = CliRunner().invoke(main, ["evaluate", str(preds), str(class_space), "--output-dir", str(tmp_path / "c"),
                                      "--model", str(relabelled)])
    assert taken.exit_code == 0 and "taken as its classes already" in taken.output, taken.output
    assert _rows(tmp_path / "c" / "metrics.csv")[0]["dice_bone"] == row["dice_bone"]
    missed = tmp_path / "missed"                                 # its labelling, but a field of view without 30, 31
    missed.mkdir()
    cut = sitk.GetImageFromArray(np.where(spine, 0, truth).astype(np.uint8))
    cut.CopyInformation(image)
    sitk.WriteImage(cut, str(missed / "ct.nii.gz"))
    for args, folder in ((["--model", str(relabelled)], "m1"), (["--model", str(relabelled), "--relabel", "30=1,31=1"],
                                                                   "m2")):
        done = CliRunner().invoke(main, ["evaluate", str(preds), str(missed), "--output-dir", str(tmp_path / folder),
                                         *args])
        assert done.exit_code == 0, done.output
    assert _rows(tmp_path / "m1" / "metrics.csv") == _rows(tmp_path / "m2" / "metrics.csv")   # value 1 is no bone
    table.write_text(f"subject_id,image,label\nct,{radiology / 'totalseg_example_ct_sm.nii.gz'},"
                     f"{class_space / 'ct.nii.gz'}\n")
    again = CliRunner().invoke(main, ["predict", "--csv", str(table), "--model", str(relabelled), "--output-dir",
                                      str(tmp_path / "preds2"), "--device", "cpu", "--quiet"])
    assert again.exit_code == 0 and "warning" not in again.output, again.output
    assert _rows(tmp_path / "preds2" / "metrics.csv")[0]["dice_bone"] == row["dice_bone"]
    spleen = sitk.GetImageFromArray((truth == 1).astype(np.uint8))   # its labelling, a crop holding the spleen alone
    spleen.CopyInformation(image)
    sitk.WriteImage(spleen, str(tmp_path / "spleen.nii.gz"))
    table.write_text(f"subject_id,image,label\nct,{radiology / 'totalseg_example_ct_sm.nii.gz'},"
                     f"{radiology / 'totalseg_example_seg.nii.gz'}\nct2,{radiology / 'totalseg_example_ct_sm.nii.gz'},"
                     f"{tmp_path / 'spleen.nii.gz'}\n")
    mixed = CliRunner().invoke(main, ["predict", "--csv", str(table), "--model", str(relabelled), "--output-dir",
                                      str(tmp_path / "preds3"), "--device", "cpu", "--quiet"])
    assert mixed.exit_code == 0 and "every label is mapped as training mapped them" in mixed.output, mixed.output
    assert "taken as the model's classes" not in mixed.output                    # as training mapped the spleen: 0
    first, second = _rows(tmp_path / "preds3" / "metrics.csv")
    assert first["dice_bone"] == row["dice_bone"] and float(second["dice_bone"]) == 0.0
    manifest["provenance"]["label_relabel"] = {"liver": 1}
    manifest_path.write_text(json.dumps(manifest))
    run_failing(["evaluate", str(preds), str(labels), "--output-dir", str(tmp_path / "bad"), "--model",
                 str(relabelled)], "provenance.label_relabel is not a mapping of label values to class values")
    for wrong in ("255", 1, -1, 70000, True, 30):
        manifest["provenance"] = {**manifest["provenance"], "label_relabel": {"30": 1}, "label_ignore": wrong}
        manifest_path.write_text(json.dumps(manifest))
        run_failing(["evaluate", str(preds), str(labels), "--output-dir", str(tmp_path / "bad"), "--model",
                     str(relabelled)], f"provenance.label_ignore is {wrong!r}, not a label value (an integer 0 to "
                                       "65535) that no class has and label_relabel does not map; re-export the model.")


def test_an_image_given_as_a_prediction_is_refused(tmp_path, data_dir):
    predictions, labels = _folders(tmp_path, data_dir)
    shutil.copyfile(data_dir / "radiology" / "totalseg_example_ct_sm.nii.gz", predictions / "ct.nii.gz")
    image = sitk.ReadImage(str(predictions / "ct.nii.gz"))
    shifted = sitk.GetArrayFromImage(image).astype(np.int32) + 2000           # an image of positive values
    out = sitk.GetImageFromArray(shifted)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(predictions / "ct.nii.gz"))
    run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(tmp_path / "s"), "--classes",
                 "5:liver"], "distinct values, more than the", "it is an image, not a label map")
    assert not (tmp_path / "s").exists()


def test_a_classifier_is_pointed_to_predict_csv_which_scores_it(tmp_path, data_dir):
    from tests.modelkit import density_classifier

    predictions, labels = _folders(tmp_path, data_dir)
    run_failing(["evaluate", str(predictions), str(labels), "--output-dir", str(tmp_path / "s"), "--model",
                 str(density_classifier(tmp_path / "repo"))], "is a classification model; runtime evaluate scores "
                "label maps. A classification model is scored by runtime predict --csv")
    assert not (tmp_path / "s").exists()


def test_a_csv_run_reads_the_subject_and_label_columns_the_models_training_table_used(tmp_path, data_dir):
    """A model records its training table's subject and label columns (`export build`): a table laid out
    the same (here `case` and `mask`, a common name for label maps) runs as it is, scored against its
    labels, and its `mask` column is the labels, not a region to restrict the prediction to."""
    from tests.modelkit import bone_model

    radiology = data_dir / "radiology"
    model = bone_model(tmp_path / "m")
    manifest_path = model / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    truth_image = sitk.ReadImage(str(radiology / "totalseg_example_seg.nii.gz"))
    spine = np.isin(sitk.GetArrayFromImage(truth_image), (30, 31))
    spine_map = sitk.GetImageFromArray(spine.astype(np.uint8))
    spine_map.CopyInformation(truth_image)
    sitk.WriteImage(spine_map, str(tmp_path / "spine.nii.gz"))
    table = tmp_path / "training_table.csv"
    table.write_text(f"case,image,mask\nct,{radiology / 'totalseg_example_ct_sm.nii.gz'},spine.nii.gz\n")
    arguments = ["predict", "--csv", str(table), "--model", str(model), "--device", "cpu", "--quiet", "--output-dir"]
    run_failing([*arguments, str(tmp_path / "unrecorded")], "lacks the column(s) subject_id")
    manifest["provenance"] = {**manifest.get("provenance", {}), "table_columns": {"subject": "case", "label": "mask"}}
    manifest_path.write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, [*arguments, str(tmp_path / "preds")])
    assert result.exit_code == 0, result.output
    assert "subject ids from column case and labels from column mask, as model bone's training table named them" \
        in result.output
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "preds" / "ct.nii.gz"))) == 1
    assert np.count_nonzero(predicted & ~spine) > 0        # predicted beyond the labels: no region was imposed
    dice = 2 * np.count_nonzero(predicted & spine) / (np.count_nonzero(predicted) + np.count_nonzero(spine))
    [row] = _rows(tmp_path / "preds" / "metrics.csv")
    assert row["subject_id"] == "ct" and float(row["dice_bone"]) == pytest.approx(dice, abs=1e-6) and dice > 0.01
    indexed = tmp_path / "indexed_table.csv"          # pandas' to_csv: an unnamed index column first
    indexed.write_text(f",case,image,mask\n0,ct,{radiology / 'totalseg_example_ct_sm.nii.gz'},spine.nii.gz\n")
    indexed_run = CliRunner().invoke(main, ["predict", "--csv", str(indexed), *arguments[3:], str(tmp_path / "i")])
    assert indexed_run.exit_code == 0, indexed_run.output
    assert _rows(tmp_path / "i" / "metrics.csv")[0]["dice_bone"] == row["dice_bone"]
    both = tmp_path / "both.csv"                         # a label column beside the training one: said
    both.write_text(f"case,image,mask,label\nct,{radiology / 'totalseg_example_ct_sm.nii.gz'},spine.nii.gz,"
                    "spine.nii.gz\n")
    said = CliRunner().invoke(main, ["predict", "--csv", str(both), *arguments[3:], str(tmp_path / "b")])
    assert said.exit_code == 0 and "warning: " in said.stderr and "labels from column label; column mask, which held " \
        "them in model bone's training table, is not read as labels" in said.stderr, said.stderr
    for record, problem in (({"subject": ["case"]}, "is not a mapping of subject and label"),
                            ({"subject": "case", "label": "case"}, "names one column for both")):
        manifest["provenance"]["table_columns"] = record
        manifest_path.write_text(json.dumps(manifest))
        run_failing([*arguments, str(tmp_path / "bad")], f"provenance.table_columns {problem}")
    assert not (tmp_path / "unrecorded").exists() and not (tmp_path / "bad").exists()


def test_a_csv_run_without_labels_says_so_and_a_mask_the_model_reads_not_is_warned_of(tmp_path, data_dir):
    """No label in any row: a line says no metrics are written (a misnamed label column otherwise
    passes unseen). A mask for a model whose preprocessing reads none changes nothing: warned of."""
    from tests.modelkit import bone_model

    ct = data_dir / "radiology" / "totalseg_example_ct_sm.nii.gz"
    model = bone_model(tmp_path / "m")
    reference = sitk.ReadImage(str(ct))
    box = np.zeros(sitk.GetArrayFromImage(reference).shape, np.uint8)
    box[:, 10:40, 10:40] = 1
    mask = sitk.GetImageFromArray(box)
    mask.CopyInformation(reference)
    sitk.WriteImage(mask, str(tmp_path / "box.nii.gz"))
    (tmp_path / "plain.csv").write_text(f"subject_id,image,Labels\nct,{ct},box.nii.gz\n")
    (tmp_path / "masked.csv").write_text(f"subject_id,image,mask\nct,{ct},box.nii.gz\n")
    runs = {}
    for name in ("plain", "masked"):
        runs[name] = CliRunner().invoke(main, ["predict", "--csv", str(tmp_path / f"{name}.csv"), "--model", str(model),
                                               "--output-dir", str(tmp_path / name), "--device", "cpu", "--quiet"])
        assert runs[name].exit_code == 0, runs[name].output
        assert f"{name}.csv: no label in column label: predictions only, no metrics" in runs[name].output
        assert not (tmp_path / name / "metrics.csv").exists()
    assert "warning" not in runs["plain"].stderr
    assert "column mask: model bone's preprocessing has no step with region: mask, so the mask changes nothing" \
        in runs["masked"].stderr
    labels = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name / "ct.nii.gz"))) for name in runs]
    np.testing.assert_array_equal(*labels)
    assert np.count_nonzero(labels[0] * (1 - box)) > 0
    single = CliRunner().invoke(main, ["predict", str(ct), "--mask", str(tmp_path / "box.nii.gz"), "--model",
                                       str(model), "--output", str(tmp_path / "one.nii.gz"), "--device", "cpu"])
    assert single.exit_code == 0 and "warning: --mask" in single.stderr and "changes nothing" in single.stderr


def test_a_run_without_labels_into_a_folder_an_earlier_run_scored_removes_the_earlier_tables(tmp_path, data_dir):
    """metrics.csv and summary.csv would otherwise describe the earlier run's predictions beside the
    new ones; a table of the folder's own outputs is kept until a run replaces it."""
    from tests.modelkit import bone_model

    radiology = data_dir / "radiology"
    model = bone_model(tmp_path / "m")
    ct, seg = radiology / "totalseg_example_ct_sm.nii.gz", radiology / "totalseg_example_seg.nii.gz"
    (tmp_path / "scored.csv").write_text(f"subject_id,image,label\nct,{ct},{seg}\n")
    (tmp_path / "plain.csv").write_text(f"subject_id,image\nct,{ct}\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.csv").write_text("mine\n")
    arguments = ["--model", str(model), "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--quiet"]
    first = CliRunner().invoke(main, ["predict", "--csv", str(tmp_path / "scored.csv"), *arguments])
    assert first.exit_code == 0 and (tmp_path / "out" / "metrics.csv").is_file(), first.output
    second = CliRunner().invoke(main, ["predict", "--csv", str(tmp_path / "plain.csv"), *arguments])
    assert second.exit_code == 0, second.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ct.nii.gz", "notes.csv"]
    assert f"removed {tmp_path / 'out' / 'metrics.csv'}, an earlier run's table" in second.output


def test_evaluate_takes_the_subjects_csv_predict_read_as_its_labels(tmp_path, data_dir):
    """LABELS may be the subjects CSV (with --model, laid out as the training table): each row's label
    map against the prediction named after its subject; a probability map beside them is not scored,
    nor where LABELS is a folder."""
    from tests.modelkit import bone_model

    radiology = data_dir / "radiology"
    model = bone_model(tmp_path / "m")
    manifest_path = model / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["provenance"] = {**manifest.get("provenance", {}), "label_relabel": {"30": 1, "31": 1},
                              "table_columns": {"subject": "SubjectID", "label": "Label"}}
    manifest_path.write_text(json.dumps(manifest))
    table = tmp_path / "gandlf.csv"
    table.write_text(f"SubjectID,image,Label\nct,{radiology / 'totalseg_example_ct_sm.nii.gz'},"
                     f"{radiology / 'totalseg_example_seg.nii.gz'}\n")
    predicted = CliRunner().invoke(main, ["predict", "--csv", str(table), "--model", str(model), "--output-dir",
                                          str(tmp_path / "preds"), "--device", "cpu", "--quiet",
                                          "--save-probabilities"])
    assert predicted.exit_code == 0, predicted.output
    scored = CliRunner().invoke(main, ["evaluate", str(tmp_path / "preds"), str(table), "--output-dir",
                                       str(tmp_path / "e"), "--model", str(model)])
    assert scored.exit_code == 0, scored.output
    assert _rows(tmp_path / "e" / "metrics.csv")[0]["dice_bone"] == _rows(tmp_path / "preds" / "metrics.csv")[0][
        "dice_bone"]
    assert "1 pair(s) scored" in scored.output
    folder = tmp_path / "labels"
    folder.mkdir()
    shutil.copyfile(radiology / "totalseg_example_seg.nii.gz", folder / "ct.nii.gz")
    scored = CliRunner().invoke(main, ["evaluate", str(tmp_path / "preds"), str(folder), "--output-dir",
                                       str(tmp_path / "f"), "--model", str(model)])
    assert scored.exit_code == 0, scored.output
    assert (tmp_path / "preds" / "ct_probabilities.nii.gz").is_file() and "1 pair(s) scored" in scored.output
    table.write_text(table.read_text() + f"other,{radiology / 'totalseg_example_ct_sm.nii.gz'},missing.nii.gz\n")
    run_failing(["evaluate", str(tmp_path / "preds"), str(table), "--output-dir", str(tmp_path / "bad"), "--model",
                 str(model)], "line 3: no prediction named 'other'")
    run_failing(["evaluate", str(tmp_path / "preds"), str(table), "--output-dir", str(tmp_path / "bad")],
                "lacks the column(s) subject_id, label")
    twice = tmp_path / "twice.csv"
    twice.write_text("SubjectID,Label\nct,{0}\nct,{0}\n".format(radiology / "totalseg_example_seg.nii.gz"))
    run_failing(["evaluate", str(tmp_path / "preds"), str(twice), "--output-dir", str(tmp_path / "bad"), "--model",
                 str(model)], "line 3: 'ct' is on line 2 too; each subject is scored once")
    assert not (tmp_path / "bad").exists()


def test_a_table_the_task_never_writes_is_never_removed_even_where_it_is_the_input(tmp_path, data_dir):
    """A segmentation run writes no predictions.csv: a subjects CSV of that name in its output folder
    is its input, and stays."""
    from tests.modelkit import bone_model

    model = bone_model(tmp_path / "m")
    table = tmp_path / "predictions.csv"
    table.write_text(f"subject_id,image\nct,{data_dir / 'radiology' / 'totalseg_example_ct_sm.nii.gz'}\n")
    result = CliRunner().invoke(main, ["predict", "--csv", str(table), "--model", str(model), "--output-dir",
                                       str(tmp_path), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert table.is_file() and "removed" not in result.output


def test_a_class_in_neither_map_of_some_pairs_is_warned_of_as_scoring_one_there(tmp_path):
    predictions, labels = tmp_path / "p", tmp_path / "l"
    predictions.mkdir()
    labels.mkdir()
    for name, values in (("a", (1, 5)), ("b", (1,))):
        array = np.zeros((4, 8, 8), np.uint8)
        for index, value in enumerate(values):
            array[index, :4, :4] = value
        for folder in (predictions, labels):
            sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / f"{name}.nii.gz"))
    result = CliRunner().invoke(main, ["evaluate", str(predictions), str(labels), "--output-dir", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "warning: class 5 (value 5) is in neither map of 1 of 2 pair(s), which score it Dice 1 by convention" \
        in result.stderr, result.stderr
    assert "class 1 (value 1) is in neither" not in result.stderr
    for index, value in enumerate(range(10, 17)):                 # many such classes: one line
        array = np.zeros((4, 8, 8), np.uint8)
        array[index % 4, index // 4 * 4:index // 4 * 4 + 4, :2] = value
        for folder in (predictions, labels):
            sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / f"c{value}.nii.gz"))
    result = CliRunner().invoke(main, ["evaluate", str(predictions), str(labels), "--output-dir", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if "neither map" in line]
    assert len(warned) == 1, result.stderr
    assert warned[0].startswith("warning: 9 classes are in neither map of some of the 9 pair(s)"), warned
    assert "Dice 1 by convention (their means and dice_mean count those 1s): 1 in 7, 5 in 8, 10 in 8" in warned[0]

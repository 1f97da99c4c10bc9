"""`export build RUN --onnx`: a trained run becomes one versioned, verifiable model that the runtime
runs with the very numbers the trainer computed."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner
from PIL import Image

from export.cli import main as export_main
from export.from_run import load_fold_model, read_run
from runtime.commands.cli import main as runtime_main
from runtime.io import read_scan
from runtime.manifest import load_manifest, version_digest
from runtime.predict import load_model, predict_scan
from runtime.triton.bytecode import compile_adapters
from tests.modelkit import blob_volume, write_scan
from tests.trainer.histokit import HISTOLOGY, rgb_patches
from tests.trainerkit import TINY_RUN, UNANNOTATED, blob_subjects, score_subjects, sparse_blobs, write_config
from trainer.cli import main as trainer_main
from trainer.data import load_sample
from trainer.evaluate import segment
from trainer.subjects import read_subjects


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    """A tiny 3D segmentation run: two validation folds, no testing set, one epoch each."""
    folder = tmp_path_factory.mktemp("seg_run")
    blob_subjects(folder, count=4)
    config = write_config(folder, {**TINY_RUN, "cross_validation": {"testing_folds": 0, "validation_folds": 2},
                                    "training": {**TINY_RUN["training"], "epochs": 1}})
    result = CliRunner().invoke(trainer_main, ["fit", str(config)])
    assert result.exit_code == 0, result.output
    return folder / "run"


def _build(run: Path, repository: Path, *args: str) -> Path:
    result = CliRunner().invoke(export_main, ["build", str(run), "--onnx", "--repository", str(repository), *args])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    folder, digest = lines[:2]
    assert digest == f"digest {version_digest(folder)}"
    if "--triton-onnx" in args:
        assert lines[2:] == [f"Triton onnxruntime model: {repository / (Path(folder).parent.name + '_onnx') / '1'}"]
    return Path(folder)


def test_export_writes_a_versioned_triton_model_that_verifies(seg_run, tmp_path):
    version = _build(seg_run, tmp_path / "repo")
    assert version == tmp_path / "repo" / "tiny" / "1"
    manifest, _ = load_manifest(version)
    assert manifest.output.activation == "none" and manifest.output.ensemble == "mean"
    assert manifest.slide is None and "slide" not in json.loads((version / "manifest.json").read_text())
    assert "label_relabel" not in manifest.provenance                      # trained on the maps as they are
    assert manifest.provenance["table_columns"] == {"subject": "subject_id", "label": "label"}
    assert [f["id"] for f in manifest.provenance["folds"]] == ["0.1", "0.2"]
    assert manifest.provenance["config_hash"] == json.loads((seg_run / "run.json").read_text())["config_hash"]
    assert set(manifest.files) == {"model.onnx", "model.py", "folds/fold_0.1.onnx", "folds/fold_0.2.onnx",
                                   "samples/input_0.npy", "samples/output_0.npy"}   # no bytecode: no part of it
    assert max(manifest.provenance["parity_max_abs_diff"].values()) < 1e-4
    profile = manifest.provenance["input_profile"]
    assert profile["subjects"] == 4 and set(profile["channels"]["image"]) == {"p0_5", "p50", "p99_5"}
    assert len(profile["spacing_mm"]) == 3 and profile["orientations"]
    low, high = profile["preprocessed"]["image"]["p50"]   # zscored over the foreground: medians near 0
    assert -1 < low <= high < 1 and set(profile["preprocessed"]["image"]) == {"p0_5", "p50", "p99_5"}
    check = manifest.provenance["fp16_check"]
    assert manifest.onnx.fp16 is check["allowed"] and check["windows"] == 1
    assert check["allowed"] is ("reason" not in check)
    assert (tmp_path / "repo" / "tiny" / "config.pbtxt").is_file()
    verified = CliRunner().invoke(export_main, ["verify", str(version)])
    assert verified.exit_code == 0 and "1 stored sample(s) reproduced" in verified.output, verified.output
    bytecode = version / importlib.util.cache_from_source("model.py")
    written = (bytecode.read_bytes(), bytecode.stat().st_mtime_ns)
    compile_adapters(tmp_path / "repo", ["tiny"])                         # as runtime serve does: nothing to do
    assert (bytecode.read_bytes(), bytecode.stat().st_mtime_ns) == written
    shutil.rmtree(bytecode.parent)                                        # a copy without it (git, an image)
    assert CliRunner().invoke(export_main, ["verify", str(version)]).exit_code == 0
    compile_adapters(tmp_path / "repo", ["tiny"])                         # its own folder's bytecode is the same
    assert bytecode.read_bytes() == written[0]
    listing = CliRunner().invoke(export_main, ["list", str(tmp_path / "repo")])
    assert listing.exit_code == 0 and "tiny" in listing.output and "dice_mean" in listing.output


def test_runtime_reproduces_the_trainers_sliding_window_prediction(seg_run, tmp_path):
    version = _build(seg_run, tmp_path / "repo")
    run = read_run(seg_run)
    models = [load_fold_model(f) for f in run.folds]
    subject = read_subjects(run.config)[0]
    sample = load_sample(run.config, subject)
    trainer_probabilities = segment(models, torch.device("cpu"), sample.image, run.config.inference)
    for device in ("cpu", "openvino"):
        prediction = predict_scan(load_model(version, device=device), read_scan(list(subject.channels)))
        np.testing.assert_allclose(prediction.probabilities_zyx, trainer_probabilities, atol=1e-4)
        decided = np.abs(trainer_probabilities[1] - trainer_probabilities[0]) > 1e-3
        np.testing.assert_array_equal(prediction.labels_zyx[decided], np.argmax(trainer_probabilities, 0)[decided])


def test_the_trainers_validation_scores_are_those_runtime_predict_csv_gives(tmp_path):
    """Scans thinner than the patch once resampled (padded), with a zero field beside the body
    (windows the runtime skips): the trainer's validation scores each subject where the runtime does,
    on the grid as read and with those windows skipped, so the fold's result and `runtime predict
    --csv` of its exported model on its validation subjects agree."""
    import csv

    rows = ["subject_id,image,label"]
    for i in range(4):
        array = np.zeros((12, 20, 60), np.float32)
        array[:, :, :20] = blob_volume((12, 20, 20), seed=i)
        write_scan(tmp_path / f"s{i}.nii.gz", array)
        write_scan(tmp_path / f"s{i}_seg.nii.gz", (array > 100).astype(np.uint8))
        rows.append(f"s{i},s{i}.nii.gz,s{i}_seg.nii.gz")
    (tmp_path / "subjects.csv").write_text("\n".join(rows) + "\n")
    config = write_config(tmp_path, {**TINY_RUN, "preprocessing": [{"resample": {"spacing": [1.0, 1.5, 1.5]}},
                                                                   {"zscore": {"region": "nonzero"}}],
                                     "cross_validation": {"testing_folds": 0, "validation_folds": 2},
                                     "training": {**TINY_RUN["training"], "epochs": 1}})
    assert CliRunner().invoke(trainer_main, ["fit", str(config), "--fold", "0.1"]).exit_code == 0
    run = tmp_path / "run"
    validation = [row["subject_id"] for row in csv.DictReader((run / "splits.csv").open())
                  if row["fold"] == "0.1" and row["role"] == "validation"]
    trained = json.loads((run / "folds" / "0.1" / "result.json").read_text())["validation"]
    version = _build(run, tmp_path / "repo", "--folds", "0.1")
    table = tmp_path / "validation.csv"
    table.write_text("\n".join([rows[0], *(r for r in rows[1:] if r.split(",")[0] in validation)]) + "\n")
    result = CliRunner().invoke(runtime_main, ["predict", "--csv", str(table), "--model", str(version), "--output-dir",
                                               str(tmp_path / "preds"), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = {r["metric"]: float(r["mean"]) for r in csv.DictReader((tmp_path / "preds" / "summary.csv").open())}
    for metric in ("dice_blob", "specificity_blob", "precision_blob", "hd95_blob"):
        assert trained[metric] == pytest.approx(summary[metric], rel=1e-3, abs=1e-4), metric
    shown = ", ".join(sorted(validation, key=lambda s: [r.split(",")[0] for r in rows].index(s)))
    assert (f"warning: {table}: 2 of the 2 subject(s) scored ({shown}) are among those model {version.parent.name} "
            "trained or validated on (matched by id): their metrics, and summary.csv's, flatter it") \
        in result.stderr
    manifest = (version / "manifest.json").read_text()
    assert not any(f'"{subject}"' in manifest for subject in ("s0", "s1", "s2", "s3"))   # hashed, not written out
    info = CliRunner().invoke(runtime_main, ["info", str(version)]).output
    assert "provenance  trained_on: 4 subject(s) trained or validated on (their ids hashed)" in info, info
    unseen = tmp_path / "unseen.csv"                              # the same scans as subjects the model never met
    unseen.write_text("\n".join([rows[0], *(f"new{r[1:]}" for r in rows[1:])]) + "\n")
    result = CliRunner().invoke(runtime_main, ["predict", "--csv", str(unseen), "--model", str(version),
                                               "--output-dir", str(tmp_path / "new"), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0 and "trained or validated" not in result.output, result.output


def test_the_record_of_subjects_trained_on_leaves_out_the_testing_subjects_of_the_folds_exported(tmp_path):
    """Outer fold 1's folds never met its testing subjects: scored, they are no subjects trained on;
    --no-trained-on leaves the record out."""
    import csv

    blob_subjects(tmp_path, count=6)
    config = write_config(tmp_path, {**TINY_RUN, "training": {**TINY_RUN["training"], "epochs": 1}})
    for fold in ("1.1", "1.2"):
        assert CliRunner().invoke(trainer_main, ["fit", str(config), "--fold", fold]).exit_code == 0
    run = tmp_path / "run"
    roles = {(row["fold"], row["subject_id"]): row["role"] for row in csv.DictReader((run / "splits.csv").open())}
    tested = sorted(subject for (fold, subject), role in roles.items() if fold == "1.1" and role == "testing")
    trained = sorted(subject for (fold, subject), role in roles.items() if fold == "1.1" and role == "train")
    version = _build(run, tmp_path / "repo", "--folds", "1.1,1.2")
    manifest, _ = load_manifest(version)
    from runtime.manifest import trained_subjects

    assert trained_subjects(manifest, tested) == [] and trained_subjects(manifest, trained) == trained
    assert len(manifest.provenance["trained_on"]["subjects"]) == 6 - len(tested)
    bare = _build(run, tmp_path / "repo", "--folds", "1.1,1.2", "--no-trained-on")
    assert "trained_on" not in load_manifest(bare)[0].provenance


def test_versions_increment_and_are_never_overwritten(seg_run, tmp_path):
    first = _build(seg_run, tmp_path / "repo", "--folds", "0.1", "--triton-onnx")
    onnx_model = tmp_path / "repo" / "tiny_onnx"
    assert (onnx_model / "1" / "model.onnx").read_bytes() == (first / "model.onnx").read_bytes()
    config = (onnx_model / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in config and "dynamic_batching" in config and "16, 16, 16" in config
    listing = CliRunner().invoke(export_main, ["list", str(tmp_path / "repo")])
    assert listing.exit_code == 0 and "tiny " in listing.output and "tiny_onnx" not in listing.output, listing.output
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    second = _build(seg_run, tmp_path / "repo", "--folds", "best-1", "--name", "tiny")
    assert (first.name, second.name) == ("1", "2")
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before
    assert len(load_manifest(second)[0].provenance["folds"]) == 1


def test_a_tampered_file_fails_verify_and_is_refused_by_the_runtime(seg_run, tmp_path):
    version = _build(seg_run, tmp_path / "repo")
    fold_file = version / "folds" / "fold_0.2.onnx"
    fold_file.write_bytes(fold_file.read_bytes()[:-8] + b"tampered")
    verified = CliRunner().invoke(export_main, ["verify", str(version)])
    assert verified.exit_code == 1 and "fold_0.2.onnx" in verified.output and "sha256" in verified.output
    scan = write_scan(tmp_path / "scan.nii.gz", blob_volume((16, 24, 24)))
    refused = CliRunner().invoke(runtime_main, ["predict", str(scan), "--model", str(version),
                                                "--output", str(tmp_path / "mask.nii.gz")])
    assert refused.exit_code == 1 and "sha256" in refused.output
    assert not (tmp_path / "mask.nii.gz").exists()


def test_a_changed_sample_output_fails_verify(seg_run, tmp_path):
    version = _build(seg_run, tmp_path / "repo")
    manifest_path = version / "manifest.json"
    data = json.loads(manifest_path.read_text())
    expected = np.load(version / "samples" / "output_0.npy")
    np.save(version / "samples" / "output_0.npy", expected + 0.01)
    from runtime.manifest import sha256_of

    data["files"]["samples/output_0.npy"] = sha256_of(version / "samples" / "output_0.npy")
    manifest_path.write_text(json.dumps(data))
    verified = CliRunner().invoke(export_main, ["verify", str(version)])
    assert verified.exit_code == 1 and "config.pbtxt records sha256:" in verified.output, verified.output
    (version.parent / "config.pbtxt").unlink()
    verified = CliRunner().invoke(export_main, ["verify", str(version)])
    assert verified.exit_code == 1 and "no longer gives its numbers" in verified.output


def _copy_run(run: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(run, target)
    return target


def test_missing_or_corrupt_checkpoints_get_a_clear_error(seg_run, tmp_path):
    run = _copy_run(seg_run, tmp_path / "run")
    (run / "folds" / "0.2" / "best.pt").unlink()
    result = CliRunner().invoke(export_main, ["build", str(run), "--onnx", "--repository", str(tmp_path / "repo")])
    assert result.exit_code == 1 and "1 of the run's 2 folds has not finished (0.2)" in result.output
    assert "export the finished ones with --folds 0.1" in result.output
    (run / "folds" / "0.1" / "result.json").rename(run / "folds" / "0.1" / "result.json.kept")   # 0.1 still training
    still = CliRunner().invoke(export_main, ["build", str(run), "--onnx", "--folds", "0.1",
                                             "--repository", str(tmp_path / "repo")])
    assert still.exit_code == 1 and "fold 0.1 has not finished training (no result.json in " \
        f"{run / 'folds' / '0.1'})" in still.output, still.output
    (run / "folds" / "0.1" / "result.json.kept").rename(run / "folds" / "0.1" / "result.json")
    corrupt = run / "folds" / "0.1" / "best.pt"
    corrupt.write_bytes(corrupt.read_bytes()[:1000])
    result = CliRunner().invoke(export_main, ["build", str(run), "--onnx", "--folds", "0.1",
                                              "--repository", str(tmp_path / "repo")])
    assert result.exit_code == 1 and "cannot be loaded" in result.output
    assert not (tmp_path / "repo").exists()
    bad = CliRunner().invoke(export_main, ["build", str(tmp_path), "--onnx"])
    assert bad.exit_code == 1 and "has no config.yaml" in bad.output
    unknown = CliRunner().invoke(export_main, ["build", str(seg_run), "--onnx", "--folds", "9.9",
                                               "--repository", str(tmp_path / "repo")])
    assert unknown.exit_code == 1 and "unknown fold(s) 9.9" in unknown.output


def test_a_checkpoint_copied_in_from_another_fold_or_run_is_refused(seg_run, tmp_path):
    run = _copy_run(seg_run, tmp_path / "run")
    own = run / "folds" / "0.2" / "best.pt"
    kept = own.read_bytes()
    own.write_bytes((run / "folds" / "0.1" / "best.pt").read_bytes())
    args = ["build", str(run), "--onnx", "--repository", str(tmp_path / "repo")]
    result = CliRunner().invoke(export_main, args)
    assert result.exit_code == 1 and f"checkpoint {own} was saved by fold 0.1, not by fold 0.2" in result.output
    saved = torch.load(tmp_path / "run" / "folds" / "0.1" / "best.pt", weights_only=True)
    torch.save({**saved, "fold": "0.2", "config_hash": "0" * 64}, own)
    result = CliRunner().invoke(export_main, args)
    assert result.exit_code == 1 and "was trained under another config (hash 000000000000…)" in result.output
    torch.save({**{k: v for k, v in saved.items() if k != "config_hash"}, "fold": "0.2",
                "model_spec": {**saved["model_spec"], "base_filters": 8}}, own)      # an older checkpoint, another net
    result = CliRunner().invoke(export_main, args)
    assert result.exit_code == 1 and "holds another network than" in result.output, result.output
    assert not (tmp_path / "repo").exists()
    own.write_bytes(kept)
    repeated = CliRunner().invoke(export_main, [*args, "--folds", "0.1,0.1"])
    assert repeated.exit_code == 1 and "Traceback" not in repeated.output
    assert repeated.output.strip().splitlines()[-1] == ("error: --folds '0.1,0.1' names fold 0.1 twice; give each "
                                                         "fold once.")
    _build(run, tmp_path / "repo")


def test_a_run_trained_with_a_relabel_records_it_for_the_runtime_to_score_labels_alike(tmp_path):
    from runtime.manifest import label_relabel

    blob_subjects(tmp_path, count=4)
    config = write_config(tmp_path, {**TINY_RUN, "data": {**TINY_RUN["data"], "relabel": {1: 1}},
                                     "cross_validation": {"testing_folds": 0, "validation_folds": 2},
                                     "training": {**TINY_RUN["training"], "epochs": 1}})
    assert CliRunner().invoke(trainer_main, ["fit", str(config)]).exit_code == 0
    manifest, _ = load_manifest(_build(tmp_path / "run", tmp_path / "repo"))
    assert manifest.provenance["label_relabel"] == {"1": 1} and label_relabel(manifest) == {1: 1}


def test_a_run_trained_on_label_maps_annotated_in_part_is_scored_on_their_annotated_voxels_alone(tmp_path):
    """data.ignore_value is recorded; `runtime predict --csv` and `runtime evaluate --model` score
    the annotated voxels alone, and agree with each other and with Dice counted by hand."""
    import csv

    import SimpleITK as sitk

    from runtime.manifest import label_ignore

    labels = sparse_blobs(tmp_path, count=4)
    config = write_config(tmp_path, {**TINY_RUN, "data": {**TINY_RUN["data"], "ignore_value": UNANNOTATED},
                                     "cross_validation": {"testing_folds": 0, "validation_folds": 2},
                                     "training": {**TINY_RUN["training"], "epochs": 1}})
    fitted = CliRunner().invoke(trainer_main, ["fit", str(config)])
    assert fitted.exit_code == 0, fitted.output
    version = _build(tmp_path / "run", tmp_path / "repo")
    manifest, _ = load_manifest(version)
    assert manifest.provenance["label_ignore"] == UNANNOTATED and label_ignore(manifest) == UNANNOTATED
    predicted = CliRunner().invoke(runtime_main, ["predict", "--csv", str(tmp_path / "subjects.csv"), "--model",
                                                  str(version), "--output-dir", str(tmp_path / "preds")])
    assert predicted.exit_code == 0, predicted.output
    warnings = [line for line in predicted.output.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "4 of the 4 subject(s) scored (s0, s1, s2, s3) are among those" in warnings[0]
    assert "a label holding 255, the value of unannotated voxels model tiny was trained with, is scored" \
        in predicted.output
    with open(tmp_path / "preds" / "metrics.csv", newline="") as handle:
        rows = {row["subject_id"]: row for row in csv.DictReader(handle)}
    assert rows["s0"]["hd95_blob"] == rows["s0"]["nsd_blob"] == "nan"         # no surface: the maps are partial
    evaluated = CliRunner().invoke(runtime_main, ["evaluate", str(tmp_path / "preds"), str(tmp_path / "subjects.csv"),
                                                  "--model", str(version), "--output-dir", str(tmp_path / "scores")])
    assert evaluated.exit_code == 0, evaluated.output
    assert "voxels whose label is 255 are unannotated" in evaluated.output
    with open(tmp_path / "scores" / "metrics.csv", newline="") as handle:
        scores = {row["subject_id"]: row for row in csv.DictReader(handle)}
    for path in labels:
        subject = path.name.replace("_seg.nii.gz", "")
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        found = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "preds" / f"{subject}.nii.gz")))
        kept = truth != UNANNOTATED
        p, t = found[kept] == 1, truth[kept] == 1
        dice = 2 * (p & t).sum() / (p.sum() + t.sum()) if p.sum() + t.sum() else 1.0
        assert float(rows[subject]["dice_blob"]) == pytest.approx(dice, abs=1e-6)
        assert float(scores[subject]["dice_blob"]) == pytest.approx(dice, abs=1e-6)
    counted = CliRunner().invoke(runtime_main, ["evaluate", str(tmp_path / "preds"), str(tmp_path / "subjects.csv"),
                                                "--model", str(version), "--ignore", "1", "--output-dir",
                                                str(tmp_path / "refused")])
    assert counted.exit_code == 1 and "error: --ignore 1 is a class scored" in counted.output
    assert not (tmp_path / "refused").exists()
    edited = json.loads((version / "manifest.json").read_text())
    edited["provenance"]["label_ignore"] = 254
    (version / "manifest.json").write_text(json.dumps(edited))
    changed = CliRunner().invoke(runtime_main, ["evaluate", str(tmp_path / "preds"), str(tmp_path / "subjects.csv"),
                                                "--model", str(version), "--output-dir", str(tmp_path / "edited")])
    assert changed.exit_code == 1, changed.output
    assert "manifest.json or that record was changed after export" in changed.output, changed.output


def test_classification_run_exports_with_a_majority_vote_its_axes_named_in_the_models_order(tmp_path):
    score_subjects(tmp_path, "classification")
    config = write_config(tmp_path, {
        **TINY_RUN, "task": "classification", "dimensions": 2, "axis_order": "xy",
        "data": {"csv": "subjects.csv", "channels": ["image"], "label": "label", "classes": {0: "low", 1: "high"}},
        "preprocessing": [{"resize": {"shape": [32, 32]}}], "patch": {"size": [32, 32]}, "augmentation": {},
        "model": {"architecture": "vgg16", "base_filters": 4, "norm": "batch"},
        "training": {"epochs": 1, "batch_size": 2, "loss": "ce", "optimizer": {"name": "adam", "lr": 0.001}},
        "cross_validation": {"testing_folds": 0, "validation_folds": 2}, "inference": {"batch_size": 1},
    })
    assert CliRunner().invoke(trainer_main, ["fit", str(config)]).exit_code == 0
    version = _build(tmp_path / "run", tmp_path / "repo", "--ensemble", "vote")
    manifest, _ = load_manifest(version)
    assert manifest.task == "classification" and manifest.output.ensemble == "vote"
    import onnx

    for graph in (version / "model.onnx", *sorted((version / "folds").glob("*.onnx"))):
        dims = onnx.load(graph, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, "x", "y"], graph
    result = CliRunner().invoke(runtime_main, ["predict", str(tmp_path / "s1.nrrd"), "--model", str(version)])
    assert result.exit_code == 0 and "predicted=" in result.output, result.output


def test_a_histology_run_carries_its_slide_section_and_the_runtime_reproduces_it_on_a_slide(tmp_path):
    rgb_patches(tmp_path)
    config = write_config(tmp_path, {**HISTOLOGY, "training": {**HISTOLOGY["training"], "epochs": 1}})
    fitted = CliRunner().invoke(trainer_main, ["fit", str(config)])
    assert fitted.exit_code == 0, fitted.output
    version = _build(tmp_path / "run", tmp_path / "repo")
    run = read_run(tmp_path / "run")
    manifest, _ = load_manifest(version)
    assert manifest.slide == run.config.slide and manifest.slide is not None and manifest.slide.mpp == 1.0
    assert json.loads((version / "manifest.json").read_text())["slide"]["tissue_mpp"] == 4.0
    rows, cols = np.mgrid[:96, :128]
    rgb = np.where(((cols < 60) | ((rows - 48) ** 2 + (cols - 90) ** 2 < 200))[..., None],
                   np.array([110, 70, 160], np.uint8), np.array([225, 140, 190], np.uint8)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "slide.png")              # tissue throughout, at the model's 1 um/pixel
    result = CliRunner().invoke(runtime_main, ["predict", str(tmp_path / "slide.png"), "--model", str(version),
                                               "--mpp", "1", "--probabilities", str(tmp_path / "probs.tif")])
    assert result.exit_code == 0, result.output
    runtime = np.moveaxis(tifffile.imread(tmp_path / "probs.tif", key=0), -1, 0).astype(np.float64) / 255
    models = [load_fold_model(f) for f in run.folds]
    image = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
    trainer = segment(models, torch.device("cpu"), image, run.config.inference, run.config.preprocessing)
    assert runtime.shape == trainer.shape == (3, 96, 128)
    assert np.abs(runtime - trainer).max() <= 1 / 255 + 1e-4


@pytest.mark.parametrize("architecture", ["segresnet", "dynunet"])
def test_a_monai_network_trains_exports_with_parity_and_the_runtime_reproduces_it(tmp_path, architecture):
    """MONAI's SegResNet and nnU-Net's DynUNet, from a config to the runtime: a fold trains, the
    export's parity check passes, and the runtime's probabilities are the trainer's."""
    from trainer.evaluate import segment

    blob_subjects(tmp_path, count=4)
    config = write_config(tmp_path, {**TINY_RUN, "model": {"architecture": architecture, "base_filters": 4, "depth": 2},
                                     "cross_validation": {"testing_folds": 0, "validation_folds": 2},
                                     "training": {**TINY_RUN["training"], "epochs": 1}})
    fitted = CliRunner().invoke(trainer_main, ["fit", str(config), "--fold", "0.1"])
    assert fitted.exit_code == 0, fitted.output
    version = _build(tmp_path / "run", tmp_path / "repo", "--folds", "0.1")
    manifest, _ = load_manifest(version)
    assert manifest.provenance["parity_max_abs_diff"]["ensemble"] < 1e-4
    run = read_run(tmp_path / "run")
    sample = load_sample(run.config, read_subjects(run.config)[0])
    expected = segment([load_fold_model(f) for f in run.folds if f.fold_id == "0.1"], torch.device("cpu"),
                       sample.image, run.config.inference)
    prediction = predict_scan(load_model(version, device="cpu"), read_scan(list(read_subjects(run.config)[0].channels)))
    np.testing.assert_allclose(prediction.probabilities_zyx, expected, atol=1e-4)


def test_a_fold_beyond_the_tolerance_is_named_by_its_fold_not_by_a_staging_file(seg_run, tmp_path):
    result = CliRunner().invoke(export_main, ["build", str(seg_run), "--onnx", "--repository", str(tmp_path / "repo"),
                                              "--folds", "0.1", "--tolerance", "0"])
    assert result.exit_code == 1 and "fold 0.1's ONNX export differs from the torch model" in result.output, \
        result.output
    assert "building" not in result.output and not any((tmp_path / "repo").rglob("*.onnx"))


def test_a_run_folder_whose_files_would_exhaust_memory_is_refused_in_one_line(seg_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    bomb = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else '1'] * 9)}]\n" for i in range(9))
    original = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(bomb + original)                  # 9 ** 9 values behind a few lines
    result = CliRunner().invoke(export_main, ["build", str(run), "--onnx", "--repository", str(tmp_path / "repo")])
    assert result.exit_code == 1 and "expands to more than 1,000,000 values" in result.output, result.output[:500]
    assert len(result.output) < 1000
    (run / "config.yaml").write_text(original)
    (run / "run.json").write_text("[" * 100_000 + "]" * 100_000)
    result = CliRunner().invoke(export_main, ["build", str(run), "--onnx", "--repository", str(tmp_path / "repo")])
    assert result.exit_code == 1 and "run.json: not JSON (nested too deep); is this a complete" in result.output, \
        result.output[:500]
    with open(run / "run.json", "wb") as handle:                       # 1 GiB promised, nothing stored
        handle.truncate(2**30)
    result = CliRunner().invoke(export_main, ["build", str(run), "--onnx", "--repository", str(tmp_path / "repo")])
    assert result.exit_code == 1 and "run.json: 1,073,741,824 bytes, more than the 16,777,216 such a file may hold" \
        in result.output, result.output[:500]
    assert not (tmp_path / "repo").exists()


def test_list_does_not_walk_a_version_folder_that_is_a_link(tmp_path):
    from tests.conftest import DEMO

    repository = tmp_path / "repo"
    shutil.copytree(DEMO, repository / DEMO.name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "big.bin").write_bytes(bytes(3_000_000))
    (repository / DEMO.name / "5").symlink_to(elsewhere)
    listing = CliRunner().invoke(export_main, ["list", str(repository)])
    assert listing.exit_code == 0, listing.output
    [linked] = [line for line in listing.output.splitlines() if line.split()[:2] == [DEMO.name, "5"]]
    assert "a link, not a version folder" in linked and "3.0 MB" not in listing.output

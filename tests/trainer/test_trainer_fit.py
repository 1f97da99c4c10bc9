"""`trainer fit` end to end on tiny data: run folder, every task, resume, DDP, and learning on a real scan."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from click.testing import CliRunner

from tests.conftest import REPO
from tests.modelkit import write_scan
from tests.trainerkit import TINY_RUN, blob_subjects, score_subjects, write_config
from trainer.cli import main
from trainer.config import load_config


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_segmentation_run_folder_holds_everything_export_needs(tmp_path):
    blob_subjects(tmp_path)
    config = write_config(tmp_path, TINY_RUN)
    result = CliRunner().invoke(main, ["fit", str(config), "--fold", "2.1"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"config.yaml", "run.json", "splits.csv", "files.json", "folds",
                                                "summary.csv"}
    fold = run / "folds" / "2.1"
    assert {p.name for p in fold.iterdir()} == {"best.pt", "last.pt", "metrics.csv", "curves.png", "result.json",
                                                 "validation_cases.csv", "testing_cases.csv", "validation_pictures",
                                                 "testing_pictures"}
    outcome = json.loads((fold / "result.json").read_text())
    for split in ("validation", "testing"):                  # the best epoch's subjects, whose mean it reports
        cases = _read_csv(fold / f"{split}_cases.csv")
        expected = sorted(r["subject_id"] for r in _read_csv(run / "splits.csv")
                          if r["fold"] == "2.1" and r["role"] == split)
        assert sorted(c["subject_id"] for c in cases) == expected
        assert sorted(p.name for p in (fold / f"{split}_pictures").iterdir()) == [f"{s}.png" for s in expected]
        for key in ("loss", "dice_blob", "nsd_blob"):
            assert np.mean([float(c[key]) for c in cases]) == pytest.approx(outcome[split][key], rel=1e-9), key
    rows = _read_csv(fold / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for key in ("train_loss", "train_dice_blob", "train_dice_mean", "validation_loss", "validation_dice_blob",
                "validation_dice_mean", "testing_dice_mean", "validation_iou_blob", "validation_sensitivity_blob",
                "validation_specificity_blob", "validation_nsd_blob"):
        assert 0 <= float(rows[-1][key]) < 10, key
    assert "validation_hd95_blob" in rows[-1] and "validation_precision_blob" in rows[-1]
    saved = torch.load(fold / "best.pt", weights_only=True)
    assert saved["model_spec"]["architecture"] == "unet" and saved["model_spec"]["out_channels"] == 2
    info = json.loads((run / "run.json").read_text())
    assert info["versions"]["torch"] == torch.__version__ and len(info["config_hash"]) == 64
    assert len(info["folds"]) == 6
    assert "testing,dice_mean" in (run / "summary.csv").read_text()
    again = CliRunner().invoke(main, ["fit", str(config)])
    assert again.exit_code == 1 and "already holds a run" in again.output


def test_a_run_refused_before_its_first_epoch_leaves_nothing_and_runs_once_fixed(tmp_path):
    blob_subjects(tmp_path, count=4)
    label = tmp_path / "s0_seg.nii.gz"
    good = label.read_bytes()
    write_scan(label, np.full((16, 24, 24), 7, dtype=np.uint8))
    config = write_config(tmp_path, {**TINY_RUN, "training": {**TINY_RUN["training"], "epochs": 1},
                                     "cross_validation": {"testing_folds": 0, "validation_fraction": 0.25}})
    refused = CliRunner().invoke(main, ["fit", str(config)])
    assert refused.exit_code == 1 and "holds value(s) [7]" in refused.output, refused.output
    assert not (tmp_path / "run").exists()
    label.write_bytes(good)
    fixed = CliRunner().invoke(main, ["fit", str(config)])
    assert fixed.exit_code == 0, fixed.output
    assert (tmp_path / "run" / "folds" / "0.1" / "last.pt").is_file()


def test_ctrl_c_before_the_first_epoch_leaves_nothing_and_says_so_in_one_line(tmp_path, monkeypatch):
    import trainer.fit

    blob_subjects(tmp_path, count=4)
    config = write_config(tmp_path, {**TINY_RUN, "training": {**TINY_RUN["training"], "epochs": 1},
                                     "cross_validation": {"testing_folds": 0, "validation_fraction": 0.25}})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.fit, "load_samples", interrupted)
    stopped = CliRunner().invoke(main, ["fit", str(config)])
    assert stopped.exit_code == 130, stopped.output
    assert stopped.output.strip().splitlines()[-1] == "error: stopped by SIGINT (Ctrl-C) before the command finished"
    assert not (tmp_path / "run").exists()


def test_a_folder_holding_a_config_yaml_of_its_own_is_no_run_folder(tmp_path):
    blob_subjects(tmp_path, count=4)
    config = write_config(tmp_path, {**TINY_RUN, "output_dir": "."})
    refused = CliRunner().invoke(main, ["fit", str(config)])
    assert refused.exit_code == 1 and "holds a config.yaml but no run.json" in refused.output, refused.output
    assert yaml.safe_load(config.read_text())["output_dir"] == "."
    (tmp_path / "elsewhere" / "folds").mkdir(parents=True)
    elsewhere = write_config(tmp_path, {**TINY_RUN, "output_dir": "elsewhere"}, "elsewhere.yaml")
    refused = CliRunner().invoke(main, ["fit", str(elsewhere)])
    assert refused.exit_code == 1 and "holds a folds/ folder but no run.json" in refused.output, refused.output


def test_a_refused_run_removes_only_what_it_made(tmp_path):
    blob_subjects(tmp_path, count=4)
    write_scan(tmp_path / "s0_seg.nii.gz", np.full((16, 24, 24), 7, dtype=np.uint8))
    data = {**TINY_RUN, "output_dir": ".", "cross_validation": {"testing_folds": 0, "validation_fraction": 0.25}}
    config = write_config(tmp_path, data, "train.yaml")
    assert CliRunner().invoke(main, ["splits", str(config), "--write"]).exit_code == 0
    splits = (tmp_path / "splits.csv").read_text()
    refused = CliRunner().invoke(main, ["fit", str(config)])
    assert refused.exit_code == 1 and "holds value(s) [7]" in refused.output, refused.output
    assert (tmp_path / "splits.csv").read_text() == splits and config.is_file() and (tmp_path / "s1.nii.gz").is_file()
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "run.json").exists()
    alone = CliRunner().invoke(main, ["fit", str(config), "--fold", "0.1"])   # a job of an array: run files kept
    assert alone.exit_code == 1 and (tmp_path / "run.json").is_file() and not (tmp_path / "folds" / "0.1").exists()
    (tmp_path / "run.json").unlink()      # another job of the array between writing config.yaml and run.json
    racing = CliRunner().invoke(main, ["fit", str(config), "--fold", "0.1"])
    assert racing.exit_code == 1 and "holds value(s) [7]" in racing.output, racing.output
    deep = write_config(tmp_path, {**data, "output_dir": "deep/a/b"}, "deep.yaml")
    assert CliRunner().invoke(main, ["fit", str(deep)]).exit_code == 1
    assert not (tmp_path / "deep").exists()              # every folder it made, up to the first that was there


def test_a_splits_csv_of_other_splits_is_never_replaced(tmp_path):
    blob_subjects(tmp_path, count=4)
    (tmp_path / "run").mkdir()
    mine = "fold,subject_id,role\n0.1,s1,train\n0.1,s2,validation\n"
    (tmp_path / "run" / "splits.csv").write_text(mine)
    config = write_config(tmp_path, {**TINY_RUN, "cross_validation": {"testing_folds": 0, "validation_fraction": 0.25}})
    refused = CliRunner().invoke(main, ["fit", str(config)])
    assert refused.exit_code == 1 and "holds other splits than this config makes" in refused.output, refused.output
    assert (tmp_path / "run" / "splits.csv").read_text() == mine and not (tmp_path / "run" / "config.yaml").exists()


def test_a_run_writes_a_line_per_epoch_at_once_even_into_a_file(tmp_path):
    """stdout is a file, as under SLURM: each epoch's line is there while the run goes on, with its
    metrics, seconds and time left, and the curves are drawn after every epoch; the no-GPU warning
    comes once the run cannot be refused any more, and not at all for a run that is refused."""
    import re
    import time

    blob_subjects(tmp_path)
    config = write_config(tmp_path, {**TINY_RUN, "training": {**TINY_RUN["training"], "epochs": 6}})
    command = [sys.executable, "-m", "trainer", "fit", str(config), "--threads", "1", "--fold", "1.1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(tmp_path / "log.txt", "w") as log, open(tmp_path / "err.txt", "w") as err:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=err)
        deadline = time.monotonic() + 240
        while "epoch 1/6" not in (tmp_path / "log.txt").read_text() and time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "err.txt").read_text()
            time.sleep(0.05)
        still_running = process.poll() is None
        assert (tmp_path / "run" / "folds" / "1.1" / "curves.png").is_file()
        assert process.wait(timeout=240) == 0, (tmp_path / "err.txt").read_text()
    assert still_running
    lines = (tmp_path / "log.txt").read_text().splitlines()
    epochs = [line for line in lines if line.startswith("fold 1.1 epoch ")]
    assert len(epochs) == 6
    pattern = r"fold 1\.1 epoch 2/6: train_loss [0-9.e-]+, .*validation_dice_mean [0-9.e-]+, .*[0-9.]+ s, ETA .+"
    assert re.fullmatch(pattern, epochs[1]), epochs[1]
    assert epochs[-1].endswith("ETA 0 s")
    if not torch.cuda.is_available():
        said = "\n" + (tmp_path / "err.txt").read_text()
        assert "\nwarning: no GPU found: training on the CPU with 1 thread (" in said
    for again in (command[:-2], command):          # the whole run again; the trained fold again
        refused = subprocess.run(again, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        said = refused.stderr + refused.stdout
        assert refused.returncode == 1 and ("already holds a run" in said or "already trained" in said), said
        assert "no GPU found" not in said


def test_resume_continues_exactly_where_the_run_stopped(tmp_path, monkeypatch):
    from trainer import fold as fold_module

    blob_subjects(tmp_path)
    config = write_config(tmp_path, {**TINY_RUN, "training": {**TINY_RUN["training"], "epochs": 3}})
    straight = CliRunner().invoke(main, ["fit", str(config), "--fold", "1.1"])
    assert straight.exit_code == 0, straight.output
    reference = torch.load(tmp_path / "run" / "folds" / "1.1" / "last.pt", weights_only=True)["model"]

    (tmp_path / "run").rename(tmp_path / "first_run")
    original = fold_module.FoldTrainer._train_epoch

    def interrupted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(fold_module.FoldTrainer, "_train_epoch", interrupted)
    stopped = CliRunner().invoke(main, ["fit", str(config), "--fold", "1.1"])
    assert stopped.exit_code == 130 and "error: stopped by SIGINT (Ctrl-C)" in stopped.output
    assert len(_read_csv(tmp_path / "run" / "folds" / "1.1" / "metrics.csv")) == 2
    monkeypatch.setattr(fold_module.FoldTrainer, "_train_epoch", original)
    again = CliRunner().invoke(main, ["fit", str(config), "--fold", "1.1"])
    assert again.exit_code == 1 and "fold 1.1 began training in" in again.output and \
        "stopped before its last epoch; continue it with --resume" in again.output, again.output
    resumed = CliRunner().invoke(main, ["fit", str(config), "--fold", "1.1", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert [r["epoch"] for r in _read_csv(tmp_path / "run" / "folds" / "1.1" / "metrics.csv")] == ["1", "2", "3"]
    final = torch.load(tmp_path / "run" / "folds" / "1.1" / "last.pt", weights_only=True)["model"]
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, msg=name)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_vgg_runs_for_classification_and_regression_in_2d(tmp_path, task):
    score_subjects(tmp_path, task)
    classes = {0: "low", 1: "high"} if task == "classification" else {0: "mean_intensity"}
    config = write_config(tmp_path, {
        **TINY_RUN, "task": task, "dimensions": 2,
        "data": {"csv": "subjects.csv", "channels": ["image"], "label": "label", "classes": classes},
        "preprocessing": [{"resize": {"shape": [32, 32]}}],
        "patch": {"size": [32, 32]}, "augmentation": {"noise": {"probability": 0.5, "std": 0.1}},
        "model": {"architecture": "vgg16", "base_filters": 4, "norm": "batch"},
        "training": {"epochs": 2, "batch_size": 3, "loss": "ce" if task == "classification" else "mse",
                     "optimizer": {"name": "sgd", "lr": 0.01}},
        "cross_validation": {"testing_folds": 0, "validation_folds": 2},
        "inference": {"batch_size": 1},
    })
    result = CliRunner().invoke(main, ["fit", str(config)])
    assert result.exit_code == 0, result.output
    rows = _read_csv(tmp_path / "run" / "folds" / "0.2" / "metrics.csv")
    expected = ("train_accuracy", "validation_accuracy", "validation_balanced_accuracy", "validation_auc") \
        if task == "classification" else ("train_mse", "validation_mse", "validation_mae")
    for key in expected:
        assert key in rows[-1] and rows[-1][key] != ""
    assert (tmp_path / "run" / "folds" / "0.1" / "best.pt").is_file()
    if task == "regression":                         # batches of 3 and 1: the loss is per sample, as the MSE
        assert float(rows[-1]["train_loss"]) == pytest.approx(float(rows[-1]["train_mse"]), rel=1e-5)
    fold = tmp_path / "run" / "folds" / "0.2"
    outcome = json.loads((fold / "result.json").read_text())["validation"]
    cases = _read_csv(fold / "validation_cases.csv")           # the best epoch's subjects, whose scores it reports
    labels = np.array([float(c["label"]) for c in cases])
    if task == "classification":
        predicted = np.array([float(c["predicted"]) for c in cases])
        probabilities = np.array([[float(c["probability_low"]), float(c["probability_high"])] for c in cases])
        assert np.array_equal(predicted, probabilities.argmax(axis=1)) and set(labels) <= {0, 1}
        assert np.mean(predicted == labels) == pytest.approx(outcome["accuracy"])
    else:
        predicted = np.array([float(c["mean_intensity"]) for c in cases])
        assert np.mean(np.abs(predicted - labels)) == pytest.approx(outcome["mae"], rel=1e-5)


def test_balanced_class_weights_are_worked_out_from_each_folds_training_subjects(tmp_path):
    """training.class_weights: balanced weighs each class by the total over (classes present x its
    count) over the fold's own training subjects' label voxels, said at the fold's start."""
    from trainer.fold import fold_class_weights
    from trainer.sampling import Sample

    blob_subjects(tmp_path, count=4)
    config = write_config(tmp_path, {**TINY_RUN, "cross_validation": {"testing_folds": 0, "validation_folds": 2},
                                     "training": {**TINY_RUN["training"], "epochs": 1, "class_weights": "balanced"}})
    result = CliRunner().invoke(main, ["fit", str(config)])
    assert result.exit_code == 0, result.output
    for fold in ("0.1", "0.2"):
        train = [row["subject_id"] for row in _read_csv(tmp_path / "run" / "splits.csv")
                 if row["fold"] == fold and row["role"] == "train"]
        counts = np.zeros(2)
        for subject in train:
            counts += np.bincount(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{subject}_seg.nii.gz")))
                                  .ravel(), minlength=2)
        expected = counts.sum() / (2 * counts)
        assert expected[1] > 5 * expected[0]
        said = f"fold {fold}: class weights background {expected[0]:.4g}, blob {expected[1]:.4g} (balanced over " \
               f"the fold's {len(train)} training subject(s))"
        assert said in result.output, result.output
    labels = [np.array([[0, 0, 0], [0, 0, 1]]), np.array([[0, 1, 1], [0, 0, 0]])]
    samples = [Sample(f"s{i}", np.zeros((1, 2, 3), np.float32), label=label) for i, label in enumerate(labels)]
    three = load_config(write_config(tmp_path, {**TINY_RUN, "data": {**TINY_RUN["data"], "classes": {
        0: "background", 1: "blob", 2: "rim"}}, "training": {**TINY_RUN["training"], "class_weights": "balanced"}},
        "three.yaml"))
    np.testing.assert_allclose(fold_class_weights(three, samples), [12 / (2 * 9), 12 / (2 * 3), 12 / (2 * 3)])
    named = load_config(write_config(tmp_path, {**TINY_RUN, "training": {**TINY_RUN["training"],
                                                                         "class_weights": {1: 2.5}}}, "named.yaml"))
    np.testing.assert_allclose(fold_class_weights(named, samples), [1.0, 2.5])


@pytest.mark.slow
def test_distributed_data_parallel_on_two_cpu_processes(tmp_path):
    blob_subjects(tmp_path, count=4)
    config = write_config(tmp_path, {**TINY_RUN, "cross_validation": {"testing_folds": 0, "validation_folds": 2},
                                      "training": {**TINY_RUN["training"], "epochs": 1, "device": "cpu"}})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "trainer", "fit", str(config), "--fold", "0.1"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("fold 0.1: best epoch 1") == 1  # only rank 0 reports and writes
    rows = _read_csv(tmp_path / "run" / "folds" / "0.1" / "metrics.csv")
    assert len(rows) == 1 and float(rows[0]["validation_loss"]) > 0


def _liver_slabs(folder: Path, data_dir: Path) -> None:
    """Real abdominal CT and its liver label, cut into z-slabs that act as subjects."""
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "radiology" / "totalseg_example_ct_sm.nii.gz")))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "radiology" / "totalseg_example_seg.nii.gz")))
    rows = ["subject_id,ct,label"]
    for i, start in enumerate(range(0, 30, 6)):
        write_scan(folder / f"slab{i}.nii.gz", ct[start:start + 6].astype(np.int16), (3.0, 3.0, 3.0))
        write_scan(folder / f"slab{i}_liver.nii.gz", (seg[start:start + 6] == 5).astype(np.uint8), (3.0, 3.0, 3.0))
        rows.append(f"slab{i},slab{i}.nii.gz,slab{i}_liver.nii.gz")
    (folder / "subjects.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.slow
def test_learns_the_liver_of_a_real_ct(tmp_path, data_dir):
    _liver_slabs(tmp_path, data_dir)
    config = write_config(tmp_path, {
        **TINY_RUN, "seed": 0,
        "data": {"csv": "subjects.csv", "channels": ["ct"], "label": "label", "classes": {0: "background", 1: "liver"}},
        "preprocessing": [{"clip": {"min": -200, "max": 300}}, {"rescale": {"out_min": 0, "out_max": 1}}],
        "patch": {"size": [4, 48, 48], "sampler": "label", "per_volume": 8, "queue_length": 32, "workers": 0},
        "augmentation": {"flip": {"probability": 0.3, "axes": [2]}, "noise": {"probability": 0.3, "std": 0.02},
                         "gamma": {"probability": 0.3, "log_gamma": 0.2}},
        "model": {"architecture": "unet", "base_filters": 8, "depth": 2},
        "training": {"epochs": 12, "batch_size": 4, "loss": "dice_ce", "optimizer": {"name": "adam", "lr": 0.005},
                     "scheduler": {"name": "none"}},
        "cross_validation": {"testing_folds": 0, "validation_fraction": 0.2},
        "inference": {"overlap": 0.5, "batch_size": 4},
    })
    result = CliRunner().invoke(main, ["fit", str(config)])
    assert result.exit_code == 0, result.output
    outcome = json.loads((tmp_path / "run" / "folds" / "0.1" / "result.json").read_text())
    liver_share = 0.105  # of the CT's voxels; calling every voxel liver would score Dice 2p / (1 + p) = 0.19
    assert outcome["validation"]["dice_liver"] > 0.6 > 3 * 2 * liver_share / (1 + liver_share), outcome


def test_a_tie_on_the_monitored_metric_goes_to_the_lower_validation_loss() -> None:
    """A balanced accuracy of a small validation set reached 1.0 at epoch 1 and stayed there: the
    first epoch kept best.pt, undertrained. A tie is now decided by the validation loss."""
    from trainer.fold import _improved

    assert _improved(0.9, math.nan, "max")
    assert _improved(1.0, 0.9, "max", loss=0.8, best_loss=0.2)          # a higher value wins whatever the loss
    assert _improved(1.0, 1.0, "max", loss=0.2, best_loss=0.5)          # a tie: the lower loss
    assert not _improved(1.0, 1.0, "max", loss=0.5, best_loss=0.2)
    assert not _improved(1.0, 1.0, "max")                                # no loss to decide by: the earlier
    assert _improved(0.1, 0.2, "min") and not _improved(0.3, 0.2, "min", loss=0.0, best_loss=1.0)


def test_a_fold_whose_training_or_validation_subjects_hold_no_voxel_of_a_class_is_warned_of(tmp_path):
    from trainer.fold import absent_class_warnings
    from trainer.sampling import Sample
    from trainer.splits import Fold

    blob_subjects(tmp_path, count=4)
    classes = {0: "background", 1: "blob", 2: "cyst"}
    config = load_config(write_config(tmp_path, {**TINY_RUN, "data": {**TINY_RUN["data"], "classes": classes}}))
    blob, empty = np.zeros((4, 4, 4), np.int64), np.zeros((4, 4, 4), np.int64)
    blob[1, 1, 1], empty[0, 0, 0] = 1, -1                               # -1: unannotated
    samples = {"a": Sample("a", np.zeros((1, 4, 4, 4), np.float32), label=blob),
               "b": Sample("b", np.zeros((1, 4, 4, 4), np.float32), label=empty)}
    warnings = absent_class_warnings(config, [Fold(0, 1, ("a",), ("b",), ()), Fold(0, 2, ("b",), ("a",), ())], samples)
    assert warnings == [
        "warning: fold 0.1: its training subject(s) hold no voxel of class(es) cyst: it cannot learn them; give "
        "subjects holding them to each fold (fewer folds, or groups)",
        "warning: fold 0.1: its validation subject(s) hold no voxel of class(es) blob, cyst: their Dice there is 1 "
        "where nothing is found and 0 where anything is, and the best epoch is chosen on that; give subjects "
        "holding them to each fold (fewer folds, or groups)",
        "warning: fold 0.2: its training subject(s) hold no voxel of class(es) blob, cyst: it cannot learn them; "
        "give subjects holding them to each fold (fewer folds, or groups)",
        "warning: fold 0.2: its validation subject(s) hold no voxel of class(es) cyst: their Dice there is 1 where "
        "nothing is found and 0 where anything is, and the best epoch is chosen on that; give subjects holding "
        "them to each fold (fewer folds, or groups)"]
    assert absent_class_warnings(config, [Fold(0, 1, ("a",), ("a",), ())], {"a": samples["a"]}) == [
        "warning: fold 0.1: its training subject(s) hold no voxel of class(es) cyst: it cannot learn them; give "
        "subjects holding them to each fold (fewer folds, or groups)",
        "warning: fold 0.1: its validation subject(s) hold no voxel of class(es) cyst: their Dice there is 1 where "
        "nothing is found and 0 where anything is, and the best epoch is chosen on that; give subjects holding "
        "them to each fold (fewer folds, or groups)"]


def test_a_training_whose_loss_explodes_is_said_to_have_diverged(tmp_path):
    """A learning rate far too high whose weights stay finite: the loss goes from about 1 to 1e10."""
    blob_subjects(tmp_path, count=4)
    for lr, diverges in ((1.0e6, True), (0.01, False)):
        config = write_config(tmp_path, {**TINY_RUN, "output_dir": f"run{lr:g}",
                                         "cross_validation": {"testing_folds": 0, "validation_folds": 2},
                                         "training": {**TINY_RUN["training"], "epochs": 1,
                                                      "optimizer": {"name": "adam", "lr": lr}}})
        result = CliRunner().invoke(main, ["fit", str(config), "--fold", "0.1"])
        assert result.exit_code == 0, result.output
        said = [line for line in result.output.splitlines() if "the training diverged" in line]
        assert len(said) == int(diverges), result.output
        assert not said or said[0].startswith("warning: fold 0.1 epoch 1: the training loss (") and \
            "lower training.optimizer.lr (or set training.grad_clip)" in said[0]


def test_a_loss_is_held_against_its_first_batch_and_lowest_epoch_not_a_lucky_batch() -> None:
    """Regression of ages (MSE near 144 once trained, single batches near 0 by chance) never
    diverges; a loss near 1 gone to 1e16 does, and is said once."""
    from trainer.fold import LossWatch

    rng = np.random.default_rng(0)
    for _ in range(20):
        watch = LossWatch()
        first = list((rng.normal(50, 15, 100)) ** 2)                 # the untrained model: errors about 50 years
        assert watch.diverged(first) is None
        for _ in range(50):
            assert watch.diverged(list((rng.normal(0, 12, (100, 2)) ** 2).mean(axis=1))) is None   # batches of 2
    watch = LossWatch()
    assert watch.diverged([1.6, 1.2, 5e3, 1e16]) == pytest.approx(2.5e15, rel=1e-3)
    assert watch.diverged([1e16, 1e16]) is None                      # said once

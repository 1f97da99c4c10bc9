"""`trainer summary`: each finished fold's best epoch and metrics, their mean, and every fold's curves."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.trainerkit import TINY_RUN, blob_subjects, write_config
from trainer.cli import main


def test_a_run_of_two_folds_is_summed_up_in_a_table_and_a_picture(tmp_path):
    blob_subjects(tmp_path)
    config = write_config(tmp_path, {**TINY_RUN, "training": {**TINY_RUN["training"], "epochs": 3}})
    runner = CliRunner()
    for fold in ("1.1", "1.2"):
        assert runner.invoke(main, ["fit", str(config), "--fold", fold]).exit_code == 0
    result = runner.invoke(main, ["summary", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "warning: 4 of the run's 6 folds have not finished (2.1, 2.2, 3.1, 3.2): the means below are of the " \
        "finished folds alone" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["fold", "best", "epoch"]
    results = [json.loads((tmp_path / "run" / "folds" / f / "result.json").read_text()) for f in ("1.1", "1.2")]
    for line, fold in zip(lines[1:3], results):
        cells = line.split()
        assert cells[0] == fold["fold"] and int(cells[1]) == fold["best_epoch"] and int(cells[2]) == 3
        assert float(cells[4]) == pytest.approx(fold["validation"]["dice_mean"], abs=1e-4)
    mean = np.mean([f["validation"]["dice_mean"] for f in results])
    assert f"validation dice_mean over 2 fold(s): mean {mean:.4f}" in result.output
    picture = tmp_path / "run" / "curves.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 5000


def test_a_folder_that_is_no_run_or_has_no_finished_fold_is_refused_in_one_line(tmp_path):
    for folder, expected in ((tmp_path, "not a run folder"), (tmp_path / "run", "no finished fold")):
        if folder != tmp_path:
            folder.mkdir()
            (folder / "run.json").write_text("{}")
        result = CliRunner().invoke(main, ["summary", str(folder)])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and expected in lines[0], result.output


@pytest.mark.parametrize("result,named", [([], "fold"), ({"fold": "1.1", "validation": None}, "validation")])
def test_a_damaged_result_is_refused_naming_the_file(tmp_path, result, named):
    fold = tmp_path / "run" / "folds" / "1.1"
    fold.mkdir(parents=True)
    (tmp_path / "run" / "run.json").write_text("{}")
    (fold / "result.json").write_text(json.dumps(result))
    (fold / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n")
    out = CliRunner().invoke(main, ["summary", str(tmp_path / "run")])
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert out.exit_code == 1 and len(lines) == 1 and "result.json" in lines[0] and named in lines[0], out.output


def test_a_metric_undefined_in_one_fold_leaves_the_others_mean_intact(tmp_path):
    from trainer.fit import write_summary

    for fold, value in (("1.1", 4.0), ("1.2", None), ("1.3", 6.0)):
        (tmp_path / "folds" / fold).mkdir(parents=True)
        (tmp_path / "folds" / fold / "result.json").write_text(json.dumps(
            {"validation": {"hd95_blob": value, "dice_mean": 0.5}, "testing": {}}))
    write_summary(tmp_path)
    assert "validation,hd95_blob,5,1.41421,2" in (tmp_path / "summary.csv").read_text().splitlines()


def test_a_damaged_result_of_another_fold_is_left_out_with_a_warning_and_fails_no_job(tmp_path):
    """Another job's result.json cut short (a crash as it was written): the job that ends writes
    the summary of the folds it can read and says which it left out and how to write it again."""
    from trainer.fit import write_summary

    for fold, value in (("1.1", 0.4), ("1.2", 0.6)):
        (tmp_path / "folds" / fold).mkdir(parents=True)
        (tmp_path / "folds" / fold / "result.json").write_text(json.dumps(
            {"validation": {"dice_mean": value}, "testing": {}}))
    damaged = tmp_path / "folds" / "1.2" / "result.json"
    damaged.write_text(damaged.read_text()[:20])
    [warning] = write_summary(tmp_path)
    assert warning.startswith(f"warning: {damaged} cannot be read") and "--fold 1.2 --resume" in warning
    assert "validation,dice_mean,0.4,nan,1" in (tmp_path / "summary.csv").read_text().splitlines()


def test_long_metric_names_keep_their_columns_apart_and_an_untested_run_has_no_testing_column():
    from trainer.summary import table

    fold = {"fold": "0.1", "monitored": "balanced_accuracy", "best_epoch": 2, "epochs_run": 2, "stopped_early": False,
            "validation": {"balanced_accuracy": 0.75}, "testing": {}}
    header, row, *_ = table([fold])
    assert header.split() == ["fold", "best", "epoch", "epochs", "stopped", "validation", "balanced_accuracy"]
    assert row.split() == ["0.1", "2", "2", "-", "0.7500"]
    tested = table([{**fold, "testing": {"balanced_accuracy": 0.5}}])
    assert tested[0].split()[-4:] == ["validation", "balanced_accuracy", "testing", "balanced_accuracy"]
    assert tested[1].split()[-2:] == ["0.7500", "0.5000"]


def test_one_fold_has_no_standard_deviation_to_print():
    from trainer.summary import table

    fold = {"fold": "0.1", "best_epoch": 2, "epochs_run": 2, "stopped_early": False, "monitored": "dice_mean",
            "validation": {"dice_mean": 0.25}, "testing": {}}
    assert table([fold])[-1] == "validation dice_mean over 1 fold(s): mean 0.2500, no std of one fold"
    second = {**fold, "fold": "0.2", "validation": {"dice_mean": 0.75}}
    assert table([fold, second])[-1] == "validation dice_mean over 2 fold(s): mean 0.5000, std 0.3536"


def test_nested_folds_are_also_summed_up_over_their_outer_folds(tmp_path):
    """The inner folds of an outer fold test on its one testing set: the estimate's deviation is
    over the outer folds, each the mean of its inner folds' models (a fold undefined in none)."""
    from trainer.fit import write_summary
    from trainer.summary import table

    tested = {"1.1": 0.6, "1.2": 0.8, "2.1": 0.5, "2.2": None, "3.1": 0.9, "3.2": 0.9}
    folds = []
    for fold, value in tested.items():
        (tmp_path / "folds" / fold).mkdir(parents=True)
        result = {"fold": fold, "monitored": "dice_mean", "best_epoch": 1, "epochs_run": 1, "stopped_early": False,
                  "validation": {"dice_mean": 0.5}, "testing": {"dice_mean": value}}
        (tmp_path / "folds" / fold / "result.json").write_text(json.dumps(result))
        folds.append(result)
    write_summary(tmp_path)
    rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert "testing_outer_folds,dice_mean,0.7,0.2,3" in rows
    assert "testing,dice_mean,0.74,0.181659,5" in rows                  # the five inner folds, not independent
    assert table(folds)[-1] == ("testing dice_mean over 3 outer fold(s), each the mean of its inner folds' models: "
                                "mean 0.7000, std 0.2000")
    single = [{**f, "fold": f"{i + 1}.1"} for i, f in enumerate(folds[:3])]        # one inner fold per outer fold
    assert not any("outer" in line for line in table(single))


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_nested_folds_are_also_scored_as_the_ensembles_export_makes_of_each_outer_folds_inner_models(tmp_path, task):
    """An outer fold's exported model averages its inner models' probabilities (or values): two
    models right on different subjects score 1/3 and 2/3 alone, 1 together; two regressors off by
    one either way score an MAE of 1 alone and 0 together. From the folds' testing_cases.csv."""
    import csv

    import yaml

    from trainer.fit import write_summary
    from trainer.summary import outer_fold_ensembles, table

    classes = {0: "benign", 1: "malignant"} if task == "classification" else {0: "age"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"task": task, "data": {"classes": classes}}))
    given = ({"1.1": [0.9, 0.4, 0.45], "1.2": [0.2, 0.7, 0.6], "2.1": [0.8, 0.9, 0.3], "2.2": [0.7, 0.6, 0.1]}
             if task == "classification" else {"1.1": [1.0, 3.0], "1.2": [3.0, 1.0], "2.1": [2.0, 4.0],
                                                "2.2": [2.0, 4.0]})
    metric = "accuracy" if task == "classification" else "mae"
    folds = []
    for fold, values in given.items():
        folder = tmp_path / "folds" / fold
        folder.mkdir(parents=True)
        if task == "classification":
            rows = [{"subject_id": f"s{fold[0]}{i}", "predicted": int(p > 0.5), "probability_benign": 1 - p,
                     "probability_malignant": p, "label": 1} for i, p in enumerate(values)]
            alone = float(np.mean([p > 0.5 for p in values]))
        else:
            rows = [{"subject_id": f"s{fold[0]}{i}", "age": v, "label": 2.0 + 2 * i * (fold[0] == "2")}
                    for i, v in enumerate(values)]
            alone = float(np.mean([abs(r["age"] - r["label"]) for r in rows]))
        with open(folder / "testing_cases.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        result = {"fold": fold, "monitored": metric, "best_epoch": 1, "epochs_run": 1, "stopped_early": False,
                  "validation": {metric: 0.5}, "testing": {metric: alone}}
        (folder / "result.json").write_text(json.dumps(result))
        folds.append(result)
    ensembles = outer_fold_ensembles(tmp_path, folds)
    if task == "classification":          # outer fold 2: two of three; no AUC of one class's subjects
        assert ensembles["accuracy"] == [1.0, 2 / 3] and set(ensembles) == {"accuracy", "balanced_accuracy"}
    else:                                           # outer fold 2: both models right, alone and together
        assert ensembles["mae"] == [0.0, 0.0] and ensembles["rmse"] == [0.0, 0.0]
    write_summary(tmp_path)
    rows = (tmp_path / "summary.csv").read_text().splitlines()
    expected = "testing_outer_ensembles,accuracy,0.833333,0.235702,2" if task == "classification" else \
        "testing_outer_ensembles,mae,0,0,2"
    assert expected in rows, rows
    last = table(folds, ensembles)[-1]
    assert last.startswith(f"testing {metric} over 2 outer fold(s), each the ensemble of its inner folds' models: ")
    (tmp_path / "run.json").write_text(json.dumps({"folds": [*given, "2.3"]}))    # outer fold 2 is not finished
    assert outer_fold_ensembles(tmp_path, folds)[metric] == ensembles[metric][:1]
    (tmp_path / "run.json").unlink()
    (tmp_path / "folds" / "2.2" / "testing_cases.csv").unlink()         # a fold without its cases: its outer fold out
    assert outer_fold_ensembles(tmp_path, folds)[metric] == ensembles[metric][:1]

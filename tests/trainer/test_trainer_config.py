"""The training config: defaults, every kind of problem with its location, the resolved form and its hash."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from runtime.contract import ClassSpec, WindowSection
from runtime.preprocess import Step
from tests.conftest import REPO
from tests.trainerkit import SEGMENTATION, changed, problems_of, write_config
from trainer.config import ConfigError, config_hash, load_config, resolved_dict, write_resolved

CLASSIFICATION: dict[str, Any] = {
    "name": "nodule_malignancy", "task": "classification", "modality": "radiology", "dimensions": 2,
    "data": {"csv": "../tables/nodules.csv", "subject_column": "case", "channels": ["ct"], "label": "malignant",
             "classes": {0: "benign", 1: "malignant"}},
    "patch": {"size": [48, 48]},
}


def test_segmentation_defaults_are_filled(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, SEGMENTATION))
    assert (config.axis_order, config.seed, config.output_dir) == ("zyx", 0, tmp_path / "runs" / "brain_lesion")
    assert config.data.csv == tmp_path / "subjects.csv" and config.data.subject_column == "subject_id"
    assert config.classes == (ClassSpec(0, "background"), ClassSpec(1, "lesion"))
    assert config.preprocessing == (Step("resample", {"spacing": (3.0, 1.5, 1.5), "method": "linear"}),
                                    Step("zscore", {"region": "nonzero", "channels": None}))
    assert config.patch.sampler == "label" and config.patch.label_probabilities is None
    assert (config.patch.per_volume, config.patch.queue_length, config.patch.workers) == (4, 32, 0)
    assert config.model.architecture == "unet" and config.training.loss == "dice_ce"
    assert config.training.optimizer.momentum is None and config.training.grad_clip is None
    assert (config.training.early_stopping.metric, config.training.early_stopping.mode) == ("dice_mean", "max")
    cv = config.cross_validation
    assert (cv.testing_folds, cv.validation_folds, cv.validation_fraction, cv.stratify) == (5, 5, None, False)
    assert config.inference == WindowSection("sliding", (16, 64, 64), 0.5, "gaussian", 1, (), True)
    assert config.augmentation == {} and config.source == tmp_path / "config.yaml"


def test_classification_defaults_follow_the_task(tmp_path: Path) -> None:
    data = changed(CLASSIFICATION, training={"optimizer": {"name": "sgd"}},
                   augmentation={"flip": {"probability": 0.5}, "rotate90": {"probability": 0.2}})
    config = load_config(write_config(tmp_path, data))
    assert config.axis_order == "yx" and config.data.csv == (tmp_path.parent / "tables" / "nodules.csv").resolve()
    assert config.patch.sampler == "uniform" and config.patch.label_probabilities is None
    assert config.model.architecture == "vgg16" and config.training.loss == "ce"
    assert config.training.optimizer.momentum == 0.9
    assert config.training.early_stopping.metric == "balanced_accuracy"
    assert config.cross_validation.stratify is True and config.inference.mode == "whole"
    assert config.augmentation["flip"] == {"probability": 0.5, "axes": (0, 1)}
    assert config.augmentation["rotate90"] == {"probability": 0.2, "axes": (0, 1)}


def test_regression_loss_and_metric_defaults(tmp_path: Path) -> None:
    data = changed(CLASSIFICATION, task="regression", data__classes={0: "age"},
                   training={"early_stopping": {"metric": "mae"}})
    config = load_config(write_config(tmp_path, data))
    assert config.training.loss == "mse"
    assert (config.training.early_stopping.metric, config.training.early_stopping.mode) == ("mae", "min")
    assert config.cross_validation.stratify is False


@pytest.mark.parametrize(("data", "expected"), [
    (changed(SEGMENTATION, training={"optimizer": {"lr": -1}}), "training.optimizer.lr: must be > 0, got -1"),
    (changed(SEGMENTATION, training={"epochs": 0}), "training.epochs: must be >= 1, got 0"),
    (changed(SEGMENTATION, augmentation={"noise": {"probability": 1.5}}),
     "augmentation.noise.probability: must be in [0, 1], got 1.5"),
    (changed(SEGMENTATION, cross_validation={"testing_folds": 1}),
     "cross_validation.testing_folds: must be 0 (no testing set) or >= 2, got 1"),
    (changed(SEGMENTATION, cross_validation={"validation_folds": 1}),
     "cross_validation.validation_folds: must be >= 2 (or use validation_fraction), got 1"),
    (changed(SEGMENTATION, cross_validation={"validation_folds": 4, "validation_fraction": 0.2}),
     "cross_validation.validation_folds: give validation_folds or validation_fraction, not both"),
    (changed(SEGMENTATION, training={"loss": "mse"}), "training.loss: mse does not fit a segmentation task"),
    (changed(CLASSIFICATION, task="regression", data__classes={0: "age"}, training={"loss": "ce"}),
     "training.loss: ce does not fit a regression task"),
    (changed(SEGMENTATION, model={"architecture": "vgg16"}), "model.architecture: vgg16 does not fit a segmentation"),
    (changed(CLASSIFICATION, model={"architecture": "resunet"}),
     "model.architecture: resunet does not fit a classification"),
    (changed(SEGMENTATION, patch={"size": [16, 64]}), "patch.size: must be 3 positive integers"),
    (changed(SEGMENTATION, patch={"size": [16, 60, 64]}),
     "patch.size: unet: spatial size (16, 60, 64) must be a positive multiple of 16"),
    (changed(SEGMENTATION, model={"architecture": "swinunetr", "base_filters": 12}),
     "patch.size: swinunetr: spatial size (16, 64, 64) must be a positive multiple of 32 (its fixed depth)"),
    (changed(SEGMENTATION, model={"architecture": "swinunetr", "base_filters": 13}, patch={"size": [32, 64, 64]}),
     "model.base_filters: swinunetr's feature size must be a multiple of 12"),
    (changed(SEGMENTATION, model={"depth": 2}, patch={"size": [4, 4, 4]}),
     "patch.size: unet: spatial size (4, 4, 4) leaves a single voxel at the coarsest level"),
    (changed(CLASSIFICATION, model={"architecture": "resnet18"}, patch={"size": [32, 48]}),
     "patch.size: resnet18: spatial size (32, 48) leaves one voxel before the last pooling"),
    (changed(CLASSIFICATION, patch={"size": [48, 48], "sampler": "label"}), "patch.sampler: the label sampler"),
    (changed(SEGMENTATION, patch={"size": [16, 64, 64], "label_probabilities": {0: 1, 2: 1}}),
     "patch.label_probabilities: must map class values ([0, 1])"),
    (changed(SEGMENTATION, data__classes={1: "lesion", 2: "oedema"}),
     "data.classes: the first class is the background and must have value 0, got 1"),
    (changed(SEGMENTATION, data__channels=["t1", "label"]), "data: subject_column, channels and label must name"),
    (changed(SEGMENTATION, augmentation={"rotate90": {"probability": 0.1, "axes": [0, 1, 2]}}),
     "augmentation.rotate90.axes: must name exactly 2 axes (the plane), got [0, 1, 2]"),
    (changed(SEGMENTATION, training={"scheduler": {"warmup_epochs": 50}}),
     "training.scheduler.warmup_epochs: must be below training.epochs (50), got 50"),
    (changed(SEGMENTATION, training={"optimizer": {"name": "adamw", "momentum": 0.9}}),
     "training.optimizer.momentum: is used by sgd and rmsprop only"),
    (changed(SEGMENTATION, inference={"mode": "whole"}), "inference.mode: a segmentation model runs a sliding window"),
    (changed(SEGMENTATION, inference={"overlap": 1.0}), "inference.overlap: must be a number in [0, 1), got 1.0"),
    (changed(SEGMENTATION, cross_validation={"stratify": True}), "cross_validation.stratify: stratifies by class"),
    (changed(SEGMENTATION, axis_order="yx"), "axis_order: must be one of zyx, xyz, got 'yx'"),
    (changed(SEGMENTATION, training={"loss": "dice", "class_weights": "balanced"}),
     "training.class_weights: loss dice does not take class weights; use one of ce, dice_ce, focal, dice_focal"),
    (changed(SEGMENTATION, training={"class_weights": {0: 1, 2: 5}}),
     "training.class_weights: must be balanced or map class values ([0, 1]) to weights in (0, 1e6]"),
    (changed(SEGMENTATION, training={"class_weights": {1: 0}}), "training.class_weights: must be balanced or map"),
    (changed(SEGMENTATION, training={"class_weights": "inverse"}), "training.class_weights: must be balanced or map"),
    (changed(CLASSIFICATION, task="regression", data__classes={0: "age"}, training={"class_weights": "balanced"}),
     "training.class_weights: weighs classes: segmentation and classification only"),
])
def test_impossible_values_are_reported_with_their_location(tmp_path: Path, data: dict[str, Any],
                                                            expected: str) -> None:
    problems = problems_of(tmp_path, data)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize("text, written", [("1e-4", "1.0e-4"), ("1.0e6", "1.0e+6"), ("2E3", "2.0e+3")])
def test_a_number_yaml_reads_as_text_is_refused_with_a_spelling_yaml_reads_as_a_number(tmp_path: Path, text: str,
                                                                                        written: str) -> None:
    data = changed(SEGMENTATION, training={"optimizer": {"lr": text}})
    [problem] = [p for p in problems_of(tmp_path, data) if p.startswith("training.optimizer.lr")]
    assert problem.endswith(f"write {written})"), problem
    assert yaml.safe_load(f"lr: {written}") == {"lr": float(text)}


@pytest.mark.parametrize(("data", "expected"), [
    (changed(SEGMENTATION, colour="red"), "colour: unknown key; known keys are name, task"),
    (changed(SEGMENTATION, training={"optimizer": {"betas": [0.9, 0.99]}}), "training.optimizer.betas: unknown key"),
    (changed(SEGMENTATION, augmentation={"twirl": {"probability": 0.1}}), "augmentation.twirl: unknown augmentation"),
    (changed(SEGMENTATION, augmentation={"blur": {"probability": 0.1, "sigma": 1}}), "augmentation.blur.sigma: unknown"),
    (changed(SEGMENTATION, patch={"per_volume": 4}), "patch.size: missing"),
])
def test_unknown_and_missing_keys_are_reported(tmp_path: Path, data: dict[str, Any], expected: str) -> None:
    problems = problems_of(tmp_path, data)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(("data", "expected"), [
    (changed(SEGMENTATION, patch={"size": [16, 64, 64], "per_volume": "four"}),
     "patch.per_volume: must be an integer, got 'four'"),
    (changed(SEGMENTATION, training={"mixed_precision": "yes"}),
     "training.mixed_precision: must be one of auto, true, false, got 'yes'"),
    (changed(SEGMENTATION, training={"grad_clip": "off"}), "training.grad_clip: must be a number > 0 or null, got 'off'"),
    (changed(SEGMENTATION, seed=1.5), "seed: must be an integer, got 1.5"),
    (changed(SEGMENTATION, model={"dropout": True}), "model.dropout: must be a number in [0, 1), got True"),
    (changed(SEGMENTATION, training=[1, 2]), "training: must be a mapping of keys"),
    (changed(SEGMENTATION, dimensions="3"), "dimensions: must be 2 or 3, got '3'"),
])
def test_wrong_types_are_reported(tmp_path: Path, data: dict[str, Any], expected: str) -> None:
    problems = problems_of(tmp_path, data)
    assert any(p.startswith(expected) for p in problems), problems


def test_bad_preprocessing_steps_are_reported(tmp_path: Path) -> None:
    steps = [{"resample": {"spacing": [1.0, 1.0]}}, {"zscor": {"region": "nonzero"}},
             {"clip": {"min": 5, "max": 1}}, {"rescale": {"channels": [2]}}, {"zscore": {"region": "mask"}}]
    problems = problems_of(tmp_path, changed(SEGMENTATION, preprocessing=steps))
    assert "preprocessing[0] (resample).spacing: must give one value per spatial axis (3), got [1.0, 1.0]" in problems
    assert any(p.startswith("preprocessing[1] (zscor): unknown step 'zscor'") for p in problems)
    assert "preprocessing[2] (clip): min, max: min (5) must not exceed max (1)" in problems
    assert any(p.startswith("preprocessing[3] (rescale).channels: channel indices must be below 2") for p in problems)
    assert any(p.startswith("preprocessing[4] (zscore).region: mask reads a mask given with each scan")
               for p in problems)


def test_several_problems_are_listed_together(tmp_path: Path) -> None:
    data = changed(SEGMENTATION, task="segmentation", colour="red", model={"architecture": "vgg16", "depth": 0},
                   training={"epochs": -3, "optimizer": {"lr": 0}, "loss": "l1"})
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, data))
    expected = ["colour: unknown key", "model.architecture: vgg16", "model.depth: must be in 1..7, got 0",
                "training.epochs: must be >= 1, got -3", "training.optimizer.lr: must be > 0, got 0",
                "training.loss: l1 does not fit"]
    assert len(caught.value.problems) == len(expected)
    for start in expected:
        assert any(p.startswith(start) for p in caught.value.problems), (start, caught.value.problems)
        assert start in str(caught.value)
    assert str(caught.value).startswith(f"config {tmp_path / 'config.yaml'} has 6 problem(s)")


def test_duplicate_keys_and_broken_yaml_are_refused(tmp_path: Path) -> None:
    text = yaml.safe_dump(SEGMENTATION, sort_keys=False) + "task: classification\n"
    (tmp_path / "twice.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="key 'task' is given twice"):
        load_config(tmp_path / "twice.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_class_names_yaml_reads_as_booleans_or_names_mapped_to_values_are_refused_with_the_remedy(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(SEGMENTATION, sort_keys=False))
    data["data"]["classes"] = {0: "background", 1: "lesion"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False).replace("1: lesion", "1: yes"),
                                          encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data\.classes\.1: the name must be a non-empty string .*got True \(YAML "
                                          r"reads an unquoted no, yes, on, off, true or false as a boolean: quote"):
        load_config(tmp_path / "config.yaml")

    data["data"]["classes"] = {"background": 0, "lesion": 1}          # nnU-Net's dataset.json way round
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data\.classes: maps each class value to its name \(0: background, 1: "
                                          r"lesion\); this maps names to values, .* swap each pair"):
        load_config(tmp_path / "config.yaml")


FULL = changed(
    SEGMENTATION, seed=7, axis_order="xyz", output_dir="out/lesions",
    patch={"size": [32, 64, 64], "sampler": "label", "label_probabilities": {0: 1, 1: 3}, "per_volume": 8,
           "queue_length": 64, "workers": 2},
    augmentation={"flip": {"probability": 0.5, "axes": [0, 1, 2]}, "affine": {"probability": 0.3, "degrees": 15},
                  "anisotropy": {"probability": 0.1, "downsampling": [1.5, 4]},
                  "ghosting": {"probability": 0.05, "num_ghosts": [4, 10]}, "gamma": {"probability": 0.1}},
    model={"architecture": "resunet", "base_filters": 8, "depth": 3, "norm": "batch", "dropout": 0.1},
    training={"epochs": 30, "loss": "dice", "grad_clip": 12, "mixed_precision": False,
              "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.99, "weight_decay": 3e-5},
              "scheduler": {"name": "plateau", "patience": 3, "warmup_epochs": 2},
              "early_stopping": {"patience": None}},
    cross_validation={"testing_folds": 0, "validation_fraction": 0.2},
    inference={"overlap": 0.25, "mirror_axes": [0, 2], "batch_size": 4},
)


CODED = changed(SEGMENTATION, data__classes={0: "background", 1: {
    "name": "lesion", "type": {"scheme": "SCT", "value": "52988006", "meaning": "Lesion"},
    "category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered Structure"}}})
AGE = changed(CLASSIFICATION, task="regression", data__classes={0: {
    "name": "age", "type": {"scheme": "SCT", "value": "424144002", "meaning": "Current chronological age"},
    "unit": {"scheme": "UCUM", "value": "a", "meaning": "year"}}})


@pytest.mark.parametrize("data", [SEGMENTATION, CLASSIFICATION, FULL, CODED, AGE],
                         ids=["segmentation", "classification", "full", "coded", "unit"])
def test_resolved_config_loads_back_unchanged(tmp_path: Path, data: dict[str, Any]) -> None:
    config = load_config(write_config(tmp_path, data))
    resolved = resolved_dict(config)
    (tmp_path / "run").mkdir()
    again = load_config(write_resolved(config, tmp_path / "run" / "config.yaml"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml"]
    assert dataclasses.replace(again, source=config.source) == config
    assert config_hash(again) == config_hash(config)
    assert resolved_dict(again) == resolved

    if data in (CODED, AGE):          # codes and units change no training: the hash is the uncoded config's
        uncoded = changed(data, data__classes={value: entry["name"] if isinstance(entry, dict) else entry
                                               for value, entry in data["data"]["classes"].items()})
        assert config_hash(load_config(write_config(tmp_path, uncoded, "uncoded.yaml"))) == config_hash(config)


def test_classes_listed_in_another_order_are_another_run(tmp_path: Path) -> None:
    """The n-th class listed is the model's n-th output: listed in another order, the same classes
    train another model, and the hash tells the two apart."""
    ordered = load_config(write_config(tmp_path, CLASSIFICATION, "ordered.yaml"))
    swapped = load_config(write_config(tmp_path, changed(CLASSIFICATION, data__classes={1: "malignant", 0: "benign"}),
                                       "swapped.yaml"))
    assert [c.value for c in swapped.classes] == [1, 0]
    assert config_hash(ordered) != config_hash(swapped)


def test_full_config_values_arrive(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, FULL))
    assert config.output_dir == tmp_path / "out" / "lesions" and config.axis_order == "xyz"
    assert config.patch.label_probabilities == {0: 1.0, 1: 3.0}
    assert config.augmentation["affine"] == {"probability": 0.3, "scales": 0.1, "degrees": 15, "translation": 0}
    assert config.augmentation["anisotropy"]["downsampling"] == (1.5, 4)
    assert config.training.optimizer.momentum == 0.99 and config.training.grad_clip == 12.0
    assert config.training.early_stopping.patience is None
    cv = config.cross_validation
    assert (cv.testing_folds, cv.validation_folds, cv.validation_fraction) == (0, 1, 0.2)
    assert config.inference.mirror_axes == (0, 2) and config.inference.patch_size == (32, 64, 64)


@pytest.mark.parametrize("weights", ["balanced", {1: 4.5}])
def test_class_weights_arrive_and_load_back_and_leave_other_configs_hashing_as_before(tmp_path: Path,
                                                                                      weights: Any) -> None:
    config = load_config(write_config(tmp_path, changed(SEGMENTATION, training={"class_weights": weights})))
    assert config.training.class_weights == weights
    (tmp_path / "run").mkdir()
    again = load_config(write_resolved(config, tmp_path / "run" / "config.yaml"))
    assert again.training.class_weights == weights and config_hash(again) == config_hash(config)
    plain = load_config(write_config(tmp_path, SEGMENTATION, "plain.yaml"))
    assert "class_weights" not in resolved_dict(plain)["training"]
    assert config_hash(plain) != config_hash(config)


def test_hash_follows_the_resolved_values(tmp_path: Path) -> None:
    first = load_config(write_config(tmp_path, SEGMENTATION))
    explicit = load_config(write_config(tmp_path, changed(SEGMENTATION, seed=0, training={"epochs": 50}), "same.yaml"))
    other = load_config(write_config(tmp_path, changed(SEGMENTATION, seed=1), "other.yaml"))
    assert len(config_hash(first)) == 64
    assert config_hash(explicit) == config_hash(first)
    assert config_hash(other) != config_hash(first)


def test_the_documented_example_is_valid(tmp_path: Path) -> None:
    text = (REPO / "docs" / "trainer.md").read_text(encoding="utf-8")
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "config.yaml").write_text(example, encoding="utf-8")
    config = load_config(tmp_path / "config.yaml")
    assert len(config.augmentation) == 12 and config.patch.label_probabilities == {0: 1.0, 1: 3.0}
    assert config.seed == 42 and config.output_dir == tmp_path / "runs" / "brain_lesion"


def test_a_gandlf_config_is_named_as_one_and_pointed_to_the_table_that_maps_it(tmp_path: Path) -> None:
    gandlf = {"version": {"minimum": "0.0.14"}, "dimension": 3, "class_list": [0, 1], "patch_size": [64, 64, 64],
              "modality": "rad", "num_epochs": 10, "model": {"architecture": "unet", "norm_type": "batch"}}
    found = problems_of(tmp_path, gandlf)
    assert found[0] == ("config: is a GaNDLF config (class_list, dimension, num_epochs, patch_size); translate it "
                        "with the table of docs/trainer.md, 'Coming from GaNDLF'"), found
    assert not [p for p in problems_of(tmp_path, changed(SEGMENTATION, patch_size=[64, 64, 64])) if "GaNDLF" in p]


def test_the_documented_coded_classes_are_valid(tmp_path: Path) -> None:
    from runtime.contract import Concept

    text = (REPO / "docs" / "trainer.md").read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]
    classes = yaml.safe_load(next(b for b in blocks if b.startswith("  classes:\n    0: {name: benign")))["classes"]
    config = load_config(write_config(tmp_path, changed(CLASSIFICATION, data__classes=classes)))
    assert config.classes[0].type == Concept("SCT", "3898006", "Neoplasm, benign")
    assert config.classes[1].category == Concept("SCT", "49755003", "Morphologically Altered Structure")


@pytest.mark.parametrize("data, expected", [
    (changed(SEGMENTATION, task="segmentaton", data__relabel={5: 1}), "task: must be one of segmentation"),
    (changed(SEGMENTATION, data__classes={1: "lesion", 0: "background"}, data__relabel={5: 1}),
     "data.classes: the first class is the background and must have value 0, got 1"),
])
def test_a_mistake_is_reported_once_not_again_as_what_follows_from_it(tmp_path: Path, data: dict[str, Any],
                                                                     expected: str) -> None:
    problems = problems_of(tmp_path, data)
    assert len(problems) == 1 and problems[0].startswith(expected), problems

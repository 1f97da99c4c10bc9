"""Training histology models: the config's slide section and rules, one RGB file giving three
channels, preprocessing after colour augmentation and on each validation window, and splits that
keep a group's subjects together."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from runtime.contract import SlideSpec
from runtime.preprocess import Step
from tests.conftest import REPO
from tests.trainer.histokit import HISTOLOGY, rgb_patches
from tests.trainerkit import SEGMENTATION, changed, problems_of, write_config
from trainer.augment import AUGMENTATIONS, COLOUR_AUGMENTATIONS, build_augmentation
from trainer.config import ConfigError, CVConfig, config_hash, load_config, parse_config, resolved_dict
from trainer.data import load_sample, preprocess_window, window_steps, with_steps
from trainer.evaluate import segment
from trainer.fold import model_spec
from trainer.models import build_model
from trainer.sampling import patch_loader
from trainer.splits import make_folds
from trainer.subjects import read_subjects


def test_a_histology_config_carries_its_slide_section_through_the_resolved_form(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, HISTOLOGY))
    assert config.slide == SlideSpec(mpp=1.0, tissue_mpp=4.0, min_object_um2=2000.0, min_hole_um2=2000.0)
    assert config.data.group_column == "subject_id"
    resolved = resolved_dict(config)
    assert resolved["slide"] == vars(config.slide) and resolved["data"]["group_column"] == "subject_id"
    again = parse_config(resolved, tmp_path / "config.yaml")
    assert again == config and config_hash(again) == config_hash(config)
    defaults = load_config(write_config(tmp_path, changed(HISTOLOGY, slide={"mpp": 0.5})))
    assert defaults.slide == SlideSpec(mpp=0.5, tissue_mpp=8.0, min_object_um2=10000.0, min_hole_um2=10000.0)


def test_a_histology_model_runs_slides_in_sliding_windows_a_tile_classifiers_side_by_side(tmp_path: Path) -> None:
    """A tile classifier trained with the whole-image default of radiology could not run on a slide."""
    classifier = changed(HISTOLOGY, task="classification", data__classes={0: "normal", 1: "tumour"},
                         model={"architecture": "vgg16"}, inference={})
    window = load_config(write_config(tmp_path, classifier)).inference
    assert (window.mode, window.overlap) == ("sliding", 0.0)
    assert load_config(write_config(tmp_path, changed(HISTOLOGY, inference={}))).inference.overlap == 0.5
    assert problems_of(tmp_path, changed(classifier, inference={"mode": "whole"})) == (
        "inference.mode: a histology model runs over slides tile by tile, in a sliding window; use sliding, got "
        "'whole'",)


def test_a_radiology_config_resolves_without_the_new_keys(tmp_path: Path) -> None:
    resolved = resolved_dict(load_config(write_config(tmp_path, SEGMENTATION)))
    assert "slide" not in resolved and "group_column" not in resolved["data"]


@pytest.mark.parametrize(("data", "expected"), [
    ({k: v for k, v in HISTOLOGY.items() if k != "slide"}, "slide: missing: a histology model needs slide.mpp"),
    (changed(SEGMENTATION, slide={"mpp": 1.0}), "slide: is for histology models; this model's modality is radiology"),
    (changed(HISTOLOGY, slide={"mpp": 0}), "slide.mpp: must be microns per pixel in [0.01, 1000.0], got 0"),
    (changed(HISTOLOGY, data__channels=["rgb"], preprocessing=[]), "data.channels: a histology model reads RGB"),
    (changed(HISTOLOGY, preprocessing=[{"resample": {"spacing": [1.0, 1.0]}}]),
     "preprocessing[0] (resample): a histology model takes intensity steps only"),
    (changed(SEGMENTATION, augmentation={"hue": {"probability": 0.5}}),
     "augmentation.hue: changes the colours of RGB images: histology only, this model's modality is radiology"),
    (changed(HISTOLOGY, data__group_column="patch_id"),
     "data: subject_column, channels, label and group_column must name different CSV columns"),
])
def test_histology_rules_are_reported_with_their_location(tmp_path: Path, data: dict, expected: str) -> None:
    problems = problems_of(tmp_path, data)
    assert any(p.startswith(expected) for p in problems), problems


def test_one_rgb_file_named_in_three_columns_gives_the_three_channels(tmp_path: Path) -> None:
    rgb_patches(tmp_path)
    config = load_config(write_config(tmp_path, HISTOLOGY))
    subjects = read_subjects(config)
    assert [s.group for s in subjects] == ["s0", "s0", "s1", "s1"]
    sample = load_sample(config, subjects[0])
    assert sample.image.shape == (3, 64, 64)
    assert sample.image[:, 0, 0].tolist() == [110, 70, 160] and sample.image[:, 0, -1].tolist() == [225, 140, 190]
    assert np.array_equal(np.unique(sample.label), [1, 2])


def test_an_rgb_file_in_fewer_columns_and_a_colour_label_are_refused(tmp_path: Path) -> None:
    rgb_patches(tmp_path)
    table = tmp_path / "patches" / "patches.csv"
    table.write_text(table.read_text().replace("p0.png,p0.png,p0.png,p0_label.png", "p0.png,p0.png,p1.png,p0.png"))
    with pytest.raises(ConfigError) as caught:
        read_subjects(load_config(write_config(tmp_path, HISTOLOGY)))
    assert len(caught.value.problems) == 1
    assert "the channel files give 6 channel(s) for the 3 of data.channels (red, green, blue)" in \
        caught.value.problems[0]
    table.write_text(table.read_text().replace("p0.png,p0.png,p1.png,p0.png", "p0.png,p0.png,p0.png,p0.png"))
    with pytest.raises(ConfigError) as caught:
        read_subjects(load_config(write_config(tmp_path, HISTOLOGY)))
    assert "column label:" in caught.value.problems[0] and "has 3 components; a label map holds one class value" \
        in caught.value.problems[0]


def test_histology_images_are_normalised_after_augmentation_in_training_batches(tmp_path: Path) -> None:
    rgb_patches(tmp_path)
    config = load_config(write_config(tmp_path, HISTOLOGY))
    samples = [load_sample(config, s) for s in read_subjects(config)]
    assert window_steps(config) == config.preprocessing
    transform = with_steps(None, window_steps(config), 2)
    loader = patch_loader(samples, patch_size=(64, 64), sampler="uniform", label_probabilities=None, per_volume=1,
                          queue_length=4, workers=0, batch_size=4, augmentation=transform, dimensions=2, seed=0,
                          task="segmentation")
    batch = next(iter(loader))
    expected = (np.array([110, 70, 160], np.float32) - 128) / 64
    assert np.allclose(batch["image"][0, :, 0, 0].numpy(), expected)


def test_validation_runs_the_steps_on_each_window_as_the_runtime_does(tmp_path: Path) -> None:
    rgb_patches(tmp_path)
    config = load_config(write_config(tmp_path, HISTOLOGY))
    sample = load_sample(config, read_subjects(config)[0])
    torch.manual_seed(0)
    model = build_model(model_spec(config)).eval()
    window = config.inference
    per_window = segment(model, torch.device("cpu"), sample.image, window, config.preprocessing)
    whole = segment(model, torch.device("cpu"), preprocess_window(sample.image, config.preprocessing), window)
    assert np.allclose(per_window, whole, atol=1e-5)
    assert not np.allclose(segment(model, torch.device("cpu"), sample.image, window), whole, atol=1e-2)
    assert np.allclose(preprocess_window(sample.image, [Step("normalize", {"mean": [0, 0, 0], "std": [2, 2, 2]})]),
                       sample.image / 2)


def test_grouped_splits_keep_a_groups_subjects_in_one_role() -> None:
    ids = [f"patch{i:02d}" for i in range(40)]
    groups = [f"slide{i % 8}" for i in range(40)]
    group_of = dict(zip(ids, groups))
    folds = make_folds(ids, None, CVConfig(0, 4, None, False), seed=1, groups=groups)
    assert len(folds) == 4
    for fold in folds:
        roles = [{group_of[s] for s in part} for part in (fold.train, fold.val)]
        assert not roles[0] & roles[1] and len(roles[1]) == 2
        assert sorted(fold.train + fold.val) == sorted(ids)
    assert sorted(s for fold in folds for s in fold.val) == sorted(ids)


def test_grouped_splits_stratify_by_each_groups_most_common_class() -> None:
    ids = [f"p{i:02d}" for i in range(24)]
    groups = [f"g{i // 3}" for i in range(24)]                 # 8 groups of 3 patches
    labels = [(i // 3) % 2 if i % 3 else 1 - (i // 3) % 2 for i in range(24)]   # each group: 2 of one class, 1 other
    folds = make_folds(ids, labels, CVConfig(0, 2, None, True), seed=0, groups=groups)
    majority = {f"g{g}": g % 2 for g in range(8)}
    for fold in folds:
        counts = Counter(majority[groups[ids.index(s)]] for s in fold.val if ids.index(s) % 3 == 0)
        assert counts == {0: 2, 1: 2}, fold.id


def test_the_documented_histology_config_and_colour_defaults_are_valid(tmp_path: Path) -> None:
    text = (REPO / "docs" / "trainer.md").read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]
    documented = yaml.safe_load(next(b for b in blocks if b.startswith("name: stain_seg")))
    colours = yaml.safe_load(next(b for b in blocks if b.startswith("augmentation:\n  hed:")))["augmentation"]
    config = load_config(write_config(tmp_path, {**documented, "augmentation": {**documented["augmentation"], **colours}}))
    assert config.slide is not None and config.slide.mpp == 1.0 and config.data.group_column == "subject_id"
    assert set(colours) == set(COLOUR_AUGMENTATIONS) <= set(config.augmentation)
    for name, params in colours.items():
        assert {k: v for k, v in params.items() if k != "probability"} == \
            {k: p.default for k, p in AUGMENTATIONS[name].params.items() if k != "probability"}, name
    assert len(build_augmentation(config.augmentation, 2).transforms) == len(config.augmentation)

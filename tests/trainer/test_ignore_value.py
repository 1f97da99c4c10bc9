"""data.ignore_value: label maps annotated in part (sparse scribbles, QuPath regions on a slide), whose
unannotated voxels count in no loss, metric, class weight or sampler."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from runtime.manifest import ClassSpec, WindowSection
from tests.trainer.histokit import HISTOLOGY, rgb_patches
from tests.trainerkit import TINY_RUN, UNANNOTATED, changed, problems_of, sparse_blobs, write_config
from trainer.config import config_hash, load_config, write_resolved
from trainer.data import check_labels, load_sample
from trainer.evaluate import evaluate
from trainer.fold import TrainTally, fold_class_weights
from trainer.losses import LOSSES_BY_TASK, build_loss
from trainer.sampling import IGNORED, Sample, _label_weights
from trainer.subjects import read_subjects


@pytest.mark.parametrize("name", LOSSES_BY_TASK["segmentation"])
def test_every_segmentation_loss_counts_the_annotated_voxels_alone(name):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = IGNORED
    loss = build_loss(name, "segmentation", ignored=IGNORED)
    value = loss(logits, target)
    value.backward()
    alone = build_loss(name, "segmentation")(logits.detach()[:, :, 4:], target[:, 4:])
    assert float(value.detach()) == pytest.approx(float(alone), abs=1e-6)
    assert float(logits.grad[:, :, :4].abs().max()) == 0.0 and float(logits.grad[:, :, 4:].abs().max()) > 0
    dense = build_loss(name, "segmentation")(logits.detach(), target.clamp_min(0))
    assert float(dense) != pytest.approx(float(alone), abs=1e-4)               # the unannotated voxels did count
    nothing = loss(logits, torch.full_like(target, IGNORED))
    nothing.backward()
    assert float(nothing.detach()) == 0.0


def test_weighted_losses_keep_their_weights_on_the_annotated_voxels():
    torch.manual_seed(1)
    logits, target = torch.randn(1, 2, 6, 6), torch.randint(0, 2, (1, 6, 6))
    target[0, 0] = IGNORED
    weights = torch.tensor([1.0, 4.0])
    ours = build_loss("dice_ce", "segmentation", weights, ignored=IGNORED)(logits, target)
    alone = build_loss("dice_ce", "segmentation", weights)(logits[:, :, 1:], target[:, 1:])
    assert float(ours) == pytest.approx(float(alone), abs=1e-6)


class Sign(torch.nn.Module):
    """Class 1 where the input is positive: logits (-x, x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x, x], dim=1) * 10


def test_an_affine_fills_what_it_moves_in_from_outside_as_unannotated():
    from trainer.augment import build_augmentation
    from trainer.sampling import Sample, to_subject

    label = np.full((24, 24, 24), IGNORED, np.int64)
    label[8:16, 8:16, 8:16] = 1
    sample = Sample("a", np.ones((1, 24, 24, 24), np.float32), label)
    settings = {"affine": {"probability": 1.0, "scales": 0.3, "degrees": 30, "translation": 4}}
    torch.manual_seed(0)
    moved = build_augmentation(settings, 3, label_fill=IGNORED)(to_subject(sample, 3))["label"].data
    assert set(torch.unique(moved).tolist()) == {IGNORED, 1}
    torch.manual_seed(0)
    background = build_augmentation(settings, 3)(to_subject(sample, 3))["label"].data
    assert int((background == 0).sum()) > 100                          # the fill a dense label map takes


def test_scores_count_the_annotated_pixels_alone_and_measure_no_surface():
    image = np.full((1, 16, 16), -1.0, np.float32)
    image[0, 4:12, 4:12] = 1.0                                         # predicted: the square
    label = np.full((16, 16), IGNORED, np.int64)
    label[4:12, 4:8], label[:, 14:] = 1, 0                             # annotated: half the square, a strip outside
    label[0, 0] = 1                                                    # and one tumour pixel the model misses
    samples = [Sample("a", image, label, spacing=(1.0, 1.0))]
    window = WindowSection("sliding", (16, 16), 0.0, "constant", 1, (), False)
    classes = [ClassSpec(0, "background"), ClassSpec(1, "tumour")]
    model, cpu = Sign().eval(), torch.device("cpu")
    loss = build_loss("ce", "segmentation", ignored=IGNORED)
    empty = Sample("b", image, np.full((16, 16), IGNORED, np.int64), spacing=(1.0, 1.0))      # nothing annotated
    for pooled in (False, True):
        alone = evaluate(model, cpu, samples, "segmentation", window, classes, loss, pooled=pooled,
                         ignored=True).scores
        scores = evaluate(model, cpu, samples + [empty], "segmentation", window, classes, loss, pooled=pooled,
                          ignored=True).scores
        assert scores["dice_tumour"] == pytest.approx(64 / 65) and scores["specificity_tumour"] == 1.0
        assert math.isnan(scores.get("hd95_tumour", math.nan)) and math.isnan(scores.get("nsd_tumour", math.nan))
        assert scores["loss"] == alone["loss"] > 0                      # the unannotated sample is in no mean
    dense = Sample("a", image, label.clip(0), spacing=(1.0, 1.0))
    scores = evaluate(model, cpu, [dense], "segmentation", window, classes, build_loss("ce", "segmentation")).scores
    assert scores["dice_tumour"] == pytest.approx(2 * 32 / (64 + 33))     # the other half counted as wrong


def test_a_label_maps_ignore_value_is_read_as_unannotated_and_left_out_of_weights_samplers_and_tallies(tmp_path):
    sparse_blobs(tmp_path)
    data = changed(TINY_RUN, data__ignore_value=UNANNOTATED, preprocessing=[],
                   training__class_weights="balanced")
    config = load_config(write_config(tmp_path, data))
    subjects = read_subjects(config)
    said: list[str] = []
    check_labels(config, subjects, said.append)
    assert not [line for line in said if line.startswith("warning")]
    assert said[-1] == "labels: 25% of the label maps' voxels are annotated (6,912 of 27,648); data.ignore_value " \
                       "(255) marks the rest"                               # 4 of 16 slices of 24 x 24, 3 subjects
    samples = [load_sample(config, s) for s in subjects]
    label = samples[0].label
    middle = label.shape[0] // 2
    assert (label[:middle - 2] == IGNORED).all() and (label[middle + 2:] == IGNORED).all()
    assert set(np.unique(label[middle - 2:middle + 2])) == {0, 1}
    counts = np.bincount(np.concatenate([s.label[s.label >= 0] for s in samples]))
    assert np.allclose(fold_class_weights(config, samples), counts.sum() / (2 * counts))
    assert _label_weights(samples, None) == {0: 1.0, 1: 1.0}
    tally = TrainTally("segmentation", ["background", "blob"])
    truth = torch.from_numpy(label)[None]
    everywhere = torch.stack([torch.zeros_like(truth), torch.ones_like(truth)], 1).float()   # class 1 everywhere
    tally.add(everywhere, truth)
    blob = int((label == 1).sum())
    assert tally.result()["dice_blob"] == pytest.approx(2 * blob / (blob + int((label >= 0).sum())))

    write_resolved(config, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again.data.ignore_value == UNANNOTATED and config_hash(again) == config_hash(config)
    plain = load_config(write_config(tmp_path, changed(TINY_RUN, preprocessing=[]), "plain.yaml"))
    assert "  ignore_value:" not in write_resolved(plain, tmp_path / "plain.resolved.yaml").read_text()
    refused = load_config(write_config(tmp_path, changed(TINY_RUN, preprocessing=[]), "dense.yaml"))
    with pytest.raises(Exception, match="mark them unannotated with data.ignore_value"):
        load_sample(refused, read_subjects(refused)[0])


def test_relabel_keeps_the_ignore_value_and_a_map_holding_nothing_else_is_warned_of(tmp_path):
    paths = sparse_blobs(tmp_path)
    data = changed(TINY_RUN, data__ignore_value=UNANNOTATED, data__relabel={1: 1}, preprocessing=[])
    config = load_config(write_config(tmp_path, data))
    sample = load_sample(config, read_subjects(config)[0])
    assert IGNORED in sample.label and set(np.unique(sample.label)) == {IGNORED, 0, 1}
    import SimpleITK as sitk

    image = sitk.ReadImage(str(paths[0]))
    empty = sitk.GetImageFromArray(np.full(sitk.GetArrayFromImage(image).shape, UNANNOTATED, np.uint8))
    empty.CopyInformation(image)
    sitk.WriteImage(empty, str(paths[0]))
    said: list[str] = []
    check_labels(config, read_subjects(config), said.append)
    assert [line for line in said if line.startswith("warning")] == [
        f"warning: subject {read_subjects(config)[0].subject_id}: label {read_subjects(config)[0].label} holds "
        f"data.ignore_value ({UNANNOTATED}) alone: nothing of it is annotated, so it trains and scores nothing"]


def test_a_fold_whose_training_or_validation_subjects_hold_nothing_annotated_is_refused_before_training(tmp_path):
    from click.testing import CliRunner

    from trainer.cli import main

    import SimpleITK as sitk

    paths = sparse_blobs(tmp_path, count=4)
    for path in paths[1:]:                                           # one subject annotated: a role holds none
        image = sitk.ReadImage(str(path))
        empty = sitk.GetImageFromArray(np.full(sitk.GetArrayFromImage(image).shape, UNANNOTATED, np.uint8))
        empty.CopyInformation(image)
        sitk.WriteImage(empty, str(path))
    data = changed(TINY_RUN, data__ignore_value=UNANNOTATED, preprocessing=[],
                   cross_validation={"testing_folds": 0, "validation_fraction": 0.5})
    result = CliRunner().invoke(main, ["fit", str(write_config(tmp_path, data))])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "hold no annotated voxel, data.ignore_value alone, so the fold can learn or choose nothing" in line
    assert not (tmp_path / "run").exists()                                 # nothing of the run was left
    for path in paths[1:3]:                                                # one of four unannotated: warned of
        sitk.WriteImage(sitk.ReadImage(str(paths[0])), str(path))
    result = CliRunner().invoke(main, ["fit", str(write_config(tmp_path, changed(data, training__epochs=1)))])
    assert result.exit_code == 0, result.output
    assert "warning: subject(s) s3 hold data.ignore_value alone: nothing of them is annotated" in result.output


def test_a_validation_set_whose_annotations_hold_no_foreground_cannot_choose_by_dice():
    from runtime.errors import InputError
    from trainer.fold import refuse_unannotated

    label = np.full((4, 4), IGNORED, np.int64)
    label[0] = 0                                                        # background scribbled, nothing else
    with_tumour = label.copy()
    with_tumour[1, 1] = 1
    image = np.zeros((1, 4, 4), np.float32)
    background_only = {"training": [Sample("t", image, with_tumour)], "validation": [Sample("v", image, label)]}
    with pytest.raises(InputError, match="the annotated voxels of its validation subject.s. .v. hold the background "
                                         "alone, so their Dice is undefined"):
        refuse_unannotated("0.1", background_only, "dice_mean")
    refuse_unannotated("0.1", background_only, "loss")                  # the loss is defined: nothing refused
    refuse_unannotated("0.1", {**background_only, "validation": [Sample("v", image, with_tumour)]}, "dice_mean")
    tally = TrainTally("segmentation", ["background", "tumour"], sparse=True)
    tally.add(torch.tensor([[[[5.0] * 4] * 4, [[0.0] * 4] * 4]]), torch.from_numpy(label)[None])
    assert math.isnan(tally.result()["dice_tumour"]) and math.isnan(tally.result()["dice_mean"])


@pytest.mark.parametrize("changes, expected", [
    ({"data__ignore_value": 1}, "data.ignore_value: 1 is a class of data.classes; give a value no class has"),
    ({"data__ignore_value": -1}, "data.ignore_value: must be an integer from 0 to 65535"),
    ({"data__ignore_value": "none"}, "data.ignore_value: must be an integer from 0 to 65535"),
    ({"data__ignore_value": 255, "data__relabel": {255: 1}}, "data.ignore_value: 255 is mapped by data.relabel"),
    ({"data__ignore_value": 255, "task": "classification"},
     "data.ignore_value: marks unannotated voxels of segmentation label maps; this model's task is classification"),
])
def test_a_wrong_ignore_value_is_refused_naming_it(tmp_path, changes, expected):
    found = problems_of(tmp_path, changed(TINY_RUN, **changes))
    assert any(problem.startswith(expected) for problem in found), found


def test_a_model_trained_on_scribbles_segments_what_no_one_annotated(tmp_path):
    """Each patch annotated in one band of rows (nuclei left, stroma right), another band on each, the
    rest unannotated: with data.ignore_value the model learns both halves whole; the same bands with
    the rest taken as background teach it background over most of each half."""
    from click.testing import CliRunner

    from trainer.cli import main

    rgb_patches(tmp_path, count=6)
    for i, path in enumerate(sorted((tmp_path / "patches").glob("*_label.png"))):
        label = np.full((64, 64), UNANNOTATED, np.uint8)
        rows = slice(i % 3 * 20, i % 3 * 20 + 24)
        label[rows, :32], label[rows, 32:] = 1, 2
        Image.fromarray(label).save(path)
    dice = {}
    for ignore in (UNANNOTATED, None):
        name = "scribbles" if ignore else "dense"
        rule = {"data__ignore_value": UNANNOTATED} if ignore else {"data__relabel": {1: 1, 2: 2}}   # the rest: 0
        data = changed(HISTOLOGY, name=name, output_dir=f"runs/{name}", training__epochs=6,
                       patch__per_volume=8, patch__queue_length=32, **rule)
        result = CliRunner().invoke(main, ["fit", str(write_config(tmp_path, data, f"{name}.yaml"))])
        assert result.exit_code == 0, result.output
        config = load_config(tmp_path / f"{name}.yaml")
        dice[name] = _whole_half_dice(tmp_path / "runs" / name, config)
    assert dice["scribbles"] >= 0.9 > dice["dense"]


def _whole_half_dice(run, config) -> float:
    """Mean Dice of nuclei (left half) and stroma (right half) on a patch, by the run's first fold."""
    from trainer.evaluate import segment
    from trainer.fold import model_spec
    from trainer.models import build_model

    model = build_model(model_spec(config)).eval()
    checkpoint = sorted(run.glob("folds/*/best.pt"))[0]
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    sample = load_sample(config, read_subjects(config)[0])
    labels = segment(model, torch.device("cpu"), sample.image, config.inference, config.preprocessing).argmax(0)
    truth = np.zeros((64, 64), np.int64)
    truth[:, :32], truth[:, 32:] = 1, 2
    return float(np.mean([2 * ((labels == k) & (truth == k)).sum() / ((labels == k).sum() + (truth == k).sum())
                          for k in (1, 2)]))

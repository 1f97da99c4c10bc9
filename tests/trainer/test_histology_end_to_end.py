"""Slides to a deployed histology model: `trainer patches` → `trainer fit` → `export build` →
`runtime predict slide.tif`, on synthetic H&E-like slides, and the model must have learned the
two tissue classes on a slide it never saw."""
from __future__ import annotations

import pytest
import tifffile
from click.testing import CliRunner

from export.cli import main as export_main
from runtime.commands.cli import main as runtime_main
from runtime.manifest import load_manifest
from runtime.metrics import dice
from tests.trainer.histokit import HISTOLOGY, write_slides
from tests.trainerkit import write_config
from trainer.cli import main as trainer_main

# Bars on the held-out slide, at the model's 1 um/pixel. Chance is far below them: always
# predicting the most common class (glass, about 68 % of the slide) gives a pixel accuracy of
# about 0.68 and a Dice of 0 for both tissue classes; guessing each pixel's class in proportion to
# the classes' shares gives a nuclei Dice of about 0.05 (their share) and a stroma Dice of about
# 0.27. The classes differ in colour, so a model that learned them finds the stroma almost
# everywhere and the small nuclei discs mostly; this one, trained on 51 patches for 8 epochs,
# reaches about 0.94 (nuclei) and 0.99 (stroma) Dice and 0.99 pixel accuracy. The bars leave room
# for other machines' arithmetic, not for a model that did not learn.
MIN_DICE = {"nuclei": 0.8, "stroma": 0.9}
MIN_ACCURACY = 0.95


@pytest.mark.slow
def test_a_model_trained_from_slides_segments_a_slide_it_never_saw(tmp_path):
    truths = write_slides(tmp_path, [1, 2, 3, 4])
    (tmp_path / "slides.csv").write_text("\n".join((tmp_path / "slides.csv").read_text().splitlines()[:4]) + "\n")
    config = write_config(tmp_path, {**HISTOLOGY, "augmentation": {
        "flip": {"probability": 0.5, "axes": [0, 1]}, "hed": {"probability": 0.5}, "brightness": {"probability": 0.3}}})
    mined = CliRunner().invoke(trainer_main, ["patches", str(tmp_path / "slides.csv"), "--config", str(config),
                                              "--output", str(tmp_path / "patches")])
    assert mined.exit_code == 0, mined.output
    assert [line.split(":")[0] for line in mined.output.splitlines()[:3]] == [
        f"slide{i}.tif (subject case{i})" for i in (1, 2, 3)]
    fitted = CliRunner().invoke(trainer_main, ["fit", str(config)])
    assert fitted.exit_code == 0, fitted.output
    built = CliRunner().invoke(export_main, ["build", str(tmp_path / "run"), "--onnx",
                                             "--repository", str(tmp_path / "repo")])
    assert built.exit_code == 0, built.output
    manifest, _ = load_manifest(tmp_path / "repo" / "stain_seg" / "1")
    assert manifest.slide is not None and (manifest.slide.mpp, manifest.slide.tissue_mpp) == (1.0, 4.0)
    assert manifest.channels == ("red", "green", "blue") and manifest.modality == "histology"

    predicted = CliRunner().invoke(runtime_main, ["predict", str(tmp_path / "slide4.tif"), "--model",
                                                  str(tmp_path / "repo" / "stain_seg"), "--output",
                                                  str(tmp_path / "labels.tif")])
    assert predicted.exit_code == 0, predicted.output
    found = tifffile.imread(tmp_path / "labels.tif", key=0)
    truth = truths[3][1::2, 1::2]                         # the class under each 1 um pixel's centre
    assert found.shape == truth.shape == (384, 512)
    scores = {name: dice(found, truth, value) for value, name in ((1, "nuclei"), (2, "stroma"))}
    accuracy = float((found == truth).mean())
    print(f"held-out slide: Dice nuclei {scores['nuclei']:.3f}, stroma {scores['stroma']:.3f}, "
          f"pixel accuracy {accuracy:.3f} (all-glass {float((truth == 0).mean()):.3f})")
    assert all(scores[name] >= bar for name, bar in MIN_DICE.items()), scores
    assert accuracy >= MIN_ACCURACY
    table = tmp_path / "scored.csv"                     # a training slide beside the unseen one: named as such
    table.write_text("slide,subject_id,label\nslide1.tif,case1,slide1_truth.png\nslide4.tif,case4,slide4_truth.png\n")
    scored = CliRunner().invoke(runtime_main, ["predict", "--csv", str(table), "--model",
                                               str(tmp_path / "repo" / "stain_seg"), "--output-dir",
                                               str(tmp_path / "scored")])
    assert scored.exit_code == 0, scored.output
    assert (f"warning: {table}: 1 of the 2 subject(s) scored (case1) are among those model stain_seg trained or "
            "validated on (matched by id)") in scored.stderr
    assert len(manifest.provenance["trained_on"]["subjects"]) == 3                 # the slides, not the patches

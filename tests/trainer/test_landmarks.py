"""`trainer landmarks`: standard landmarks learned from the subject table's real MR images, printed as the
config's preprocessing list, which the config then takes as it is."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from click.testing import CliRunner

from tests.modelkit import write_scan
from tests.trainer.histokit import HISTOLOGY, rgb_patches
from tests.trainerkit import TINY_RUN, changed, write_config
from trainer.cli import main
from trainer.config import load_config
from trainer.data import load_sample
from trainer.subjects import read_subjects

MR = ("pyradiomics_brain1", "pyradiomics_breast1")


def _mr_table(folder: Path, data_dir: Path) -> None:
    radiology = data_dir / "radiology"
    rows = ["subject_id,image,label"]
    rows += [f"{name},{radiology / (name + '_image.nrrd')},{radiology / (name + '_label.nrrd')}" for name in MR]
    (folder / "subjects.csv").write_text("\n".join(rows) + "\n")


def _landmarks(folder: Path, config: Path) -> tuple[dict, list[str]]:
    result = CliRunner().invoke(main, ["landmarks", str(config)])
    assert result.exit_code == 0, result.output + result.stderr
    return yaml.safe_load(result.stdout), result.stderr.splitlines()


def test_learned_landmarks_are_where_each_training_image_lands_after_the_step(tmp_path, data_dir):
    _mr_table(tmp_path, data_dir)
    config = write_config(tmp_path, changed(TINY_RUN, preprocessing=[{"reorient": {"orientation": "RAS"}},
                                                                     {"zscore": {"region": "nonzero"}}]))
    printed, progress = _landmarks(tmp_path, config)
    assert progress == [f"landmarks: subject {i}/2 ({name}) read" for i, name in enumerate(MR, start=1)]
    steps = printed["preprocessing"]
    assert [next(iter(step)) for step in steps] == ["reorient", "histogram_standardise", "zscore"]
    learned = steps[1]["histogram_standardise"]
    assert learned["region"] == "nonzero" and learned["percentiles"] == [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]
    landmarks = np.array(learned["landmarks"][0])
    assert landmarks[0] == 0 and landmarks[-1] == 100 and np.all(np.diff(landmarks) > 0)

    standardised = load_config(write_config(tmp_path, changed(TINY_RUN, preprocessing=steps[:2]), "learned.yaml"))
    turned = load_config(write_config(tmp_path, changed(TINY_RUN, preprocessing=steps[:1]), "turned.yaml"))
    for subject in read_subjects(standardised):
        foreground = load_sample(turned, subject).image[0] != 0
        image = load_sample(standardised, subject).image[0]
        # The image's own landmarks over its foreground land on the learned ones.
        np.testing.assert_allclose(np.percentile(image[foreground], learned["percentiles"]), landmarks, atol=0.5)

    again, _ = _landmarks(tmp_path, write_config(tmp_path, changed(TINY_RUN, preprocessing=steps), "again.yaml"))
    assert again["preprocessing"] == steps


def test_a_histology_config_is_refused(tmp_path):
    rgb_patches(tmp_path)
    config = write_config(tmp_path, HISTOLOGY)
    result = CliRunner().invoke(main, ["landmarks", str(config)])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: histogram_standardise is for radiology models"), result.stderr


def test_a_step_placed_without_landmarks_is_learned_in_its_place_with_its_percentiles(tmp_path, data_dir):
    _mr_table(tmp_path, data_dir)
    steps = [{"histogram_standardise": {"percentiles": [5, 50, 95]}}, {"rescale": {"out_min": 0, "out_max": 1}}]
    printed, _ = _landmarks(tmp_path, write_config(tmp_path, changed(TINY_RUN, preprocessing=steps)))
    learned = printed["preprocessing"][0]["histogram_standardise"]
    assert learned["percentiles"] == [5, 50, 95] and len(learned["landmarks"][0]) == 3
    assert learned["landmarks"][0][0] == 0 and learned["landmarks"][0][2] == 100
    assert next(iter(printed["preprocessing"][1])) == "rescale"


def test_landmarks_that_tie_after_a_clip_name_the_percentiles_and_what_to_do(tmp_path, data_dir):
    ct = data_dir / "radiology" / "totalseg_example_ct_sm.nii.gz"
    seg = data_dir / "radiology" / "totalseg_example_seg.nii.gz"
    (tmp_path / "subjects.csv").write_text(f"subject_id,image,label\nct,{ct},{seg}\n")
    steps = [{"clip": {"min": 0, "max": 100}}, {"zscore": {"region": "nonzero"}}]
    config = write_config(tmp_path, changed(TINY_RUN, preprocessing=steps))
    result = CliRunner().invoke(main, ["landmarks", str(config)])
    assert result.exit_code == 1 and "Traceback" not in result.stderr, result.output
    progress, error = result.stderr.splitlines()
    assert progress == "landmarks: subject 1/1 (ct) read"
    assert error.startswith("error: channel image: the landmarks learned at percentiles 1, 10, 20"), error
    assert "place it before the clip" in error


def test_a_normalize_with_fixed_statistics_is_no_place_for_the_step_and_stale_landmarks_are_relearned(tmp_path,
                                                                                                       data_dir):
    _mr_table(tmp_path, data_dir)
    fixed = write_config(tmp_path, changed(TINY_RUN, preprocessing=[{"normalize": {"mean": [500], "std": [100]}}]))
    result = CliRunner().invoke(main, ["landmarks", str(fixed)])
    assert result.exit_code == 1 and result.stderr.startswith("error: preprocessing[0] (normalize) normalises with "
                                                              "fixed statistics"), result.stderr
    stale = [{"histogram_standardise": {"landmarks": [list(range(11))], "percentiles": [5, 50, 95]}}]
    printed, _ = _landmarks(tmp_path, write_config(tmp_path, changed(TINY_RUN, preprocessing=stale), "stale.yaml"))
    assert len(printed["preprocessing"][0]["histogram_standardise"]["landmarks"][0]) == 3


def test_the_learned_step_takes_the_channels_of_the_step_it_goes_before(tmp_path, data_dir):
    image, label = (data_dir / "radiology" / f"pyradiomics_brain1_{part}.nrrd" for part in ("image", "label"))
    (tmp_path / "subjects.csv").write_text(f"subject_id,t1,flair,label\nbrain,{image},{image},{label}\n")
    data = changed(TINY_RUN, data__channels=["t1", "flair"],
                   preprocessing=[{"zscore": {"region": "nonzero", "channels": [1]}}])
    printed, _ = _landmarks(tmp_path, write_config(tmp_path, data))
    learned = printed["preprocessing"][0]["histogram_standardise"]
    assert learned["channels"] == [1] and len(learned["landmarks"]) == 1


def test_a_subject_whose_preprocessing_fails_is_named_with_its_file(tmp_path, data_dir):
    _mr_table(tmp_path, data_dir)
    config = write_config(tmp_path, changed(TINY_RUN, preprocessing=[{"foreground": {"min": 1e6}}]))
    result = CliRunner().invoke(main, ["landmarks", str(config)])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    image = data_dir / "radiology" / "pyradiomics_brain1_image.nrrd"     # as the table names it, links kept
    assert result.stderr.splitlines()[-1].startswith(f"error: subject pyradiomics_brain1 ({image}): foreground: no "
                                                     "voxel"), result.stderr
    write_scan(tmp_path / "empty.nii.gz", np.zeros((8, 16, 16), np.float32))
    (tmp_path / "subjects.csv").write_text("subject_id,image,label\nempty,empty.nii.gz,empty.nii.gz\n")
    result = CliRunner().invoke(main, ["landmarks", str(write_config(tmp_path, TINY_RUN))])
    empty = tmp_path / "empty.nii.gz"
    assert result.stderr.splitlines()[-1] == (f"error: subject empty: {empty}: every voxel is 0, so there is nothing "
                                              "to predict from; check the file."), result.stderr


def test_a_subject_of_one_intensity_is_named_not_left_out_of_the_landmarks_and_counted(tmp_path, data_dir):
    """A constant scan beside the MRs was left out of the landmarks without a word ("learned from
    3 subject(s)"), and training then refused it; it is refused as it is read, named."""
    _mr_table(tmp_path, data_dir)
    write_scan(tmp_path / "flat.nii.gz", np.full((8, 16, 16), 500, np.float32))
    write_scan(tmp_path / "flat_label.nii.gz", np.zeros((8, 16, 16), np.uint8))
    with (tmp_path / "subjects.csv").open("a") as table:
        table.write("flat,flat.nii.gz,flat_label.nii.gz\n")
    result = CliRunner().invoke(main, ["landmarks", str(write_config(tmp_path, TINY_RUN))])
    assert result.exit_code == 1 and result.stdout == "", result.output
    flat = tmp_path / "flat.nii.gz"
    assert result.stderr.splitlines()[-1] == (f"error: subject flat: {flat}: every voxel is 500 (a series of "
                                              "padding, say), so there is nothing to predict from; check the file.")

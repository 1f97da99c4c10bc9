"""histogram_standardise: landmarks learned from images, and each image mapped onto them piecewise linearly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from runtime.commands.cli import main as cli
from runtime.contract import parse_step_list
from runtime.errors import InputError
from runtime.preprocess import Step, Volume, run_steps
from runtime.preprocess.intensity import image_landmarks, standard_landmarks
from runtime.preprocess.steps import check_step
from runtime.validation import Problems
from tests.modelkit import make_model

PERCENTILES = [0, 50, 100]


def _volume(values: np.ndarray) -> Volume:
    return Volume.from_array(values.astype(np.float32).reshape(1, 1, 1, -1), (1.0, 1.0, 1.0))


def test_an_image_is_mapped_from_its_own_landmarks_onto_the_given_ones_and_straight_beyond_them():
    # Whole region 0..100 in steps of 1: the image's landmarks at 0/50/100 % are 0, 50, 100.
    step = Step("histogram_standardise", {"landmarks": [[10, 30, 130]], "percentiles": PERCENTILES, "region": "whole"})
    out, _ = run_steps(_volume(np.arange(101)), [step])
    mapped = out.array.reshape(-1)
    # 0..50 -> 10..30 (slope 0.4), 50..100 -> 30..130 (slope 2)
    assert mapped[0] == pytest.approx(10) and mapped[25] == pytest.approx(20) and mapped[50] == pytest.approx(30)
    assert mapped[75] == pytest.approx(80) and mapped[100] == pytest.approx(130)
    # Landmarks taken from the nonzero voxels only (1..100: 1, 50.5, 100); 0 lies below the first piece.
    nonzero = Step("histogram_standardise", {"landmarks": [[10, 30, 130]], "percentiles": PERCENTILES})
    below = run_steps(_volume(np.arange(101)), [nonzero])[0].array.reshape(-1)
    slope = (30 - 10) / (50.5 - 1)        # beyond the ends: the end piece's slope
    assert below[1] == pytest.approx(10) and below[0] == pytest.approx(10 - slope)


def test_end_landmarks_nearly_equal_give_no_steep_end_and_infinite_voxels_are_refused():
    # 10th percentile 0, median 5e-7: the first piece's slope is 1e8; beyond it, at most 2 x 100 / 98.
    values = np.concatenate([np.full(5, -1.0), np.zeros(495), np.full(10, 1e-6), np.linspace(1, 100, 490)])
    step = Step("histogram_standardise", {"landmarks": [[0, 50, 100]], "percentiles": [10, 50, 99],
                                          "region": "whole"})
    mapped = run_steps(_volume(values), [step])[0].array.reshape(-1)
    assert mapped[0] == pytest.approx(-2 * 100 / np.percentile(values, 99), rel=1e-4) and np.all(np.isfinite(mapped))
    with pytest.raises(InputError, match="not finite"):
        run_steps(_volume(np.concatenate([np.arange(1000.0), [np.inf]])), [step])


def test_standard_landmarks_are_the_mean_of_each_image_s_landmarks_scaled_to_0_100():
    first, second = np.array([0.0, 5.0, 10.0]), np.array([100.0, 190.0, 200.0])
    # scaled: [0, 50, 100] and [0, 90, 100]
    assert standard_landmarks([first, second]) == pytest.approx([0, 70, 100])
    assert standard_landmarks([first, np.array([7.0, 7.0, 7.0])]) == pytest.approx([0, 50, 100])
    with pytest.raises(InputError, match="constant"):
        standard_landmarks([np.array([3.0, 3.0, 3.0])])


def test_equal_image_landmarks_are_merged_and_a_constant_image_is_refused():
    values = np.concatenate([np.zeros(60), np.arange(1, 41)])     # 0 at the 0th and 50th percentile
    step = Step("histogram_standardise", {"landmarks": [[0, 20, 100]], "percentiles": PERCENTILES, "region": "whole"})
    mapped = run_steps(_volume(values), [step])[0].array.reshape(-1)
    assert np.all(np.isfinite(mapped)) and np.all(np.diff(mapped) >= 0)
    assert mapped[0] == pytest.approx(10) and mapped[-1] == pytest.approx(100)   # 0 -> mean of 0 and 20
    with pytest.raises(InputError, match="same intensity"):
        run_steps(_volume(np.full(50, 7.0)), [step])


def test_a_gamma_changed_mr_comes_out_nearly_as_the_original_where_zscore_does_not(data_dir):
    image = sitk.ReadImage(str(data_dir / "radiology" / "pyradiomics_brain1_image.nrrd"))
    original = sitk.GetArrayFromImage(image).astype(np.float32)
    changed = (original / original.max()) ** 1.5 * 3000
    inputs = [Volume.from_array(a[np.newaxis], (1.0, 1.0, 1.0)) for a in (original, changed)]
    params = {"percentiles": list(range(0, 101, 10))[1:-1], "region": "nonzero", "channels": None}
    learned = standard_landmarks([image_landmarks(inputs[0], params)[0]])
    foreground = original > 0

    def spread(step: Step) -> float:
        a, b = (run_steps(v, [step])[0].array[0][foreground] for v in inputs)
        low, high = np.percentile(a, [1, 99])
        return float(np.abs(a - b).mean() / (high - low))

    standardised = spread(Step("histogram_standardise", {"landmarks": [learned], "percentiles": params["percentiles"]}))
    zscored = spread(Step("zscore", {"region": "nonzero"}))
    assert standardised < 0.01 < 0.02 < zscored


@pytest.mark.parametrize("params, problem", [
    ({"landmarks": [[0, 0, 1]]}, "strictly increasing"),
    ({"landmarks": [[0, 50, 100]]}, "one value per percentile (11)"),
    ({"landmarks": [[0, 100]], "percentiles": [1, 99], "channels": [0, 1]}, "one list per channel of `channels`"),
    ({"landmarks": [[0, 100]], "percentiles": [99, 1]}, "strictly increasing numbers within [0, 100]"),
    ({"landmarks": [[0, float("nan")]], "percentiles": [1, 99]}, "strictly increasing"),
    ({"landmarks": [[0, float("inf")]], "percentiles": [1, 99]}, "strictly increasing finite numbers"),
    ({"landmarks": [[0, 100]], "percentiles": [1, 99], "region": "mask"}, "must be one of whole, nonzero"),
    ({"percentiles": [5, 50, 95]}, "landmarks: missing (required); learn them with `trainer landmarks CONFIG`"),
])
def test_a_step_with_wrong_landmarks_is_refused(params, problem):
    assert any(problem in text for text in check_step("histogram_standardise", params)), check_step(
        "histogram_standardise", params)


def test_a_manifest_needs_one_landmark_list_per_input_channel():
    problems = Problems("manifest")
    step = {"name": "histogram_standardise", "params": {"landmarks": [[0, 100]], "percentiles": [1, 99]}}
    parse_step_list([step], 3, 2, "preprocessing", problems, channels_from="channels")
    assert any("one list per channel (2, channels)" in text for text in problems.items), problems.items


def _bright_model(repository: Path, name: str, steps: list[dict]) -> Path:
    from export import graphs

    return make_model(repository, graphs.bright_structures(3), name=name, preprocessing=steps)


def test_runtime_predict_labels_a_gamma_changed_mr_as_the_original_with_the_step(tmp_path, data_dir):
    image = sitk.ReadImage(str(data_dir / "radiology" / "pyradiomics_brain1_image.nrrd"))
    original = sitk.GetArrayFromImage(image).astype(np.float32)
    changed = sitk.GetImageFromArray((original / original.max()) ** 1.5 * 3000)
    changed.CopyInformation(image)
    sitk.WriteImage(changed, str(tmp_path / "changed.nrrd"))
    params = {"percentiles": [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99], "region": "nonzero", "channels": None}
    learned = standard_landmarks([image_landmarks(Volume.from_array(original[np.newaxis], (1.0,) * 3), params)[0]])
    standardise = {"name": "histogram_standardise", "params": {"landmarks": [learned]}}
    # bright: a neighbourhood above 50 + 3 * 10 on the standard scale (between its 80th and 99th percentile)
    models = {"standardised": [standardise, {"name": "normalize", "params": {"mean": [50], "std": [10]}}],
              "zscored": [{"name": "zscore", "params": {"region": "nonzero"}}]}
    agreement = {}
    for name, steps in models.items():
        model = _bright_model(tmp_path / "repo", name, steps)
        labels = []
        for scan in (data_dir / "radiology" / "pyradiomics_brain1_image.nrrd", tmp_path / "changed.nrrd"):
            out = tmp_path / f"{name}_{scan.stem}.nii.gz"
            result = CliRunner().invoke(cli, ["predict", str(scan), "--model", str(model), "--output", str(out)])
            assert result.exit_code == 0, result.output
            labels.append(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))
        assert 0.002 < labels[0].mean() < 0.2
        agreement[name] = float(np.mean(labels[0] == labels[1]))
    assert agreement["standardised"] > 0.999 > agreement["zscored"]

"""`export build --from-nnunet FOLDER`: an nnU-Net v2 trained model folder becomes a version whose
`runtime predict` gives nnU-Net's own predictor's labels, voxel for voxel; and the folders that
cannot be imported as they are, each refused in one line with nothing written."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from click.testing import CliRunner

from export.cli import main as export_main
from tests.nnunetkit import CONFIGURATION, nnunet_predict, nnunet_probabilities, plans, trained_folder

CT = "radiology/totalseg_example_ct_sm.nii.gz"
MR = "radiology/totalseg_example_mr_sm.nii.gz"


def export(*args: object) -> str:
    result = CliRunner().invoke(export_main, ["build", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output.splitlines()[-2]


def export_failing(args: list[object], *expected: str) -> str:
    result = CliRunner().invoke(export_main, ["build", *map(str, args)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def runtime_labels(image: Path, model: str, output: Path, probabilities: Path | None = None) -> np.ndarray:
    from runtime.commands.cli import main

    more = ["--probabilities", str(probabilities)] if probabilities else []
    result = CliRunner().invoke(main, ["predict", str(image), "--model", model, "--output", str(output),
                                       "--device", "cpu", "--quiet", *more])
    assert result.exit_code == 0, result.output
    return sitk.GetArrayFromImage(sitk.ReadImage(str(output)))


def read_labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.slow
def test_a_ct_model_of_two_folds_labels_every_voxel_as_nnunet_does(data_dir, tmp_path):
    folder = trained_folder(tmp_path / "results", plans(patch=(16, 64, 64), spacing=(4.0, 3.5, 3.5)), folds=(0, 1),
                            mirror_axes=(1,))
    version = export("--from-nnunet", folder, "--repository", tmp_path / "repo")
    manifest = json.loads((Path(version) / "manifest.json").read_text())
    assert manifest["provenance"]["nnunet"]["folds"] == ["0", "1"]
    assert [step["name"] for step in manifest["preprocessing"]] == ["crop_nonzero", "clip", "normalize", "resample",
                                                                    "pad"]
    ours = runtime_labels(data_dir / CT, version, tmp_path / "ours.nii.gz", tmp_path / "probabilities.nii.gz")
    theirs = read_labels(nnunet_predict(folder, (0, 1), [data_dir / CT], tmp_path / "nnunet.nii.gz"))
    assert np.unique(ours).size == 3
    assert np.count_nonzero(ours != theirs) == 0
    probabilities = read_labels(tmp_path / "probabilities.nii.gz")
    assert np.abs(probabilities - nnunet_probabilities(folder, (0, 1), [data_dir / CT])).max() < 1e-4


@pytest.mark.slow
def test_a_region_model_of_a_turned_skull_stripped_mr_in_the_plans_axis_order_labels_as_nnunet_does(
        data_dir, tmp_path):
    """Reoriented to RAS as nnU-Net's reader does, a zero border cropped, z-scored over the non-zero
    region with its holes filled, the axes in transpose_forward's order, regions read by threshold."""
    image = sitk.ReadImage(str(data_dir / MR))
    array = sitk.GetArrayFromImage(image)
    array[:, :6], array[:, :, -9:] = 0, 0                       # a border of zeros
    array[8:12, 40:48, 50:60] = 0                               # a hole inside the body
    stripped = sitk.GetImageFromArray(array)
    stripped.CopyInformation(image)
    sitk.WriteImage(stripped, str(tmp_path / "mr.nii.gz"))
    plan = plans(patch=(64, 16, 48), spacing=(3.2, 4.0, 3.5), transpose=(2, 0, 1), scheme="ZScoreNormalization",
                 mask=True, reader="SimpleITKIOWithReorient")
    folder = trained_folder(tmp_path / "results", plan, labels={"background": 0, "whole": [1, 2], "core": 2},
                            regions=(1, 2), channel_names=("T1",), mirror_axes=(0, 1))
    version = export("--from-nnunet", folder, "--repository", tmp_path / "repo", "--name", "regions")
    manifest = json.loads((Path(version) / "manifest.json").read_text())
    assert manifest["window"]["patch_size"] == [16, 48, 64] and manifest["window"]["mirror_axes"] == [0, 2]
    assert [step["name"] for step in manifest["preprocessing"]] == ["reorient", "foreground", "crop_nonzero", "zscore",
                                                                    "resample", "pad"]
    assert [(c["value"], c["name"]) for c in manifest["classes"]] == [(0, "background"), (1, "whole without core"),
                                                                      (2, "core")]     # a voxel takes its last region
    ours = runtime_labels(tmp_path / "mr.nii.gz", version, tmp_path / "ours.nii.gz", tmp_path / "probabilities.nii.gz")
    theirs = read_labels(nnunet_predict(folder, (0,), [tmp_path / "mr.nii.gz"], tmp_path / "nnunet.nii.gz"))
    assert set(np.unique(theirs)) == {0, 1, 2}
    assert np.count_nonzero(ours != theirs) == 0
    whole, core = read_labels(tmp_path / "probabilities.nii.gz")     # each region's sigmoid, 0 off the body
    assert np.array_equal(np.where(core > 0.5, 2, np.where(whole > 0.5, 1, 0)), ours)
    assert whole[:, :6].max() == 0 and core[:, :, -9:].max() == 0 and whole.min() == 0 and 0.2 < whole.max() <= 1


@pytest.mark.slow
def test_a_2d_configuration_runs_on_each_slice_of_the_plans_first_axis_as_nnunet_does(data_dir, tmp_path):
    """Slices along y (transpose_forward [1, 0, 2]), each resampled in its plane and left where it
    is, two folds' 2D networks mirrored along both in-plane axes."""
    folder = trained_folder(tmp_path / "results", plans(patch=(32, 64), spacing=(4.0, 3.5), transpose=(1, 0, 2)),
                            folds=(0, 1), mirror_axes=(0, 1))
    assert folder.name == "nnUNetTrainer__nnUNetPlans__2d"
    version = export("--from-nnunet", folder, "--repository", tmp_path / "repo")
    manifest = json.loads((Path(version) / "manifest.json").read_text())
    assert manifest["window"]["patch_size"] == [32, 1, 64] and manifest["window"]["mirror_axes"] == [0, 2]
    resample = next(step for step in manifest["preprocessing"] if step["name"] == "resample")
    assert resample["params"]["spacing"] == [4.0, None, 3.5]
    ours = runtime_labels(data_dir / CT, version, tmp_path / "ours.nii.gz")
    theirs = read_labels(nnunet_predict(folder, (0, 1), [data_dir / CT], tmp_path / "nnunet.nii.gz"))
    assert np.unique(theirs).size == 3
    assert np.count_nonzero(ours != theirs) == 0


def test_disable_tta_leaves_out_the_mirrored_windows_as_nnunets_predictor_does(data_dir, tmp_path):
    folder = trained_folder(tmp_path / "results", plans(patch=(16, 32, 32), spacing=(4.0, 4.5, 4.5)))
    version = export("--from-nnunet", folder, "--disable-tta", "--repository", tmp_path / "repo")
    manifest = json.loads((Path(version) / "manifest.json").read_text())
    assert manifest["window"]["mirror_axes"] == [] and manifest["provenance"]["nnunet"]["tta"] is False
    ours = runtime_labels(data_dir / CT, version, tmp_path / "ours.nii.gz")
    theirs = read_labels(nnunet_predict(folder, (0,), [data_dir / CT], tmp_path / "nnunet.nii.gz", mirroring=False))
    mirrored = read_labels(nnunet_predict(folder, (0,), [data_dir / CT], tmp_path / "mirrored.nii.gz"))
    assert np.count_nonzero(ours != theirs) == 0 and np.count_nonzero(ours != mirrored) > 100
    export_failing([folder, "--onnx", "--disable-tta"], "--disable-tta are for an nnU-Net folder")


def test_mirror_axes_a_2d_configuration_does_not_have_are_refused(tmp_path):
    folder = trained_folder(tmp_path / "results", plans(patch=(32, 64), spacing=(4.0, 3.5)), mirror_axes=(0, 1, 2))
    export_failing(["--from-nnunet", folder, "--repository", tmp_path / "repo"],
                   "fold_0/checkpoint_final.pth: inference_allowed_mirroring_axes [0, 1, 2] name axes a 2D")
    assert not (tmp_path / "repo").exists()


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory) -> Path:
    return trained_folder(tmp_path_factory.mktemp("results"), plans(patch=(16, 32, 32), spacing=(3.0, 3.0, 3.0)))


def edited(tmp_path: Path, change_plans=None, change_dataset=None) -> Path:
    """A trained folder whose plans.json or dataset.json is then changed."""
    folder = trained_folder(tmp_path / "results", plans(patch=(16, 32, 32), spacing=(3.0, 3.0, 3.0)))
    for name, change in (("plans.json", change_plans), ("dataset.json", change_dataset)):
        if change is not None:
            data = json.loads((folder / name).read_text())
            change(data)
            (folder / name).write_text(json.dumps(data))
    return folder


def _configuration(plan):
    return plan["configurations"][CONFIGURATION]


REFUSED = {
    "lengths": (lambda p: _configuration(p).update(patch_size=[32, 32]), None,
                "patch_size [32, 32] and spacing [3.0, 3.0, 3.0] differ in length"),
    "dimensions": (lambda p: _configuration(p).update(patch_size=[32, 32], spacing=[3.0, 3.0]), None,
                   "conv_op torch.nn.modules.conv.Conv3d, norm_op torch.nn.modules.instancenorm.InstanceNorm3d and "
                   "kernel_sizes [[3, 3, 3]"),
    "norm": (lambda p: _configuration(p)["architecture"]["arch_kwargs"].update(
        norm_op="torch.nn.modules.instancenorm.InstanceNorm2d"), None, "do not all fit its 3D patch_size"),
    "strides": (lambda p: _configuration(p).update(patch_size=[15, 33, 33]), None,
                "does not run on its patch [15, 33, 33] (RuntimeError"),
    "reader_list": (lambda p: p.update(image_reader_writer=["SimpleITKIO"]), None,
                    "image_reader_writer ['SimpleITKIO'] reads images otherwise"),
    "cascade": (lambda p: _configuration(p).update(previous_stage="3d_lowres"), None, "is a cascade stage"),
    "transpose": (lambda p: p.update(transpose_forward=[0, 0, 1]), None, "transpose_forward is [0, 0, 1]"),
    "reader": (lambda p: p.update(image_reader_writer="Tiff3DIO"), None, "image_reader_writer Tiff3DIO"),
    "scheme": (lambda p: _configuration(p).update(normalization_schemes=["MyNormalization"]), None,
               "normalization_schemes[0] is MyNormalization"),
    "resampling": (lambda p: _configuration(p)["resampling_fn_data_kwargs"].update(order=1), None,
                   "resampling_fn_data is resample_data_or_seg_to_shape with"),
    "class": (lambda p: _configuration(p)["architecture"].update(network_class_name="os.system"), None,
              "network_class_name is 'os.system'"),
    "layer": (lambda p: _configuration(p)["architecture"]["arch_kwargs"].update(nonlin="os.system"), None,
              "arch_kwargs.nonlin is 'os.system'"),
    "regions": (None, lambda d: d.update(labels={"background": 0, "a": [1, 2], "b": 2}, regions_class_order=[2, 1]),
                "regions_class_order [2, 1]"),
    "types": (lambda p: _configuration(p).update(patch_size="abc"), None, "patch_size is 'abc', not what nnU-Net"),
    "gap": (None, lambda d: d.update(labels={"background": 0, "a": 1, "b": 5}),
            "labels must be 0, 1, ... without gaps"),
    "features": (lambda p: _configuration(p)["architecture"]["arch_kwargs"].update(features_per_stage=[4, 8, 10 ** 9]),
                 None, "its weights do not fit the network plans.json describes"),
    "stages": (lambda p: _configuration(p)["architecture"]["arch_kwargs"].update(n_stages=1000), None,
               "n_stages is 1000; nnU-Net's networks have 1 to 16 stages"),
    "convs": (lambda p: _configuration(p)["architecture"]["arch_kwargs"].update(n_conv_per_stage=[10 ** 6, 1, 1]),
              None, "n_conv_per_stage is [1000000, 1, 1]; nnU-Net's networks have up to 16 stages of 1 to 64 each"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_the_runtime_cannot_compute_as_nnunet_does_is_refused_naming_the_field(tmp_path, case):
    change_plans, change_dataset, expected = REFUSED[case]
    folder = edited(tmp_path, change_plans, change_dataset)
    export_failing(["--from-nnunet", folder, "--repository", tmp_path / "repo"], expected)
    assert not (tmp_path / "repo").exists()


def test_a_checkpoint_that_would_run_code_when_loaded_is_refused_without_running_it(tmp_path):
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    folder = trained_folder(tmp_path / "results", plans(patch=(16, 32, 32), spacing=(3.0, 3.0, 3.0)),
                            extra={"payload": Payload()})
    export_failing(["--from-nnunet", folder, "--repository", tmp_path / "repo"],
                   "fold_0/checkpoint_final.pth holds objects that are not tensors or plain values", "system")
    assert not (tmp_path / "ran").exists() and not (tmp_path / "repo").exists()


def test_damaged_missing_and_unfitting_parts_are_refused_in_one_line(tmp_path, ct_folder):
    repo = tmp_path / "repo"
    export_failing(["--from-nnunet", ct_folder, "--folds", "0,3", "--repository", repo],
                   "--folds 0,3", "fold_0", "give a comma list")
    export_failing(["--from-nnunet", ct_folder, "--checkpoint", "best", "--repository", repo],
                   "holds no fold_*/checkpoint_best.pth", "or choose --checkpoint final.")
    line = export_failing(["--from-nnunet", ct_folder, "--name", "../evil", "--repository", repo],
                          "--name must be letters, digits, _ and - only (it names the model folder), got '../evil'")
    assert "plans.json" not in line
    export_failing(["--from-nnunet", ct_folder, "--spec", tmp_path / "spec.yaml", "--repository", repo],
                   "leave out --spec")
    export_failing(["--from-nnunet", ct_folder / "fold_0", "--repository", repo],
                   "fold_0 is one fold of a trained model; give the folder above it", "--folds fold_0")
    folder = edited(tmp_path)
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[: len(whole) // 2])
    export_failing(["--from-nnunet", folder, "--repository", repo], "checkpoint_final.pth is not a readable checkpoint",
                   "copy it again")
    saved = torch.load(ct_folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    saved["network_weights"] = {k: v[..., :1] if v.dim() > 1 else v for k, v in saved["network_weights"].items()}
    torch.save(saved, checkpoint)
    export_failing(["--from-nnunet", folder, "--repository", repo], "its weights do not fit the network",
                   "the checkpoint was trained with other plans or another configuration")
    plans_text = (folder / "plans.json").read_text()
    (folder / "plans.json").write_text("{not json")
    export_failing(["--from-nnunet", folder, "--repository", repo], "plans.json: not JSON (")
    (folder / "plans.json").write_text(plans_text)
    (folder / "dataset.json").unlink()
    os.mkfifo(folder / "dataset.json")                                  # read, it would wait for a writer forever
    export_failing(["--from-nnunet", folder, "--repository", repo], "dataset.json: not a regular file; give the folder")
    assert not repo.exists()


def test_a_fold_without_the_checkpoint_and_postprocessing_not_carried_over_are_said_and_two_models_refused(
        tmp_path, caplog):
    """nnU-Net's predictor leaves out a fold without the checkpoint asked for, silently: the build
    says which; nnU-Net's postprocessing.pkl is not applied, and the build says so; an ensemble of
    two folders (of two configurations) is no build."""
    folder = trained_folder(tmp_path / "results", plans(patch=(16, 32, 32), spacing=(3.0, 3.0, 3.0)), folds=(0, 1))
    for fold in (0, 1):
        (folder / f"fold_{fold}" / "checkpoint_final.pth").rename(folder / f"fold_{fold}" / "checkpoint_best.pth")
    (folder / "fold_1" / "checkpoint_best.pth").rename(folder / "fold_1" / "checkpoint_final.pth")
    (folder / "crossval_results_folds_0_1").mkdir()
    (folder / "crossval_results_folds_0_1" / "postprocessing.pkl").write_bytes(b"never unpickled")
    with caplog.at_level("WARNING", logger="export.nnunet"):
        result = CliRunner().invoke(export_main, ["build", "--from-nnunet", str(folder), "--checkpoint", "best",
                                                  "--repository", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    said = [record.getMessage() for record in caplog.records]
    assert ("fold_1 hold(s) no checkpoint_best.pth and is left out, as nnU-Net's predictor leaves it: the ensemble "
            "is of fold(s) 0 alone (--checkpoint final takes the other checkpoint)") in said, said
    assert any("postprocessing.pkl (nnU-Net's postprocessing, which nnUNetv2_apply_postprocessing applies) is not "
               "carried over" in line for line in said), said
    listed = CliRunner().invoke(export_main, ["list", str(tmp_path / "repo")])
    header, row = (next(line for line in listed.output.splitlines() if line.startswith(start))
                   for start in ("model", "Dataset042_Toy_3d_fullres"))
    column = header.index("folds")
    assert row[column:column + len("folds")].strip() == "1", listed.output        # the folds taken, counted
    export_failing(["--from-nnunet", folder, "--from-nnunet", folder, "--repository", tmp_path / "two"],
                   "--from-nnunet is given 2 times; a build packages one model", "nnUNetv2_ensemble")
    export_failing(["--from-nnunet", folder, "--folds", "0,3", "--repository", tmp_path / "two"],
                   "holds checkpoint_final.pth for fold(s) fold_1; give a comma list of those, each once (here 1), "
                   "or all (every numbered fold; fold_all is nnU-Net's -f all).")
    assert not (tmp_path / "two").exists()


def test_a_trainer_that_builds_its_own_network_is_refused_and_one_not_installed_is_taken_only_when_told(tmp_path):
    """nnUNetTrainerBN builds batch norm where the plans say instance norm: weights of the same shapes,
    another computation."""
    small = plans(patch=(16, 32, 32), spacing=(3.0, 3.0, 3.0))
    repo = tmp_path / "repo"
    own = trained_folder(tmp_path / "bn", small, trainer="nnUNetTrainerBN")
    export_failing(["--from-nnunet", own, "--repository", repo],
                   "checkpoint_final.pth: trainer_name 'nnUNetTrainerBN' builds a network of its own")
    elsewhere = trained_folder(tmp_path / "mine", small, trainer="MyLabsTrainer")
    export_failing(["--from-nnunet", elsewhere, "--repository", repo],
                   "trainer_name 'MyLabsTrainer' cannot be found", "--assume-plans-network")
    assert not repo.exists()
    export("--from-nnunet", elsewhere, "--repository", repo, "--assume-plans-network")
    export("--from-nnunet", trained_folder(tmp_path / "long", small, trainer="nnUNetTrainer_250epochs"),
           "--repository", repo)


def test_a_trainer_of_ones_own_is_found_where_nnunet_extTrainer_says_beside_one_that_fails_to_import(
        tmp_path, monkeypatch):
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "broken.py").write_text("raise RuntimeError('a dependency that fails to import')\n")
    (ext / "mine.py").write_text(
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n\n\n"
        "class MyLabsTrainer(nnUNetTrainer):\n    pass\n\n\n"
        "class MyGeluTrainer(nnUNetTrainer):\n    @staticmethod\n"
        "    def build_network_architecture(*args, **kwargs):\n        raise NotImplementedError\n")
    monkeypatch.setenv("nnUNet_extTrainer", str(ext))
    small = plans(patch=(16, 32, 32), spacing=(3.0, 3.0, 3.0))
    export("--from-nnunet", trained_folder(tmp_path / "mine", small, trainer="MyLabsTrainer"),
           "--repository", tmp_path / "repo")
    export_failing(["--from-nnunet", trained_folder(tmp_path / "gelu", small, trainer="MyGeluTrainer"),
                    "--repository", tmp_path / "repo"], "trainer_name 'MyGeluTrainer' builds a network of its own")


def test_a_label_written_as_a_list_of_one_value_is_that_label(tmp_path):
    folder = trained_folder(tmp_path / "results", plans(patch=(16, 32, 32), spacing=(3.0, 3.0, 3.0)),
                            labels={"background": 0, "liver": [1], "bone": 2})
    version = export("--from-nnunet", folder, "--repository", tmp_path / "repo")
    classes = json.loads((Path(version) / "manifest.json").read_text())["classes"]
    assert [(c["value"], c["name"]) for c in classes] == [(0, "background"), (1, "liver"), (2, "bone")]


def test_an_ignore_label_is_no_class_and_is_recorded_for_scoring_as_nnunet_scores(tmp_path):
    from runtime.manifest import label_ignore, load_manifest

    folder = trained_folder(tmp_path / "results", plans(patch=(16, 32, 32), spacing=(3.0, 3.0, 3.0)),
                            labels={"background": 0, "liver": 1, "bone": 2, "ignore": 3})
    version = export("--from-nnunet", folder, "--repository", tmp_path / "repo")
    manifest, _ = load_manifest(Path(version))
    assert [c.name for c in manifest.classes] == ["background", "liver", "bone"] and label_ignore(manifest) == 3


def test_a_region_class_is_named_by_what_it_holds_its_region_without_the_later_ones_it_meets():
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from export.nnunet import _classes

    labels = {"background": 0, "kidney": [1, 2, 3], "tumor": [2], "cyst": [3]}
    manager = LabelManager(labels, regions_class_order=[1, 2, 3])
    assert _classes({"labels": labels}, manager, Path("dataset.json")) == {
        0: "background", 1: "kidney without tumor, cyst", 2: "tumor", 3: "cyst"}

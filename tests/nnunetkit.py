"""An nnU-Net v2 trained model folder made in the test, as nnU-Net writes one (plans.json,
dataset.json, fold_N/checkpoint_final.pth with what nnUNetTrainer.save_checkpoint saves), holding a
small PlainConvUNet with seeded weights (3D, or 2D for a patch of two axes); and nnU-Net's own
predictor run on it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence
from unittest import mock

import numpy as np
import torch

CONFIGURATION = "3d_fullres"
LABELS = {"background": 0, "liver": 1, "bone": 2}
RESAMPLING = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}


def plans(patch: Sequence[int], spacing: Sequence[float], *, transpose: Sequence[int] = (0, 1, 2),
          scheme: str = "CTNormalization", mask: bool = False, reader: str = "SimpleITKIO",
          channels: int = 1) -> dict[str, Any]:
    """plans.json of one configuration, 3d_fullres or (for a `patch` of two axes) 2d; `patch` and
    `spacing` in the plans' (transposed) order."""
    dims = len(patch)
    configuration_name = CONFIGURATION if dims == 3 else "2d"
    architecture = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
            "kernel_sizes": [[3] * dims] * 3, "strides": [[1] * dims, [1, 2, 2][-dims:], [2] * dims],
            "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    configuration = {
        "data_identifier": f"nnUNetPlans_{configuration_name}", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch), "median_image_size_in_voxels": [30, 101, 122], "spacing": list(spacing),
        "normalization_schemes": [scheme] * channels, "use_mask_for_norm": [mask] * channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": RESAMPLING,
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {**RESAMPLING, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**RESAMPLING, "order": 1},
        "architecture": architecture, "batch_dice": False,
    }
    properties = {"max": 1207.0, "mean": 60.0, "median": 50.0, "min": -1100.0, "percentile_00_5": -900.0,
                  "percentile_99_5": 900.0, "std": 250.0}
    return {
        "dataset_name": "Dataset042_Toy", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": [30, 101, 122], "image_reader_writer": reader,
        "transpose_forward": list(transpose), "transpose_backward": [int(a) for a in np.argsort(transpose)],
        "configurations": {configuration_name: configuration}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(c): properties for c in range(channels)},
    }


def trained_folder(root: Path, plan: dict[str, Any], *, folds: Sequence[int] = (0,),
                   labels: dict[str, Any] | None = None, regions: Sequence[int] | None = None,
                   channel_names: Sequence[str] = ("CT",), mirror_axes: Sequence[int] = (0, 1, 2),
                   trainer: str = "nnUNetTrainer", extra: dict[str, Any] | None = None) -> Path:
    """nnUNet_results/Dataset042_Toy/<trainer>__nnUNetPlans__<configuration> with a seeded network per fold;
    `mirror_axes` are the trainer's, in the plans' axis order; `extra` is added to every checkpoint."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    labels = LABELS if labels is None else labels
    dataset = {"channel_names": {str(i): name for i, name in enumerate(channel_names)}, "labels": labels,
               "numTraining": 10, "file_ending": ".nii.gz"}
    if regions is not None:
        dataset["regions_class_order"] = list(regions)
    configuration = next(iter(plan["configurations"]))
    folder = root / "Dataset042_Toy" / f"{trainer}__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plan, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    architecture = plan["configurations"][configuration]["architecture"]
    heads = len(regions) if regions is not None else len([name for name in labels if name != "ignore"])
    for fold in folds:
        torch.manual_seed(fold)
        network = get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                         architecture["_kw_requires_import"], len(channel_names), heads,
                                         deep_supervision=True)
        (folder / f"fold_{fold}").mkdir()
        torch.save({
            "network_weights": network.state_dict(), "optimizer_state": {}, "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [np.float64(0.4)],
                        "epoch_start_timestamps": [1.0]},
            "_best_ema": np.float64(0.4), "current_epoch": 1,
            "init_args": {"plans": plan, "configuration": configuration, "fold": fold, "dataset_json": dataset,
                          "device": torch.device("cpu")},
            "trainer_name": trainer, "inference_allowed_mirroring_axes": tuple(mirror_axes), **(extra or {}),
        }, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


def nnunet_predict(folder: Path, folds: Sequence[int], images: Sequence[Path], output: Path,
                   mirroring: bool = True) -> Path:
    """nnU-Net's predictor on `images` (one per channel), its segmentation written by the plans'
    reader/writer to `output` (.nii.gz); without mirrored windows where `mirroring` is False
    (`--disable_tta`). Its windows are summed in float64 instead of float16, which rounds logits and
    makes ties that are nnU-Net's rounding, not its computation."""
    predictor, image, properties = _predictor(folder, folds, images, mirroring)
    with mock.patch.object(torch, "half", torch.float64):
        predictor.predict_single_npy_array(image, properties, None, str(output)[:-len(".nii.gz")], False)
    return output


def nnunet_probabilities(folder: Path, folds: Sequence[int], images: Sequence[Path]) -> np.ndarray:
    """The probabilities (K, *image) nnU-Net's predictor saves (`--save_probabilities`), its windows
    summed in float64."""
    predictor, image, properties = _predictor(folder, folds, images, True)
    with mock.patch.object(torch, "half", torch.float64):
        _, probabilities = predictor.predict_single_npy_array(image, properties, None, None, True)
    return np.asarray(probabilities)


def _predictor(folder: Path, folds: Sequence[int], images: Sequence[Path], mirroring: bool) -> tuple[Any, Any, Any]:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=mirroring, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False, verbose=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=tuple(folds),
                                                   checkpoint_name="checkpoint_final.pth")
    reader = PlansManager(str(folder / "plans.json")).image_reader_writer_class()
    image, properties = reader.read_images([str(path) for path in images])
    return predictor, image, properties

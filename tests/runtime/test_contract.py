"""The model contract's section parsers: values, defaults, one rule per section whichever document holds it."""
from __future__ import annotations

import subprocess
import sys

from runtime.contract import (
    ClassSpec, OutputSpec, SlideSpec, WindowSection, check_logits_window, check_output, parse_class_list, parse_classes,
    parse_dimensions,
    parse_name, parse_output, parse_patch_size, parse_slide, parse_step_list, parse_steps, parse_window,
    parse_window_section,
)
from runtime.preprocess import Step
from runtime.validation import Problems
from tests.conftest import REPO


def test_name_and_dimensions_are_checked_at_the_given_location() -> None:
    problems = Problems("doc")
    assert parse_name("brain_lesion-2", "name", problems) == "brain_lesion-2"
    assert parse_dimensions(2, "dimensions", problems) == 2 and problems.items == []
    assert parse_name("a b", "--name", problems) is None
    assert parse_dimensions(True, "model.dims", problems) is None
    assert problems.items == [
        "--name: must be letters, digits, _ and - only (it names the model folder), got 'a b'",
        "model.dims: must be 2 or 3, got True",
    ]


def test_a_name_id_uid_or_digest_with_a_trailing_newline_is_refused() -> None:
    """`$` matches before a final newline; a model name "x\\n" would name a folder that breaks its config."""
    from runtime.commands.rows import SAFE_ID
    from runtime.manifest import DIGEST_PATTERN
    from runtime.pacs.storage import UID
    from runtime.triton.adapter import SERVED_NAME

    problems = Problems("doc")
    assert parse_name("x\n", "--name", problems) is None and len(problems.items) == 1
    for pattern, good in ((SAFE_ID, "s001"), (DIGEST_PATTERN, "sha256:" + "0" * 64), (UID, "1.2.840"),
                          (SERVED_NAME, "demo")):
        assert pattern.match(good) and not pattern.match(good + "\n"), pattern.pattern


def test_a_patch_size_names_its_axis_count() -> None:
    problems = Problems("doc")
    assert parse_patch_size([8, 16], 2, "patch.size", problems) == (8, 16) and problems.items == []
    assert parse_patch_size([8, 16], 3, "patch.size", problems) is None
    assert parse_patch_size([8, 0], None, "patch.size", problems) is None
    assert problems.items == [
        "patch.size: must be 3 positive integers, got [8, 16] (one per axis, in axis_order)",
        "patch.size: must be positive integers, got [8, 0] (one per axis, in axis_order)",
    ]


def test_classes_are_parsed_and_their_problems_located_under_where() -> None:
    problems = Problems("config")
    assert parse_classes({0: "background", 1: "lesion"}, "segmentation", "data.classes", problems) == (
        ClassSpec(0, "background"), ClassSpec(1, "lesion"))
    assert problems.items == []
    found = parse_classes({-1: "a", 1: "", 2: "b", 3: "b"}, "segmentation", "data.classes", problems)
    assert found == (ClassSpec(2, "b"), ClassSpec(3, "b"))
    assert problems.items == [
        "data.classes.-1: the value must be an integer from 0 to 65535 (label maps are uint8 or uint16), got -1",
        "data.classes.1: the name must be a non-empty string (or {name, category, type}), got ''",
        "data.classes: names must be distinct, got ['b', 'b']",
        "data.classes: the first class is the background and must have value 0, got 2",
    ]


def test_a_class_named_as_another_class_value_is_refused() -> None:
    """{0: '1', 1: '0'}: a table's label 1 would be class 1, or the class named '1'; a name that is
    its own value, or no value, is no trap."""
    problems = Problems("config")
    parse_classes({0: "1", 1: "0"}, "classification", "data.classes", problems)
    assert problems.items == ["data.classes: class 0 is named '1', which is class 1's value: a table's label 1 "
                              "would be read as either; name the classes with words"]
    for names in ({0: "+1", 1: "0"}, {0: "1.0", 1: "a"}):
        crossed = Problems("config")
        parse_classes(names, "classification", "data.classes", crossed)
        assert len(crossed.items) == 1 and "which is class 1's value" in crossed.items[0], crossed.items
    fine = Problems("config")
    assert len(parse_classes({0: "0", 1: "7", 2: "high", 3: "--1"}, "classification", "data.classes", fine)) == 4
    assert len(parse_classes({0: "background", 1: "2", 2: "1"}, "segmentation", "data.classes", fine)) == 3
    assert fine.items == []                  # a segmentation's labels are maps, never read by class name


def test_a_class_may_carry_the_coded_concepts_of_a_dicom_seg_segment() -> None:
    from runtime.contract import Concept
    from runtime.manifest import parse_manifest
    from tests.modelkit import manifest_dict

    liver = {"category": {"scheme": "SCT", "value": "123037004", "meaning": "Anatomical Structure"},
             "type": {"scheme": "SCT", "value": "10200004", "meaning": "Liver"}}
    expected = ClassSpec(1, "liver", Concept("SCT", "123037004", "Anatomical Structure"),
                         Concept("SCT", "10200004", "Liver"))
    problems = Problems("spec")
    assert parse_classes({0: "background", 1: {"name": "liver", **liver}}, "segmentation", "classes", problems) == (
        ClassSpec(0, "background"), expected)
    assert parse_class_list([{"value": 0, "name": "background"}, {"value": 1, "name": "liver", **liver}],
                            "segmentation", "classes", problems)[1] == expected
    assert problems.items == []
    manifest = parse_manifest(manifest_dict(classes=[{"value": 0, "name": "background"},
                                                     {"value": 1, "name": "liver", **liver}],
                                            files={"model.onnx": "0" * 64}))
    assert manifest.to_dict()["classes"] == [{"value": 0, "name": "background"},
                                             {"value": 1, "name": "liver", **liver}]   # no code: no keys
    bad = {1: {"name": "liver", "category": liver["category"]},
           2: {"name": "spleen", "category": {"scheme": "SCT", "value": "1"}, "type": liver["type"]},
           3: {"name": "kidney", "category": {"scheme": "S" * 17, "value": "1", "meaning": "a\\b"},
               "type": liver["type"]}}
    parse_classes({0: "background", **bad}, "segmentation", "classes", problems)
    assert problems.items == [
        "classes.1: give category and type together (the coded concepts of a DICOM SEG segment), or neither",
        "classes.2.category.meaning: missing",
        "classes.3.category.scheme: must be a non-empty string of at most 16 characters without a backslash, got "
        "'SSSSSSSSSSSSSSSSS'",
        "classes.3.category.meaning: must be a non-empty string of at most 64 characters without a backslash, got "
        "'a\\\\b'",
    ]


def test_a_type_alone_names_a_finding() -> None:
    """A classifier's class or a regression target may carry its `type` alone (what a DICOM SR calls
    it); a segment needs its category too."""
    age = {"scheme": "SCT", "value": "424144002", "meaning": "Current chronological age"}
    problems = Problems("spec")
    assert parse_classes({0: {"name": "age", "type": age}}, "regression", "classes", problems)[0].type is not None
    parse_classes({0: {"name": "normal", "type": age}, 1: "other"}, "classification", "classes", problems)
    assert problems.items == []
    parse_classes({0: "background", 1: {"name": "lesion", "type": age}}, "segmentation", "classes", problems)
    assert problems.items == [
        "classes: lesion: give category and type together (the coded concepts of a DICOM SEG segment), or neither"]
    problems = Problems("spec")
    parse_classes({0: {"name": "area", "unit": "mm2"}}, "regression", "classes", problems)
    assert problems.items == ["classes.0.unit: must be a coded concept {scheme, value, meaning} (e.g. {scheme: "
                              "UCUM, value: mm2, meaning: square millimetre}), got 'mm2'"]
    problems = Problems("spec")
    parse_classes({0: "background", 1: {"name": "liver", "category": "Tissue", "type": "Liver"}}, "segmentation",
                  "classes", problems)
    assert problems.items[0] == ("classes.1.category: must be a coded concept {scheme, value, meaning} (e.g. {scheme: "
                                 "SCT, value: '10200004', meaning: Liver}), got 'Tissue'")


def test_a_regression_target_needs_one_class_only() -> None:
    problems = Problems("spec")
    assert parse_classes({0: "age"}, "regression", "classes", problems) == (ClassSpec(0, "age"),)
    assert parse_classes({0: "x"}, "classification", "classes", problems) == (ClassSpec(0, "x"),)
    assert problems.items == ["classes: a classification model needs at least 2 classes, got 1"]


def test_a_manifest_class_list_obeys_the_same_rules() -> None:
    problems = Problems("manifest")
    listed = [{"value": 0, "name": "background"}, {"value": 1, "name": "lesion"}]
    assert parse_class_list(listed, "segmentation", "classes", problems) == (
        ClassSpec(0, "background"), ClassSpec(1, "lesion"))
    assert problems.items == []
    listed = [{"value": 1, "name": "lesion"}, {"value": 1, "name": "lesion"}, {"value": 2.0, "name": "x"}]
    assert parse_class_list(listed, "segmentation", "classes", problems) == (
        ClassSpec(1, "lesion"), ClassSpec(1, "lesion"))
    assert problems.items == [
        "classes[2].value: must be an integer from 0 to 65535 (label maps are uint8 or uint16), got 2.0",
        "classes: values must be distinct, got [1, 1]",
        "classes: names must be distinct, got ['lesion', 'lesion']",
        "classes: the first class is the background and must have value 0, got 1",
    ]


def test_steps_are_checked_against_the_axes_and_the_named_channel_count() -> None:
    problems = Problems("config")
    steps = parse_steps(["crop_nonzero", {"zscore": {"region": "whole", "channels": [2]}},
                         {"resample": {"spacing": [1.0, 2.0]}}, {"pad": None}],
                        3, 2, "training.preprocessing", problems, channels_from="data.channels")
    assert [s.name for s in steps] == ["crop_nonzero", "zscore", "resample"]   # a misfit is recorded, still parsed
    assert steps[0] == Step("crop_nonzero", {})
    assert problems.items == [
        "training.preprocessing[1] (zscore).channels: channel indices must be below 2 (data.channels), got [2]",
        "training.preprocessing[2] (resample).spacing: must give one value per spatial axis (3), got [1.0, 2.0]",
        "training.preprocessing[3] (pad): shape: missing (required)",
    ]


def test_steps_must_be_a_list_of_single_step_mappings() -> None:
    problems = Problems("spec")
    assert parse_steps({"zscore": {}}, 3, 1, "preprocessing", problems, channels_from="the spec's channels") == ()
    assert problems.items == ["preprocessing: must be a list of steps ({step_name: {params}}), got {'zscore': {}}"]
    problems = Problems("spec")
    assert parse_steps([{"clip": {}, "pad": {}}, {"zscore": 3}], None, 0, "p", problems, channels_from="x") == ()
    assert problems.items == ["p[0]: must be one step written {step_name: {params}}, got {'clip': {}, 'pad': {}}",
                              "p[1] (zscore): parameters must be a mapping, got 3"]


def test_a_manifest_step_list_is_held_to_the_axes_and_channels_too() -> None:
    problems = Problems("manifest")
    listed = [{"name": "resample", "params": {"spacing": [1.0, 1.0]}}, {"name": "blur", "params": {}},
              {"name": "clip", "params": {"min": 0, "channels": [1]}}, {"name": "zscore"}]
    steps = parse_step_list(listed, 3, 1, "preprocessing", problems, channels_from="the manifest's channels")
    assert steps == (Step("resample", {"spacing": [1.0, 1.0]}), Step("clip", {"min": 0, "channels": [1]}))
    assert problems.items[0] == ("preprocessing[0] (resample).spacing: must give one value per spatial axis (3), "
                                 "got [1.0, 1.0]")
    assert problems.items[1].startswith("preprocessing[1] (blur): unknown step 'blur'")
    assert problems.items[2:] == [
        "preprocessing[2] (clip).channels: channel indices must be below 1 (the manifest's channels), got [1]",
        "preprocessing[3].params: missing",
    ]


def test_window_fills_defaults_and_locates_problems_under_where() -> None:
    problems = Problems("config")
    window = parse_window({"mode": "whole", "mirror_axes": [1]}, (8, 16), 2, "inference", problems)
    assert window == WindowSection("whole", (8, 16), 0.5, "gaussian", 1, (1,), True)
    assert parse_window(None, None, 3, "window", problems) is None and problems.items == []
    bad = {"overlap": 1, "batch_size": 0, "mirror_axes": [2], "skip_background": "no", "blending": "max"}
    assert parse_window(bad, (8, 16), 2, "inference", problems) is None
    assert problems.items == [
        "inference.blending: must be one of gaussian, constant, nnunet, monai, got 'max'",
        "inference.overlap: must be a number in [0, 1), got 1",
        "inference.batch_size: must be an integer from 1 to 1024, got 0",
        "inference.mirror_axes: must be distinct spatial axes in 0..1, got [2]",
        "inference.skip_background: must be true or false, got 'no'",
    ]
    assert parse_window({"overlpa": 0.2}, (8, 16), 2, "inference", problems).overlap == 0.5
    assert problems.items[-1].startswith("inference.overlpa: unknown key")


def test_a_manifest_window_writes_every_key_and_its_patch() -> None:
    problems = Problems("manifest")
    written = {"mode": "sliding", "patch_size": [8, 16], "overlap": 0.25, "blending": "constant", "batch_size": 4,
               "mirror_axes": [0], "skip_background": False}
    assert parse_window_section(written, 2, 1, "window", problems) == WindowSection(
        "sliding", (8, 16), 0.25, "constant", 4, (0,), False)
    assert parse_window_section({**written, "patch_size": [8]}, 2, 1, "window", problems) is None
    assert parse_window_section({"mode": "sliding"}, 2, 1, "window", problems) is None
    assert problems.items[0] == "window.patch_size: must be 2 positive integers, got [8] (one per axis, in axis_order)"
    assert problems.items[1:3] == ["window.patch_size: missing", "window.overlap: missing"]
    assert len(problems.items) == 7


def test_a_window_section_gives_the_engine_its_settings() -> None:
    spec = WindowSection("sliding", (8, 16), 0.25, "constant", 4, (1,), True).spec
    assert (spec.patch, spec.overlap, spec.blending, spec.batch_size, spec.mirror_axes, spec.skip_empty) == (
        (8, 16), 0.25, "constant", 4, (1,), True)


def test_output_rules_hold_for_a_manifest_and_a_spec_alike() -> None:
    problems = Problems("manifest")
    written = {"activation": "sigmoid", "label_rule": "threshold", "threshold": 0.3, "ensemble": "vote"}
    assert parse_output(written, "segmentation", "output", problems) == OutputSpec("sigmoid", "threshold", 0.3, "vote")
    assert parse_output({**written, "label_rule": "argmax"}, "segmentation", "output", problems) is None
    assert parse_output({**written, "activation": "softmax"}, "regression", "output", problems) is None
    assert problems.items == [
        "output.label_rule: a sigmoid segmentation model is read by threshold, not argmax",
        "output.label_rule: threshold needs activation sigmoid or none, not softmax",
        "output.activation: a regression model's output is used as is: use none, got 'softmax'",
    ]


def test_a_threshold_on_a_graphs_own_values_may_be_any_number_from_0() -> None:
    """From 0 up only: the voxels outside a crop or pad hold 0, which must read as no class."""
    problems = Problems("manifest")
    logits = {"activation": "none", "label_rule": "threshold", "threshold": 0, "ensemble": "mean"}
    assert parse_output(logits, "segmentation", "output", problems) == OutputSpec("none", "threshold", 0.0, "mean")
    assert parse_output({**logits, "threshold": 2.5}, "segmentation", "output", problems).threshold == 2.5
    assert parse_output({**logits, "threshold": float("nan")}, "segmentation", "output", problems) is None
    assert parse_output({**logits, "threshold": -1}, "segmentation", "output", problems) is None
    assert parse_output({**logits, "activation": "sigmoid"}, "segmentation", "output", problems) is None
    assert problems.items == ["output.threshold: must be a number >= 0 (0 on logits is a sigmoid's 0.5), got nan",
                              "output.threshold: must be a number >= 0 (0 on logits is a sigmoid's 0.5), got -1",
                              "output.threshold: must be a number in (0, 1), got 0"]


def test_logits_may_name_the_activation_that_makes_their_probabilities_once_brought_back() -> None:
    """nnU-Net's order: logits brought back to the scan's grid, then softmax (argmax) or sigmoid
    (threshold); never with the runtime's own activation, and never with windows skipped."""
    problems = Problems("manifest")
    logits = {"activation": "none", "label_rule": "argmax", "threshold": 0.5, "ensemble": "mean",
              "probabilities": "softmax"}
    assert parse_output(logits, "segmentation", "output", problems).probabilities == "softmax"
    assert parse_output({k: v for k, v in logits.items() if k != "probabilities"}, "segmentation", "output",
                        problems).probabilities is None
    for changed in ({"probabilities": "sigmoid"}, {"activation": "softmax"}, {"probabilities": "exp"}):
        assert parse_output({**logits, **changed}, "segmentation", "output", problems) is None
    assert problems.items == [
        "output.probabilities: logits read by argmax are probabilities by softmax, not sigmoid",
        "output.probabilities: is for a segmentation graph of logits read as they are (activation none); leave it "
        "out, the activation makes the probabilities",
        "output.probabilities: must be softmax or sigmoid (or left out), got 'exp'"]
    window = parse_window({"skip_background": True}, (8, 8), 2, "window", problems)
    check_logits_window(parse_output(logits, "segmentation", "output", problems), window, problems)
    assert problems.items[-1].startswith("window.skip_background: must be false where output.probabilities is set")


def test_a_spec_may_leave_activation_and_label_rule_open() -> None:
    problems = Problems("spec")
    open_ = {"activation": None, "label_rule": None, "threshold": 0.5, "ensemble": "mean"}
    assert check_output(open_, "segmentation", "output", problems, open_keys=("activation", "label_rule"))
    assert not check_output(open_, "segmentation", "output", problems)
    assert problems.items == ["output.activation: must be one of softmax, sigmoid, none, got None",
                              "output.label_rule: must be one of argmax, threshold, got None"]


def test_the_contract_loads_no_yaml_and_no_export_or_trainer_code() -> None:
    script = ("import sys, runtime.contract; print(sorted(m for m in sys.modules "
              "if m.split('.')[0] in ('yaml', 'onnx', 'torch', 'export', 'trainer')))")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_slide_section_belongs_to_histology_models_and_fills_its_defaults() -> None:
    problems = Problems("spec")
    section = parse_slide({"mpp": 0.5}, "histology", 2, "slide", problems)
    assert problems.items == []
    assert section == SlideSpec(mpp=0.5, tissue_mpp=8.0, min_object_um2=10000.0, min_hole_um2=10000.0)
    parse_slide({"mpp": 0.5}, "radiology", 3, "slide", problems)
    parse_slide(None, "histology", 2, "slide", problems)
    parse_slide({"mpp": 0.5}, "histology", 3, "slide", problems)
    parse_slide({"mpp": -1, "tissue_mpp": "x"}, "histology", 2, "slide", problems)
    parse_slide({"mpp": 4.0, "tissue_mpp": 2.0}, "histology", 2, "slide", problems)
    parse_slide({"mpp": 0.5}, "histology", 2, "slide", problems, complete=True)
    assert problems.items == [
        "slide: is for histology models; this model's modality is radiology",
        "slide: missing: a histology model needs slide.mpp, the microns per pixel it works at",
        "dimensions: a histology model is 2D (it reads slides), got 3",
        "slide.mpp: must be microns per pixel in [0.01, 1000.0], got -1",
        "slide.tissue_mpp: must be microns per pixel in [0.01, 1000.0], got 'x'",
        "slide.tissue_mpp: the tissue mask's resolution (2.0) must be no finer than the model's (4.0)",
        "slide.tissue_mpp: missing",
        "slide.min_object_um2: missing",
        "slide.min_hole_um2: missing",
    ]


def test_a_histology_manifest_round_trips_its_slide_section(tmp_path) -> None:
    import json

    from runtime.manifest import load_manifest
    from tests.slidekit import stain_model

    manifest, folder = load_manifest(stain_model(tmp_path, mpp=1.0))
    assert manifest.slide == SlideSpec(mpp=1.0, tissue_mpp=8.0, min_object_um2=2000.0, min_hole_um2=2000.0)
    assert json.loads((folder / "manifest.json").read_text())["slide"]["mpp"] == 1.0
    assert "slide" not in manifest_without_slide()


def manifest_without_slide() -> dict:
    from tests.modelkit import manifest_dict
    from runtime.manifest import parse_manifest

    return parse_manifest({**manifest_dict(), "files": {"model.onnx": "0" * 64}}).to_dict()


def test_a_class_may_not_be_named_mean_which_names_the_mean_over_classes() -> None:
    problems = Problems("spec")
    parse_classes({0: "background", 1: "mean"}, "segmentation", "classes", problems)
    assert len(problems.items) == 1 and "'mean' names the mean over the classes" in problems.items[0]
    fine = Problems("spec")
    parse_classes({0: "age_mean"}, "regression", "classes", fine)
    assert fine.items == []

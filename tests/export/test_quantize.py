"""`python -m export quantize`: an int8 version calibrated on real windows of the subjects, kept only
where its labels agree with the float version's on held-out subjects, and run by the runtime like
any version."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from export import graphs
from export.cli import main as export_main
from runtime.backends import cpu_order, open_backend
from runtime.commands.cli import main as runtime_main
from runtime.commands.verify import backend_tolerance
from runtime.errors import ModelError
from runtime.manifest import load_manifest
from runtime.predict import checked_device, load_model
from tests.conftest import REPO, missing
from tests.modelkit import blob_volume, run_failing, skip_connection_graph, write_scan


@pytest.fixture()
def model_and_subjects(tmp_path) -> tuple[Path, Path]:
    return _packaged(graphs.bright_structures(3), tmp_path)


def _packaged(graph, tmp_path: Path) -> tuple[Path, Path]:
    """`graph` packaged with the demo's spec, and five subjects' CSV."""
    try:
        import nncf  # noqa: F401
    except ImportError:
        missing("nncf is not installed: pip install -e '.[dev]'")
    tmp_path.mkdir(exist_ok=True)
    onnx_path = graphs.save(graph, tmp_path / "graph.onnx")
    result = CliRunner().invoke(export_main, ["build", "--from-onnx", str(onnx_path), "--spec",
                                              str(REPO / "export" / "demo_spec.yaml"), "--repository",
                                              str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    rows = ["subject_id,image"]
    for index in range(5):
        write_scan(tmp_path / f"s{index}.nii.gz", blob_volume((24, 96, 80), seed=index), spacing_xyz=(1.0, 1.25, 2.5))
        rows.append(f"case{index},s{index}.nii.gz")
    (tmp_path / "subjects.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "repo" / "demo_bright_structures", tmp_path / "subjects.csv"


def test_an_int8_version_agrees_with_the_float_one_and_runs_like_any_version(model_and_subjects, tmp_path):
    model, subjects = model_and_subjects
    result = CliRunner().invoke(export_main, ["quantize", str(model / "1"), "--calibration", str(subjects)])
    assert result.exit_code == 0, result.output
    assert "calibrating on" in result.output and "held-out subject(s)" in result.output
    assert result.output.strip().splitlines()[-2] == str(model / "2")
    record = json.loads((model / "2" / "manifest.json").read_text())["provenance"]["quantization"]
    assert record["from_version"] == 1 and record["calibration_subjects"] == 4 and record["held_out_subjects"] == 1
    assert record["label_agreement"] >= 0.995 and record["calibration_windows"] >= 3
    verified = CliRunner().invoke(runtime_main, ["verify", str(model / "2")])
    assert verified.exit_code == 0 and "reproduced" in verified.output, verified.output
    said = re.search(r"max \|difference\| ([\d.e+-]+), allowed ([\d.e+-]+)(: tolerance [\d.e+-]+ x outputs up to "
                     r"[\d.e+-]+)?(, the tolerance recorded for this backend)?\)", verified.output)
    assert said and float(said.group(1)) <= float(said.group(2)), verified.output
    labels = {}
    for version in ("1", "2", ""):
        out = tmp_path / f"v{version}.nii.gz"
        done = CliRunner().invoke(runtime_main, ["predict", str(tmp_path / "s4.nii.gz"), "--model",
                                                 str(model / version), "--output", str(out), "--quiet"])
        assert done.exit_code == 0, done.output
        labels[version] = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
        taken = f"model {model.name}: its newest version, v2, is an int8 version, which runs; --model {model / '1'} " \
                "runs its float version"
        assert (taken in done.output) == (version == ""), done.output          # taken for the model folder only
    np.testing.assert_array_equal(labels[""], labels["2"])
    assert np.count_nonzero(labels["1"]) > 100
    assert np.mean(labels["1"] == labels["2"]) >= 0.995
    assert "2=sha256:" in (model / "config.pbtxt").read_text()


@pytest.mark.parametrize("through", [None, "Identity", "MaxPool"])
def test_a_layer_reading_a_concatenation_stays_float_and_every_backend_computes_the_same_int8(tmp_path, through):
    model, subjects = _packaged(skip_connection_graph(through=through), tmp_path)
    output = _quantized([str(model / "1"), "--calibration", str(subjects)])
    assert "1 layer(s) whose input reaches them unquantized (through a concatenation, pooling or padding) kept " \
        "float: head" in output, output
    manifest, folder = load_manifest(model / "2")
    assert manifest.provenance["quantization"]["float_layers"] == ["head"]
    graph = onnx.load(str(folder / manifest.onnx.file)).graph
    made_by = {name: node.op_type for node in graph.node for name in node.output}
    weights = {node.name: made_by.get(node.input[1], "initializer") for node in graph.node if node.op_type == "Conv"}
    assert weights == {"smooth": "DequantizeLinear", "smoother": "DequantizeLinear", "head": "initializer"}
    for backend, figures in manifest.provenance["quantization"]["backends"].items():
        assert figures["label_agreement"] >= 0.995 and figures["dice"]["bright_structure"] >= 0.99, backend
    assert set(manifest.onnx.sample_tolerance) == {open_backend(folder / "model.onnx", "input", "output",
                                                                device=device).name for device in cpu_order()}
    assert max(manifest.onnx.sample_tolerance.values()) <= 0.01, manifest.onnx.sample_tolerance


def test_an_int8_version_runs_only_on_the_backends_it_was_checked_on(model_and_subjects, monkeypatch, tmp_path):
    if "openvino" not in cpu_order():
        missing("openvino is not installed: pip install -e '.[dev]'")
    model, subjects = model_and_subjects
    with monkeypatch.context() as made_without_openvino:
        made_without_openvino.setattr("runtime.backends.cpu_order", lambda: ["cpu"])
        _quantized([str(model / "1"), "--calibration", str(subjects)])
    assert list(load_manifest(model / "2")[0].onnx.sample_tolerance) == ["onnxruntime[CPUExecutionProvider]"]
    scan, out = tmp_path / "s4.nii.gz", tmp_path / "labels.nii.gz"
    refused = run_failing(["predict", str(scan), "--model", str(model / "2"), "--output", str(out),
                           "--device", "openvino"], "checked against the float ones on "
                          "onnxruntime[CPUExecutionProvider] only (provenance.quantization.backends), not on device "
                          "openvino", "--device cpu",
                          f"its float version ({model / '1'})")
    assert "v2 is an int8 version" in refused and not out.exists()
    assert load_model(model / "2").backend.name == "onnxruntime[CPUExecutionProvider]"    # device auto
    assert load_model(model / "1").backend.name == "openvino[CPU]"
    done = CliRunner().invoke(runtime_main, ["predict", str(scan), "--model", str(model / "2"), "--output", str(out)])
    assert done.exit_code == 0 and out.is_file(), done.output
    verified = CliRunner().invoke(runtime_main, ["verify", str(model / "2"), "--device", "auto"])
    assert verified.exit_code == 0 and "onnxruntime[CPUExecutionProvider]" in verified.output, verified.output
    manifest, folder = load_manifest(model / "2")
    untold = dataclasses.replace(manifest, onnx=dataclasses.replace(manifest.onnx, sample_tolerance={}))
    with pytest.raises(ModelError, match=r"checked against the float ones on onnxruntime\[CPUExecutionProvider\] only"):
        checked_device(untold, folder, "openvino")           # as an int8 version whose float source had no samples
    record = {key: value for key, value in manifest.provenance["quantization"].items() if key != "backends"}
    older = dataclasses.replace(untold, provenance={**manifest.provenance, "quantization": record})
    with pytest.raises(ModelError, match="names no backend its labels were checked on"):
        checked_device(older, folder, "auto")                # made before the record named its backends
    for backends in (5, [1], "openvino[CPU]"):                # a record that is not a list or mapping of names
        crafted = dataclasses.replace(older, provenance={**manifest.provenance,
                                                         "quantization": {**record, "backends": backends}})
        with pytest.raises(ModelError, match="int8 version"):
            checked_device(crafted, folder, "openvino")


def test_a_class_no_held_out_subject_holds_is_not_taken_as_checked(model_and_subjects, tmp_path):
    model, subjects = model_and_subjects
    plain = np.random.default_rng(9).normal(50, 2, (24, 96, 80)).astype(np.float32)    # a body, nothing bright
    write_scan(tmp_path / "plain.nii.gz", plain, spacing_xyz=(1.0, 1.25, 2.5))
    rows = subjects.read_text().splitlines()[:5] + ["plain,plain.nii.gz"]           # four subjects, then plain
    (tmp_path / "plain.csv").write_text("\n".join(rows) + "\n")
    refused = _refused(["quantize", str(model / "1"), "--calibration", str(tmp_path / "plain.csv")])
    assert ("bright_structure is in neither the float nor the int8 prediction of the held-out subject(s), so nothing "
            "checked its int8") in refused
    assert sorted(p.name for p in model.iterdir() if p.is_dir()) == ["1"]
    _quantized([str(model / "1"), "--calibration", str(tmp_path / "plain.csv"), "--min-dice", "0"])


def _refused(args: list[str]) -> str:
    """Run `python -m export ARGS`: exit code 1 and one `error:` line on stderr (progress may come
    before it on stdout), no traceback; that line."""
    result = CliRunner().invoke(export_main, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    return lines[0]


def test_too_few_subjects_or_too_little_agreement_writes_nothing(model_and_subjects, tmp_path):
    model, subjects = model_and_subjects
    lines = subjects.read_text().splitlines()
    (tmp_path / "one.csv").write_text("\n".join(lines[:2]) + "\n")
    assert "holds 1 subject(s); give at least 2" in _refused(["quantize", str(model / "1"), "--calibration",
                                                               str(tmp_path / "one.csv")])
    message = _refused(["quantize", str(model / "1"), "--calibration", str(subjects), "--min-agreement", "0.99999"])
    assert "% of the voxels agree, under 99.999 %" in message and "nothing was written" in message
    assert sorted(p.name for p in model.iterdir() if p.is_dir()) == ["1"]


def _quantized(args: list[str]) -> str:
    """Run `python -m export quantize ARGS`, which must write a version; its output."""
    result = CliRunner().invoke(export_main, ["quantize", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _spiked_subjects(tmp_path: Path, spike: float) -> Path:
    """Five subjects: four to calibrate on, each with one voxel `spike` times the body's intensity (a
    metal artefact, say), which stretches int8's input range so that its step blurs the boundary of
    the fifth's bright structure, a small part of its voxels; a label column (the bright voxels)."""
    rows = ["subject_id,image,label"]
    for index in range(5):
        volume = blob_volume((24, 96, 80), seed=index)
        if index < 4:
            volume[12, 48, 40] = spike
        write_scan(tmp_path / f"p{index}.nii.gz", volume, spacing_xyz=(1.0, 1.25, 2.5))
        write_scan(tmp_path / f"p{index}_label.nii.gz", (volume > 120).astype(np.uint8), spacing_xyz=(1.0, 1.25, 2.5))
        rows.append(f"case{index},p{index}.nii.gz,p{index}_label.nii.gz")
    (tmp_path / "spiked.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "spiked.csv"


def test_a_structure_int8_changes_is_refused_however_much_background_agrees(model_and_subjects, tmp_path):
    model, _ = model_and_subjects
    spiked = _spiked_subjects(tmp_path, 20000.0)
    result = CliRunner().invoke(export_main, ["quantize", str(model / "1"), "--calibration", str(spiked)])
    assert result.exit_code == 1, result.output
    shares = [float(line.split(": ")[1].split(" %")[0]) for line in result.output.splitlines()
              if line.startswith(("openvino[", "onnxruntime[")) and "voxels agree" in line]
    assert len(shares) == len(cpu_order()) and min(shares) >= 99.5, result.output     # the voxel share alone passes
    assert "Dice int8 vs float 0.9" in result.stderr and "under 0.99; nothing was written" in result.stderr
    assert "against the label maps of 1 subject(s): float bright_structure 0." in result.output
    assert sorted(p.name for p in model.iterdir() if p.is_dir()) == ["1"]
    _quantized([str(model / "1"), "--calibration", str(spiked), "--min-dice", "0.9"])
    record = json.loads((model / "2" / "manifest.json").read_text())["provenance"]["quantization"]
    assert record["min_dice"] == 0.9 and record["min_agreement"] == 0.995
    for figures in record["backends"].values():
        assert 0.9 <= figures["dice"]["bright_structure"] < 0.99 <= figures["label_agreement"]
        assert set(figures["dice_against_labels"]) == {"float", "int8"}


def test_every_cpu_backend_is_measured_and_verify_passes_on_each(model_and_subjects):
    model, subjects = model_and_subjects
    output = _quantized([str(model / "1"), "--calibration", str(subjects)])
    names = [open_backend(model / "1" / "model.onnx", "input", "output", device=device).name for device in cpu_order()]
    assert all(f"case4 on {name}: " in output for name in names), output
    manifest, folder = load_manifest(model / "2")
    assert sorted(manifest.provenance["quantization"]["backends"]) == sorted(manifest.onnx.sample_tolerance) == \
        sorted(names)
    for device in cpu_order():
        verified = CliRunner().invoke(runtime_main, ["verify", str(model / "2"), "--device", device])
        assert verified.exit_code == 0 and "1 stored sample(s) reproduced" in verified.output, verified.output
    with pytest.raises(ModelError, match="measured on .* only .* not on onnxruntime.CUDAExecutionProvider.; verify "
                                         "it with --device"):
        backend_tolerance(manifest, folder, "onnxruntime[CUDAExecutionProvider]", 1e-4)
    float_manifest, _ = load_manifest(model / "1")
    assert backend_tolerance(float_manifest, model / "1", "openvino[CPU]", 1e-4) == 1e-4


def test_the_int8_version_claims_no_fp16_and_says_its_precision(model_and_subjects):
    model, subjects = model_and_subjects
    _quantized([str(model / "1"), "--calibration", str(subjects)])
    source, made = (json.loads((model / v / "manifest.json").read_text()) for v in ("1", "2"))
    assert source["onnx"]["fp16"] is True and "fp16_check" in source["provenance"]
    assert "fp16" not in made["onnx"] and "fp16_check" not in made["provenance"]
    info = CliRunner().invoke(runtime_main, ["info", str(model / "2")])
    assert "  precision   int8, quantized from version 1, measured on " in info.output, info.output
    listed = CliRunner().invoke(export_main, ["list", str(model.parent)]).output.splitlines()
    assert listed[0].split()[3] == "precision" and listed[1].split()[3:6] == ["fp32", "(fp16", "on"], listed
    assert listed[2].split()[3] == "int8", listed


def _half_version(model: Path, tmp_path: Path) -> Path:
    """A version of the model whose graph holds float16 weights (inputs and outputs float32)."""
    import onnx
    from onnxconverter_common import float16

    half = float16.convert_float_to_float16(onnx.load(str(model / "1" / "model.onnx")), keep_io_types=True)
    onnx.save(half, str(tmp_path / "half.onnx"))
    result = CliRunner().invoke(export_main, ["build", "--from-onnx", str(tmp_path / "half.onnx"), "--spec",
                                              str(REPO / "export" / "demo_spec.yaml"), "--repository",
                                              str(model.parent)])
    assert result.exit_code == 0, result.output
    return model / "2"


def test_a_float16_or_int8_source_is_refused_and_a_model_folder_gives_its_newest_float32(model_and_subjects, tmp_path):
    model, subjects = model_and_subjects
    half = _half_version(model, tmp_path)
    message = _refused(["quantize", str(half), "--calibration", str(subjects)])
    assert f"{half / 'model.onnx'} is a float16 graph" in message and "float32 graphs only" in message
    output = _quantized([str(model), "--calibration", str(subjects)])
    assert output.splitlines()[0] == f"quantizing version 1 of {model}, its newest float32 version; passed over 2 " \
                                     "(float16)"
    message = _refused(["quantize", str(model / "3"), "--calibration", str(subjects)])
    assert f"{model / '3'} is an int8 version (quantized from version 1)" in message
    assert f"python -m export quantize {model / '1'}" in message
    output = _quantized([str(model), "--calibration", str(subjects), "--windows", "2"])
    assert "passed over 3 (int8), 2 (float16)" in output.splitlines()[0]
    record = json.loads((model / "4" / "manifest.json").read_text())["provenance"]["quantization"]
    assert record["from_version"] == 1 and record["calibration_subjects"] == 2 and record["calibration_windows"] == 2


def test_an_unrecorded_newest_version_is_quantized_with_a_warning_on_stderr(model_and_subjects, tmp_path):
    """A version folder added by hand beside the recorded one, taken as the model folder's newest, is
    said to be quantized unpinned, on stderr, before the calibration subjects are read."""
    import shutil

    model, _ = model_and_subjects
    shutil.copytree(model / "1", model / "2")
    manifest = json.loads((model / "2" / "manifest.json").read_text())
    (model / "2" / "manifest.json").write_text(json.dumps({**manifest, "version": 2}))
    (tmp_path / "absent.csv").write_text("subject_id,image\ncase,absent.nii.gz\n")
    result = CliRunner().invoke(export_main, ["quantize", str(model), "--calibration", str(tmp_path / "absent.csv")])
    assert result.exit_code == 1 and "quantizing version 2" in result.stdout, result.output
    warning, error = result.stderr.splitlines()
    assert warning.startswith(f"warning: version 2 of {model}, taken for it, is not recorded in its config.pbtxt")
    assert "it is quantized unpinned" in warning and f"({model / '2'}) to quantize it knowingly" in warning
    assert error.startswith("error: ") and "absent.nii.gz" in error


def test_every_row_is_opened_before_calibration(model_and_subjects, tmp_path):
    model, subjects = model_and_subjects
    two = np.stack([blob_volume((24, 96, 80), seed=7)] * 2, axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(two, isVector=True), str(tmp_path / "two.nii.gz"))
    write_scan(tmp_path / "flat.nii.gz", blob_volume((96, 80), seed=8))
    rows = subjects.read_text().splitlines()
    again = f"again,{rows[1].split(',')[1]}"                                       # line 2's scan, again
    (tmp_path / "bad.csv").write_text("\n".join([*rows[:4], "flat,flat.nii.gz", "two,two.nii.gz", again]) + "\n")
    result = CliRunner().invoke(export_main, ["quantize", str(model / "1"), "--calibration", str(tmp_path / "bad.csv")])
    assert result.exit_code == 1 and "calibrating" not in result.output and "window(s)" not in result.output
    assert "line 5: " in result.stderr and "flat.nii.gz is a 2D image; model demo_bright_structures takes 3D" \
        in result.stderr
    assert "line 6: " in result.stderr and "two.nii.gz hold(s) 2 channels; model demo_bright_structures takes 1 " \
        "(image)" in result.stderr
    assert "line 7: " in result.stderr and "is line 2's scan too; each subject needs its own" in result.stderr
    message = _refused(["quantize", str(model / "1"), "--calibration", str(tmp_path)])
    assert f"{tmp_path} is a folder; --calibration takes a subjects CSV file" in message
    assert sorted(p.name for p in model.iterdir() if p.is_dir()) == ["1"]


def test_a_version_edited_after_export_or_a_scan_that_reads_as_nothing_is_refused_naming_it(model_and_subjects,
                                                                                             tmp_path):
    model, subjects = model_and_subjects
    manifest = model / "1" / "manifest.json"
    exported = manifest.read_text()
    data = json.loads(exported)
    data["preprocessing"][0]["params"]["spacing"] = [2.5, 1.5, 1.5]
    manifest.write_text(json.dumps(data, indent=2))
    message = _refused(["quantize", str(model / "1"), "--calibration", str(subjects)])
    assert "its manifest.json or that record was changed after export" in message
    manifest.write_text(exported)
    write_scan(tmp_path / "zero.nii.gz", np.zeros((24, 96, 80), np.float32))
    rows = subjects.read_text().splitlines()
    (tmp_path / "zero.csv").write_text("\n".join(["subject_id,image", "zero,zero.nii.gz", *rows[1:]]) + "\n")
    message = _refused(["quantize", str(model / "1"), "--calibration", str(tmp_path / "zero.csv")])
    assert "subject zero: " in message and "every voxel is 0" in message
    assert sorted(p.name for p in model.iterdir() if p.is_dir()) == ["1"]


def test_sample_tolerances_are_optional_in_a_manifest_and_bounded():
    from runtime.errors import ManifestError
    from runtime.manifest import parse_manifest
    from tests.modelkit import manifest_dict

    onnx_section = manifest_dict()["onnx"]
    plain = parse_manifest({**manifest_dict(), "files": {"model.onnx": "0" * 64}})
    assert plain.onnx.sample_tolerance == {} and "sample_tolerance" not in plain.to_dict()["onnx"]
    measured = {**manifest_dict(onnx={**onnx_section, "sample_tolerance": {"openvino[CPU]": 0.63}}),
                "files": {"model.onnx": "0" * 64}}
    assert parse_manifest(measured).to_dict()["onnx"]["sample_tolerance"] == {"openvino[CPU]": 0.63}
    measured["onnx"]["sample_tolerance"] = {"openvino[CPU]": 0, "": 1.0}
    with pytest.raises(ManifestError, match=r"onnx.sample_tolerance\['openvino\[CPU\]'\]: must be a number above 0 "
                                            r"and at most 10, got 0; onnx.sample_tolerance: backend names must be"):
        parse_manifest(measured)


def test_calibration_windows_are_drawn_from_the_whole_of_each_subject() -> None:
    """A subject's windows come in order, top rows first: the kept ones are an even draw over all
    of them (the same each run), not the first ones alone."""
    from export.quantize import Recording

    class Echo:
        on_cpu = True

        def __call__(self, batch: np.ndarray) -> np.ndarray:
            return batch

    recording = Recording(Echo(), limit=20)
    for start in range(0, 400, 4):                                       # 400 windows, 4 to a batch
        batch = np.arange(start, start + 4, dtype=np.float32).reshape(4, 1, 1)
        np.testing.assert_array_equal(recording(batch), batch)
    kept = sorted(int(w[0, 0]) for w in recording.windows)
    assert recording.seen == 400 and len(kept) == len(set(kept)) == 20
    assert min(kept) < 100 and max(kept) >= 300                          # from the start and the end
    again = Recording(Echo(), limit=20)
    for start in range(0, 400, 4):
        again(np.arange(start, start + 4, dtype=np.float32).reshape(4, 1, 1))
    assert sorted(int(w[0, 0]) for w in again.windows) == kept


def test_the_gate_scores_a_reference_annotated_in_part_on_its_annotated_voxels_alone():
    from export.quantize_gate import Measure
    from runtime.contract import ClassSpec

    reference = np.array([1, 1, 1, 0, 0, 255, 255, 255])
    labels = {"float": np.array([1, 1, 0, 0, 1, 1, 1, 1]), "int8": np.array([1, 1, 1, 0, 0, 0, 0, 0])}
    seconds = {"float": 1.0, "int8": 0.5}
    tumour = [ClassSpec(1, "tumour")]
    sparse = Measure("cpu").add(labels, seconds, reference, tumour, ignore=255)
    assert sparse.scored["float"]["tumour"].dice == pytest.approx(2 * 2 / (3 + 3))   # 2 of 3 found, 1 false
    assert sparse.scored["int8"]["tumour"].dice == 1.0
    dense = Measure("cpu").add(labels, seconds, reference, tumour)
    assert dense.scored["float"]["tumour"].dice == pytest.approx(2 * 2 / (6 + 3))    # the unannotated 1s counted
    assert sparse.voxels == dense.voxels == 8                                        # agreement: every voxel

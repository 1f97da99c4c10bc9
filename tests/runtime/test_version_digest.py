"""One digest per model version: what it covers, where it is printed, pinning it, and the Triton config
that records it for verify and for the Triton adapter."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

from export import graphs
from export.cli import main as export_main
from export.triton import python_backend_config
from runtime.commands.cli import main as runtime_main
from runtime.digests import DIGESTS_PARAMETER, config_digests
from runtime.errors import ManifestError
from runtime.manifest import MANIFEST_FILE, load_manifest, sha256_of, version_digest
from tests.conftest import DEMO, REPO, missing
from tests.exportkit import base_spec, build, save_graph, write_spec
from tests.modelkit import blob_volume, write_scan


@pytest.fixture()
def demo_copy(tmp_path: Path) -> Path:
    """A copy of the demo model folder, free to edit."""
    return Path(shutil.copytree(DEMO, tmp_path / "repo" / DEMO.name))


def edit_manifest(version_dir: Path, change) -> None:  # type: ignore[no-untyped-def]
    path = version_dir / MANIFEST_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def canonical_digest(version_dir: Path) -> str:
    data = json.loads((version_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_the_digest_is_the_sha256_of_the_canonical_manifest(demo_copy: Path) -> None:
    version = demo_copy / "1"
    digest = version_digest(demo_copy)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert digest == canonical_digest(version) == version_digest(version) == version_digest(version / MANIFEST_FILE)
    path = version / MANIFEST_FILE
    path.write_text(json.dumps(json.loads(path.read_text()), indent=7))    # the same JSON, other whitespace
    assert version_digest(version) == digest


def test_the_digest_changes_with_any_value_or_file_checksum(demo_copy: Path) -> None:
    version = demo_copy / "1"
    digest = version_digest(version)
    edit_manifest(version, lambda d: d["preprocessing"][0]["params"].update(spacing=[2.0, 1.5, 1.4]))
    changed_spacing = version_digest(version)
    edit_manifest(version, lambda d: d["files"].update({"model.py": "0" * 64}))
    assert len({digest, changed_spacing, version_digest(version)}) == 3


def test_info_list_and_verify_print_the_digest(demo_copy: Path) -> None:
    digest = version_digest(demo_copy)
    info = CliRunner().invoke(runtime_main, ["info", str(demo_copy)])
    assert info.exit_code == 0 and f"  digest      {digest}, as {demo_copy / 'config.pbtxt'} records (pin it" in \
        info.output, info.output
    verified = CliRunner().invoke(runtime_main, ["verify", str(demo_copy)])
    assert verified.exit_code == 0, verified.output
    assert f"  digest {digest}, as {demo_copy / 'config.pbtxt'} records" in verified.output
    listed = CliRunner().invoke(export_main, ["list", str(demo_copy.parent)])
    assert listed.exit_code == 0 and digest[:19] in listed.output.splitlines()[1], listed.output


def test_list_cuts_a_long_reason_at_a_word_and_points_to_verify(demo_copy: Path) -> None:
    (demo_copy / "1" / "model.py").write_text("# changed after export\n")
    listed = CliRunner().invoke(export_main, ["list", str(demo_copy.parent)])
    row = listed.output.splitlines()[1]
    assert listed.exit_code == 0 and "invalid" in row and "does not match the sha256" in row, listed.output
    assert "... (verify says more)" in row, row


def test_list_runs_where_the_export_extra_is_not_installed(demo_copy: Path, monkeypatch) -> None:
    """The runtime's install (without onnx) lists a repository; a version's graph precision, which
    onnx reads, is then unknown."""
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)                       # import onnx raises ImportError
    listed = CliRunner().invoke(export_main, ["list", str(demo_copy.parent)])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines()[1].split()[:4] == ["demo_bright_structures", "1", "segmentation", "?"]


def test_the_committed_demo_verifies_with_the_digest_its_config_records() -> None:
    assert config_digests(DEMO) == {1: version_digest(DEMO / "1")}
    verified = CliRunner().invoke(runtime_main, ["verify", str(DEMO)])
    assert verified.exit_code == 0 and "as " in verified.output, verified.output


def test_verify_and_info_catch_an_edited_spacing_that_every_checksum_still_passes(demo_copy: Path) -> None:
    version = demo_copy / "1"
    recorded = version_digest(version)
    edit_manifest(version, lambda d: d["preprocessing"][0]["params"].update(spacing=[2.5, 2.0, 2.0]))
    load_manifest(version)                             # schema and checksums alone accept it
    listed = CliRunner().invoke(export_main, ["list", str(demo_copy.parent)])
    assert listed.exit_code == 0, listed.output
    assert "invalid" in listed.output.splitlines()[1] and "its digest is not the one config.pbtxt records" in \
        listed.output.splitlines()[1], listed.output
    for main, command in ((runtime_main, "verify"), (export_main, "verify"), (runtime_main, "info")):
        result = CliRunner().invoke(main, [command, str(version)])
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr.splitlines() == [
            f"error: model version {version} has digest {version_digest(version)}, but {demo_copy / 'config.pbtxt'} "
            f"records {recorded} for it: its manifest.json or that record was changed after export. Restore the "
            "exported version, or build a new version."]


def test_a_field_removed_after_export_is_refused_as_a_change_not_as_an_older_export(demo_copy: Path,
                                                                                  tmp_path: Path) -> None:
    """A manifest.json no longer valid, whose digest is not the one config.pbtxt records, was
    refused as a manifest an older `export` wrote ("Re-export the model with this version")."""
    version = demo_copy / "1"
    recorded = version_digest(version)
    edit_manifest(version, lambda d: d.pop("classes"))
    expected = (f"error: model version {version} has digest {version_digest(version)}, but "
                f"{demo_copy / 'config.pbtxt'} records {recorded} for it: its manifest.json or that record was "
                "changed after export. Restore the exported version, or build a new version.")
    scan = write_scan(tmp_path / "scan.nii.gz", blob_volume((16, 32, 32)))
    for main, arguments in ((runtime_main, ["verify", str(version)]), (export_main, ["verify", str(demo_copy)]),
                            (runtime_main, ["info", str(version)]),
                            (runtime_main, ["predict", str(scan), "--model", str(demo_copy), "--output",
                                            str(tmp_path / "mask.nii.gz")])):
        result = CliRunner().invoke(main, arguments)
        assert result.exit_code == 1 and result.stderr.splitlines() == [expected], result.output
    assert not (tmp_path / "mask.nii.gz").exists()
    listed = CliRunner().invoke(export_main, ["list", str(demo_copy.parent)])
    assert "its digest is not the one config.pbtxt records" in listed.output.splitlines()[1], listed.output
    from runtime.predict import load_model

    with pytest.raises(ManifestError, match="its manifest.json or that record was changed after export"):
        load_model(demo_copy)                                # as the Triton adapter loads it
    (demo_copy / "config.pbtxt").unlink()                   # nothing recorded: the manifest is only invalid
    result = CliRunner().invoke(runtime_main, ["verify", str(version)])
    assert result.exit_code == 1 and "is not a valid manifest (schema 1): classes: missing" in result.stderr


def test_a_model_folder_holding_another_models_versions_is_refused(demo_copy: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A model exported under one name and moved into another's folder (its config.pbtxt's name
    edited to match) was served, verified and run as that other model: 934 labels differed."""
    moved = demo_copy.parent / "liver"
    shutil.copytree(demo_copy, moved)
    config = moved / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "demo_bright_structures"', 'name: "liver"'))
    expected = (f"{moved / '1' / MANIFEST_FILE}: name is 'demo_bright_structures', but it lies in the model folder "
                f"liver/ of {demo_copy.parent}, which Triton and the runtime serve as model liver")
    scan = write_scan(tmp_path / "scan.nii.gz", blob_volume((16, 32, 32)))
    for main, arguments in ((runtime_main, ["verify", str(moved)]), (runtime_main, ["info", str(moved / "1")]),
                            (runtime_main, ["predict", str(scan), "--model", str(moved), "--output",
                                            str(tmp_path / "mask.nii.gz")])):
        result = CliRunner().invoke(main, arguments)
        assert result.exit_code == 1 and expected in result.stderr, result.output
    listed = CliRunner().invoke(export_main, ["list", str(demo_copy.parent)])
    assert "name is 'demo_bright_structures', but it lies in the model folder" in listed.output, listed.output
    assert not (tmp_path / "mask.nii.gz").exists()
    assert CliRunner().invoke(runtime_main, ["verify", str(demo_copy)]).exit_code == 0
    monkeypatch.chdir(demo_copy)                             # its version named from inside the model folder
    for named in ("1", "./1", "1/manifest.json"):
        assert CliRunner().invoke(runtime_main, ["verify", named]).exit_code == 0, named


def test_predict_refuses_a_version_its_config_records_another_digest_for(demo_copy: Path, tmp_path: Path) -> None:
    version = demo_copy / "1"
    edit_manifest(version, lambda d: d["preprocessing"][0]["params"].update(spacing=[2.5, 2.0, 2.0]))
    scan = write_scan(tmp_path / "scan.nii.gz", blob_volume((16, 32, 32)))
    out = tmp_path / "mask.nii.gz"
    result = CliRunner().invoke(runtime_main, ["predict", str(scan), "--model", str(demo_copy), "--output", str(out)])
    assert result.exit_code == 1 and not out.exists()
    assert "its manifest.json or that record was changed after export" in result.stderr


def test_a_newest_version_its_config_does_not_record_runs_with_a_warning_and_a_linked_one_not_at_all(
        demo_copy: Path, tmp_path: Path) -> None:
    """A version folder its config.pbtxt records nothing for, beside recorded ones (added by hand, or
    an export stopped before it recorded it), taken as a model folder's newest, runs unpinned and
    says so (it ran silently); named directly, it runs without a word. A version folder that is a
    link is no version."""
    added = demo_copy / "2"
    shutil.copytree(demo_copy / "1", added)
    edit_manifest(added, lambda d: d.update(version=2))
    scan = write_scan(tmp_path / "scan.nii.gz", blob_volume((16, 32, 32)))
    out = tmp_path / "mask.nii.gz"
    result = CliRunner().invoke(runtime_main, ["predict", str(scan), "--model", str(demo_copy), "--output", str(out),
                                               "--quiet"])
    assert result.exit_code == 0 and out.exists(), result.output
    assert result.stderr.splitlines() == [
        f"warning: version 2 of {demo_copy}, taken for it, is not recorded in its config.pbtxt (which records "
        "version(s) 1): it runs unpinned. An export records each version it builds; a folder copied or added by hand, "
        f"or an export stopped before it recorded it, is not. Name the version ({added}) to run it knowingly, or "
        "export it again."]
    result = CliRunner().invoke(runtime_main, ["predict", str(scan), "--model", str(demo_copy), "--output",
                                               str(tmp_path / "pinned.nii.gz"), "--quiet", "--expect-digest",
                                               version_digest(added)])
    assert result.exit_code == 0 and "warning" not in result.stderr, result.output        # pinned by its digest
    for named in (added, added / MANIFEST_FILE):
        result = CliRunner().invoke(runtime_main, ["predict", str(scan), "--model", str(named), "--output",
                                                   str(tmp_path / "named.nii.gz"), "--quiet"])
        assert result.exit_code == 0 and "warning" not in result.stderr, result.output
    shutil.rmtree(added)
    shutil.copytree(demo_copy / "1", tmp_path / "elsewhere")
    edit_manifest(tmp_path / "elsewhere", lambda d: d.update(version=2))
    added.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    result = CliRunner().invoke(runtime_main, ["predict", str(scan), "--model", str(demo_copy), "--output",
                                               str(tmp_path / "linked.nii.gz")])
    assert result.exit_code == 1 and f"{added} is a link, not a version folder" in result.stderr, result.output


def test_verify_says_when_no_config_records_the_version(demo_copy: Path) -> None:
    (demo_copy / "config.pbtxt").write_text(python_backend_config(load_manifest(demo_copy)[0]))
    result = CliRunner().invoke(runtime_main, ["verify", str(demo_copy)])
    assert result.exit_code == 0 and "config.pbtxt records no digest for this version" in result.output
    (demo_copy / "config.pbtxt").unlink()
    result = CliRunner().invoke(runtime_main, ["verify", str(demo_copy)])
    assert result.exit_code == 0 and "(no config.pbtxt beside the version records it)" in result.output


def test_a_malformed_digest_entry_in_the_config_is_an_error(demo_copy: Path) -> None:
    config = demo_copy / "config.pbtxt"
    config.write_text(config.read_text().replace("1=sha256:", "1=md5:"))
    result = CliRunner().invoke(runtime_main, ["verify", str(demo_copy)])
    assert result.exit_code == 1 and f"parameter {DIGESTS_PARAMETER} holds '1=md5:" in result.stderr


@pytest.mark.parametrize("spelling", [
    'parameters {{ key: "{key}" value {{ string_value: "{pin}" }} }}',             # a message without its colon
    "parameters {{ value {{ string_value: '{pin}' }} key: '{key}' }}",             # value first, single quotes
    '# parameters {{ key: "{key}" value: {{ string_value: "1=sha256:{zeros}" }} }}\n'
    'parameters [ {{ key: "{key}", value: {{ string_value: "{pin}" }} }} ]',       # a comment, then a list
])
def test_the_pin_is_read_as_triton_reads_the_config(demo_copy: Path, spelling: str) -> None:
    """However the text format spells it, the pin the runtime checks is the one Triton loads."""
    config = demo_copy / "config.pbtxt"
    without = "\n".join(line for line in config.read_text().splitlines() if DIGESTS_PARAMETER not in line
                        and "string_value" not in line)
    text = without.replace("parameters: {\n\n}", "").replace("parameters: {\n}", "")
    wrong = "1=sha256:" + "0" * 64
    config.write_text(text + "\n" + spelling.format(key=DIGESTS_PARAMETER, pin=wrong, zeros="1" * 64) + "\n")
    _parses_as_triton_config(config.read_text(), {1: "sha256:" + "0" * 64})
    assert config_digests(demo_copy) == {1: "sha256:" + "0" * 64}
    result = CliRunner().invoke(runtime_main, ["verify", str(demo_copy)])
    assert result.exit_code == 1 and "config.pbtxt records sha256:0000" in result.output, result.output


def test_a_stored_sample_promising_gigabytes_is_refused_before_it_is_allocated(demo_copy: Path) -> None:
    import io

    import numpy as np

    version = demo_copy / "1"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                   "shape": (1, 1, 4000, 4000, 4000)})
    sample = version / "samples" / "input_0.npy"
    sample.write_bytes(header.getvalue() + bytes(1024))                # 256 GB promised, 1 KB present
    edit_manifest(version, lambda d: d["files"].update({"samples/input_0.npy": sha256_of(sample)}))
    (demo_copy / "config.pbtxt").unlink()                               # the digest changed with the manifest
    result = CliRunner().invoke(runtime_main, ["verify", str(demo_copy)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and lines[-1].startswith("error: ") and "Traceback" not in result.output
    assert "input_0.npy cannot be read as a numpy array (mmap length is greater than file size)" in lines[-1]


def test_each_build_records_its_digest_and_keeps_the_others(tmp_path: Path) -> None:
    onnx_path = save_graph(tmp_path, graphs.bright_structures(3))
    repository = tmp_path / "repo"
    for spacing in ([2.0, 1.5, 1.5], [1.0, 1.0, 1.0]):
        spec = base_spec(preprocessing=[{"resample": {"spacing": spacing}}])
        assert build(onnx_path, write_spec(tmp_path, spec), repository).exit_code == 0
    model = repository / "bright"
    digests = {1: version_digest(model / "1"), 2: version_digest(model / "2")}
    assert digests[1] != digests[2] and config_digests(model) == digests
    text = (model / "config.pbtxt").read_text()
    assert (f'parameters: {{\n  key: "{DIGESTS_PARAMETER}"\n  value: {{ string_value: '
            f'"1={digests[1]},2={digests[2]}" }}\n}}\n') in text
    _parses_as_triton_config(text, digests)


def _parses_as_triton_config(text: str, digests: dict[int, str]) -> None:
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        missing("tritonclient is not installed; its ModelConfig protobuf parses the config")
        return
    from google.protobuf import text_format

    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("_digest_model_config_pb2", path)
    pb2 = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(pb2)
    config = text_format.Parse(text, pb2.ModelConfig())
    assert config.parameters[DIGESTS_PARAMETER].string_value == ",".join(f"{v}={d}" for v, d in digests.items())


# --- pinning -----------------------------------------------------------------------------------------


@pytest.fixture()
def scan(tmp_path: Path) -> Path:
    return write_scan(tmp_path / "scan.nii.gz", blob_volume((16, 32, 32)))


def test_predict_runs_a_model_with_the_pinned_digest(demo_copy: Path, scan: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.nii.gz"
    result = CliRunner().invoke(runtime_main, ["predict", str(scan), "--model", str(demo_copy), "--output", str(out),
                                               "--device", "cpu", "--expect-digest", version_digest(demo_copy)])
    assert result.exit_code == 0, result.output
    assert out.is_file()


def test_predict_refuses_another_digest_before_any_work(demo_copy: Path, scan: Path, tmp_path: Path) -> None:
    pinned = version_digest(demo_copy)
    edit_manifest(demo_copy / "1", lambda d: d["preprocessing"][0]["params"].update(spacing=[2.5, 2.0, 2.0]))
    out = tmp_path / "mask.nii.gz"
    result = CliRunner().invoke(runtime_main, ["predict", str(scan), "--model", str(demo_copy), "--output", str(out),
                                               "--expect-digest", pinned])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: model version {demo_copy / '1'} has digest {version_digest(demo_copy)}, but {pinned} is expected: "
        "this is not the pinned version. Run the version the digest was taken from, or review this version and pin "
        "its digest."]
    assert not out.exists()


def test_a_csv_run_refuses_another_digest_before_any_subject(demo_copy: Path, scan: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "subjects.csv"
    csv_path.write_text(f"subject_id,image\ns1,{scan.name}\n")
    out = tmp_path / "preds"
    result = CliRunner().invoke(runtime_main, ["predict", "--csv", str(csv_path), "--output-dir", str(out),
                                               "--model", str(demo_copy), "--expect-digest", "sha256:" + "0" * 64])
    assert result.exit_code == 1 and "but sha256:0000" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not out.exists()


def test_a_malformed_pin_is_refused(demo_copy: Path, scan: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(runtime_main, ["predict", str(scan), "--model", str(demo_copy), "--output",
                                               str(tmp_path / "m.nii.gz"), "--expect-digest", "8b6170ad9e83"])
    assert result.exit_code == 1
    assert "expected digest '8b6170ad9e83' is not a version digest" in result.stderr


# --- the Triton adapter ------------------------------------------------------------------------------


def adapter(version_dir: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"triton_model_{id(version_dir)}", version_dir / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def initialize(model_dir: Path, parameters: dict[str, dict[str, str]]) -> object:
    instance = adapter(model_dir / "1").TritonPythonModel()
    instance.initialize({"model_config": json.dumps({"parameters": parameters}), "model_repository": str(model_dir),
                         "model_version": "1", "model_instance_kind": "CPU", "model_instance_device_id": "0"})
    return instance


def test_the_adapter_serves_a_version_whose_digest_its_config_records(demo_copy: Path) -> None:
    recorded = {DIGESTS_PARAMETER: {"string_value": f"1={version_digest(demo_copy)}"}}
    assert initialize(demo_copy, recorded).model.manifest.name == DEMO.name


def test_the_adapter_refuses_a_version_whose_digest_differs(demo_copy: Path) -> None:
    recorded = {DIGESTS_PARAMETER: {"string_value": f"1={version_digest(demo_copy)}"}}
    edit_manifest(demo_copy / "1", lambda d: d["preprocessing"][0]["params"].update(spacing=[2.5, 2.0, 2.0]))
    with pytest.raises(ManifestError, match=r"has digest sha256:[0-9a-f]{64}, but the Triton config of .* records "
                                            r"sha256:[0-9a-f]{64} for it"):
        initialize(demo_copy, recorded)


def test_the_adapter_serves_an_unrecorded_version_with_a_warning(demo_copy: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="runtime.digests"):
        assert initialize(demo_copy, {}).model.manifest.version == 1
    assert f"records no digest for version 1 ({version_digest(demo_copy)}); serving it unpinned" in caplog.text


def test_the_adapter_model_py_is_the_runtimes(demo_copy: Path) -> None:
    assert (demo_copy / "1" / "model.py").read_bytes() == (REPO / "runtime" / "triton" / "model.py").read_bytes()
    assert sha256_of(demo_copy / "1" / "model.py") == load_manifest(demo_copy)[0].files["model.py"]

"""File entries of a manifest never leave the version folder, and a wrong checksum never prints the file's digest."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from export import graphs
from runtime.errors import ManifestError
from runtime.manifest import MANIFEST_FILE, load_manifest, sha256_of
from tests.modelkit import make_model


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    return make_model(tmp_path, graphs.bright_structures(3))


def add_files(model_dir: Path, entries: dict[str, str], **top: Any) -> None:
    path = model_dir / "1" / MANIFEST_FILE
    data = json.loads(path.read_text())
    data["files"].update(entries)
    data.update(top)
    path.write_text(json.dumps(data))


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A file beside the model repository whose sha256 a hostile manifest could record."""
    path = tmp_path / "secret.txt"
    path.write_text("patient list\n")
    return path


@pytest.mark.parametrize(("name", "message"), [
    ("../../secret.txt", r"must not hold empty, '\.' or '\.\.' segments"),
    ("samples/../../../secret.txt", r"must not hold empty, '\.' or '\.\.' segments"),
    ("/etc/passwd", r"must be a path relative to the version folder"),
    ("..\\..\\secret.txt", r"must not hold a backslash or a NUL character"),
    ("samples//input.npy", r"must not hold empty, '\.' or '\.\.' segments"),
    ("./model.onnx", r"must not hold empty, '\.' or '\.\.' segments"),
    ("samples/", r"must not hold empty, '\.' or '\.\.' segments"),
    ("model.onnx\x00.txt", r"must not hold a backslash or a NUL character"),
    ("", r"must be a path relative to the version folder"),
])
def test_a_files_entry_that_leaves_the_version_folder_is_refused(model_dir: Path, outside: Path, name: str,
                                                                  message: str) -> None:
    add_files(model_dir, {name: sha256_of(outside)})
    for verify in (True, False):
        with pytest.raises(ManifestError, match=message) as caught:
            load_manifest(model_dir, verify=verify)
        assert f"files[{name!r}]: " in str(caught.value)


def test_the_entry_is_named_in_the_error(model_dir: Path, outside: Path) -> None:
    add_files(model_dir, {"../../secret.txt": sha256_of(outside)})
    with pytest.raises(ManifestError) as caught:
        load_manifest(model_dir)
    assert "files['../../secret.txt']: must not hold empty, '.' or '..' segments" in str(caught.value)


def test_a_link_that_leads_out_of_the_version_folder_is_refused_before_it_is_read(model_dir: Path,
                                                                                  outside: Path) -> None:
    version = model_dir / "1"
    (version / "notes.txt").symlink_to(outside)
    add_files(model_dir, {"notes.txt": sha256_of(outside)})
    with pytest.raises(ManifestError, match=r"files entry 'notes\.txt' is a link that leads outside the version "
                                            r"folder"):
        load_manifest(model_dir)
    (version / "notes.txt").unlink()
    (version / "samples").symlink_to(outside.parent, target_is_directory=True)
    add_files(model_dir, {"samples/secret.txt": sha256_of(outside)})
    with pytest.raises(ManifestError, match=r"'samples/secret\.txt' is a link that leads outside"):
        load_manifest(model_dir)


def test_links_to_a_device_or_in_a_loop_are_refused_without_reading_them(model_dir: Path) -> None:
    (model_dir / "1" / "zeros.bin").symlink_to("/dev/zero")
    (model_dir / "1" / "loop.bin").symlink_to("loop.bin")
    onnx_entry = {"model.onnx": sha256_of(model_dir / "1" / "model.onnx")}
    for name in ("zeros.bin", "loop.bin"):
        add_files(model_dir, {}, files={**onnx_entry, name: "0" * 64})
        with pytest.raises(ManifestError, match=rf"'{name}' is a link that leads outside"):
            load_manifest(model_dir)


def test_a_link_that_stays_inside_the_version_folder_is_accepted(model_dir: Path) -> None:
    version = model_dir / "1"
    (version / "data").mkdir()
    (version / "data" / "weights.bin").write_bytes(b"\x01\x02")
    (version / "weights.bin").symlink_to(Path("data") / "weights.bin")
    add_files(model_dir, {"weights.bin": sha256_of(version / "data" / "weights.bin")})
    assert "weights.bin" in load_manifest(model_dir)[0].files


@pytest.mark.parametrize("name", ["..", "../model.onnx", "sub/model.onnx", "a\\model.onnx", "/model.onnx"])
def test_the_onnx_file_name_is_held_to_the_version_folder(model_dir: Path, name: str) -> None:
    path = model_dir / "1" / MANIFEST_FILE
    data = json.loads(path.read_text())
    data["onnx"]["file"] = name
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"onnx\.file: must be a file name inside the version folder"):
        load_manifest(model_dir, verify=False)


def test_a_wrong_checksum_names_the_recorded_one_and_never_the_files(model_dir: Path) -> None:
    onnx_path = model_dir / "1" / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\x00")
    actual = sha256_of(onnx_path)
    recorded = load_manifest(model_dir, verify=False)[0].files["model.onnx"]
    with pytest.raises(ManifestError) as caught:
        load_manifest(model_dir)
    message = str(caught.value)
    assert f"does not match the sha256 manifest.json records for it ({recorded})" in message
    assert not any(actual[i:i + 8] in message for i in range(0, 57))

"""A build of a new version keeps what an operator set by hand in the model's config.pbtxt (where
its instances run, its memory budget, the versions served, any other field), writes what the model
is from the new version, and records every version's digest; a config without edits is rewritten
exactly as export writes it."""
from __future__ import annotations

import pytest
from google.protobuf import text_format

from export import graphs
from export.config_merge import top_level_fields
from export.triton import python_backend_config
from runtime.digests import config_digests
from runtime.errors import ManifestError
from runtime.manifest import load_manifest, version_digest
from tests.exportkit import assert_one_error_line, base_spec, build, save_graph, write_spec
from tests.tritonkit import model_config_pb2

EDITED = '''# edited by the hospital's operators: CPU only, two instances, v1 pinned while v2 is tried
name: "bright"
backend: "python"
max_batch_size: 0
input [{ name: "IMAGE", data_type: TYPE_FP32, dims: [1, -1, -1, -1] }]
output [{ name: "LABELS" data_type: TYPE_UINT8 dims: [-1, -1, -1] }]
version_policy: { specific: { versions: [1] } }
instance_group [
  { count: 2, kind: KIND_CPU }   # not "}" in a comment
]
response_cache { enable: true }
parameters: { key: "device" value: { string_value: "cpu" } }
parameters { key: 'max_memory', value { string_value: "4G" } }
parameters: { key: "version_digests" value: { string_value: "1=%s" } }
'''


def test_a_new_version_keeps_the_configs_hand_edits_and_records_both_digests(tmp_path):
    pb2 = model_config_pb2()
    onnx_path = save_graph(tmp_path, graphs.bright_structures(3), "bright.onnx")
    spec_path, repository = write_spec(tmp_path, base_spec()), tmp_path / "repo"
    assert build(onnx_path, spec_path, repository).exit_code == 0
    model_dir = repository / "bright"
    (model_dir / "config.pbtxt").write_text(EDITED % version_digest(model_dir / "1"))
    assert build(onnx_path, spec_path, repository).exit_code == 0
    text = (model_dir / "config.pbtxt").read_text()
    config = text_format.Parse(text, pb2.ModelConfig())
    manifest, _ = load_manifest(model_dir / "2")
    generated = text_format.Parse(python_backend_config(manifest), pb2.ModelConfig())
    assert (config.name, config.backend, config.max_batch_size) == ("bright", "python", 0)
    assert config.input == generated.input and config.output == generated.output       # what the model is
    assert [(group.count, group.kind) for group in config.instance_group] == [(2, pb2.ModelInstanceGroup.KIND_CPU)]
    assert list(config.version_policy.specific.versions) == [1] and config.response_cache.enable
    assert {key: value.string_value for key, value in config.parameters.items() if key != "version_digests"} == \
        {"device": "cpu", "max_memory": "4G"}
    assert config_digests(model_dir) == {1: version_digest(model_dir / "1"), 2: version_digest(model_dir / "2")}
    digests = config_digests(model_dir)
    (model_dir / "config.pbtxt").write_text(python_backend_config(manifest, digests=digests))     # no edits
    assert build(onnx_path, spec_path, repository).exit_code == 0
    third, _ = load_manifest(model_dir / "3")
    assert (model_dir / "config.pbtxt").read_text() == python_backend_config(
        third, digests={**digests, 3: version_digest(model_dir / "3")})


def test_a_build_says_when_it_undoes_a_batch_size_edit_and_when_the_kept_policy_will_not_serve_it(tmp_path, caplog):
    onnx_path = save_graph(tmp_path, graphs.bright_structures(3), "bright.onnx")
    spec_path, repository = write_spec(tmp_path, base_spec()), tmp_path / "repo"
    assert build(onnx_path, spec_path, repository).exit_code == 0
    model_dir = repository / "bright"
    edited = EDITED.replace("max_batch_size: 0", "max_batch_size: 4  # more throughput?")
    (model_dir / "config.pbtxt").write_text(edited % version_digest(model_dir / "1"))
    with caplog.at_level("WARNING", logger="export.triton"):
        assert build(onnx_path, spec_path, repository).exit_code == 0
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 2, said
    assert "max_batch_size is written by the build, not kept ('4' became '0'): the runtime's model.py takes one " \
        "whole scan" in said[0]
    assert "version_policy serves version(s) 1 only, so version 2 is not served" in said[1]
    text = (model_dir / "config.pbtxt").read_text()
    (model_dir / "config.pbtxt").write_text(text.replace("versions: [1]", "versions: [1, 3]"))
    caplog.clear()
    with caplog.at_level("WARNING", logger="export.triton"):
        assert build(onnx_path, spec_path, repository).exit_code == 0              # version 3: served, unchanged
    assert caplog.records == []


@pytest.mark.parametrize("config", ["instance_group [ { count: 2 ", "parameters: { key: 'device' value: 3 }",
                                    "instance_grup [ { count: 2 } ]"])
def test_a_config_that_cannot_be_read_refuses_the_build_before_the_version_is_made(tmp_path, config):
    onnx_path = save_graph(tmp_path, graphs.bright_structures(3), "bright.onnx")
    spec_path, repository = write_spec(tmp_path, base_spec()), tmp_path / "repo"
    assert build(onnx_path, spec_path, repository).exit_code == 0
    (repository / "bright" / "config.pbtxt").write_text(config)
    assert_one_error_line(build(onnx_path, spec_path, repository), r"config.pbtxt.*(restore the config that export "
                                                                   r"wrote|correct it)")
    assert sorted(path.name for path in (repository / "bright").iterdir()) == [".build.lock", "1", "config.pbtxt"]


def test_top_level_fields_are_read_as_triton_reads_the_text_format():
    text = ('name: 1 # b: { "\n'
            "input [ { name: 'x}' dims: [1, 2] } ], backend: \"p\\\"}\" \"q\"; optimization { e < f: 1 > }\n"
            "  # kept with its field\nresponse_cache < enable: true >\nmax_batch_size: -1.5e3")
    assert top_level_fields(text, "t") == [
        ("name", 'name: 1 # b: { "'), ("input", "input [ { name: 'x}' dims: [1, 2] } ]"),
        ("backend", 'backend: "p\\"}" "q"'), ("optimization", "optimization { e < f: 1 > }"),
        ("response_cache", "# kept with its field\nresponse_cache < enable: true >"),
        ("max_batch_size", "max_batch_size: -1.5e3")]
    for broken in ("name { b: 1", "name: 'b", "name:", "{ a: 1 }"):
        with pytest.raises(ManifestError, match="correct it there|correct it \\(Triton cannot read it either"):
            top_level_fields(broken, "t")
    with pytest.raises(ManifestError, match="t: instance_grup is no field of Triton's model config; correct it"):
        top_level_fields("name: 'x'\ninstance_grup [{ count: 2 }]", "t")
